"""Jacobian-vector products that reuse the training forward's activations.

The fast meta-gradient needs u = J_f v, the directional derivative of the base
model's outputs on the training batch along the validation gradient v. Forward-mode
AD (``torch.autograd.forward_ad``) computes it for any model but recomputes the
primal forward alongside the tangent: on CPU that is about 0.4 of a training step.
When the model's forward is a *chain* of leaf modules whose tangent rules are known
(convolutions, linear layers, pointwise activations, average pooling, flatten), the
primal values the training forward already computed are enough:

    t_0 = 0 (the input has no tangent),   t_i = ∂layer_i/∂x · t_{i-1} + ∂layer_i/∂θ_i · v_i.

:func:`record_chain` watches the training forward with forward hooks and returns the
chain only when it is verifiably one: every hooked call consumes exactly the tensor
the previous one produced, the last produces the model's output, and every trainable
parameter belongs to a hooked module. Anything else (BatchNorm, max pooling,
dropout in training mode, functional ops between layers, in-place activations, layers
with hooks of their own, which may change what they compute) returns None, and the
caller falls back to forward-mode AD. Tests check both routes agree in float64.
:mod:`toolkit.chain_passes` uses the same recording for the base gradients.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class Link:
    """One hooked call: the module, its parameter-name prefix, the activations its rules read
    (:data:`KEEPS`): its input, its output, or neither (None), and the shape of its input."""

    module: nn.Module
    prefix: str
    inputs: Tensor | None
    output: Tensor | None
    shape: torch.Size | None = None

    @classmethod
    def keeping(cls, module: nn.Module, prefix: str, inputs: Tensor | None, output: Tensor | None) -> "Link":
        """A link that keeps, of ``inputs`` and ``output``, only what the module's rules read."""
        keeps = KEEPS.get(type(module), frozenset())
        return cls(module, prefix, inputs if "input" in keeps else None, output if "output" in keeps else None,
                   None if inputs is None else inputs.shape)

    @property
    def key(self) -> str:
        """The prefix of the module's parameter names ("" for the model itself)."""
        return (self.prefix + ".") if self.prefix else ""


def affine_parameters(link: Link, params: Mapping[str, Tensor]) -> tuple[Tensor, Tensor | None]:
    """(weight, bias) of a convolution or linear link: from ``params`` where given, else the module's
    own (a parameter missing from θ is frozen)."""
    return params.get(link.key + "weight", link.module.weight), params.get(link.key + "bias", link.module.bias)


def convolution(module: nn.Conv1d | nn.Conv2d) -> Callable[[Tensor, Tensor, Tensor | None], Tensor]:
    """``(x, w, b) ↦`` the module's convolution of x with weight w and bias b (its stride, padding, …)."""
    conv = F.conv2d if isinstance(module, nn.Conv2d) else F.conv1d
    return lambda x, w, b: conv(x, w, b, module.stride, module.padding, module.dilation, module.groups)


def _affine_tangent(op, stack_dim: int, t_in, x, w, tw, tb, stackable: bool) -> Tensor | None:
    """Tangent of y = op(x, w) + b: op(x, v_w) + op(t, w) + v_b, any term absent when its tangent is
    (a frozen weight or bias is a constant: it is not in θ and has no tangent)."""
    if t_in is not None and tw is not None and stackable:
        # op(x, v_w) + op(t, w) as one op over stacked channels/features: one pass over the output
        # instead of two and an addition (about 1.3x faster on CPU for LeNet's second convolution).
        return op(torch.cat((x, t_in), dim=stack_dim), torch.cat((tw, w), dim=1), tb)
    out = op(x, tw, tb) if tw is not None else None
    if t_in is not None:
        through = op(t_in, w, None if out is not None else tb)
        out = through if out is None else out.add_(through)
    return out


def _conv_tangent(module: nn.Conv2d | nn.Conv1d, t_in, x, y, w, b, tw, tb) -> Tensor | None:
    conv = convolution(module)
    if t_in is None and tw is None:
        return None if tb is None else conv(torch.zeros_like(x), torch.zeros_like(w), tb)
    return _affine_tangent(conv, 1, t_in, x, w, tw, tb, module.groups == 1)


def _linear_tangent(module: nn.Linear, t_in, x, y, w, b, tw, tb) -> Tensor | None:
    if t_in is None and tw is None:
        return None if tb is None else tb.expand(*x.shape[:-1], tb.shape[0]).clone()
    if t_in is not None and tw is not None and x.dim() == 2:
        # x v_wᵀ + v_b, then + t wᵀ into the same buffer: two fused multiply-adds and no copies, about
        # 1.5x faster on CPU than one product over stacked features for LeNet's linear layers.
        out = x @ tw.T if tb is None else torch.addmm(tb, x, tw.T)
        return out.addmm_(t_in, w.T)
    return _affine_tangent(F.linear, -1, t_in, x, w, tw, tb, True)


