"""OnlineLossLearner(compile=True): the compiled step check gives the eager step's numbers."""
import copy

import pytest
import torch
from torch import nn

import losses
from toolkit.meta.online import OnlineLossLearner
from toolkit.meta.rules import SGDRule


def _learners(device: str, dtype: torch.dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).to(device, dtype)
    loss = losses.MLPLoss(hidden=(6,)).to(device, dtype)
    rule = SGDRule(lr=0.5, momentum=0.9)
    return [OnlineLossLearner(copy.deepcopy(model), copy.deepcopy(loss), rule=rule, snapshot_every=0, compile=c)
            for c in (False, True)]


def _check(device: str, dtype: torch.dtype, tolerance: float) -> None:
    eager, compiled = _learners(device, dtype)
    x = torch.randn(16, 4, device=device, dtype=dtype)
    y = torch.randint(0, 3, (16,), device=device)
    for _ in range(2):
        infos = [learner.step((x, y), (x, y)) for learner in (eager, compiled)]
        assert torch.allclose(infos[0]["meta_loss"], infos[1]["meta_loss"], atol=tolerance, rtol=0)
    for a, b in [*zip(eager.model.parameters(), compiled.model.parameters()),
                 *zip(eager.loss.parameters(), compiled.loss.parameters())]:
        assert torch.allclose(a.detach(), b.detach(), atol=tolerance, rtol=0)
    assert torch.equal(eager.guard_counts.counts, compiled.guard_counts.counts)


@pytest.mark.slow
def test_the_compiled_step_equals_the_eager_step_in_float64_on_cpu() -> None:
    _check("cpu", torch.float64, 1e-12)


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (reduce-overhead mode, float32)")
def test_the_compiled_step_equals_the_eager_step_in_float32_on_cuda() -> None:
    _check("cuda", torch.float32, 1e-5)
