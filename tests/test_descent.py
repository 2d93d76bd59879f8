"""The descent guard (toolkit.meta.guard): no sample's step goes uphill, and the meta-gradient stays exact."""
from __future__ import annotations

import pytest
import torch

import losses
from helpers import assert_meta_gradients_close, batch, tiny_bn_dropout, tiny_conv, tiny_mlp
from losses import encode_targets, task_gradient, task_loss
from toolkit.meta.guard import descent_reflection
from toolkit.meta.lookahead import SGDRule, meta_gradient, meta_gradient_naive
from toolkit.meta.rules import SGDState

F64 = torch.float64


def _mixed_loss(model, params, train, *, scaled: bool) -> losses.LearnedLoss:
    """A fresh MLP loss whose gradient points uphill for some samples of ``train`` but not all."""
    outputs = torch.func.functional_call(model, params, (train[0],)).detach()
    r = task_gradient(outputs, encode_targets(train[1], outputs, "classification"), "classification")
    for seed in range(100):
        torch.manual_seed(seed)
        inner = losses.MLPLoss(hidden=(6, 6))
        loss = (losses.GradientScaledLoss(inner, max_scale=3.0) if scaled else inner).double()
        f = outputs.clone().requires_grad_(True)
        (m,) = torch.autograd.grad(loss(f, train[1]), f)
        uphill = int(((m * r).sum(1) < 0).sum())
        if 0 < uphill < len(m):
            return loss
    raise AssertionError("no mixed loss among 100 seeds")


@pytest.mark.parametrize("task,classes", [("classification", 4), ("classification", 1), ("regression", 2)])
def test_reflection_makes_every_row_a_descent_direction_and_keeps_its_length(task, classes) -> None:
    generator = torch.Generator().manual_seed(0)
    f = torch.randn(64, classes, generator=generator, dtype=F64)
    y = (torch.randint(0, max(classes, 2), (64,), generator=generator) if task == "classification"
         else torch.randn(64, classes, generator=generator, dtype=F64))
    m = torch.randn(64, classes, generator=generator, dtype=F64)
    r = task_gradient(f, encode_targets(y, f, task), task)
    reflect = descent_reflection(m, f, y, task)
    guarded = reflect(m)
    uphill = (m * r).sum(1) < 0
    assert int(reflect.count) == int(uphill.sum()) > 0
    assert ((guarded * r).sum(1) >= -1e-15).all()
    torch.testing.assert_close(guarded.norm(dim=1), m.norm(dim=1))
    torch.testing.assert_close(guarded[~uphill], m[~uphill], rtol=0, atol=0)  # descent rows untouched
    torch.testing.assert_close((guarded * r).sum(1)[uphill], -(m * r).sum(1)[uphill])  # reflected
    torch.testing.assert_close(reflect(reflect(m)), m)  # H is an involution (and symmetric)
    u, w = torch.randn_like(m), torch.randn_like(m)
    torch.testing.assert_close((reflect(u) * w).sum(), (u * reflect(w)).sum())


def test_fresh_learned_losses_often_point_uphill_and_the_guard_turns_every_sample_downhill() -> None:
    """The hazard the guard exists for: across fresh initialisations many samples go uphill unguarded."""
    generator = torch.Generator().manual_seed(0)
    f = torch.randn(64, 10, generator=generator, dtype=F64)
    y = torch.randint(0, 10, (64,), generator=generator)
    r = task_gradient(f, encode_targets(y, f, "classification"), "classification")
    uphill_seeds = 0
    for seed in range(16):
        torch.manual_seed(seed)
        loss = losses.MLPLoss().double()
        leaf = f.clone().requires_grad_(True)
        (m,) = torch.autograd.grad(loss(leaf, y), leaf)
        uphill_seeds += bool(((m * r).sum(1) < 0).float().mean() > 0.5)
        guarded = descent_reflection(m, f, y, "classification")(m)
        assert ((guarded * r).sum(1) >= 0).all(), seed
    assert uphill_seeds >= 3  # a fresh MLPLoss is anti-aligned for a good share of initialisations


MODELS = {"mlp": (tiny_mlp, (5,)), "conv": (tiny_conv, (1, 8, 8)), "bn-dropout": (tiny_bn_dropout, (5,))}
RULES = {"plain": SGDRule(lr=0.1), "nesterov-wd": SGDRule(lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)}