def _linear_map(module: nn.Module, t_in, *_):
    """Parameter-free linear modules: the tangent goes through the module itself."""
    return None if t_in is None else module(t_in)


def pool_window(module: nn.AvgPool2d, shape) -> int | None:
    """k when ``module`` pools non-overlapping k×k windows of a 4-D input of this shape without
    padding (the case :func:`avg_pool2d` computes by slices), else None."""
    k, stride = module.kernel_size, module.stride
    k = k if isinstance(k, int) else (k[0] if k[0] == k[1] else None)
    stride = stride if isinstance(stride, int) else (stride[0] if stride[0] == stride[1] else None)
    if (k is None or stride != k or module.padding not in (0, (0, 0)) or module.divisor_override is not None
            or len(shape) != 4 or (module.ceil_mode and (shape[2] % k or shape[3] % k))):
        return None
    return k


def _avg_pool2d_tangent(module: nn.AvgPool2d, t_in, *_):
    return None if t_in is None else avg_pool2d(module, t_in)


def avg_pool2d(module: nn.AvgPool2d, t_in: Tensor) -> Tensor:
    """``module(t_in)``. Non-overlapping k×k windows without padding are summed as k row slices, then
    k column slices (about 5× faster than ``avg_pool2d`` on CPU); other settings use the module."""
    k = pool_window(module, t_in.shape)
    if k is None:
        return module.forward(t_in)
    batch, channels, height, width = t_in.shape
    rows, cols = (height // k) * k, (width // k) * k
    grid = t_in[:, :, :rows, :cols].reshape(batch, channels, rows // k, k, cols)
    summed = grid[:, :, :, 0]
    for i in range(1, k):
        summed = summed + grid[:, :, :, i]
    grid = summed.reshape(batch, channels, rows // k, cols // k, k)
    summed = torch.add(grid[..., 0], grid[..., 1]) if k > 1 else grid[..., 0].clone()
    for j in range(2, k):
        summed += grid[..., j]
    return summed.mul_(1.0 / (k * k))


TangentRule = Callable[..., Tensor | None]
RULES: dict[type, TangentRule] = {
    nn.Conv1d: _conv_tangent,
    nn.Conv2d: _conv_tangent,
    nn.Linear: _linear_tangent,
    # The derivative times the tangent is what the activation's backward kernel computes, in one pass.
    # The tangent t is always a temporary of chain_jvp's own, so these write over it (one buffer less).
    nn.Tanh: lambda m, t, x, y, *_: None if t is None else torch.ops.aten.tanh_backward.grad_input(t, y, grad_input=t),
    nn.Sigmoid: lambda m, t, x, y, *_: None if t is None else torch.ops.aten.sigmoid_backward.grad_input(
        t, y, grad_input=t),
    nn.ReLU: lambda m, t, x, y, *_: None if t is None else torch.ops.aten.threshold_backward.grad_input(
        t, y, 0, grad_input=t),
    nn.LeakyReLU: lambda m, t, x, y, *_: None if t is None else torch.where(x > 0, t, t * m.negative_slope),
    nn.AvgPool1d: _linear_map,
    nn.AvgPool2d: _avg_pool2d_tangent,
    nn.AdaptiveAvgPool2d: _linear_map,
    nn.Flatten: _linear_map,
    nn.Identity: _linear_map,
    nn.Dropout: _linear_map,  # only in eval mode or with p = 0 (see as_chain)
}
"""Tangent rule of each supported leaf module type (exact types: subclasses may change forward)."""

_INPUT, _OUTPUT = frozenset({"input"}), frozenset({"output"})
KEEPS: dict[type, frozenset[str]] = {
    nn.Conv1d: _INPUT, nn.Conv2d: _INPUT, nn.Linear: _INPUT, nn.LeakyReLU: _INPUT,
    nn.Tanh: _OUTPUT, nn.Sigmoid: _OUTPUT, nn.ReLU: _OUTPUT,
}
"""Which activations each rule reads (none for the parameter-free linear maps). The recording keeps
only these, so it holds nothing the training backward does not already hold: keeping, say, every
convolution's output alive as well costs about 0.15 of a LeNet-5 training step on CPU in
allocations alone."""


def _has_hooks(module: nn.Module) -> bool:
    """Hooks can change what a module computes (weight norm's pre-hook, a hook rescaling outputs), so
    a hooked module's rule would not be its computation."""
    return bool(module._forward_hooks or module._forward_pre_hooks)


def _global_hooks() -> bool:
    from torch.nn.modules import module as module_globals
    return bool(module_globals._global_forward_hooks or module_globals._global_forward_pre_hooks)


_AFFINE = (nn.Linear, nn.Conv1d, nn.Conv2d)
"""The supported module types with parameters (``weight`` and an optional ``bias``)."""


def _supported(module: nn.Module) -> bool:
    if type(module) not in RULES:
        return False
    if isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.padding_mode != "zeros":
        return False
    if isinstance(module, (nn.ReLU, nn.LeakyReLU)) and module.inplace:
        return False  # it overwrites the previous layer's output, which that layer's rule may read
    return True


class Recording:
    """The leaf-module calls of one forward, checked as they happen.

    Attributes:
        links: the calls in order, each keeping only what its tangent rule reads.
        last: the output of the latest call (the model's output, if the forward is a chain).
        chained: whether every call so far consumed exactly the tensor the previous one produced
            (its single positional argument) and returned one tensor.
        first_input: the tensor the first call consumed (the model's input, unless its forward
            transforms the input before the first layer).
    """

    def __init__(self) -> None:
        self.links: list[Link] = []
        self.last: Tensor | None = None
        self.chained = True
        self.first_input: Tensor | None = None

    def __len__(self) -> int:
        return len(self.links)

    def _hook(self, module: nn.Module, args: tuple, output, name: str) -> None:
        inputs = args[0] if len(args) == 1 and isinstance(args[0], Tensor) else None
        if inputs is None or not isinstance(output, Tensor) or (self.links and inputs is not self.last):
            self.chained = False
        if not self.links:
            self.first_input = inputs
        self.links.append(Link.keeping(module, name, inputs, output if isinstance(output, Tensor) else None))
        # The identity check needs only the latest output: holding earlier ones would keep
        # activations alive that the forward itself frees.
        self.last = output if isinstance(output, Tensor) else None


@contextlib.contextmanager
def record_chain(model: nn.Module) -> Iterator[Recording]:
    """Record the leaf-module calls of one forward of ``model`` (used as ``with record_chain(m) as rec``).

    Every leaf module is hooked; after the block, the :class:`Recording` holds the calls in order.
    Use :func:`as_chain` to check they form a chain. A model with a leaf module of a type that
    has no tangent rule (BatchNorm, max pooling, …) cannot be a chain: nothing is hooked
    and the recording stays empty, so models on the forward-mode fallback pay no hook cost.
    """
    recording = Recording()
    handles = []
    leaves = [(name, module) for name, module in model.named_modules() if next(module.children(), None) is None]
    if not all(_supported(module) and not _has_hooks(module) for _, module in leaves) or _global_hooks():
        leaves = []
    try:
        for name, module in leaves:
            handles.append(module.register_forward_hook(
                lambda mod, args, output, name=name: recording._hook(mod, args, output, name)))
        yield recording
    finally:
        for handle in handles:
            handle.remove()


def as_chain(recording: Recording | None, outputs: Tensor, param_names: set[str]) -> list[Link] | None:
    """The recorded links if they verifiably compose to ``outputs`` with supported rules, else None."""
    if not recording or not recording.chained or recording.last is not outputs:
        return None
    covered: set[str] = set()
    for link in recording.links:
        module = link.module
        if not _supported(module):
            return None
        if isinstance(module, nn.Dropout) and module.training and module.p > 0:
            return None
        if isinstance(module, _AFFINE):  # the only supported types with parameters
            covered.add(link.key + "weight")
            if module.bias is not None:
                covered.add(link.key + "bias")
    if not param_names or not param_names <= covered:
        return None
    return recording.links


def chain_jvp(chain: list[Link], params: Mapping[str, Tensor], tangents: Mapping[str, Tensor]) -> Tensor:
    """u = J_f v along a verified chain, from its recorded activations (no primal recomputation).

    Args:
        chain: from :func:`as_chain`; params: θ by name; tangents: v by name (same keys).
    """
    t: Tensor | None = None
    # Under no_grad the recorded activations are read as they are: no graph is built on them.
    with torch.no_grad():
        for link in chain:
            module = link.module
            rule = RULES[type(module)]
            if isinstance(module, _AFFINE):
                # A parameter missing from θ is frozen: its module value is used, with no tangent.
                w, b = affine_parameters(link, params)
                tw, tb = tangents.get(link.key + "weight"), tangents.get(link.key + "bias")
                t = rule(module, t, link.inputs, link.output, w, b, tw, tb)
            else:
                t = rule(module, t, link.inputs, link.output)
    if t is None:  # no trainable parameter anywhere on the path
        raise ValueError("the chain has no trainable parameters: there is no tangent to take")
    return t


__all__ = ["Link", "KEEPS", "RULES", "Recording", "record_chain", "as_chain", "chain_jvp"]
