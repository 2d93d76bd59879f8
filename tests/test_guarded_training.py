"""Training with the descent guard on real data: learned losses on regression stay finite and near
squared error for any offline phase (with --no-descent-guard the default AdaLFL reached test MSE
4.4e10 on diabetes in 1,000 steps), and the README's own-loop recipe trains a BatchNorm/residual CNN from a fresh loss."""
from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from losses import GradientScaledLoss, MLPLoss, task_loss
from toolkit.data.datasets import load_dataset
from toolkit.meta.lookahead import SGDRule
from toolkit.meta.guard import check_step
from toolkit.meta.rules import SGDState
from toolkit.meta.online import OnlineLossLearner
from toolkit.runs.run import train
from toolkit.runs.common import BatchStream, TrainConfig, evaluate


@pytest.mark.parametrize("init_steps,loss_param", [(0, "mlp"), (60, "taylor")])
@pytest.mark.slow
def test_learned_losses_on_regression_stay_finite_and_near_squared_error(init_steps, loss_param) -> None:
    data = load_dataset("diabetes", seed=0)
    common = dict(dataset="diabetes", model="mlp", steps=200, lr=0.01, batch_size=64, device="cpu",
                  checkpoint_every=0)
    mse = train(TrainConfig(loss="mse", **common), progress=False, dataset=data)["test_mse"]
    learned = train(TrainConfig(loss="adalfl", loss_param=loss_param, init_steps=init_steps, **common),
                    progress=False, dataset=data)["test_mse"]
    assert learned < 1.5 * mse, (learned, mse)
    ml3 = train(TrainConfig(loss="ml3", loss_param=loss_param, init_steps=max(init_steps, 20), **common),
                progress=False, dataset=data)["test_mse"]
    assert ml3 < 1.5 * mse, (ml3, mse)


class SmallResidualCNN(nn.Module):
    """A user's CNN: BatchNorm, max pooling and a residual block (not a chain of known layers)."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                   nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.head = nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, classes))

    def forward(self, x):
        h = self.stem(x)
        return self.head(torch.relu(h + self.block(h)))


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def _own_loop(digits, seed: int, *, steps: int, descent_guard: bool = True) -> tuple[float, dict]:
    """The README's own-training-loop recipe on the CNN; (test error, guard shares)."""
    torch.manual_seed(seed)
    model = SmallResidualCNN()
    learner = OnlineLossLearner(model, GradientScaledLoss(MLPLoss()), rule=SGDRule(lr=0.1, momentum=0.9),
                                descent_guard=descent_guard)
    x, y = digits.train.x.reshape(-1, 1, 8, 8), digits.train.y
    xv, yv = digits.valid.x.reshape(-1, 1, 8, 8), digits.valid.y
    train_batches, valid_batches = BatchStream(x, y, 64, seed=seed), BatchStream(xv, yv, 64, seed=seed + 1)
    for step in range(steps):
        learner.step(train_batches(step), valid_batches(step))
    error = evaluate(model, digits.test.x.reshape(-1, 1, 8, 8), digits.test.y, task="classification")["error"]
    return error, learner.guard_record()


@pytest.mark.parametrize("seed", [0, 3])  # fresh MLPLoss() anti-aligned for (nearly) every sample
@pytest.mark.slow
def test_own_loop_recipe_trains_a_batchnorm_residual_cnn(digits, seed) -> None:
    error, shares = _own_loop(digits, seed, steps=100)
    assert shares["guarded"] > 0.5  # the guard was needed: the fresh loss pointed uphill
    assert shares["rejected_steps"] > 0  # and some first-order-downhill steps still went up
    assert error < 0.1, error  # chance is 0.9; unguarded this seed ends at 0.9


def test_without_the_guard_the_same_recipe_trains_backwards(digits) -> None:
    error, shares = _own_loop(digits, 0, steps=60, descent_guard=False)
    assert shares == {} and error > 0.5, error


