"""OnlineLossLearner and offline initialisation: updates, skips, graphs, resume."""
from __future__ import annotations

import copy
import gc
import math

import pytest
import torch
from torch import nn

import losses
from helpers import batch, tiny_bn_dropout, tiny_mlp
from toolkit.meta.rules import AdamRule
from toolkit.meta.lookahead import SGDRule, meta_gradient_naive
from toolkit.meta.offline import offline_initialise
from toolkit.meta.online import NonFiniteError, OnlineLossLearner


def _learner(model=None, **kw):
    torch.manual_seed(0)
    model = model or tiny_mlp()
    loss = losses.MLPLoss(hidden=(5, 5)).double()
    kw.setdefault("rule", SGDRule(lr=0.1, momentum=0.9))
    return OnlineLossLearner(model, loss, snapshot_every=kw.pop("snapshot_every", 0), **kw)


def test_step_equals_lookahead_plus_adam():
    learner = _learner(online_meta_lr=0.01)
    model0, loss0 = copy.deepcopy(learner.model), copy.deepcopy(learner.loss)
    train, valid = batch(8, (5,), 3, seed=1), batch(8, (5,), 3, seed=2)
    learner.step(train, valid)
    params = {k: p.detach() for k, p in model0.named_parameters()}
    phi = dict(loss0.named_parameters())
    ref = meta_gradient_naive(model0, params, {}, loss0, phi, train, valid, learner.rule, None,
                              descent_guard=learner.descent_guard)
    adam = AdamRule(lr=0.01)
    phi0 = {k: p.detach() for k, p in phi.items()}
    new_phi, _ = adam.update(phi0, ref.meta_grads, adam.init(phi0))
    for k, p in learner.model.named_parameters():
        torch.testing.assert_close(p.detach(), ref.params[k], rtol=1e-12, atol=1e-12)
    for k, p in learner.loss.named_parameters():
        torch.testing.assert_close(p.detach(), new_phi[k], rtol=1e-10, atol=1e-12)


def test_meta_interval_takes_plain_steps_between():
    learner = _learner(meta_interval=3)
    phi0 = [p.detach().clone() for p in learner.loss.parameters()]
    train, valid = batch(8, (5,), 3, seed=1), batch(8, (5,), 3, seed=2)
    learner.step(train, valid)                   # meta step at 0
    phi1 = [p.detach().clone() for p in learner.loss.parameters()]
    assert any(not a.equal(b) for a, b in zip(phi0, phi1))
    info = learner.step(train)                   # plain steps need no validation batch
    learner.step(train)
    assert "meta_loss" not in info
    assert all(a.equal(b.detach()) for a, b in zip(phi1, learner.loss.parameters()))
    with pytest.raises(ValueError, match="validation batch"):
        learner.step(train)                      # step 3 is a meta step again


@pytest.mark.slow
def test_no_graph_survives_and_memory_stays_flat():
    learner = _learner(model=tiny_bn_dropout())
    train, valid = batch(8, (5,), 3, seed=1), batch(8, (5,), 3, seed=2)

    def live_tensors():
        # The guard's counters keep up to FOLD_EVERY steps' reports before summing them (a bounded buffer whose
        # length depends on the step number): sum them first, so that only what should not grow is counted.
        assert learner.guard_counts.counts.shape == (2, 5)
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))

    for _ in range(20):
        learner.step(train, valid)
    before = live_tensors()
    for _ in range(1000):
        info = learner.step(train, valid)
        assert len(learner.guard_counts._pending) < learner.guard_counts.FOLD_EVERY
    assert live_tensors() == before
    for p in [*learner.model.parameters(), *learner.loss.parameters()]:
        assert p.grad is None and p.grad_fn is None
    state = [*learner.state.momentum.values(), *learner.adam.exp_avg.values(), *info.values()]
    assert all(t.grad_fn is None for t in state)


class ExplodingLoss(nn.Module):
    """A learned loss that returns NaN while ``armed`` is set."""

    def __init__(self):
        super().__init__()
        self.inner = losses.MLPLoss(hidden=(4, 4)).double()
        self.armed = False

    def forward(self, outputs, targets):
        value = self.inner(outputs, targets)
        return value * float("nan") if self.armed else value


