"""Base optimisers as rules: torch.optim instances handed in, their state read, anything else refused."""
from __future__ import annotations

import copy

import pytest
import torch

import losses
from helpers import batch, central_differences, tiny_mlp
from losses import task_loss
from toolkit.meta.online import OnlineLossLearner
from toolkit.meta.combined import ClippedRule
from toolkit.meta.optimizers import as_rule, rule_from_optimizer
from toolkit.meta.rules import AdamRule, RMSpropRule, SGDRule, make_rule, update_with_pullback

OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "sgd-nesterov-wd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
    "adam": lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
}


def _steps(model, optimizer, seeds):
    for seed in seeds:
        x, y = batch(8, (5,), 3, seed=seed)
        optimizer.zero_grad()
        task_loss(model(x), y, "classification").backward()
        optimizer.step()


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_a_stepped_torch_optimizer_continues_exactly_as_a_rule(name):
    """Read hyperparameters and state after three torch steps; three more rule steps equal torch's."""
    model = tiny_mlp()
    optimizer = OPTIMIZERS[name](model.parameters())
    _steps(model, optimizer, range(3))
    rule, state = rule_from_optimizer(optimizer, model)
    params = {k: p.detach().clone() for k, p in model.named_parameters()}
    state = rule.init(params) if state is None else state
    twin = copy.deepcopy(model)
    _steps(model, optimizer, range(3, 6))
    for seed in range(3, 6):
        x, y = batch(8, (5,), 3, seed=seed)
        leaf = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        value = task_loss(torch.func.functional_call(twin, leaf, (x,)), y, "classification")
        grads = dict(zip(leaf, torch.autograd.grad(value, list(leaf.values()))))
        params, state = rule.update(params, grads, state)
    for k, p in model.named_parameters():
        torch.testing.assert_close(params[k], p.detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_the_online_learner_takes_a_torch_optimizer(name):
    """The learner built from a torch.optim instance takes the same steps as from the equal rule."""
    torch.manual_seed(0)
    model = tiny_mlp()
    twin = copy.deepcopy(model)
    loss = losses.MLPLoss(hidden=(4,)).double()
    optimizer = OPTIMIZERS[name](model.parameters())
    from_optimizer = OnlineLossLearner(model, copy.deepcopy(loss), rule=optimizer, snapshot_every=0)
    rule, _ = rule_from_optimizer(optimizer, model)
    from_rule = OnlineLossLearner(twin, copy.deepcopy(loss), rule=rule, snapshot_every=0)
    assert from_optimizer.rule == rule
    for seed in range(3):
        train, valid = batch(8, (5,), 3, seed=seed), batch(8, (5,), 3, seed=seed + 10)
        from_optimizer.step(train, valid)
        from_rule.step(train, valid)
    for (k, a), (_, b) in zip(model.named_parameters(), twin.named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)


def test_anything_else_is_refused_with_a_clear_error():
    model = tiny_mlp()
    with pytest.raises(TypeError, match="torch.optim.SGD, Adam, AdamW or RMSprop, or a StepRule .*; got Adagrad"):
        OnlineLossLearner(model, losses.MLPLoss().double(), rule=torch.optim.Adagrad(model.parameters()))
    with pytest.raises(TypeError, match="or a StepRule .*; got float"):
        as_rule(0.1, model)
    with pytest.raises(ValueError, match="exactly the model's trainable parameters"):
        rule_from_optimizer(torch.optim.SGD(model[0].parameters(), lr=0.1), model)
    with pytest.raises(ValueError, match="maximize"):
        rule_from_optimizer(torch.optim.SGD(model.parameters(), lr=0.1, maximize=True), model)


def test_rule_options_are_checked():
    for bad in (dict(lr=-1e-3), dict(lr=0.1, weight_decay=-1.0), dict(betas=(0.9, 1.0)), dict(eps=0.0)):
        with pytest.raises(ValueError):
            AdamRule(**bad)
    with pytest.raises(ValueError, match="Nesterov"):
        SGDRule(lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="belong to --optimizer sgd"):
        make_rule("adam", lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_rule("lion", lr=0.1)
    assert make_rule("adamw", lr=0.1, weight_decay=0.01) == AdamRule(lr=0.1, weight_decay=0.01, decoupled=True)


@pytest.mark.parametrize("rule", [SGDRule(lr=0.3), SGDRule(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
                                  SGDRule(lr=0.1, momentum=0.9, dampening=0.3),
                                  AdamRule(lr=0.01, weight_decay=0.01), AdamRule(lr=0.01, decoupled=True,
                                                                                  weight_decay=0.1),
                                  AdamRule(lr=0.01, amsgrad=True),
                                  RMSpropRule(lr=0.01, momentum=0.5, centered=True, weight_decay=0.01),
                                  ClippedRule(SGDRule(lr=0.1, momentum=0.9), max_norm=0.5)],
                         ids=["sgd", "nesterov", "dampening", "adam", "adamw", "amsgrad", "rmsprop", "clipped"])
def test_the_update_pullback_is_the_transposed_jacobian(rule):
    """(∂θ'/∂g)ᵀ v against central differences of the rule in g, per coordinate (float64); for
    plain SGD it is −lr·v, for Nesterov −lr(1 + μ)·v."""
    torch.manual_seed(1)
    params = {"a": torch.randn(3, 2, dtype=torch.float64), "b": torch.randn(4, dtype=torch.float64)}
    grads = {k: torch.randn_like(p) for k, p in params.items()}
    state = rule.init(params)
    if "momentum" in state:
        state = {**state, "momentum": {k: torch.randn_like(p) for k, p in params.items()}}
    new, _, pullback = update_with_pullback(rule, params, grads, state)
    v = {k: torch.randn_like(p) for k, p in params.items()}
    got = pullback(v)
    if isinstance(rule, SGDRule):
        alpha = rule.lr * (1 + rule.momentum) if rule.nesterov else rule.lr
        for k in params:
            torch.testing.assert_close(got[k], -alpha * v[k], rtol=1e-14, atol=0)
    def along_v(g):
        new_params = rule.update(params, g, state)[0]
        return sum((new_params[n] * v[n]).sum() for n in params)

    for k, i, numeric in central_differences(along_v, grads):
        assert numeric == pytest.approx(float(got[k].view(-1)[i]), rel=1e-6, abs=1e-9)


def test_the_update_pullback_of_a_rule_that_leaves_a_parameter_as_it_is_is_zero_there():
    """A user's rule may keep a parameter fixed (no graph to its gradient): the pullback is zero for it and the
    transposed Jacobian elsewhere, as central differences give, instead of an autograd error."""
    class FreezeB(SGDRule):
        def update(self, params, grads, state):
            new, state = super().update(params, grads, state)
            return {**new, "b": params["b"]}, state

    torch.manual_seed(2)
    params = {"a": torch.randn(3, 2, dtype=torch.float64), "b": torch.randn(4, dtype=torch.float64)}
    grads = {k: torch.randn_like(p) for k, p in params.items()}
    rule = FreezeB(lr=0.1)
    new, _, pullback = update_with_pullback(rule, params, grads, rule.init(params))
    assert torch.equal(new["b"], params["b"])
    v = {k: torch.randn_like(p) for k, p in params.items()}
    got = pullback(v)
    torch.testing.assert_close(got["a"], -0.1 * v["a"], rtol=1e-14, atol=0)
    assert torch.equal(got["b"], torch.zeros_like(params["b"]))
    frozen_everywhere = update_with_pullback(FreezeB(lr=0.0), {"b": params["b"]}, {"b": grads["b"]}, ())[2]
    assert torch.equal(frozen_everywhere({"b": v["b"]})["b"], torch.zeros_like(params["b"]))


def test_states_round_trip_through_the_checkpoint_form_and_older_flat_dicts_load():
    """state_to_dict gives plain data torch.load(weights_only=True) reads; state_from_dict rebuilds the same
    NamedTuples; the flat dicts of checkpoints before version 3 load as the same states."""
    import io

    from toolkit.meta.combined import GroupedRule
    from toolkit.meta.rules import (AdamState, RMSpropRule, SGDState, load_state, state_from_dict,
                                    state_to_dict)
    params = {"a": torch.randn(3, dtype=torch.float64), "b": torch.randn(2, 2, dtype=torch.float64)}
    grads = {k: torch.randn_like(p) for k, p in params.items()}
    rule = GroupedRule(((("a",), SGDRule(lr=0.1, momentum=0.9, dampening=0.5)),
                        (("b",), AdamRule(lr=0.01, amsgrad=True))))
    _, state = rule.update(params, grads, rule.init(params))
    buffer = io.BytesIO()
    torch.save(state_to_dict(state), buffer)
    buffer.seek(0)
    rebuilt = state_from_dict(torch.load(buffer, weights_only=True))
    assert type(rebuilt[0]) is SGDState and type(rebuilt[1]) is AdamState
    flat_new, _ = torch.utils._pytree.tree_flatten(state)
    flat_old, _ = torch.utils._pytree.tree_flatten(rebuilt)
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(flat_new, flat_old))
    legacy = {"group0/momentum": state[0].momentum, "group0/momentum_started": state[0].started,
              "group1/step": state[1].step, "group1/exp_avg": state[1].exp_avg, "group1/exp_avg_sq": state[1].exp_avg_sq,
              "group1/max_exp_avg_sq": state[1].max_exp_avg_sq}
    from_legacy = load_state(legacy)
    assert torch.equal(from_legacy[0].started, state[0].started)
    assert torch.equal(from_legacy[1].max_exp_avg_sq["b"], state[1].max_exp_avg_sq["b"])
    rms = RMSpropRule(momentum=0.5).init(params)
    assert load_state(state_to_dict(rms)).grad_avg is None
    with pytest.raises(ValueError, match="not an optimiser state"):
        state_from_dict({"kind": "lion"})