def test_a_step_that_raises_the_batch_loss_is_replaced_by_the_task_losses_own_step() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    learner = OnlineLossLearner(model, MLPLoss(hidden=(4,)).double(), rule=SGDRule(lr=0.1, momentum=0.9))
    x, y = torch.randn(16, 5, dtype=torch.float64), torch.randint(0, 3, (16,))
    params = dict(model.named_parameters())
    theta = {k: p.detach().clone() for k, p in params.items()}
    leaf = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
    before = task_loss(torch.func.functional_call(model, leaf, (x,)), y, "classification")
    task_grads = dict(zip(leaf, torch.autograd.grad(before, list(leaf.values()))))
    task_step, task_state = learner.rule.update(theta, task_grads, learner.rule.init(theta))
    task_momentum = task_state.momentum
    worse = {k: v + 3.0 * torch.randn_like(v) for k, v in theta.items()}  # raises the batch loss
    momentum = SGDState(momentum={k: torch.ones_like(v) for k, v in theta.items()})
    fresh = learner.rule.init(theta)
    chosen, chosen_state, rejected = check_step(model, (x, y), params, worse, momentum, task_grads,
                                                before.detach(), fresh, learner.rule, "classification")
    assert bool(rejected)
    for k in theta:
        torch.testing.assert_close(chosen[k], task_step[k], rtol=0, atol=0)
        torch.testing.assert_close(chosen_state.momentum[k], task_momentum[k], rtol=0, atol=0)
    chosen, chosen_state, rejected = check_step(model, (x, y), params, task_step, SGDState(momentum=task_momentum),
                                                task_grads, before.detach(), fresh, learner.rule, "classification")
    assert not bool(rejected)  # a step that lowers the batch loss is kept as it is
    assert all(torch.equal(chosen[k], task_step[k]) for k in theta)


def test_guarded_fixed_loss_steps_equal_torch_optim_sgd_when_nothing_is_reflected() -> None:
    """A frozen learned loss that points downhill everywhere: the guarded functional step is torch's SGD."""
    import copy

    from losses import SymbolicLoss
    from toolkit.runs.steppers import FixedLossStepper

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    reference = copy.deepcopy(model)
    loss = SymbolicLoss("-2.0*y*log(y_pred)", dtype=torch.float64, trainable=False)  # cross-entropy's shape
    config = TrainConfig(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
    guarded = FixedLossStepper(model, loss, config, guard_task="classification")
    plain = FixedLossStepper(reference, loss, config)
    for step in range(5):
        generator = torch.Generator().manual_seed(step)
        batch = (torch.randn(16, 5, generator=generator, dtype=torch.float64),
                 torch.randint(0, 3, (16,), generator=generator))
        guarded.step(batch, lr=0.05)
        plain.step(batch, lr=0.05)
    assert guarded.diagnostics() == {"guarded": 0.0, "guarded_steps": 0.0, "rejected_steps": 0.0}
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12, msg=name)


class _FlatLoss(nn.Module):
    """A learned loss that is flat everywhere (as ML3's saturated to 0 far from the targets): zero gradient."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, outputs, targets):
        return self.weight * outputs.sum()


def test_a_flat_learned_loss_cannot_stall_training() -> None:
    """Every zero step is rejected, so the guarded stepper takes exactly torch.optim.SGD's MSE steps."""
    import copy
    from toolkit.meta.online import frozen_copy
    from toolkit.runs.steppers import FixedLossStepper
    from toolkit.runs.common import TrainConfig

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    reference = copy.deepcopy(model)
    config = TrainConfig(dataset="diabetes", model="mlp", loss="ml3", lr=0.05)
    stepper = FixedLossStepper(model, frozen_copy(_FlatLoss()), config, guard_task="regression")
    opt = torch.optim.SGD(reference.parameters(), lr=0.05)
    for step in range(5):
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(16, 4, generator=g, dtype=torch.float64), torch.randn(16, generator=g, dtype=torch.float64)
        stepper.step((x, y), lr=0.05)
        opt.zero_grad()
        task_loss(reference(x), y, "regression").backward()
        opt.step()
    assert stepper.diagnostics()["rejected_steps"] == 1.0
    for (k, a), (_, b) in zip(model.named_parameters(), reference.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=k)