def test_non_finite_updates_are_skipped_counted_and_stop_the_run():
    torch.manual_seed(0)
    learner = OnlineLossLearner(tiny_mlp(), ExplodingLoss(), rule=SGDRule(lr=0.1, momentum=0.9),
                                max_nonfinite=3, snapshot_every=0)
    train, valid = batch(8, (5,), 3, seed=1), batch(8, (5,), 3, seed=2)
    learner.step(train, valid)
    model_before = [p.detach().clone() for p in learner.model.parameters()]
    loss_before = [p.detach().clone() for p in learner.loss.parameters()]
    momentum_before = {k: v.clone() for k, v in learner.state.momentum.items()}
    learner.loss.armed = True
    learner.step(train, valid)
    learner.step(train, valid)
    assert learner.check() == {"skipped_base": 2, "skipped_meta": 0}
    assert all(a.equal(b.detach()) for a, b in zip(model_before, learner.model.parameters()))
    assert all(a.equal(b.detach()) for a, b in zip(loss_before, learner.loss.parameters()))
    assert all(momentum_before[k].equal(v) for k, v in learner.state.momentum.items())
    learner.step(train, valid)
    with pytest.raises(NonFiniteError, match="consecutive"):
        learner.check()
    learner.loss.armed = False
    learner.step(train, valid)
    assert learner.skips[2].item() == 0


def test_state_dict_resume_reaches_the_same_parameters():
    batches = [(batch(8, (5,), 3, seed=i), batch(8, (5,), 3, seed=100 + i)) for i in range(10)]
    straight = _learner(rule=SGDRule(lr=0.1, momentum=0.9, nesterov=True))
    for train, valid in batches:
        straight.step(train, valid)
    first = _learner(rule=SGDRule(lr=0.1, momentum=0.9, nesterov=True))
    for train, valid in batches[:4]:
        first.step(train, valid)
    saved = copy.deepcopy({"model": first.model.state_dict(), "learner": first.state_dict()})
    torch.manual_seed(99)  # a different process: fresh modules
    resumed = OnlineLossLearner(tiny_mlp(), losses.MLPLoss(hidden=(5, 5)).double(),
                                rule=SGDRule(lr=0.1, momentum=0.9, nesterov=True), snapshot_every=0)
    resumed.model.load_state_dict(saved["model"])
    resumed.load_state_dict(saved["learner"])
    for train, valid in batches[4:]:
        resumed.step(train, valid)
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert a.equal(b)
    for a, b in zip(straight.loss.parameters(), resumed.loss.parameters()):
        assert a.equal(b)


def test_snapshots_and_records():
    learner = _learner(snapshot_every=2)
    train, valid = batch(8, (5,), 3, seed=1), batch(8, (5,), 3, seed=2)
    for _ in range(5):
        learner.step(train, valid, diagnostics=True)
    assert [s["step"] for s in learner.history.snapshots] == [0, 2, 4]
    record = learner.record()
    assert record["step"] == 5 and record["grad_ratio"] > 0 and "meta_loss" in record


