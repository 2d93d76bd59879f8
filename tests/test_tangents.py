"""Chain JVPs from recorded activations against forward-mode AD (float64), and when they must not apply."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from helpers import CHAINS, FROZEN, tiny_bn_dropout, tiny_conv, tiny_mlp
from toolkit.lookahead import jacobian_vector_product
from toolkit.models import build_model
from toolkit.tangents import as_chain, chain_jvp, record_chain


class Doubling(nn.Module):
    """A forward with a functional op between layers: not a chain of modules."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.b(2 * self.a(x))




def _chain_and_reference(model, x):
    model = model.double()
    params = {k: p.detach() for k, p in model.named_parameters()}
    g = torch.Generator().manual_seed(7)
    v = {k: torch.randn(p.shape, generator=g, dtype=p.dtype) for k, p in params.items()}
    with torch.enable_grad(), record_chain(model) as links:
        outputs = functional_call(model, {k: p.requires_grad_(True) for k, p in
                                          ((k, p.clone()) for k, p in params.items())}, (x,))
    chain = as_chain(links, outputs, set(params))
    reference = jacobian_vector_product(model, params, dict(model.named_buffers()), x, v)
    return chain, (None if chain is None else chain_jvp(chain, params, v)), reference




@pytest.mark.parametrize("name", CHAINS)
def test_chain_jvp_equals_forward_mode_ad(name):
    factory, shape = CHAINS[name]
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64)
    chain, u, reference = _chain_and_reference(factory(), x)
    assert chain is not None, "expected a recognised chain"
    torch.testing.assert_close(u, reference, rtol=1e-12, atol=1e-12)


NOT_CHAINS = {
    "batchnorm-dropout": (tiny_bn_dropout, (6, 5)),
    "maxpool": (lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(18, 3)),
                (4, 1, 8, 8)),
    "functional-op": (Doubling, (4, 4)),
    "reflect-padding": (lambda: nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"),
                                              nn.Flatten(), nn.Linear(2 * 16, 3)), (3, 1, 4, 4)),
    "resnet": (lambda: build_model("resnet18", input_shape=(3, 8, 8), num_outputs=3), (2, 3, 8, 8)),
}


@pytest.mark.parametrize("name", NOT_CHAINS)
def test_models_that_are_not_verifiable_chains_fall_back(name):
    factory, shape = NOT_CHAINS[name]
    torch.manual_seed(0)
    chain, _, _ = _chain_and_reference(factory(), torch.randn(*shape, dtype=torch.float64))
    assert chain is None


def test_hooks_are_removed_after_recording():
    model = tiny_conv()
    with record_chain(model):
        model(torch.randn(2, 1, 8, 8, dtype=torch.float64))
    assert all(not m._forward_hooks for m in model.modules())




@pytest.mark.parametrize("name", FROZEN)
def test_frozen_parameters_are_constants_of_the_chain(name):
    """θ holds only the trainable parameters (as the learner passes it): frozen ones enter with their
    module values and no tangent, exactly as forward-mode AD over the trainable ones sees it."""
    torch.manual_seed(0)
    model = build_model("lenet5", input_shape=(1, 12, 12), num_outputs=4).double()
    FROZEN[name](model)
    params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    g = torch.Generator().manual_seed(3)
    v = {k: torch.randn(p.shape, generator=g, dtype=p.dtype) for k, p in params.items()}
    x = torch.randn(5, 1, 12, 12, dtype=torch.float64)
    with torch.enable_grad(), record_chain(model) as recording:
        outputs = functional_call(model, {k: p.clone().requires_grad_(True) for k, p in params.items()}, (x,))
    chain = as_chain(recording, outputs, set(params))
    assert chain is not None
    reference = jacobian_vector_product(model, params, dict(model.named_buffers()), x, v)
    torch.testing.assert_close(chain_jvp(chain, params, v), reference, rtol=1e-12, atol=1e-12)


def test_a_model_with_nothing_to_train_is_not_a_chain():
    model = tiny_mlp().requires_grad_(False)
    with record_chain(model) as recording:
        outputs = model(torch.randn(3, 5, dtype=torch.float64))
    assert as_chain(recording, outputs, set()) is None


def test_the_recording_keeps_only_what_the_tangent_rules_read():
    """Pre-activation outputs are freed by the forward itself; the recording must not keep them alive."""
    model = build_model("lenet5", input_shape=(1, 12, 12), num_outputs=4)
    with record_chain(model) as recording:
        outputs = model(torch.randn(2, 1, 12, 12))
    assert as_chain(recording, outputs, {k for k, _ in model.named_parameters()}) is not None
    for link in recording.links:
        kind = type(link.module)
        assert (link.inputs is not None) == (kind in (nn.Conv2d, nn.Linear)), kind
        assert (link.output is not None) == (kind is nn.Tanh), kind
