"""GradientScaledLoss: the step's size comes from the task loss, its direction from the learned loss."""
from __future__ import annotations

import math

import pytest
import sympy
import torch
import torch.nn.functional as F
from torch.func import functional_call

import losses
from losses import GradientScaledLoss, MLPLoss, TaylorLoss
from losses.symbols import Y_PRED, Y_TRUE


def _outputs(batch, classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, classes, generator=g, dtype=torch.float64) * 2


def _grad(fn, outputs):
    f = outputs.clone().requires_grad_(True)
    return torch.autograd.grad(fn(f), f)[0]


def _task_reference(task, classes):
    """The meta-objective, written with torch.nn.functional (independent of task_gradient)."""
    if task == "regression":
        return lambda f, y: F.mse_loss(f, y)
    if classes == 1:
        return lambda f, y: F.binary_cross_entropy_with_logits(f.squeeze(1), y.double())
    return F.cross_entropy


@pytest.mark.parametrize("task, classes", [("classification", 10), ("classification", 1), ("regression", 3)])
@pytest.mark.parametrize("logit", [0.0, 0.7, -1.3])
def test_gradient_has_the_task_losss_norm_times_the_scale(task, classes, logit):
    torch.manual_seed(1)
    inner = MLPLoss(hidden=(8, 8), task=task)
    loss = GradientScaledLoss(inner, max_scale=4.0).double()
    with torch.no_grad():
        loss.scale_logit.fill_(logit)
    outputs = _outputs(16, classes)
    if task == "regression":
        targets = _outputs(16, classes, seed=1)
    else:
        targets = torch.randint(0, max(classes, 2), (16,), generator=torch.Generator().manual_seed(2))
    step = _grad(lambda f: loss(f, targets), outputs)
    reference = _grad(lambda f: _task_reference(task, classes)(f, targets), outputs)
    direction = _grad(lambda f: inner.double()(f, targets), outputs)
    scale = 4.0 ** math.tanh(logit)
    assert float(loss.scale.detach()) == pytest.approx(scale, rel=1e-12)
    assert float(step.norm() / reference.norm()) == pytest.approx(scale, rel=1e-10)
    cosine = (step * direction).sum() / (step.norm() * direction.norm())
    assert float(cosine) == pytest.approx(1.0, abs=1e-12)


def test_scale_is_bounded_and_starts_at_one():
    fixed = GradientScaledLoss(MLPLoss(), max_scale=1.0)
    with torch.no_grad():
        fixed.scale_logit.fill_(3.0)
    assert float(fixed.scale.detach()) == 1.0
    loss = GradientScaledLoss(MLPLoss(), max_scale=5.0)
    assert float(loss.scale.detach()) == 1.0
    with torch.no_grad():
        loss.scale_logit.fill_(50.0)
        assert float(loss.scale.detach()) == pytest.approx(5.0)
        loss.scale_logit.fill_(-50.0)
        assert float(loss.scale.detach()) == pytest.approx(0.2)


def test_the_step_ignores_the_inner_losss_own_scale():
    """Taylor losses are linear in their coefficients: scaling them scales ℓ, not the step."""
    torch.manual_seed(0)
    inner = TaylorLoss.taylorglo().double()
    with torch.no_grad():
        inner.coefficients.copy_(torch.randn_like(inner.coefficients))
    loss = GradientScaledLoss(inner).double()
    outputs, targets = _outputs(12, 4), torch.arange(12) % 4
    before = _grad(lambda f: loss(f, targets), outputs)
    with torch.no_grad():
        inner.coefficients.mul_(37.0)
    after = _grad(lambda f: loss(f, targets), outputs)
    torch.testing.assert_close(after, before, rtol=1e-10, atol=1e-14)


