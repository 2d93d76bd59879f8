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

from losses.base import LearnedLoss, check_choice, fill_missing_gradients
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
    """One activation in four forms: ``torch_fn(x, beta, gamma)``, ``sympy_fn(z, beta, gamma)``, its
    derivative ``torch_derivative(x, y, beta, gamma) -> (slope, aux)`` at x, given y = ``torch_fn(x)``
    too (``aux`` is an intermediate the second derivative reuses, or None), and its second derivative
    as ``torch_second(x, y, slope, aux, beta, gamma) -> (t, c)`` meaning c·t (the constant folds into a
    later fused multiply-add); None where the second derivative is zero (piecewise-linear activations)."""

    torch_fn: Callable[[Tensor, float, float], Tensor]
    sympy_fn: Callable[[sympy.Expr, float, float], sympy.Expr]
    torch_derivative: Callable[[Tensor, Tensor, float, float], tuple[Tensor, Tensor | None]]
    torch_second: Callable[[Tensor, Tensor, Tensor, Tensor | None, float, float], tuple[Tensor, float] | None]


def _softplus_derivative(x: Tensor, beta: float) -> Tensor:
    # σ(βx); past the threshold softplus is x itself, and σ(βx) there (βx > 40) is 1 to the last
    # bit in float32 and float64, so this equals autograd's softplus backward on both branches.
    return torch.mul(x, beta).sigmoid_() if beta != 1 else torch.sigmoid(x)


def _slope_and_sigmoid(sig: Tensor, gamma: float) -> tuple[Tensor, Tensor]:
    """(γ + (1−γ)σ, σ): the smooth leaky ReLU's slope, and σ for its second derivative."""
    return sig.mul(1 - gamma).add_(gamma), sig


def _sigmoid_slope(sig: Tensor) -> Tensor:
    """σ(1 − σ) as σ − σ·σ in one fused op (what autograd's sigmoid backward computes, to rounding)."""
    return torch.addcmul(sig, sig, sig, value=-1)