@pytest.mark.parametrize("scaled", [False, True], ids=["mlp", "scaled"])
@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("rule_name", RULES)
def test_guarded_fast_meta_gradient_equals_naive(model_name, rule_name, scaled) -> None:
    factory, shape = MODELS[model_name]
    model = factory()
    params = {k: p.detach().clone() for k, p in model.named_parameters()}
    momentum = SGDState(momentum={k: 0.1 * torch.randn_like(p) for k, p in params.items()})
    train, valid = batch(16, shape, 3, seed=1), batch(12, shape, 3, seed=2)
    model.eval()  # the search reads outputs without dropout; the lookahead itself runs in train mode
    loss = _mixed_loss(model, params, train, scaled=scaled)
    model.train()
    results = {}
    for name, fn in (("fast", meta_gradient), ("naive", meta_gradient_naive)):
        buffers = {k: b.clone() for k, b in model.named_buffers()}
        torch.manual_seed(123)
        results[name] = fn(model, params, buffers, loss, dict(loss.named_parameters()), train, valid,
                           RULES[rule_name], momentum, descent_guard=True)
    fast, naive = results["fast"], results["naive"]
    assert int(fast.guard.rows.count) == int(naive.guard.rows.count) > 0  # the test exercises reflected rows
    assert_meta_gradients_close(fast, naive)
    for k in params:
        torch.testing.assert_close(fast.params[k], naive.params[k], rtol=1e-12, atol=1e-12)


