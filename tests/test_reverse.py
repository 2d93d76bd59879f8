"""The tangent by reverse over reverse (toolkit.meta.reverse, meta_gradient="reverse"): J w from the kept
backward equals forward-mode AD and a central difference; the route is taken by data-parallel runs and lfl train.
Its exactness inside the lookahead, against the unrolled reference on every test model, is in test_lookahead.py."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from toolkit.meta.distributed import Replicas
from toolkit.meta.reverse import backward_with_tangent
from toolkit.runs.common import TrainConfig
from toolkit.runs.run import check_data_parallel


@pytest.mark.parametrize("model", ["mlp", "conv-bn"])
def test_the_tangent_off_the_backward_is_the_jacobian_vector_product(model):
    torch.manual_seed(0)
    if model == "mlp":
        net, x = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double(), torch.randn(6, 5, dtype=torch.float64)
    else:
        net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                            nn.Flatten(), nn.Linear(12, 3)).double()
        x = torch.randn(6, 1, 6, 6, dtype=torch.float64)
    params = dict(net.named_parameters())
    w = {k: torch.randn_like(p) for k, p in params.items()}
    c = torch.randn(6, 3, dtype=torch.float64)

    def f(theta):  # batch statistics; the running ones are updated on copies (a transform may not mutate them)
        return torch.func.functional_call(net, {**theta, **{k: b.clone() for k, b in net.named_buffers()}}, (x,))

    grads, tangent = backward_with_tangent(f(params), list(params.values()), c)
    u = tangent(list(w.values()))
    # Jᵀc against autograd on ⟨f, c⟩; J w against forward mode and against a central difference.
    expected_grads = torch.autograd.grad((f(params) * c).sum(), list(params.values()))
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-13, atol=1e-13)
        assert not g.requires_grad
    detached = {k: p.detach() for k, p in params.items()}
    _, jvp = torch.func.jvp(f, (detached,), (w,))
    torch.testing.assert_close(u, jvp, rtol=1e-12, atol=1e-12)
    h = 1e-6
    plus = f({k: p + h * w[k] for k, p in detached.items()})
    minus = f({k: p - h * w[k] for k, p in detached.items()})
    torch.testing.assert_close(u, (plus - minus) / (2 * h), rtol=1e-6, atol=1e-8)


def test_train_config_takes_reverse_and_a_data_parallel_run_accepts_it():
    """The reverse-over-reverse tangent is exact, so a data-parallel run takes it (tests/test_distributed.py runs it)."""
    replicas = Replicas(rank=0, world_size=2)
    check_data_parallel(TrainConfig(meta_gradient="reverse", batch_size=8), replicas)
    assert TrainConfig(meta_gradient="reverse").meta_gradient == "reverse"


def test_lfl_train_runs_the_reverse_route_and_records_it(tmp_path):
    """The user's path: ``lfl train --meta-gradient reverse`` trains, and results.json names the route it took."""
    import json

    from helpers import run_lfl
    out = tmp_path / "run"
    result = run_lfl("train", "--dataset", "digits", "--model", "mlp", "--loss", "adalfl", "--init-steps", "0",
                     "--steps", "12", "--batch-size", "32", "--lr", "0.1", "--meta-gradient", "reverse",
                     "--log-every", "6", "--checkpoint-every", "0", "--device", "cpu", "--quiet", "--out", out)
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["meta_gradient"] == "reverse"
    assert results["test_error"] < 0.9  # chance on digits is 0.9


def test_a_linearised_backward_refuses_create_graph():
    from toolkit.meta.reverse import learned_backward
    x = torch.randn(3, 2, requires_grad=True)
    with pytest.raises(ValueError, match="excludes create_graph"):
        learned_backward(x * 2, [x], torch.ones(3, 2), linearise=True, create_graph=True)
