"""How far the finite-difference tangent (``meta_gradient="fd"``) is from the exact meta-gradient.

One lookahead per setting, from the same θ, φ, batches and dropout masks: the exact default
route (:func:`toolkit.meta.lookahead.meta_gradient`, forward-mode JVP) in float64 is the
reference, and the finite-difference route runs in float32 or float64 over a sweep of relative
steps ε (:func:`toolkit.meta.tangents.finite_difference_tangent`). The error is the relative
L2 distance of the whole meta-gradient (every loss parameter, concatenated). The exact route in
float32 is measured too: the rounding floor a float32 run has anyway.
"""
from __future__ import annotations

import copy

import torch

import losses

from toolkit.meta.lookahead import meta_gradient_with_tangent
from toolkit.meta.rules import SGDRule
from toolkit.models.zoo import build_model

EPSILONS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8)
"""The relative steps swept (h = ε·max(‖θ‖, 1)/‖w‖)."""

FD_MODELS: dict[str, tuple[tuple[int, ...], int, dict]] = {
    "mlp": ((1, 28, 28), 64, {}),
    "lenet5": ((1, 28, 28), 64, {}),
    "preresnet": ((3, 32, 32), 16, {"depth": 8}),
}
"""Models of the error table: input shape, batch and model options (a pre-activation ResNet with
BatchNorm and residual blocks as the third)."""


def _flat(grads: dict) -> torch.Tensor:
    return torch.cat([g.detach().double().flatten() for g in grads.values()])


def _meta_grads(model, loss, train, valid, dtype: torch.dtype, **route) -> torch.Tensor:
    model, loss = copy.deepcopy(model).to(dtype), copy.deepcopy(loss).to(dtype)
    cast = lambda batch: (batch[0].to(dtype), batch[1])  # noqa: E731
    torch.manual_seed(1234)  # the same dropout masks on every route
    result = meta_gradient_with_tangent(model, dict(model.named_parameters()), dict(model.named_buffers()), loss,
                           dict(loss.named_parameters()), cast(train), cast(valid), SGDRule(lr=0.01, momentum=0.9),
                           update_buffers=False, **route)
    return _flat(result.meta_grads)


def fd_error_table(*, models: tuple[str, ...] = tuple(FD_MODELS), epsilons=EPSILONS, seeds=(0,),
                   num_outputs: int = 10) -> list[dict]:
    """Relative error of the fd meta-gradient against the exact float64 one, per model, seed, dtype and ε.

    Returns rows ``{"model", "seed", "dtype", "epsilon", "error"}``; ``epsilon`` None is the exact
    route in that dtype (its rounding error). Each seed draws the model, the loss and the batches.
    The loss is the one ``lfl train`` learns by default (an :class:`losses.MLPLoss` under
    :class:`losses.GradientScaledLoss`).
    """
    return [row for seed in seeds for name in models for row in _one_model(name, epsilons, seed, num_outputs)]


def _one_model(name: str, epsilons, seed: int, num_outputs: int) -> list[dict]:
    rows = []
    shape, batch_size, options = FD_MODELS[name]
    torch.manual_seed(seed)
    model = build_model(name, input_shape=shape, num_outputs=num_outputs, **options)
    loss = losses.GradientScaledLoss(losses.MLPLoss())
    make = lambda: (torch.randn(batch_size, *shape), torch.randint(0, num_outputs, (batch_size,)))  # noqa: E731
    train, valid = make(), make()
    reference = _meta_grads(model, loss, train, valid, torch.float64)
    scale = reference.norm()
    for dtype in (torch.float32, torch.float64):
        exact = _meta_grads(model, loss, train, valid, dtype)
        rows.append({"model": name, "seed": seed, "dtype": str(dtype).removeprefix("torch."), "epsilon": None,
                     "error": float((exact - reference).norm() / scale)})
        for eps in epsilons:
            fd = _meta_grads(model, loss, train, valid, dtype, tangent="fd", fd_epsilon=eps)
            rows.append({"model": name, "seed": seed, "dtype": str(dtype).removeprefix("torch."), "epsilon": eps,
                         "error": float((fd - reference).norm() / scale)})
    return rows


def format_fd_table(rows: list[dict]) -> str:
    """A markdown table: one row per model and dtype, one column per ε (and the exact route's); each cell
    the largest error over the seeds."""
    epsilons = sorted({r["epsilon"] for r in rows if r["epsilon"] is not None}, reverse=True)
    head = "| model | dtype | exact JVP | " + " | ".join(f"ε={e:.0e}" for e in epsilons) + " |"
    lines = [head, "|" + "---|" * (3 + len(epsilons))]
    keys = list(dict.fromkeys((r["model"], r["dtype"]) for r in rows))
    for model, dtype in keys:
        cells: dict = {}
        for r in rows:
            if (r["model"], r["dtype"]) == (model, dtype):
                cells[r["epsilon"]] = max(cells.get(r["epsilon"], 0.0), r["error"])
        lines.append(f"| {model} | {dtype} | {cells[None]:.1e} | "
                     + " | ".join(f"{cells[e]:.1e}" for e in epsilons) + " |")
    return "\n".join(lines)
