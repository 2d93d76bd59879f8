"""Accelerator checks (skipped without CUDA): same values as on CPU, and no host syncs in forward/backward."""

from __future__ import annotations

import pytest
import torch
from test_losses_cases import CASE_IDS, make_loss

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _batch(task: str, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    outputs = torch.randn(16, 1 if task == "binary" else 5, generator=generator, dtype=torch.float64) * 5
    if task == "regression":
        targets = torch.randn(16, 5, generator=generator, dtype=torch.float64)
    else:
        targets = torch.randint(0, 2 if task == "binary" else 5, (16,), generator=generator)
    return outputs.to(device).requires_grad_(True), targets.to(device)


@pytest.mark.parametrize("case", CASE_IDS)
def test_cuda_matches_cpu_without_host_syncs(case: str) -> None:
    loss_cpu = make_loss(case)
    loss_cuda = make_loss(case).cuda()
    task = "binary" if case == "ce-binary" else loss_cpu.task
    outputs, targets = _batch(task, "cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        value = loss_cuda(outputs, targets)
        (d_outputs,) = torch.autograd.grad(value, outputs, create_graph=True)
        params = list(loss_cuda.parameters())
        meta = torch.autograd.grad(d_outputs.square().sum(), params, allow_unused=True) if params else []
    finally:
        torch.cuda.set_sync_debug_mode(0)
    reference = loss_cpu(*(t.detach().cpu() for t in (outputs, targets)))
    torch.testing.assert_close(value.detach().cpu(), reference, rtol=1e-9, atol=1e-9)
    assert all(g is None or torch.isfinite(g).all() for g in meta)