ACTIVATIONS: dict[str, Activation] = {
    # φ(x) = γx + (1−γ)·softplus_β(x), softplus_β(x) = log(1 + exp(βx))/β; φ'(x) = γ + (1−γ)·σ(βx);
    # φ''(x) = (1−γ)β·σ(βx)(1 − σ(βx)). The value is one lerp: x + (1−γ)(softplus − x). The derivative
    # keeps σ(βx) as its aux, so the second derivative costs one fused op.
    "smooth_leaky_relu": Activation(
        lambda x, b, g: torch.lerp(x, _softplus_torch(x, b), 1 - g),
        lambda z, b, g: sympy_float(g) * z + sympy_float(1 - g) * _softplus_sympy(z, b),
        lambda x, y, b, g: _slope_and_sigmoid(_softplus_derivative(x, b), g),
        lambda x, y, s, sig, b, g: (_sigmoid_slope(sig), (1 - g) * b),
    ),
    "relu": Activation(lambda x, b, g: torch.relu(x), lambda z, b, g: sympy.Max(z, 0, evaluate=False),
                       lambda x, y, b, g: ((x > 0).to(x.dtype), None),  # 0 at x = 0, as autograd
                       lambda x, y, s, aux, b, g: None),
    "softplus": Activation(lambda x, b, g: _softplus_torch(x, 1.0), lambda z, b, g: _softplus_sympy(z, 1),
                           lambda x, y, b, g: (_softplus_derivative(x, 1.0), None),
                           lambda x, y, s, aux, b, g: (_sigmoid_slope(s), 1.0)),  # the slope is σ(x) itself
    "tanh": Activation(lambda x, b, g: torch.tanh(x), lambda z, b, g: sympy.tanh(z, evaluate=False),
                       lambda x, y, b, g: (1 - y * y, None),
                       lambda x, y, s, aux, b, g: (y * s, -2.0)),  # −2y(1 − y²)
    "identity": Activation(lambda x, b, g: x, lambda z, b, g: z, lambda x, y, b, g: (torch.ones_like(x), None),
                           lambda x, y, s, aux, b, g: None),
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
    hidden unit, softplus as ``log(1 + exp(βz))/β``. Benchmark (2-core CI
    machine): the default 40×40 network exports in about 0.5 s, within the 2 s
    budget. The formula is compact in memory but long as text (≈0.5 MB):
    ``str``/``sympy.latex`` via ``losses.printing`` take 3–4 s and
    ``sympy.lambdify`` 7–10 s; NumPy's ``exp`` overflows for pre-activations
    ``β·z > 709``. ``to_python()`` (0.5 s) and ``SymbolicLoss`` evaluate the same
    formula stably (softplus recognised).

    Args:
        task: ``"classification"`` (default) or ``"regression"``.
        hidden: Widths of the hidden layers, any depth (``()`` is linear).
        activation: Hidden activation, one of ``HIDDEN_ACTIVATIONS``.
        output: Output activation, one of ``OUTPUT_ACTIVATIONS``.
        beta: Softplus sharpness β > 0 of the smooth leaky ReLU.
        gamma: Leak γ in [0, 1] of the smooth leaky ReLU.
        bias: Give the linear layers biases (AdaLFL has none).
        dtype: dtype of the parameters (default: torch's default dtype).
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
    ) -> None:
        super().__init__(task=task)
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

    def _forward_backward(self, y_pred: Tensor, y_true: Tensor) -> tuple[Tensor, Tensor, dict[str, list]]:
        """ℓ, ∂ℓ/∂y_pred, and the intermediate values the pullback reads.

        The same forward as :meth:`_elementwise`, then a hand-written backward through the layers:
        δ_L = φ_L'(z_L), δ_l = e_l ⊙ φ_l'(z_l) with e_l = δ_{l+1} W_{l+1}, and ∂ℓ/∂y_pred = δ_1 · W_1[:, 0]
        (y_pred is the first input).
        """
        shape = y_pred.shape
        x = torch.stack((y_pred.reshape(-1), y_true.reshape(-1)), dim=1)  # one row per element
        inputs, pre, post, slopes, auxes = [], [], [], [], []
        for layer, act in zip(self.layers, self._activations()):
            inputs.append(x)
            z = layer(x)
            x = act.torch_fn(z, self.beta, self.gamma)
            pre.append(z)
            post.append(x)
            slope, aux = act.torch_derivative(z, x, self.beta, self.gamma)
            slopes.append(slope)
            auxes.append(aux)
        deltas, backs = [slopes[-1]], []  # δ_L (N, 1); then δ_{L-1}, …, δ_1
        for i in range(len(self.layers) - 1, 0, -1):
            back = deltas[-1] @ self.layers[i].weight
            backs.append(back)
            deltas.append(back * slopes[i - 1])
        deltas.reverse()
        backs.reverse()  # backs[l] = e_l, the input to δ_l = e_l ⊙ φ_l'(z_l), for l < L
        record = {"inputs": inputs, "pre": pre, "post": post, "slopes": slopes, "aux": auxes, "deltas": deltas,
                  "backs": backs}
        return x.reshape(shape), (deltas[0] @ self.layers[0].weight[:, 0]).reshape(shape), record

    def _elementwise_and_gradient(self, y_pred: Tensor, y_true: Tensor) -> tuple[Tensor, Tensor]:
        """ℓ and ∂ℓ/∂y_pred by one forward and a hand-written backward through the layers.

        The backward is a first-order graph in the weights, about 1.7× cheaper to differentiate
        again than autograd's double backward.
        """
        value, gradient, _ = self._forward_backward(y_pred, y_true)
        return value, gradient

    def _elementwise_gradient_pullback(self, y_pred: Tensor, y_true: Tensor):
        """ℓ, g = ∂ℓ/∂y_pred and ``pullback(c) = {name: ∂/∂W Σ c ⊙ g}``, all written out by hand
        (zeros for parameters that do not require grad, as autograd would treat them).

        The pullback runs the reverse of the forward-and-backward above (forward-over-reverse by
        hand): it needs the activations' second derivatives and no autograd graph at all, which
        on CPU makes the meta-gradient's loss-network part about three times cheaper than autograd's
        double backward. Tests compare it with autograd for every activation and depth.
        """
        with torch.no_grad():
            value, gradient, record = self._forward_backward(y_pred, y_true)
        # The weights as they are now (under torch.func.functional_call, the substituted ones).
        weights = [layer.weight for layer in self.layers]
        has_bias = [layer.bias is not None for layer in self.layers]
        activations = self._activations()
        params = dict(self.named_parameters())

        def pullback(cotangent: Tensor) -> dict[str, Tensor]:
            with torch.no_grad():
                c = cotangent.reshape(-1, 1)
                inputs, slopes, deltas, backs = (record[k] for k in ("inputs", "slopes", "deltas", "backs"))
                grads, weight_bar = {}, [None] * len(weights)
                # Reverse of the backward pass: g = δ_1 W_1[:, 0], δ_l = e_l ⊙ s_l, e_l = δ_{l+1} W_{l+1}.
                first_column = deltas[0].T @ c
                delta_bar = c * weights[0][:, 0]
                slope_bar = []
                for i in range(len(weights) - 1):
                    back_bar = delta_bar * slopes[i]
                    slope_bar.append(delta_bar.mul_(backs[i]))  # delta_bar is this call's own temporary
                    weight_bar[i + 1] = deltas[i + 1].T @ back_bar
                    delta_bar = back_bar @ weights[i + 1].T
                slope_bar.append(delta_bar)  # δ_L = s_L
                # Reverse of the forward pass: s_l = φ'(z_l), a_l = φ(z_l), z_l = a_{l-1} W_lᵀ (+ b_l).
                post_bar = None
                for i in range(len(weights) - 1, -1, -1):
                    second = activations[i].torch_second(record["pre"][i], record["post"][i], slopes[i],
                                                         record["aux"][i], self.beta, self.gamma)
                    if post_bar is None:
                        pre_bar = torch.zeros_like(slopes[i]) if second is None else slope_bar[i] * second[0]
                        if second is not None and second[1] != 1:
                            pre_bar = pre_bar * second[1]
                    else:
                        pre_bar = post_bar.mul_(slopes[i])  # post_bar is this call's own temporary
                        if second is not None:
                            pre_bar.addcmul_(slope_bar[i], second[0], value=second[1])
                    weight_bar[i] = (pre_bar.T @ inputs[i] if weight_bar[i] is None
                                     else torch.addmm(weight_bar[i], pre_bar.T, inputs[i]))
                    if has_bias[i]:
                        grads[f"layers.{i}.bias"] = pre_bar.sum(0)
                    post_bar = pre_bar @ weights[i] if i > 0 else None
                weight_bar[0][:, 0] += first_column[:, 0]
                for i, w in enumerate(weight_bar):
                    grads[f"layers.{i}.weight"] = w
                return fill_missing_gradients(params, {k: g for k, g in grads.items() if params[k].requires_grad})

        return value, gradient, pullback

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
                "output": self.output, "beta": self.beta, "gamma": self.gamma, "bias": self.bias}