def test_meta_gradients_reach_the_shape_and_the_scale_through_functional_call():
    torch.manual_seed(0)
    loss = GradientScaledLoss(MLPLoss(hidden=(4, 4)), max_scale=2.0).double()
    params = dict(loss.named_parameters())
    assert set(params) == {"scale_logit", *(f"shape.{k}" for k, _ in loss.shape.named_parameters())}
    outputs, targets = _outputs(8, 3), torch.arange(8) % 3
    f = outputs.clone().requires_grad_(True)
    m = torch.autograd.grad(functional_call(loss, params, (f, targets)), f, create_graph=True)[0]
    u = torch.randn_like(m)
    grads = torch.autograd.grad((u * m).sum(), list(params.values()))
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    fixed = GradientScaledLoss(MLPLoss(hidden=(4, 4)), max_scale=1.0).double()  # the default: nothing to learn
    m = torch.autograd.grad(fixed(f, targets), f, create_graph=True)[0]
    assert float(torch.autograd.grad((u * m).sum(), fixed.scale_logit)[0]) == 0.0


def test_works_without_grad_and_has_no_gradient_without_it():
    loss = GradientScaledLoss(MLPLoss())
    outputs, targets = torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1])
    with torch.no_grad():
        value = loss(outputs, targets)
    assert torch.isfinite(value) and value.grad_fn is None
    assert GradientScaledLoss(loss.shape, reduction="none")(outputs, targets).shape == (5, 3)


def test_formula_is_the_inner_shape_and_round_trips():
    torch.manual_seed(3)
    inner = MLPLoss(hidden=(3, 3)).double()
    loss = GradientScaledLoss(inner, max_scale=2.5).double()
    with torch.no_grad():
        loss.scale_logit.fill_(0.25)
    assert loss.to_sympy() == inner.to_sympy()
    fn = sympy.lambdify((Y_PRED, Y_TRUE), loss.to_sympy(), "math")
    p = torch.tensor([0.01, 0.3, 0.99], dtype=torch.float64)
    y = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    expected = loss.elementwise(p, y).detach()
    for i in range(3):
        assert fn(float(p[i]), float(y[i])) == pytest.approx(float(expected[i]), rel=1e-9)
    again = losses.loss_from_dict(losses.loss_to_dict(loss))
    assert isinstance(again, GradientScaledLoss) and again.max_scale == 2.5
    assert float(again.scale.detach()) == pytest.approx(float(loss.scale.detach()), rel=1e-15)
    outputs, targets = _outputs(6, 4), torch.arange(6) % 4
    torch.testing.assert_close(again(outputs, targets), loss(outputs, targets), rtol=1e-15, atol=0)


def test_saved_file_round_trip(tmp_path):
    loss = GradientScaledLoss(TaylorLoss.taylorglo(task="regression"))
    path = losses.save_loss(loss, tmp_path / "loss.json")
    again = losses.load_loss(path)
    assert again.task == "regression" and again.shape.kind == "taylor"


def test_bad_arguments_name_the_fix():
    with pytest.raises(ValueError, match="max_scale must be a finite number >= 1"):
        GradientScaledLoss(MLPLoss(), max_scale=0.5)
    with pytest.raises(ValueError, match="wrap its .shape"):
        GradientScaledLoss(GradientScaledLoss(MLPLoss()))
    with pytest.raises(ValueError, match="differs"):
        GradientScaledLoss(MLPLoss(task="regression"), task="classification")
    data = losses.loss_to_dict(GradientScaledLoss(MLPLoss()), formula=False)
    data["config"]["shape"]["kind"] = "nope"
    with pytest.raises(losses.LossFileError, match="unknown inner loss kind"):
        losses.loss_from_dict(data)


def test_a_frozen_copy_steps_identically_without_a_second_order_graph():
    from toolkit.meta.online import frozen_copy

    torch.manual_seed(6)
    loss = GradientScaledLoss(MLPLoss(hidden=(5, 5)), max_scale=2.0).double()
    with torch.no_grad():
        loss.scale_logit.fill_(0.3)
    frozen = frozen_copy(loss)
    outputs, targets = _outputs(9, 4), torch.arange(9) % 4
    assert frozen.factor(outputs, losses.encode_targets(targets, outputs, "classification")).grad_fn is None
    assert loss.factor(outputs, losses.encode_targets(targets, outputs, "classification")).grad_fn is not None
    expected = _grad(lambda f: loss(f, targets), outputs)
    torch.testing.assert_close(_grad(lambda f: frozen(f, targets), outputs), expected, rtol=0, atol=0)
