"""torch.optim as people use it: the learner's base step against the same loop with the plain optimiser.

A loss equal to cross-entropy with one parameter that does not act (its meta-gradient is exactly
zero, so Adam leaves it where it is) makes the learner's base step comparable, step for step in
float64, with ``F.cross_entropy(...).backward(); [clip_grad_norm_]; optimizer.step(); scheduler.step()``.
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import batch, tiny_mlp
from toolkit.meta.online import OnlineLossLearner
from toolkit.meta.rules import SGDRule


class CrossEntropyWithIdleParameter(nn.Module):
    """``F.cross_entropy`` plus 0·φ: a learnable loss whose meta-gradient is exactly zero."""

    def __init__(self):
        super().__init__()
        self.idle = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, outputs, targets):
        return F.cross_entropy(outputs, targets) + 0 * self.idle


def _two_groups(model, **second):
    return [{"params": model[0].parameters()}, {"params": model[2].parameters(), **second}]


OPTIMIZERS = {
    "sgd-nesterov-wd": lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                                                 weight_decay=0.01),
    "sgd-dampening-wd": lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.8, dampening=0.3,
                                                  weight_decay=0.01),
    "adam-amsgrad-wd": lambda m: torch.optim.Adam(m.parameters(), lr=0.02, betas=(0.8, 0.9), amsgrad=True,
                                                  weight_decay=0.01),
    "adamw-amsgrad": lambda m: torch.optim.AdamW(m.parameters(), lr=0.02, amsgrad=True, weight_decay=0.1),
    "rmsprop-centered-momentum-wd": lambda m: torch.optim.RMSprop(m.parameters(), lr=0.01, alpha=0.9, momentum=0.5,
                                                                  centered=True, weight_decay=0.01),
    "rmsprop": lambda m: torch.optim.RMSprop(m.parameters(), lr=0.01),
    "sgd-two-groups": lambda m: torch.optim.SGD(_two_groups(m, lr=0.3, momentum=0.5, weight_decay=0.1), lr=0.1,
                                                momentum=0.9, nesterov=False),
    "adam-two-groups": lambda m: torch.optim.Adam(_two_groups(m, lr=0.05, betas=(0.5, 0.9), amsgrad=True), lr=0.01),
}
SCHEDULERS = {
    "none": None,
    "step-lr": lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5),
    "cosine-to-zero": lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=3),  # lr 0 at step 3
}


def _run_pair(make_optimizer, make_scheduler=None, *, steps=6, meta_interval=1, max_grad_norm=None):
    """(learner's model, its optimiser, reference model, reference optimiser) after ``steps`` equal steps."""
    torch.manual_seed(0)
    model = tiny_mlp()
    reference = copy.deepcopy(model)
    optimizer, ref_optimizer = make_optimizer(model), make_optimizer(reference)
    schedulers = [make_scheduler(o) if make_scheduler else None for o in (optimizer, ref_optimizer)]
    learner = OnlineLossLearner(model, CrossEntropyWithIdleParameter(), rule=optimizer, descent_guard=False,
                                meta_interval=meta_interval, snapshot_every=0, max_grad_norm=max_grad_norm)
    lrs = []
    for step in range(steps):
        train, valid = batch(8, (5,), 3, seed=step), batch(8, (5,), 3, seed=100 + step)
        lrs.append(optimizer.param_groups[0]["lr"])
        learner.step(train, valid)
        ref_optimizer.zero_grad()
        F.cross_entropy(reference(train[0]), train[1]).backward()
        if max_grad_norm is not None:
            nn.utils.clip_grad_norm_(reference.parameters(), max_grad_norm)
        ref_optimizer.step()
        for scheduler in schedulers:
            if scheduler is not None:
                scheduler.step()
    assert float(learner.loss.idle.detach()) == 0.0
    return learner, model, optimizer, reference, ref_optimizer, lrs


def _assert_same(model, reference, optimizer, ref_optimizer):
    for (k, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12, msg=k)
    for p, q in zip(model.parameters(), reference.parameters()):  # the optimiser's state, as torch left it
        mine, theirs = optimizer.state[p], ref_optimizer.state[q]
        assert set(mine) == set(theirs)
        for key, value in theirs.items():
            torch.testing.assert_close(mine[key].double(), value.double(), rtol=1e-12, atol=1e-12, msg=key)


@pytest.mark.parametrize("meta_interval", [1, 2], ids=["lookahead", "plain-steps"])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_the_learner_steps_as_torch_optim_steps(name, meta_interval):
    """Parameters and optimiser state equal torch's after six steps (float64, 1e-12), then torch's own
    ``step()`` continues from the state the learner wrote back exactly as from its own."""
    _, model, optimizer, reference, ref_optimizer, _ = _run_pair(OPTIMIZERS[name], meta_interval=meta_interval)
    _assert_same(model, reference, optimizer, ref_optimizer)
    for seed in (50, 51):
        x, y = batch(8, (5,), 3, seed=seed)
        for m, o in ((model, optimizer), (reference, ref_optimizer)):
            o.zero_grad()
            F.cross_entropy(m(x), y).backward()
            o.step()
    _assert_same(model, reference, optimizer, ref_optimizer)


@pytest.mark.parametrize("scheduler", ["step-lr", "cosine-to-zero"])
@pytest.mark.parametrize("name", ["sgd-nesterov-wd", "adamw-amsgrad", "sgd-two-groups"])
def test_schedulers_act_on_the_learner(name, scheduler):
    """scheduler.step() after learner.step() changes the next step's lr, as it does torch's, with no warning
    about the order of the calls; a cosine schedule reaches lr 0, which is a valid step (the parameters
    stay, the state moves as torch's)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, model, optimizer, reference, ref_optimizer, lrs = _run_pair(OPTIMIZERS[name], SCHEDULERS[scheduler])
    assert len(set(lrs)) > 1
    if scheduler == "cosine-to-zero":
        assert lrs[3] == pytest.approx(0.0, abs=1e-15)
    _assert_same(model, reference, optimizer, ref_optimizer)


@pytest.mark.parametrize("name", ["sgd-nesterov-wd", "adam-amsgrad-wd", "sgd-two-groups"])
def test_max_grad_norm_is_clip_grad_norm(name):
    """``max_grad_norm`` equals ``clip_grad_norm_`` between backward and step (and clips here: the norm
    of the first gradient is above it)."""
    _, model, optimizer, reference, ref_optimizer, _ = _run_pair(OPTIMIZERS[name], max_grad_norm=0.05)
    _assert_same(model, reference, optimizer, ref_optimizer)
    _, unclipped, *_ = _run_pair(OPTIMIZERS[name])
    assert any(not torch.allclose(p, q) for p, q in zip(model.parameters(), unclipped.parameters()))


def test_a_learning_rate_of_zero_keeps_the_parameters():
    model = tiny_mlp()
    before = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    learner = OnlineLossLearner(model, CrossEntropyWithIdleParameter(), rule=optimizer, snapshot_every=0)
    learner.step(batch(8, (5,), 3, seed=0), batch(8, (5,), 3, seed=1))
    for p, q in zip(model.parameters(), before.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="learning rate must be >= 0"):
        optimizer.param_groups[0]["lr"] = -0.1
        learner.step(batch(8, (5,), 3, seed=0), batch(8, (5,), 3, seed=1))


def test_a_checkpoint_restores_the_optimiser_state():
    """learner.state_dict() → a fresh learner on a fresh optimiser: optimizer.state is restored too."""
    learner, model, optimizer, *_ = _run_pair(OPTIMIZERS["adam-two-groups"], steps=3)
    twin = copy.deepcopy(model)
    fresh = OPTIMIZERS["adam-two-groups"](twin)
    restored = OnlineLossLearner(twin, CrossEntropyWithIdleParameter(), rule=fresh, descent_guard=False,
                                 snapshot_every=0)
    restored.load_state_dict(learner.state_dict())
    for p, q in zip(model.parameters(), twin.parameters()):
        assert set(optimizer.state[p]) == set(fresh.state[q])
        for key, value in optimizer.state[p].items():
            torch.testing.assert_close(fresh.state[q][key], value, rtol=0, atol=0)


class ScaledSGD:
    """A user's own rule: SGD with the gradient halved (no torch counterpart; the StepRule protocol only)."""

    def init(self, params):
        return {}

    def update(self, params, grads, state):
        return {k: p - 0.05 * grads[k] for k, p in params.items()}, {}


def test_any_step_rule_is_accepted():
    torch.manual_seed(0)
    model = tiny_mlp()
    reference = copy.deepcopy(model)
    learner = OnlineLossLearner(model, CrossEntropyWithIdleParameter(), rule=ScaledSGD(), descent_guard=False,
                                snapshot_every=0)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.05)
    for step in range(3):
        train = batch(8, (5,), 3, seed=step)
        learner.step(train, batch(8, (5,), 3, seed=10 + step))
        optimizer.zero_grad()
        F.cross_entropy(reference(train[0]), train[1]).backward()
        optimizer.step()
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="with_lr"):
        learner.step(batch(8, (5,), 3, seed=0), batch(8, (5,), 3, seed=1), lr=0.1)


def test_offline_initialise_takes_a_torch_optimizer():
    """offline_initialise(rule=torch.optim.SGD(...)) equals offline_initialise(rule=the equal SGDRule)."""
    import losses
    from toolkit.meta.offline import offline_initialise
    model = tiny_mlp()
    results = []
    for rule in (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), SGDRule(lr=0.1, momentum=0.9)):
        torch.manual_seed(0)
        loss = losses.MLPLoss(hidden=(4,)).double()
        offline_initialise(model, loss, lambda s: (batch(8, (5,), 3, seed=s), batch(8, (5,), 3, seed=50 + s)),
                           steps=3, rule=rule, record_every=3)
        results.append([p.detach().clone() for p in loss.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