def test_guarded_meta_gradient_matches_finite_differences() -> None:
    model = tiny_mlp().double()
    params = {k: p.detach().clone() for k, p in model.named_parameters()}
    train, valid = batch(16, (5,), 3, seed=1), batch(12, (5,), 3, seed=2)
    loss = _mixed_loss(model, params, train, scaled=False)
    rule = SGDRule(lr=0.3)
    phi = {k: p.detach().clone().requires_grad_(True) for k, p in loss.named_parameters()}
    result = meta_gradient(model, params, {}, loss, phi, train, valid, rule, descent_guard=True)
    assert int(result.guard.rows.count) > 0
    eps = 1e-6
    for name, value in phi.items():
        flat = value.reshape(-1)
        for index in range(0, flat.numel(), max(1, flat.numel() // 5)):
            losses_at = []
            for sign in (1, -1):
                shifted = {k: v.detach().clone() for k, v in phi.items()}
                shifted[name].reshape(-1)[index] += sign * eps
                shifted = {k: v.requires_grad_(True) for k, v in shifted.items()}
                losses_at.append(meta_gradient(model, params, {}, loss, shifted, train, valid, rule,
                                                    descent_guard=True).meta_loss)
            numeric = (losses_at[0] - losses_at[1]) / (2 * eps)
            assert float(result.meta_grads[name].reshape(-1)[index]) == pytest.approx(float(numeric), rel=1e-5,
                                                                                    abs=1e-9)


@pytest.mark.parametrize("loss_seed,batch_seed", [(31, 4), (36, 2)])
def test_a_step_reflected_in_parameter_space_is_exact_and_descends(loss_seed, batch_seed) -> None:
    """Cases where the per-sample guard leaves the batch step uphill: the parameter-space reflection fires."""
    torch.manual_seed(0)
    model = tiny_mlp()
    params = {k: p.detach().clone() for k, p in model.named_parameters()}
    train, valid = batch(16, (5,), 3, seed=batch_seed), batch(12, (5,), 3, seed=2)
    torch.manual_seed(loss_seed)
    loss = losses.MLPLoss(hidden=(6, 6)).double()
    rule = SGDRule(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    momentum = SGDState(momentum={k: 0.1 * torch.randn_like(p) for k, p in params.items()})
    fast = meta_gradient(model, params, {}, loss, dict(loss.named_parameters()), train, valid, rule, momentum,
                              descent_guard=True)
    naive = meta_gradient_naive(model, params, {}, loss, dict(loss.named_parameters()), train, valid, rule,
                                momentum, descent_guard=True)
    assert bool(fast.guard.step.uphill) and bool(naive.guard.step.uphill)
    assert_meta_gradients_close(fast, naive)
    for k in params:
        torch.testing.assert_close(fast.params[k], naive.params[k], rtol=1e-12, atol=1e-12)
    # The guarded learned gradient is a descent direction of the batch task loss.
    plain = SGDRule(lr=1e-6)
    step = meta_gradient(model, params, {}, loss, dict(loss.named_parameters()), train, valid, plain,
                              descent_guard=True)
    before = task_loss(torch.func.functional_call(model, params, (train[0],)), train[1], "classification")
    after = task_loss(torch.func.functional_call(model, step.params, (train[0],)), train[1], "classification")
    unguarded = meta_gradient(model, params, {}, loss, dict(loss.named_parameters()), train, valid, plain)
    after_unguarded = task_loss(torch.func.functional_call(model, unguarded.params, (train[0],)), train[1],
                                "classification")
    assert after_unguarded > before  # unguarded, this loss trains the batch backwards
    assert after <= before


def _projection_rows(self, t):  # a wrong per-sample map: projects the uphill part away instead of reflecting it
    return t - 1.0 * (t * self.direction).sum(dim=1, keepdim=True) * self.direction


def _projection_step(self, g, dot=None):  # the same mistake in parameter space (the given g · g_L unused)
    dot = sum((g[k] * d).sum() for k, d in self.direction.items())
    return {k: g[k] - 1.0 * dot * d for k, d in self.direction.items()}


@pytest.mark.parametrize("wrong", ["rows", "step"])
def test_the_naive_reference_catches_a_wrong_reflection_in_the_default_route(monkeypatch, wrong) -> None:
    """The unrolled reference writes the reflections from their definition, not with toolkit.meta.guard's
    maps, so a deliberately wrong map in the default route (patched here only) makes the routes disagree."""
    from toolkit.meta import guard

    torch.manual_seed(0)
    model = tiny_mlp()
    params = {k: p.detach().clone() for k, p in model.named_parameters()}
    train, valid = batch(16, (5,), 3, seed=1 if wrong == "rows" else 4), batch(12, (5,), 3, seed=2)
    if wrong == "rows":  # some samples reflected, not all
        loss = _mixed_loss(model, params, train, scaled=False)
    else:  # the batch step reflected in parameter space (as in the test above)
        torch.manual_seed(31)
        loss = losses.MLPLoss(hidden=(6, 6)).double()
    rule = SGDRule(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    state = SGDState(momentum={k: 0.1 * torch.randn_like(p) for k, p in params.items()})

    def both():
        return [fn(model, params, {}, loss, dict(loss.named_parameters()), train, valid, rule, state,
                   descent_guard=True) for fn in (meta_gradient, meta_gradient_naive)]

    fast, naive = both()
    assert int(fast.guard.rows.count) > 0 if wrong == "rows" else bool(fast.guard.step.uphill)
    assert_meta_gradients_close(fast, naive)
    if wrong == "rows":
        monkeypatch.setattr(guard.Reflection, "__call__", _projection_rows)
    else:
        monkeypatch.setattr(guard.ParameterReflection, "__call__", _projection_step)
    fast, naive = both()
    gap = max(float((fast.params[k] - naive.params[k]).abs().max()) for k in params)
    assert gap > 1e-9, gap  # the routes agree to 1e-12 when both are right
    with pytest.raises(AssertionError):
        assert_meta_gradients_close(fast, naive)


def test_parameter_reflection_in_place_of_the_definition_float64() -> None:
    """H g = g − 2 (g·ĝ_L) ĝ_L from the tensors as they are (per-tensor dot products, no copies), with and
    without the decision's own g · g_L reused, against the formula on one concatenated float64 vector."""
    from toolkit.meta.guard import parameter_reflection
    from toolkit.meta.trees import _concatenated_dot, tree_dot, tree_norm

    generator = torch.Generator().manual_seed(0)
    shapes = {"a.weight": (5, 3), "a.bias": (5,), "b.weight": (2, 5)}
    task = {k: torch.randn(s, generator=generator, dtype=torch.float64) for k, s in shapes.items()}
    grads = {k: -t + 0.1 * torch.randn(t.shape, generator=generator, dtype=torch.float64) for k, t in task.items()}
    flat_g = torch.cat([grads[k].reshape(-1) for k in shapes])
    flat_t = torch.cat([task[k].reshape(-1) for k in shapes])
    assert tree_dot(list(grads.values()), list(task.values())) == pytest.approx(float(flat_g @ flat_t), rel=1e-14)
    # the route a GPU takes (one dot over concatenated copies), checked here on the same tensors
    assert _concatenated_dot(list(grads.values()), list(task.values())) == pytest.approx(float(flat_g @ flat_t),
                                                                                         rel=1e-14)
    assert tree_norm(task.values()) == pytest.approx(float(flat_t.norm()), rel=1e-14)
    step = parameter_reflection(grads, task)
    assert bool(step.uphill)  # g ≈ −g_L points uphill
    expected = flat_g - 2 * (flat_g @ flat_t) / (flat_t @ flat_t) * flat_t
    for reflected in (step(grads), step(grads, dot=step.dot)):
        got = torch.cat([reflected[k].reshape(-1) for k in shapes])
        torch.testing.assert_close(got, expected, rtol=1e-13, atol=1e-13)
        assert float(got @ flat_t) > 0  # now a descent direction for the task loss