def test_offline_initialisation_lowers_the_one_step_objective_and_leaves_model_alone():
    torch.manual_seed(0)
    model = tiny_mlp(inputs=4, classes=2)
    original = copy.deepcopy(model.state_dict())
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, generator=g, dtype=torch.float64)

    def make(seed):
        x = torch.randn(32, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        return x, (x @ w > 0).long()

    loss = losses.MLPLoss(hidden=(8, 8)).double()
    records = offline_initialise(model, loss, lambda s: (make(2 * s), make(2 * s + 1)), steps=300,
                                 rule=SGDRule(lr=0.1), meta_lr=3e-3, record_every=50)
    assert records[-1]["meta_loss"] < records[0]["meta_loss"]
    assert records[-1]["skipped"] == 0
    assert all(original[k].equal(v) for k, v in model.state_dict().items())


class _ResetsItsSubtree(nn.Module):
    """A block whose own ``reset_parameters`` sets its child to known values (and counts its calls)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(3, 2)
        self.calls = 0

    def reset_parameters(self) -> None:
        self.calls += 1
        with torch.no_grad():
            self.inner.weight.fill_(0.5)
            self.inner.bias.fill_(-0.25)


def test_reinitialise_trusts_a_model_level_reset():
    """The outermost ``reset_parameters`` runs once and its children are not reset again after it;
    modules without one are searched for their own (a plain ``nn.Linear`` draws fresh values)."""
    from toolkit.meta.offline import reinitialise
    from toolkit.models.zoo import build_model

    torch.manual_seed(0)
    model = nn.Sequential(_ResetsItsSubtree(), nn.Linear(2, 2))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(7.0)
    reinitialise(model)
    block, plain = model[0], model[1]
    assert block.calls == 1
    assert torch.equal(block.inner.weight, torch.full((2, 3), 0.5))  # Linear's own reset did not run after it
    assert torch.equal(block.inner.bias, torch.full((2,), -0.25))
    bound = 1 / math.sqrt(2)  # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias
    assert all(bool((p.abs() <= bound).all()) and not bool((p == 7.0).any()) for p in plain.parameters())

    lenet = build_model("lenet5", input_shape=(1, 28, 28), num_outputs=10)  # its reset: Glorot (tanh gain), zero biases
    with torch.no_grad():
        for p in lenet.parameters():
            p.fill_(7.0)
    reinitialise(lenet)
    layers = [m for m in lenet.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert all(float(m.bias.detach().abs().max()) == 0.0 for m in layers)
    for m in layers:
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(m.weight)
        assert float(m.weight.detach().abs().max()) <= 5 / 3 * math.sqrt(6 / (fan_in + fan_out)) + 1e-7


def test_batchnorm_running_statistics_are_updated_exactly_once_per_step():
    learner = _learner(model=tiny_bn_dropout())
    reference = copy.deepcopy(learner.model)
    train, valid = batch(8, (5,), 3, seed=1), batch(8, (5,), 3, seed=2)
    learner.step(train, valid)
    reference(train[0])  # one ordinary training-mode forward on the training batch
    for (name, b), (_, ref) in zip(learner.model.named_buffers(), reference.named_buffers()):
        torch.testing.assert_close(b, ref, msg=name)


def test_bench_reports_ratios_and_a_breakdown_that_adds_up():
    """lfl bench's numbers on a tiny model: every route timed, the fast step's labelled parts
    all seen by the profiler and no larger than the step."""
    from toolkit.runs.bench import benchmark_steps
    from toolkit.meta.lookahead import PHASES

    result = benchmark_steps(model="mlp", input_shape=(12,), num_outputs=3, batch_size=16, repeats=3, warmup=1,
                             breakdown=True)
    for key in ("ce", "fast", "naive", "fast_unguarded"):
        assert result[f"{key}_step_s"] > 0 and result[f"{key}_peak_mb"] >= 0
    assert result["fast_ratio"] == pytest.approx(result["fast_step_s"] / result["ce_step_s"])
    parts = result["breakdown"]
    phases = parts["phases_ms"]
    assert all(phases[name] > 0 for name in PHASES)  # every labelled part was seen by the profiler
    labelled = sum(phases[name] for name in PHASES)
    assert labelled <= parts["fast_step_ms"]  # the parts do not overlap nor count a step twice
    assert phases["other"] == pytest.approx(parts["fast_step_ms"] - labelled, rel=1e-9, abs=1e-12)
    assert all(parts["phases_ratio"][n] == pytest.approx(ms / parts["ce_step_ms"]) for n, ms in phases.items())
    # PHASES names every label the step actually records (an independent profile of one online step):
    from torch.profiler import ProfilerActivity, profile
    learner = _learner()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        learner.step(batch(8, (5,), 3, seed=1), batch(8, (5,), 3, seed=2))
    seen = {e.name.split(".", 1)[1] for e in prof.events() if e.name.startswith("lookahead.")}
    assert seen == set(PHASES)
    with pytest.raises(ValueError, match="--device cpu"):
        benchmark_steps(model="mlp", input_shape=(12,), num_outputs=3, device=torch.device("meta"), breakdown=True)


def test_learners_refuse_a_loss_without_a_scalar_reduction():
    """Per-element values cannot be differentiated as one loss: refused when the learner is built."""
    loss = losses.MLPLoss(hidden=(3,), reduction="none").double()
    with pytest.raises(ValueError, match=r"MLPLoss\(reduction='none'\).*reduction='mean' \(the default\) or 'sum'"):
        OnlineLossLearner(tiny_mlp(), loss, rule=SGDRule(lr=0.1))
    with pytest.raises(ValueError, match=r"reduction='none'"):
        offline_initialise(tiny_mlp(), loss, lambda s: (batch(8, (5,), 3, seed=s), batch(8, (5,), 3, seed=s + 1)),
                           steps=1, rule=SGDRule(lr=0.1))
