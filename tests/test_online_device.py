"""The online learner on CUDA (skipped without it): the same steps as on CPU, and no host sync in a step.

The hot path promises device-agnostic code with no ``.item()``, ``.cpu()`` or branching on device
values: every step after the first (which may initialise libraries) runs under
``torch.cuda.set_sync_debug_mode("error")``, which raises on any synchronising call.
"""
from __future__ import annotations

import copy

import pytest
import torch

import losses
from helpers import STRUCTURES, assert_meta_gradients_close, batch, tiny_mlp
from toolkit.meta.lookahead import meta_gradient, meta_gradient_naive
from toolkit.meta.online import OnlineLossLearner, frozen_copy, guarded_step
from toolkit.meta.rules import AdamRule, SGDRule

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

RULES = {
    "sgd-nesterov": lambda: SGDRule(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adamw": lambda: AdamRule(lr=0.01, weight_decay=1e-2, decoupled=True),
}


def _residual_without_dropout():
    model = STRUCTURES["residual-bn-maxpool-dropout"][0]()
    model.head[2].p = 0.0  # CPU and CUDA draw different dropout masks; everything else must agree
    return model


MODELS = {
    "mlp": (tiny_mlp, (5,)),
    "in-place": (STRUCTURES["in-place"][0], (5,)),
    "residual-bn": (_residual_without_dropout, (1, 8, 8)),
}


def _to(pair, device):
    return tuple(t.to(device) for t in pair)


@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize("guard", [True, False], ids=["guard", "no-guard"])
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_cuda_steps_match_cpu_without_host_syncs(model_name: str, guard: bool, rule: str) -> None:
    factory, shape = MODELS[model_name]
    torch.manual_seed(0)
    model = factory()
    loss = losses.GradientScaledLoss(losses.MLPLoss(hidden=(5, 5))).double()
    learners = {device: OnlineLossLearner(copy.deepcopy(model).to(device), copy.deepcopy(loss).to(device),
                                          rule=RULES[rule](), online_meta_lr=1e-2, descent_guard=guard,
                                          snapshot_every=0)
                for device in ("cpu", "cuda")}
    for step in range(4):
        train, valid = batch(12, shape, 3, seed=2 * step), batch(12, shape, 3, seed=2 * step + 1)
        learners["cpu"].step(train, valid)
        train, valid = _to(train, "cuda"), _to(valid, "cuda")  # a copy from pageable memory synchronises
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error" if step else 0)
        try:
            learners["cuda"].step(train, valid)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    cpu, cuda = learners["cpu"], learners["cuda"]
    for (name, p), q in zip(cpu.model.named_parameters(), cuda.model.parameters()):
        torch.testing.assert_close(q.detach().cpu(), p.detach(), rtol=1e-8, atol=1e-10, msg=name)
    for (name, p), q in zip(cpu.loss.named_parameters(), cuda.loss.parameters()):
        torch.testing.assert_close(q.detach().cpu(), p.detach(), rtol=1e-7, atol=1e-9, msg=name)
    for (name, b), c in zip(cpu.model.named_buffers(), cuda.model.buffers()):
        torch.testing.assert_close(c.cpu(), b, rtol=1e-8, atol=1e-10, msg=name)
    assert cuda.check() == cpu.check()
    assert cuda.guard_record() == cpu.guard_record()


def test_cuda_dropout_masks_replayed_in_the_tangent() -> None:
    """With dropout on CUDA, the default route equals the unrolled one: the JVP replays the CUDA RNG."""
    factory, input_shape = STRUCTURES["residual-bn-maxpool-dropout"]
    torch.manual_seed(0)
    model = factory().cuda()
    loss = losses.MLPLoss(hidden=(5, 5)).double().cuda()
    train, valid = _to(batch(8, input_shape[1:], 3, seed=1), "cuda"), _to(batch(8, input_shape[1:], 3, seed=2), "cuda")
    params = {k: p.detach() for k, p in model.named_parameters()}
    results = []
    for route in (meta_gradient, meta_gradient_naive):
        torch.cuda.manual_seed(7)
        results.append(route(model, params, {k: b.clone() for k, b in model.named_buffers()}, loss,
                             dict(loss.named_parameters()), train, valid, SGDRule(lr=0.1, momentum=0.9),
                             descent_guard=True))
    fast, naive = results
    assert_meta_gradients_close(fast, naive)
    for k in fast.params:
        torch.testing.assert_close(fast.params[k], naive.params[k], rtol=1e-10, atol=1e-12)


def test_cuda_frozen_loss_step_without_host_syncs() -> None:
    """A frozen learned loss's guarded step (ML3's training, AdaLFL's plain steps) stays on the device."""
    torch.manual_seed(0)
    model = tiny_mlp().cuda()
    loss = frozen_copy(losses.GradientScaledLoss(losses.MLPLoss(hidden=(5, 5))).double()).cuda()
    rule = SGDRule(lr=0.1, momentum=0.9)
    params = dict(model.named_parameters())
    state = rule.init(params)
    train = _to(batch(12, (5,), 3, seed=0), "cuda")
    guarded_step(model, loss, train, params, state, rule, "classification")  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        value, new_params, _, report, _ = guarded_step(model, loss, train, params, state, rule, "classification")
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(value) and all(torch.isfinite(p).all() for p in new_params.values())
    assert report is not None and int(report.rows) == 12