@contextlib.contextmanager
def _device_route(monkeypatch):
    """The guard's and the learner's device route (select with torch.where) forced on the CPU."""
    import toolkit.meta.guard as guard
    import toolkit.meta.online as online
    with monkeypatch.context() as patch:
        for module in (guard, online):
            patch.setattr(module, "decided_on_host", lambda flag: None)
        yield


@pytest.mark.parametrize("uphill", [True, False])
def test_the_parameter_reflection_skipped_on_the_cpu_equals_the_device_route(monkeypatch, uphill) -> None:
    """A reflection not taken is the identity whether it is skipped (CPU) or applied with coefficient 0 (device);
    a reflection taken is the same either way; both equal t − 2 (t·g_L)/‖g_L‖² g_L."""
    from toolkit.meta.guard import parameter_reflection
    torch.manual_seed(0)
    task = {"a": torch.randn(4, 3, dtype=torch.float64), "b": torch.randn(5, dtype=torch.float64)}
    grads = {k: (-1.0 if uphill else 1.0) * v + 0.3 * torch.randn_like(v) for k, v in task.items()}
    tangent = {k: torch.randn_like(v) for k, v in task.items()}
    results = []
    for forced in (False, True):
        with _device_route(monkeypatch) if forced else contextlib.nullcontext():
            step = parameter_reflection(grads, task)
            results.append((bool(step.uphill), step(grads, dot=step.dot), step(tangent)))
    (host_uphill, host_g, host_w), (device_uphill, device_g, device_w) = results
    assert host_uphill == device_uphill == uphill
    gg = sum((v * v).sum() for v in task.values())
    for given, host, device in ((grads, host_g, device_g), (tangent, host_w, device_w)):
        dot = sum((given[k] * task[k]).sum() for k in task)
        for k in task:
            assert torch.equal(host[k], device[k])
            expected = given[k] - 2 * dot / gg * task[k] if uphill else given[k]
            torch.testing.assert_close(host[k], expected, rtol=1e-13, atol=1e-13)


def test_the_cpu_branches_on_guard_verdicts_equal_the_device_selects(digits, monkeypatch) -> None:
    """On the CPU the guard reads its verdicts and skips the work they void (a reflection not taken, the fallback
    step not chosen, the select of a committed step); on a device it selects with ``torch.where``. Forcing the
    device route on the CPU must give the same run, bit for bit, over steps that keep and reject their step."""
    import copy

    def run():
        torch.manual_seed(0)
        model = SmallResidualCNN()
        learner = OnlineLossLearner(model, GradientScaledLoss(MLPLoss()), rule=SGDRule(lr=0.1, momentum=0.9))
        x, y = digits.train.x.reshape(-1, 1, 8, 8), digits.train.y
        xv, yv = digits.valid.x.reshape(-1, 1, 8, 8), digits.valid.y
        batches, valid = BatchStream(x, y, 64, seed=0), BatchStream(xv, yv, 64, seed=1)
        for step in range(12):
            learner.step(batches(step), valid(step))
        return copy.deepcopy(model.state_dict()), copy.deepcopy(learner.loss.state_dict()), learner.guard_record()

    host = run()
    with _device_route(monkeypatch):
        device = run()
    shares = host[2]
    assert 0 < shares["rejected_steps"] < 1 and shares["guarded"] > 0  # steps kept and steps rejected
    assert device[2] == shares
    for ours, theirs in ((host[0], device[0]), (host[1], device[1])):
        assert ours.keys() == theirs.keys()
        for k in ours:
            assert torch.equal(ours[k], theirs[k]), k


@pytest.mark.parametrize("guard", [True, False])
def test_a_reused_formula_without_constants_is_guarded_as_a_learned_loss(guard) -> None:
    """A loss from --loss-from is a learned loss whether or not its formula kept a numeric constant: with the guard
    on, an ascent formula (minus squared error) is reflected on its rows and results.json says so."""
    config = TrainConfig(loss_from="-(y_pred - y)**2", dataset="digits", model="mlp", steps=4, batch_size=16,
                         device="cpu", checkpoint_every=0, descent_guard=guard)
    results = train(config, progress=False)
    if guard:
        assert results["guarded"] > 0.5 and "guarded_steps" in results
    else:
        assert "guarded" not in results
