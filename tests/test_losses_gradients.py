"""Gradients: finite at the edges, second order for meta-learning, torch.func, float32 and float64."""

from __future__ import annotations

import pytest
import torch
from test_losses_cases import CASE_IDS, F64, element_inputs, make_loss
from torch.func import functional_call, grad

from losses.derivatives import value_gradient_pullback

from losses import MLPLoss

CLASSIFICATION = [case for case in CASE_IDS if make_loss(case).task == "classification"]
LEARNED = [case for case in CASE_IDS if any(True for _ in make_loss(case).parameters())]


def _extreme_batch(dtype: torch.dtype, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    pattern = torch.tensor([50.0, -50.0, 0.0, 50.0, -50.0, 3.0], dtype=dtype)
    logits = torch.stack([pattern.roll(i)[:classes] for i in range(6)])
    labels = torch.tensor([0, 1, 1, 0, 1, 0]) % max(classes, 2)
    return logits.requires_grad_(True), labels


def _classes(case: str) -> int:
    return 1 if case == "ce-binary" else 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", CLASSIFICATION)
def test_gradients_through_forward_are_finite_for_saturated_probabilities(case: str, dtype: torch.dtype) -> None:
    loss = make_loss(case).to(dtype)
    logits, labels = _extreme_batch(dtype, _classes(case))
    value = loss(logits, labels)
    inputs = [logits, *loss.parameters()]
    gradients = torch.autograd.grad(value, inputs, allow_unused=True)
    assert torch.isfinite(value)
    assert all(g is None or torch.isfinite(g).all() for g in gradients)
    assert gradients[0].abs().sum() > 0


@pytest.mark.parametrize("case", LEARNED)
def test_second_derivatives_for_meta_gradients_are_finite(case: str) -> None:
    """d/dφ of (v · ∂M/∂outputs): the double derivative the exact meta-gradient needs."""
    loss = make_loss(case)
    if loss.task == "classification":
        outputs, targets = _extreme_batch(F64, 4)
    else:
        outputs = torch.tensor([[1e3, -2.0], [0.5, -1e3], [0.0, 3.0]], dtype=F64, requires_grad=True)
        targets = torch.tensor([[-1e3, 1.0], [0.5, 2.0], [1.0, -3.0]], dtype=F64)
    (d_outputs,) = torch.autograd.grad(loss(outputs, targets), outputs, create_graph=True)
    direction = torch.linspace(-1, 1, outputs.numel(), dtype=F64).reshape(outputs.shape)
    meta = torch.autograd.grad((d_outputs * direction).sum(), list(loss.parameters()), allow_unused=True)
    assert all(g is None or torch.isfinite(g).all() for g in meta)
    assert any(g is not None and g.abs().sum() > 0 for g in meta)


@pytest.mark.parametrize("case", LEARNED)
def test_functional_call_gradients_equal_autograd(case: str) -> None:
    loss = make_loss(case)
    outputs = torch.randn(5, 3, dtype=F64)
    targets = torch.tensor([0, 2, 1, 1, 0]) if loss.task == "classification" else torch.randn(5, 3, dtype=F64)
    params = {name: p.detach().clone() for name, p in loss.named_parameters()}
    functional = grad(lambda p: functional_call(loss, p, (outputs, targets)))(params)
    reference = dict(zip(params, torch.autograd.grad(loss(outputs, targets), list(loss.parameters()))))
    for name in params:
        torch.testing.assert_close(functional[name], reference[name])


@pytest.mark.parametrize("case", ["mlp", "taylorglo", "symbolic", "ml3"])
def test_one_step_meta_gradient_through_a_base_model(case: str) -> None:
    """θ' = θ − α ∇θ M_φ(f_θ(x), y); dL_task(θ')/dφ exists, is finite and non-zero."""
    torch.manual_seed(0)
    loss = make_loss(case)
    model_weight = torch.randn(3, 4, dtype=F64, requires_grad=True)
    x, labels = torch.randn(8, 3, dtype=F64), torch.randint(0, 4, (8,))
    (step,) = torch.autograd.grad(loss(x @ model_weight, labels), model_weight, create_graph=True)
    new_weight = model_weight - 0.1 * step
    task_loss = torch.nn.functional.cross_entropy(x @ new_weight, labels)
    meta = torch.autograd.grad(task_loss, list(loss.parameters()), allow_unused=True)
    assert all(g is None or torch.isfinite(g).all() for g in meta)
    assert sum(float(g.abs().sum()) for g in meta if g is not None) > 0


@pytest.mark.parametrize("options", [{}, {"bias": True, "output": "smooth_leaky_relu"}, {"activation": "softplus"},
                                     {"activation": "tanh", "output": "identity"}], ids=str)
def test_mlp_gradients_pass_gradcheck_including_the_origin(options: dict) -> None:
    """At (0, 0) a bias-free net has all pre-activations exactly 0: φ'(0) must be γ + (1−γ)/2."""
    torch.manual_seed(0)
    loss = MLPLoss(hidden=(3, 2), dtype=F64, **options)
    y_pred = torch.tensor([0.0, 0.3, 0.9, 1.0], dtype=F64, requires_grad=True)
    y_true = torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(loss.elementwise, (y_pred, y_true))
    assert torch.autograd.gradgradcheck(loss.elementwise, (y_pred, y_true))


def test_losses_work_in_float32_and_refuse_mixed_dtypes() -> None:
    loss = make_loss("mlp").float()
    outputs, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    assert loss(outputs, labels).dtype == torch.float32
    with pytest.raises(TypeError, match=r"parameters are torch.float32 but the inputs are torch.float64"):
        loss(outputs.double(), labels)
    with pytest.raises(TypeError, match="loss.to"):
        loss.elementwise(torch.rand(3, dtype=F64), torch.rand(3, dtype=F64))


def _batch_for(case: str, loss, *, extreme: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if loss.task == "classification":
        if extreme:
            logits, labels = _extreme_batch(F64, _classes(case))
            return logits.detach(), labels
        classes = _classes(case)
        return torch.randn(7, classes, dtype=F64), torch.arange(7) % max(classes, 2)
    if extreme:
        return (torch.tensor([[1e3, -2.0], [0.5, -1e3], [0.0, 3.0]], dtype=F64),
                torch.tensor([[-1e3, 1.0], [0.5, 2.0], [1.0, -3.0]], dtype=F64))
    return torch.randn(7, 3, dtype=F64), torch.randn(7, 3, dtype=F64)


@pytest.mark.parametrize("extreme", [False, True], ids=["random", "saturated"])
@pytest.mark.parametrize("case", [c for c in CASE_IDS if hasattr(make_loss(c), "mean_and_output_gradient")])
def test_mean_and_output_gradient_equal_autograd(case: str, extreme: bool) -> None:
    """(ℓ̄, ∂ℓ̄/∂f) derived with torch.func, and its derivative in φ, against autograd through forward."""
    loss = make_loss(case)
    outputs, targets = _batch_for(case, loss, extreme=extreme)
    from losses.base import encode_targets
    f = outputs.clone().requires_grad_(True)
    value = loss(f, targets)
    (expected,) = torch.autograd.grad(value, f, create_graph=True)
    got_value, m = loss.mean_and_output_gradient(outputs, encode_targets(targets, outputs, loss.task))
    torch.testing.assert_close(got_value.detach(), value.detach(), rtol=1e-14, atol=0)
    torch.testing.assert_close(m.detach(), expected.detach(), rtol=1e-12, atol=1e-16)
    params = [p for p in loss.parameters()]
    if not params or not m.requires_grad:
        return
    u = torch.linspace(-1, 1, m.numel(), dtype=F64).reshape(m.shape)
    got = torch.autograd.grad((u * m).sum(), params, allow_unused=True)
    want = torch.autograd.grad((u * expected).sum(), params, allow_unused=True)
    for a, b in zip(got, want):
        if a is None or b is None:
            assert (a is None or not a.any()) and (b is None or not b.any())
        else:
            torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-15)


def _wrapped(case: str, logit: float = 0.4):
    """The case inside a GradientScaledLoss whose scale is free (B = 3) and away from s = 1."""
    from losses import GradientScaledLoss
    loss = GradientScaledLoss(make_loss(case), max_scale=3.0).double()
    with torch.no_grad():
        loss.scale_logit.fill_(logit)
    return loss


PULLBACK_CASES = [(case, False) for case in LEARNED] + [
    (case, True) for case in ("mlp", "mlp-regression", "mlp-bias-sleaky-out", "mlp-tanh-identity-deep",
                              "mlp-linear", "ml3", "taylorglo", "symbolic")]


def _check_pullback(loss, outputs, targets, *, seeds=(0, 1), rtol=1e-10, params=None) -> None:
    """value_gradient_pullback against autograd through the plain forward and its double backward."""
    params = dict(loss.named_parameters()) if params is None else params
    f = outputs.clone().requires_grad_(True)
    value = functional_call(loss, params, (f, targets))
    (expected,) = torch.autograd.grad(value, f, create_graph=True)
    got_value, m, pullback = value_gradient_pullback(loss, params, outputs, targets)
    torch.testing.assert_close(got_value, value.detach(), rtol=1e-14, atol=0)
    torch.testing.assert_close(m, expected.detach(), rtol=1e-12, atol=1e-16)
    assert got_value.grad_fn is None and m.grad_fn is None
    names = list(params)
    for seed in seeds:
        u = torch.randn(m.shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
        got = pullback(u)
        assert list(got) == names
        want = torch.autograd.grad((u * expected).sum(), [params[k] for k in names], allow_unused=True,
                                   retain_graph=True)
        # One meta-gradient vector: entries that cancel to rounding level (saturated batches) are
        # compared against the largest entry of the whole vector.
        scale = max([float(w.abs().max()) for w in want if w is not None] + [1e-300])
        for name, w in zip(names, want):
            assert got[name].grad_fn is None
            if w is None or not params[name].requires_grad:
                assert not got[name].any(), name
            else:
                torch.testing.assert_close(got[name], w, rtol=rtol, atol=1e-12 * scale, msg=name)


@pytest.mark.parametrize("extreme", [False, True], ids=["random", "saturated"])
@pytest.mark.parametrize("case, scaled", PULLBACK_CASES,
                         ids=[f"{c}{'-scaled' if s else ''}" for c, s in PULLBACK_CASES])
def test_value_gradient_pullback_equals_autograds_double_backward(case: str, scaled: bool, extreme: bool) -> None:
    """(M, m, pullback) derived with torch.func, with pullback(u) = d/dφ Σ u ⊙ m, against autograd."""
    loss = _wrapped(case) if scaled else make_loss(case)
    outputs, targets = _batch_for(case, loss, extreme=extreme)
    _check_pullback(loss, outputs, targets)


@pytest.mark.parametrize("case", [c for c in CASE_IDS if c.startswith(("mlp", "ml3"))])
def test_pullback_equals_autograd_past_the_softplus_threshold(case: str) -> None:
    """Weights large enough that pre-activations cross softplus's linear threshold (βz > 40) and ReLU's kink."""
    loss = make_loss(case)
    with torch.no_grad():
        for p in loss.parameters():
            p.mul_(30.0)
    outputs, targets = _batch_for(case, loss, extreme=False)
    _check_pullback(loss, outputs, targets, rtol=1e-9)


FREEZE = {"taylor": ("taylor-3", False, "centre"), "mlp": ("mlp-bias-sleaky-out", False, "layers.1.weight"),
          "scaled-scale": ("mlp", True, "scale_logit"), "scaled-shape": ("taylor-3", True, "shape.coefficients")}


@pytest.mark.parametrize("name", FREEZE)
def test_pullback_gives_zeros_for_frozen_parameters(name: str) -> None:
    """A parameter that does not require grad is a constant, as autograd treats it."""
    case, scaled, frozen = FREEZE[name]
    loss = _wrapped(case) if scaled else make_loss(case)
    dict(loss.named_parameters())[frozen].requires_grad_(False)
    outputs, targets = torch.randn(4, 3, dtype=F64), torch.tensor([0, 1, 2, 0])
    _, m, pullback = value_gradient_pullback(loss, dict(loss.named_parameters()), outputs, targets)
    got = pullback(torch.linspace(-1, 1, m.numel(), dtype=F64).reshape(m.shape))
    assert not got[frozen].any()
    assert all(g.any() for k, g in got.items() if k != frozen)


@pytest.mark.parametrize("case, scaled", [("mlp-bias-sleaky-out", False), ("mlp", True), ("taylor-3", True)],
                         ids=["mlp", "mlp-scaled", "taylor-scaled"])
def test_pullback_reads_the_parameters_it_is_given(case: str, scaled: bool) -> None:
    """The derivatives use the values passed in, not the module's own ones."""
    loss = _wrapped(case) if scaled else make_loss(case)
    outputs, targets = _batch_for(case, loss, extreme=False)
    other = {k: (p.detach() * 1.1 + 0.05).requires_grad_(True) for k, p in loss.named_parameters()}
    _check_pullback(loss, outputs, targets, params=other)
