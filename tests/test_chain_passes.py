"""Forward and reverse passes over verified chains against the modules and autograd (float64)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import CHAINS, FROZEN, assert_meta_gradients_close, batch
from toolkit.chain_passes import chain_forward, chain_vjp, supports_passes
from toolkit.lookahead import SGDRule, meta_gradient_fast, meta_gradient_naive
from toolkit.models import build_model
from toolkit.tangents import as_chain, record_chain


def _recorded(model, x, params):
    with torch.enable_grad(), record_chain(model) as recording:
        outputs = model(x)
    return as_chain(recording, outputs, set(params)), outputs


def _takes_the_input(model, x) -> bool:
    with record_chain(model) as recording:
        model(x)
    return recording.first_input is x


STARTS_AT_INPUT = [name for name in CHAINS if name != "logreg"]  # logreg flattens inside its forward


def _model(name):
    factory, shape = CHAINS[name]
    torch.manual_seed(0)
    return factory().double(), shape


@pytest.mark.parametrize("name", STARTS_AT_INPUT)
def test_chain_forward_equals_the_module_on_another_input_and_parameters(name):
    model, shape = _model(name)
    params = {k: p for k, p in model.named_parameters()}
    x = torch.randn(*shape, dtype=torch.float64)
    chain, _ = _recorded(model, x, params)
    assert chain is not None and supports_passes(chain)
    assert _takes_the_input(model, x)
    other = {k: p.detach() + 0.1 * torch.randn_like(p) for k, p in params.items()}
    x = torch.randn(*shape, dtype=torch.float64)
    outputs, links = chain_forward(chain, other, x)
    with torch.no_grad():
        reference = torch.func.functional_call(model, other, (x,))
    torch.testing.assert_close(outputs, reference, rtol=1e-13, atol=1e-13)
    assert [link.module for link in links] == [link.module for link in chain]


@pytest.mark.parametrize("name, route", [(n, "recorded") for n in CHAINS] +
                         [(n, "chain_forward") for n in STARTS_AT_INPUT])
def test_chain_vjp_equals_autograd(name, route):
    """Parameter gradients of Σ δ ⊙ f, from the training forward's recording or from chain_forward;
    shared layers sum their uses; the cotangent is left as it was."""
    model, shape = _model(name)
    params = {k: p for k, p in model.named_parameters()}
    x = torch.randn(*shape, dtype=torch.float64)
    chain, outputs = _recorded(model, x, params)
    if route == "chain_forward":
        _, chain = chain_forward(chain, params, x)
    delta = torch.randn_like(outputs)
    kept = delta.clone()
    got = chain_vjp(chain, params, delta)
    want = torch.autograd.grad(outputs, list(params.values()), delta)
    assert list(got) == list(params)
    for (k, g), w in zip(got.items(), want):
        assert g.grad_fn is None
        torch.testing.assert_close(g, w, rtol=1e-11, atol=1e-12, msg=k)
    assert torch.equal(delta, kept)


@pytest.mark.parametrize("name", FROZEN)
def test_chain_vjp_gives_only_the_trainable_gradients(name):
    torch.manual_seed(0)
    model = build_model("lenet5", input_shape=(1, 12, 12), num_outputs=4).double()
    FROZEN[name](model)
    params = {k: p for k, p in model.named_parameters() if p.requires_grad}
    x = torch.randn(5, 1, 12, 12, dtype=torch.float64)
    chain, outputs = _recorded(model, x, params)
    delta = torch.randn_like(outputs)
    got = chain_vjp(chain, params, delta)
    want = torch.autograd.grad(outputs, list(params.values()), delta)
    assert list(got) == list(params)
    for (k, g), w in zip(got.items(), want):
        torch.testing.assert_close(g, w, rtol=1e-11, atol=1e-12, msg=k)


def test_floor_mode_pooling_gives_no_gradient_past_the_last_window():
    """7x7 pooled by 2: the last row and column get zero gradient, as in avg_pool2d's backward."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 2), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(18, 3)).double()
    params = dict(model.named_parameters())
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    chain, outputs = _recorded(model, x, params)
    delta = torch.randn_like(outputs)
    for (k, g), w in zip(chain_vjp(chain, params, delta).items(),
                         torch.autograd.grad(outputs, list(params.values()), delta)):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-13, msg=k)


