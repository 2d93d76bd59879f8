"""OnlineLossLearner(compile=True): the compiled step check and loss derivatives give the eager step's numbers."""
import copy

import pytest
import torch
from torch import nn

import losses
from toolkit.meta.online import OnlineLossLearner
from toolkit.meta.rules import SGDRule


def _learners(device: str, dtype: torch.dtype, route: str = "fast", scaled: bool = False):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).to(device, dtype)
    loss = losses.MLPLoss(hidden=(6,))
    loss = (losses.GradientScaledLoss(loss) if scaled else loss).to(device, dtype)
    rule = SGDRule(lr=0.5, momentum=0.9)
    return [OnlineLossLearner(copy.deepcopy(model), copy.deepcopy(loss), rule=rule, snapshot_every=0, compile=c,
                              meta_gradient=route) for c in (False, True)]


def _check(device: str, dtype: torch.dtype, tolerance: float, route: str = "fast", scaled: bool = False) -> None:
    eager, compiled = _learners(device, dtype, route, scaled)
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
@pytest.mark.parametrize("route,scaled", [("fast", False), ("reverse", True)], ids=["fast-mlp", "reverse-scaled"])
def test_the_compiled_step_equals_the_eager_step_in_float64_on_cpu(route, scaled) -> None:
    _check("cpu", torch.float64, 1e-12, route, scaled)


@pytest.mark.slow
def test_compiled_loss_derivatives_equal_the_eager_ones_with_a_frozen_parameter() -> None:
    """CompiledDerivatives against value_gradient_pullback in float64: value, m and the pullback, with one
    loss parameter frozen (zeros for it, as autograd gives), on labels (the label check may not break the graph)."""
    from losses.derivatives import CompiledDerivatives, value_gradient_pullback
    torch.manual_seed(0)
    loss = losses.GradientScaledLoss(losses.MLPLoss(hidden=(5, 5))).double()
    params = dict(loss.named_parameters())
    frozen = next(iter(params))
    params[frozen].requires_grad_(False)
    f, y, u = torch.randn(12, 4, dtype=torch.float64), torch.randint(0, 4, (12,)), torch.randn(12, 4, dtype=torch.float64)
    eager = value_gradient_pullback(loss, params, f, y)
    compiled = CompiledDerivatives(loss)(loss, params, f, y)
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(compiled[1], eager[1], rtol=1e-12, atol=1e-12)
    got, want = compiled[2](u), eager[2](u)
    assert got.keys() == want.keys() and not got[frozen].any()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="another loss module"):
        CompiledDerivatives(loss)(copy.deepcopy(loss), params, f, y)


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (reduce-overhead mode, float32)")
def test_the_compiled_step_equals_the_eager_step_in_float32_on_cuda() -> None:
    _check("cuda", torch.float32, 1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("worse", [True, False], ids=["rejected", "kept"])
def test_the_compiled_step_check_equals_the_eager_one(worse) -> None:
    """The guard's step check under torch.compile (what compile=True runs off the CPU; on the CPU the learner
    keeps the eager check) selects the step the eager check chooses, in float64."""
    from losses import task_loss
    from toolkit.meta.guard import check_step
    from toolkit.meta.online import compiled
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    rule = SGDRule(lr=0.1, momentum=0.9)
    x, y = torch.randn(16, 5, dtype=torch.float64), torch.randint(0, 3, (16,))
    params = dict(model.named_parameters())
    leaf = {k: p.detach().clone().requires_grad_(True) for k, p in params.items()}
    before = task_loss(torch.func.functional_call(model, leaf, (x,)), y, "classification")
    task_grads = dict(zip(leaf, torch.autograd.grad(before, list(leaf.values()))))
    theta = {k: p.detach() for k, p in params.items()}
    state = rule.init(theta)
    candidate, candidate_state = rule.update(theta, task_grads, state)
    if worse:
        candidate = {k: v + 3.0 * torch.randn_like(v) for k, v in theta.items()}
    args = (model, (x, y), params, candidate, candidate_state, task_grads, before.detach(), state, rule,
            "classification")
    eager, graph = check_step(*args), compiled(check_step)(*args)
    assert bool(eager[2]) == bool(graph[2]) == worse
    for k in theta:
        torch.testing.assert_close(graph[0][k], eager[0][k], rtol=1e-14, atol=1e-14)
        torch.testing.assert_close(graph[1].momentum[k], eager[1].momentum[k], rtol=1e-14, atol=1e-14)
