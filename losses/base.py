"""The loss interface: per-element function, prediction transform, reduction.

A learned loss is a per-element function ``ℓ(y_pred, y)``; the loss of a batch is
its mean over batch and outputs (AdaLFL, arXiv 2301.13247, Section 3). For
classification ``y_pred`` is a probability (softmax of the logits, or sigmoid for
a single output) and ``y`` the matching one-hot entry; for regression both are
raw values. ``prediction_transform`` and ``encode_targets`` are the two pure
functions that take raw model outputs and labels into that space.
"""

from __future__ import annotations

import abc
import inspect
import itertools
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import sympy
import torch
from torch import Tensor, nn

from losses.printing import latex_string
from losses.python_source import python_source
from losses.sympy_to_torch import compile_expression

TASKS = ("classification", "regression")
Pullback = Callable[[Tensor], dict[str, Tensor]]
"""``pullback(u) -> {parameter name: ∂/∂param Σ u ⊙ m}`` for a loss gradient m
(see :func:`losses.derivatives.value_gradient_pullback`)."""
REDUCTIONS = ("mean", "sum", "none")


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    """Raise ValueError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def require_scalar(loss: nn.Module) -> None:
    """Raise ValueError if ``loss`` was built with ``reduction="none"`` (any module with that attribute).

    A base step and the meta-gradient differentiate the loss's own forward, so it must be a
    scalar: ``"mean"`` (the paper's) or ``"sum"`` (a step as many times the mean's as it has terms).
    """
    if getattr(loss, "reduction", "mean") == "none":
        raise ValueError(
            f"{type(loss).__name__}(reduction='none') returns per-element values, but training differentiates "
            "a scalar loss; construct it with reduction='mean' (the default) or 'sum'"
        )


def fill_missing_gradients(params: Mapping[str, Tensor], grads: Mapping[str, Tensor | None]) -> dict[str, Tensor]:
    """A gradient for every parameter: zeros where none reached it (unused, or not requiring grad)."""
    return {k: g if (g := grads.get(k)) is not None else torch.zeros_like(p) for k, p in params.items()}


def _check_outputs(outputs: object) -> Tensor:
    if not isinstance(outputs, Tensor):
        raise TypeError(f"outputs must be a torch.Tensor of shape (B, C); got {type(outputs).__name__}")
    if not outputs.is_floating_point():
        raise TypeError(
            f"outputs must be floating point (raw model outputs); got {outputs.dtype}. "
            "Pass the model's logits or predictions, e.g. outputs.float()"
        )
    if outputs.dim() != 2 or outputs.shape[1] < 1:
        raise ValueError(
            f"outputs must have shape (B, C) with C >= 1; got {tuple(outputs.shape)}. For a single output per "
            "sample pass (B,) or use outputs.unsqueeze(1); for (B, C, d1, ..., dK) use outputs.movedim(1, -1)"
            ".reshape(-1, C) and the targets flattened alike"
        )
    return outputs


def prediction_transform(outputs: Tensor, task: str) -> Tensor:
    """Map raw model outputs into the space the loss is defined on.

    Args:
        outputs: Raw model outputs, shape (B, C).
        task: ``"classification"``: softmax over C, or sigmoid when C == 1;
            ``"regression"``: identity.

    Returns:
        Predictions of shape (B, C): probabilities, or the outputs unchanged.
    """
    check_choice("task", task, TASKS)
    _check_outputs(outputs)
    if task == "regression":
        return outputs
    if outputs.shape[1] == 1:
        return torch.sigmoid(outputs)
    return torch.softmax(outputs, dim=1)


def check_label_range(targets: Tensor, num_classes: int, *, ignore_index: int | None = None) -> None:
    """Labels must lie in [0, num_classes) (num_classes is 2 for one sigmoid output), or equal ``ignore_index``."""
    hint = "0 or 1 for a single sigmoid output" if num_classes == 2 else f"0..{num_classes - 1}"
    if ignore_index is not None:
        hint += f" (or ignore_index={ignore_index})"
    message = f"class labels must be integers in {hint}"

    def out_of_range() -> Tensor:
        bad = (targets < 0) | (targets >= num_classes)
        return bad if ignore_index is None else bad & (targets != ignore_index)

    if targets.device.type == "cpu" and not torch.compiler.is_compiling():
        if targets.numel() == 0:
            return
        low, high = torch.aminmax(targets)  # one pass; a CPU check costs no device sync
        if (int(low) < 0 or int(high) >= num_classes) and bool(out_of_range().any()):
            value = int(targets[out_of_range()][0])
            raise ValueError(f"{message}; got label {value}. Check the number of model outputs")
    else:  # Asynchronous device-side assert: no host sync, and no graph break where torch.compile traces.
        torch._assert_async(~out_of_range().any(), message)


def _probability_targets(targets: Tensor, outputs: Tensor) -> Tensor:
    """Class probabilities (B, C) as they are (a single output: (B,) or (B, 1), P(class 1))."""
    batch, num_outputs = outputs.shape
    if num_outputs == 1 and targets.shape == (batch,):
        targets = targets.unsqueeze(1)
    if targets.shape == outputs.shape:
        return targets.to(outputs.dtype)
    if targets.shape == (batch,):
        raise TypeError(
            f"classification targets must be integer class labels (torch.long) of shape (B,), or class "
            f"probabilities of shape (B, C) = {tuple(outputs.shape)}; got {targets.dtype} of shape "
            f"{tuple(targets.shape)}. Use targets.long() for float labels"
        )
    raise ValueError(
        f"class-probability targets must have shape (B, C) = {tuple(outputs.shape)} like the outputs; "
        f"got {tuple(targets.shape)}. Pass one row of C probabilities per sample, or integer labels of shape (B,)"
    )


def encode_targets(targets: Tensor, outputs: Tensor, task: str) -> Tensor:
    """Encode targets into the loss's space, matching ``outputs`` in shape and dtype.

    Args:
        targets: Classification: integer labels of shape (B,), in [0, C) or, for a
            single output (C == 1), 0/1; or class probabilities, floating point of
            shape (B, C) (for C == 1 also (B,): the probability of class 1), as
            ``torch.nn.CrossEntropyLoss`` takes them. Probabilities are expected in
            [0, 1] with rows summing to 1 but, as in PyTorch, not checked (that would
            read device values). Regression: floats of shape (B,) (only when C == 1)
            or (B, C).
        outputs: Raw model outputs, shape (B, C); only their shape, dtype and
            device are used.
        task: ``"classification"`` (one-hot encoding of labels, probabilities as they
            are; for C == 1 the 0/1 label itself) or ``"regression"`` (values unchanged).

    Returns:
        Targets of shape (B, C) in ``outputs.dtype``.

    Raises:
        TypeError: Float labels of shape (B,) or boolean labels for classification,
            integer targets for regression.
        ValueError: Wrong shapes, labels out of range.
    """
    check_choice("task", task, TASKS)
    _check_outputs(outputs)
    if not isinstance(targets, Tensor):
        raise TypeError(f"targets must be a torch.Tensor; got {type(targets).__name__}")
    batch, num_outputs = outputs.shape
    if targets.device != outputs.device:
        raise ValueError(f"targets are on {targets.device} but outputs on {outputs.device}; move them together")
    if task == "classification":
        if targets.is_floating_point():
            return _probability_targets(targets, outputs)
        if targets.is_complex() or targets.dtype == torch.bool:
            raise TypeError(
                f"classification targets must be integer class labels (torch.long) or float class "
                f"probabilities; got {targets.dtype}. Use targets.long()"
            )
        if targets.shape != (batch,):
            raise ValueError(
                f"classification targets must have shape (B,) = ({batch},) to match outputs "
                f"{tuple(outputs.shape)}; got {tuple(targets.shape)}. Pass one-hot or probability "
                "rows as floats, or targets.argmax(dim=1)"
            )
        check_label_range(targets, max(num_outputs, 2))
        if num_outputs == 1:
            return targets.to(outputs.dtype).unsqueeze(1)
        classes = torch.arange(num_outputs, device=targets.device)
        return (targets.unsqueeze(1) == classes).to(outputs.dtype)
    if not targets.is_floating_point():
        raise TypeError(
            f"regression targets must be floating point; got {targets.dtype}. Use targets.to(outputs.dtype)"
        )
    if targets.shape == (batch,) and num_outputs == 1:
        targets = targets.unsqueeze(1)
    if targets.shape != outputs.shape:
        raise ValueError(
            f"regression targets must have shape (B, C) = {tuple(outputs.shape)} like the outputs, "
            f"or (B,) when C == 1; got {tuple(targets.shape)}"
        )
    return targets.to(outputs.dtype)


MEAN_OVER = ("elements", "batch")


def reduce_loss(per_element: Tensor, reduction: str, *, mean_over: str = "elements") -> Tensor:
    """Reduce a (B, C) per-element loss: ``"mean"``, ``"sum"``, or ``"none"``.

    ``mean_over="elements"`` (a learned loss, as in the paper): ``"mean"`` averages over
    batch and outputs, ``"none"`` returns the (B, C) values. ``mean_over="batch"``
    (``torch.nn.CrossEntropyLoss``'s convention): the loss of a sample is the sum over its
    outputs; ``"mean"`` averages those over the batch, ``"none"`` returns them, shape (B,).
    ``"sum"`` is the sum of all elements either way.
    """
    check_choice("reduction", reduction, REDUCTIONS)
    check_choice("mean_over", mean_over, MEAN_OVER)
    if reduction == "mean":
        if mean_over == "batch":
            return per_element.sum() / per_element.shape[0]
        return per_element.mean()
    if reduction == "sum":
        return per_element.sum()
    return per_element.sum(dim=1) if mean_over == "batch" else per_element


LOSS_CLASSES: dict[str, type] = {}
"""Every LearnedLoss subclass by its ``kind`` (the name saved files record), filled as subclasses are defined."""


class LearnedLoss(nn.Module, abc.ABC):
    """Base class: a per-element loss ``ℓ(y_pred, y)`` with an exact SymPy form.

    Subclasses implement ``_elementwise``, ``to_sympy`` and ``config``; the base
    class supplies input checks, ``forward`` (transform, encode, evaluate, reduce),
    ``to_latex``, ``to_python`` and ``from_config``. Nothing in ``forward`` or
    ``elementwise`` syncs with the device, works in place, or branches on tensor
    values (only the CPU label-range check reads values), so both are safe for
    ``torch.autograd.grad(create_graph=True)`` and ``torch.func.functional_call``.

    ``reduction`` is set once, in the constructor, as in ``torch.nn``'s criteria:
    ``"mean"`` (default) averages the per-element loss over batch and outputs (the
    paper's M_φ), ``"sum"`` adds them up, ``"none"`` returns the (B, C) per-element values.
    The cross-entropy overrides this with PyTorch's convention (``mean_over``). Training
    (:mod:`toolkit.lookahead`) differentiates the loss's own forward, so a ``"sum"`` loss
    trains exactly, with a base step as many times its mean's as the mean averages terms
    (B·C; B for the cross-entropy), which is what a sum criterion means; ``"none"`` is not
    a scalar and is refused there (:func:`require_scalar`).

    Attributes:
        kind: Name of the class in saved files (``losses.io``).
        task: ``"classification"`` or ``"regression"``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``; what ``forward`` returns.
    """

    kind: ClassVar[str]
    mean_over: ClassVar[str] = "elements"
    """What ``reduction`` reduces over: ``"elements"`` (batch and outputs: learned losses, the
    paper's convention) or ``"batch"`` (the loss of a sample sums its outputs; ``"mean"`` averages
    samples and ``"none"`` gives one value per sample: PyTorch's cross-entropy)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("kind")
        if isinstance(kind, str):
            LOSS_CLASSES[kind] = cls

    def __init__(self, *, task: str, reduction: str = "mean") -> None:
        super().__init__()
        check_choice("task", task, TASKS)
        check_choice("reduction", reduction, REDUCTIONS)
        self.task = task
        self.reduction = reduction

    def elementwise(self, y_pred: Tensor, y_true: Tensor) -> Tensor:
        """Per-element loss of values already in the loss's space.

        Args:
            y_pred: Predictions (probabilities for classification), any shape.
            y_true: Targets (one-hot entries for classification), same shape and dtype.

        Returns:
            The per-element loss, same shape as the inputs.
        """
        for name, value in (("y_pred", y_pred), ("y_true", y_true)):
            if not isinstance(value, Tensor) or not value.is_floating_point():
                got = value.dtype if isinstance(value, Tensor) else type(value).__name__
                raise TypeError(f"{name} must be a floating-point torch.Tensor; got {got}")
        if y_pred.shape != y_true.shape:
            raise ValueError(
                f"y_pred and y_true must have the same shape; got {tuple(y_pred.shape)} and {tuple(y_true.shape)}. "
                "Use forward() for raw outputs and labels"
            )
        if y_pred.dtype != y_true.dtype:
            raise TypeError(f"y_pred and y_true must have the same dtype; got {y_pred.dtype} and {y_true.dtype}")
        self._check_dtype(y_pred.dtype)
        return self._elementwise(y_pred, y_true)

    def _check_dtype(self, dtype: torch.dtype) -> None:
        """Inputs must match the loss's own floating tensors (parameters, buffers) in dtype."""
        for tensor in itertools.chain(self.parameters(), self.buffers()):
            if tensor.is_floating_point() and tensor.numel() > 0:
                if tensor.dtype != dtype:
                    raise TypeError(
                        f"{type(self).__name__} parameters are {tensor.dtype} but the inputs are {dtype}; "
                        f"call loss.to({dtype}) or cast the inputs"
                    )
                return

    @abc.abstractmethod
    def _elementwise(self, y_pred: Tensor, y_true: Tensor) -> Tensor:
        """``elementwise`` without the input checks."""

    def _elementwise_from_outputs(self, outputs: Tensor, y_true: Tensor) -> Tensor:
        """Per-element loss (B, C) from raw outputs and encoded targets.

        Subclasses may override it for stability, or to transform the targets first
        (``CrossEntropyLoss``'s label smoothing).
        """
        return self._elementwise(prediction_transform(outputs, self.task), y_true)

    def mean_and_output_gradient(self, outputs: Tensor, y_true: Tensor) -> tuple[Tensor, Tensor]:
        """``(ℓ̄, ∂ℓ̄/∂outputs)`` of the mean loss (whatever ``reduction``), ``outputs`` taken as constants.

        Derived with ``torch.func.grad`` from the forward (no derivative is written out), so
        both stay differentiable with respect to the parameters under autograd and under
        outer ``torch.func`` transforms alike.

        Args:
            outputs: raw outputs (B, C); y_true: encoded targets (B, C), same dtype.
        """
        def mean(f: Tensor) -> Tensor:
            return reduce_loss(self._elementwise_from_outputs(f, y_true), "mean", mean_over=self.mean_over)

        gradient, value = torch.func.grad_and_value(mean)(outputs.detach())
        return value, gradient

    def value_and_output_gradient(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """``(M, ∂M/∂outputs)`` of ``forward(outputs, targets)``, outputs taken as constants.

        ``torch.func.grad_and_value`` of the forward, with the loss's own (scalar) reduction;
        differentiable in the parameters (what the meta-gradient differentiates again,
        :func:`losses.derivatives.value_gradient_pullback`). A subclass may override it only to
        share work between the value and the gradient, never with a derivative written out by hand.

        Raises:
            ValueError: ``reduction="none"`` (see :func:`require_scalar`).
        """
        require_scalar(self)
        gradient, value = torch.func.grad_and_value(lambda f: self(f, targets))(outputs.detach())
        return value, gradient

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Loss of raw model outputs against labels or regression targets, reduced by ``self.reduction``.

        Args:
            outputs: Raw model outputs, shape (B, C); or (B,) for a single output per sample
                (one sigmoid logit, or one regression value), taken as (B, 1).
            targets: Integer labels (B,) or class probabilities (B, C) for classification;
                floats (B,) or (B, C) for regression (see :func:`encode_targets`). With (B,)
                outputs, targets of shape (B,).

        Returns:
            A scalar for ``"mean"`` and ``"sum"``; for ``"none"`` the (B, C) per-element loss
            (one value per sample, (B,), where ``mean_over == "batch"``, and (B,) for (B,) outputs).
        """
        single = isinstance(outputs, Tensor) and outputs.dim() == 1
        if single:
            if isinstance(targets, Tensor) and targets.shape != outputs.shape:
                raise ValueError(f"with one output per sample, outputs {tuple(outputs.shape)}, the targets must have "
                                 f"shape (B,) = {tuple(outputs.shape)}; got {tuple(targets.shape)}. "
                                 "Use targets.reshape(-1)")
            outputs = outputs.unsqueeze(1)
        y_true = encode_targets(targets, outputs, self.task)
        self._check_dtype(outputs.dtype)
        loss = reduce_loss(self._elementwise_from_outputs(outputs, y_true), self.reduction, mean_over=self.mean_over)
        return loss.squeeze(1) if single and loss.dim() == 2 else loss

    @abc.abstractmethod
    def to_sympy(self) -> sympy.Expr:
        """The exact per-element loss in ``Y_PRED`` and ``Y_TRUE`` with the current parameters."""

    def to_latex(self) -> str:
        """LaTeX of ``to_sympy()`` (same text as ``sympy.latex``)."""
        return latex_string(self.to_sympy())

    def to_python(self) -> str:
        """Source of ``def loss(y_pred, y):`` computing the per-element loss with torch.

        ``exec`` the text and call ``loss``; it agrees with ``elementwise``.
        """
        return python_source(compile_expression(self.to_sympy()))

    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-serialisable keyword arguments that rebuild this loss (without its learned values)."""

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LearnedLoss:
        """Build a loss from ``config()`` output; parameters are freshly initialised."""
        if not isinstance(config, Mapping):
            raise TypeError(f"config must be a mapping; got {type(config).__name__}")
        accepted = [
            name for name, p in inspect.signature(cls.__init__).parameters.items()
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and name != "self"
        ]
        unknown = sorted(set(config) - set(accepted))
        if unknown:
            raise ValueError(f"unknown {cls.__name__} config keys {unknown}; accepted: {accepted}")
        return cls(**config)

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value!r}" for key, value in self.config().items())