HOOKED = {
    "forward-hook": lambda m: m[1].register_forward_hook(lambda mod, args, out: 2 * out),
    "pre-hook": lambda m: m[2].register_forward_pre_hook(lambda mod, args: (args[0] + 1,)),
}


@pytest.mark.parametrize("name", HOOKED)
def test_modules_with_hooks_are_not_chains_and_the_lookahead_stays_exact(name):
    """A hook can change what a layer computes, so its rule would be wrong: autograd takes over."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    handle = HOOKED[name](model)
    params = {k: p.detach().clone() for k, p in model.named_parameters()}
    chain, _ = _recorded(model, torch.randn(4, 5, dtype=torch.float64), params)
    assert chain is None
    _fast_equals_naive(model, params, (5,))
    handle.remove()


def test_in_place_relu_is_not_a_chain():
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.ReLU(inplace=True), nn.Linear(6, 3)).double()
    params = dict(model.named_parameters())
    chain, _ = _recorded(model, torch.randn(4, 5, dtype=torch.float64), params)
    assert chain is None


def test_string_padding_keeps_autograd_passes_and_the_lookahead_exact():
    """padding="same" has a tangent rule but no written-out backward: the passes go through autograd."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding="same"), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(),
                          nn.Linear(2 * 3 * 3, 3)).double()
    params = {k: p.detach().clone() for k, p in model.named_parameters()}
    chain, _ = _recorded(model, torch.randn(4, 1, 6, 6, dtype=torch.float64), params)
    assert chain is not None and not supports_passes(chain)
    _fast_equals_naive(model, params, (1, 6, 6))


def _fast_equals_naive(model, params, shape):
    import losses
    loss = losses.GradientScaledLoss(losses.MLPLoss(hidden=(5, 5)), max_scale=2.0).double()
    train, valid = batch(8, shape, 3, seed=1), batch(6, shape, 3, seed=2)
    rule = SGDRule(lr=0.1, momentum=0.9, weight_decay=0.01)
    fast, naive = (fn(model, params, {}, loss, dict(loss.named_parameters()), train, valid, rule)
                   for fn in (meta_gradient_fast, meta_gradient_naive))
    assert_meta_gradients_close(fast, naive)
    for k in params:
        torch.testing.assert_close(fast.params[k], naive.params[k], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("task", ["classification", "binary", "regression"])
def test_lookahead_through_the_passes_equals_the_naive_route(task):
    """LeNet-5 (a chain: its gradients come from the written-out passes) against the unrolled route,
    for each meta-objective the passes write out (cross-entropy, one-output BCE, MSE)."""
    import losses
    torch.manual_seed(0)
    outputs = 1 if task == "binary" else 4
    model = build_model("lenet5", input_shape=(1, 12, 12), num_outputs=outputs).double()
    params = {k: p.detach().clone() for k, p in model.named_parameters()}
    loss_task = "regression" if task == "regression" else "classification"
    loss = losses.GradientScaledLoss(losses.MLPLoss(hidden=(5, 5), task=loss_task), max_scale=2.0).double()
    (x, y), (x_v, y_v) = batch(8, (1, 12, 12), 2, seed=1), batch(6, (1, 12, 12), 2, seed=2)
    if task == "regression":
        y, y_v = torch.randn(8, outputs, dtype=torch.float64), torch.randn(6, outputs, dtype=torch.float64)
    rule = SGDRule(lr=0.05, momentum=0.9, nesterov=True)
    fast, naive = (fn(model, params, {}, loss, dict(loss.named_parameters()), (x, y), (x_v, y_v), rule,
                      task=loss_task) for fn in (meta_gradient_fast, meta_gradient_naive))
    assert_meta_gradients_close(fast, naive)
    torch.testing.assert_close(fast.meta_loss, naive.meta_loss, rtol=1e-12, atol=0)
    for k in params:
        torch.testing.assert_close(fast.params[k], naive.params[k], rtol=1e-12, atol=1e-12)


def test_a_forward_that_transforms_its_input_keeps_autograd_passes():
    """logreg flattens inside forward: the first layer does not take the input, so chain_forward
    (which starts from the input) is not used; the lookahead stays exact."""
    torch.manual_seed(0)
    model = build_model("logreg", input_shape=(2, 3, 3), num_outputs=3).double()
    x = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    assert not _takes_the_input(model, x)
    _fast_equals_naive(model, {k: p.detach().clone() for k, p in model.named_parameters()}, (2, 3, 3))
