"""The AdaLFL loss network: a small MLP on the pair (y_pred, y) of each element."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sympy
import torch
import torch.nn.functional as F
from sympy.core.parameters import distribute
from torch import Tensor, nn

from losses.base import LearnedLoss, check_choice
from losses.symbols import Y_PRED, Y_TRUE, sympy_float
from losses.sympy_to_torch import SOFTPLUS_THRESHOLD


def _softplus_torch(x: Tensor, beta: float) -> Tensor:
    return F.softplus(x, beta=beta, threshold=SOFTPLUS_THRESHOLD)


def _softplus_sympy(z: sympy.Expr, beta: float) -> sympy.Expr:
    # exp/log are built unevaluated: their evaluation cannot simplify these
    # arguments but costs seconds of assumption queries on a large network.
    inner = z if beta == 1 else sympy_float(beta) * z
    log = sympy.log(1 + sympy.exp(inner, evaluate=False), evaluate=False)
    return log if beta == 1 else sympy_float(1 / beta) * log


@dataclass(frozen=True)
class Activation:
    """One activation in two forms over the same constants: ``torch_fn(x, beta, gamma)`` and
    ``sympy_fn(z, beta, gamma)``. Derivatives come from autograd / ``torch.func`` on ``torch_fn``."""

    torch_fn: Callable[[Tensor, float, float], Tensor]
    sympy_fn: Callable[[sympy.Expr, float, float], sympy.Expr]


ACTIVATIONS: dict[str, Activation] = {
    # φ(x) = γx + (1−γ)·softplus_β(x), softplus_β(x) = log(1 + exp(βx))/β, as one lerp: x + (1−γ)(softplus − x).
    "smooth_leaky_relu": Activation(
        lambda x, b, g: torch.lerp(x, _softplus_torch(x, b), 1 - g),
        lambda z, b, g: sympy_float(g) * z + sympy_float(1 - g) * _softplus_sympy(z, b),
    ),
    "relu": Activation(lambda x, b, g: torch.relu(x), lambda z, b, g: sympy.Max(z, 0, evaluate=False)),
    "softplus": Activation(lambda x, b, g: _softplus_torch(x, 1.0), lambda z, b, g: _softplus_sympy(z, 1)),
    "tanh": Activation(lambda x, b, g: torch.tanh(x), lambda z, b, g: sympy.tanh(z, evaluate=False)),
    "identity": Activation(lambda x, b, g: x, lambda z, b, g: z),
}
HIDDEN_ACTIVATIONS = ("smooth_leaky_relu", "relu", "softplus", "tanh")
OUTPUT_ACTIVATIONS = ("softplus", "smooth_leaky_relu", "identity")


class MLPLoss(LearnedLoss):
    """AdaLFL's learned loss (arXiv 2301.13247): an MLP applied to each element.

    The network maps the pair ``(y_pred, y)`` of one element (2 inputs, in that
    order) through ``len(hidden)`` hidden layers to one output:
    ``ℓ = out(W_L · act(… act(W_1 · [y_pred, y]) …))``. The hidden activation
    defaults to the smooth leaky ReLU ``φ(x) = γx + (1−γ)·softplus_β(x)`` with
    ``softplus_β(x) = log(1 + exp(βx))/β``; ``"softplus"`` is the plain β = 1
    softplus; ``beta`` and ``gamma`` affect only the smooth leaky ReLU.

    Initialisation: torch's default for ``nn.Linear``, drawn from torch's global
    RNG (seed with ``torch.manual_seed``): weights (and biases) uniform in
    ``(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (Kaiming-uniform with a = sqrt(5)).

    ``to_sympy()`` writes the network out layer by layer without expanding it
    (products of a weight and a sum stay products): one shared subexpression per
    hidden unit, softplus as ``log(1 + exp(βz))/β``. The formula is compact in
    memory but long as text (hundreds of kB for the default network), so printing
    and ``sympy.lambdify`` are slow, and NumPy's ``exp`` overflows for
    pre-activations ``β·z > 709``; ``to_python()`` and ``SymbolicLoss`` evaluate
    the same formula stably (softplus recognised).

    Derivatives (the output gradient and the second derivatives the meta-gradient
    needs) are not written out: :func:`losses.derivatives.value_gradient_pullback`
    derives them from this forward with ``torch.func``.

    Args:
        task: ``"classification"`` (default) or ``"regression"``.
        hidden: Widths of the hidden layers, any depth (``()`` is linear).
        activation: Hidden activation, one of ``HIDDEN_ACTIVATIONS``.
        output: Output activation, one of ``OUTPUT_ACTIVATIONS``.
        beta: Softplus sharpness β > 0 of the smooth leaky ReLU.
        gamma: Leak γ in [0, 1] of the smooth leaky ReLU.
        bias: Give the linear layers biases (AdaLFL has none).
        dtype: dtype of the parameters (default: torch's default dtype).
        reduction: What ``forward`` returns: ``"mean"`` (default) over batch and outputs, the
            paper's M_φ; ``"sum"``; ``"none"``, the per-element (B, C) values.
    """

    kind = "mlp"

    def __init__(
        self,
        *,
        task: str = "classification",
        hidden: Sequence[int] = (40, 40),
        activation: str = "smooth_leaky_relu",
        output: str = "softplus",
        beta: float = 2.0,
        gamma: float = 0.25,
        bias: bool = False,
        dtype: torch.dtype | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__(task=task, reduction=reduction)
        check_choice("activation", activation, HIDDEN_ACTIVATIONS)
        check_choice("output", output, OUTPUT_ACTIVATIONS)
        hidden = tuple(hidden)
        if not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden):
            raise ValueError(f"hidden must be a sequence of positive integers (layer widths); got {hidden!r}")
        if not float(beta) > 0:
            raise ValueError(f"beta must be > 0; got {beta!r}")
        if not 0 <= float(gamma) <= 1:
            raise ValueError(f"gamma must be in [0, 1]; got {gamma!r}")
        self.hidden, self.activation, self.output = hidden, activation, output
        self.beta, self.gamma, self.bias = float(beta), float(gamma), bool(bias)
        widths = (2, *hidden, 1)
        self.layers = nn.ModuleList(
            nn.Linear(n_in, n_out, bias=self.bias, dtype=dtype) for n_in, n_out in zip(widths[:-1], widths[1:])
        )

    @classmethod
    def ml3(cls, **options: Any) -> MLPLoss:
        """ML3-style preset (Bechtle et al., 2021): ReLU hidden layers, softplus output.

        ``options`` override any other keyword (``task``, ``hidden``, ``bias``).
        """
        return cls(**{"activation": "relu", "output": "softplus", **options})

    def _activations(self) -> list[Activation]:
        return [ACTIVATIONS[self.activation]] * (len(self.layers) - 1) + [ACTIVATIONS[self.output]]

    def _elementwise(self, y_pred: Tensor, y_true: Tensor) -> Tensor:
        x = torch.stack((y_pred, y_true), dim=-1)
        for layer, act in zip(self.layers, self._activations()):
            x = act.torch_fn(layer(x), self.beta, self.gamma)
        return x.squeeze(-1)

    def to_sympy(self) -> sympy.Expr:
        """The network written out, unexpanded, with float64 weights as 17-digit Floats."""
        values: list[sympy.Expr] = [Y_PRED, Y_TRUE]
        with distribute(False):  # Keep w·(a + b) as written; distributing multiplies the size.
            for layer, act in zip(self.layers, self._activations()):
                weight = layer.weight.detach().double().cpu().tolist()
                bias = layer.bias.detach().double().cpu().tolist() if layer.bias is not None else None
                new_values = []
                for k, row in enumerate(weight):
                    terms = [sympy_float(w) * v for w, v in zip(row, values)]
                    if bias is not None:
                        terms.append(sympy_float(bias[k]))
                    new_values.append(act.sympy_fn(sympy.Add(*terms), self.beta, self.gamma))
                values = new_values
        return values[0]

    def config(self) -> dict[str, Any]:
        return {"task": self.task, "hidden": list(self.hidden), "activation": self.activation,
                "output": self.output, "beta": self.beta, "gamma": self.gamma, "bias": self.bias,
                "reduction": self.reduction}
