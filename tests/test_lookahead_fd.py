"""The finite-difference tangent (meta_gradient="fd"): close to the exact route, O(ε), refused where not exact.

Tolerance: docs/performance.md's sweep (toolkit.runs.fd_error, three seeds) measured the fd meta-gradient's
relative error in float64 falling 10× per decade of ε (first order), at ε = 1e-6 at most 2.6e-5 over mlp,
lenet5 and a pre-activation ResNet (ReLU kinks crossed by the step add to it); these tiny smooth (tanh)
models sit near 1e-7 to 5e-7 there. So 1e-5 at ε = 1e-6 holds with a 20× margin and leaves no room for a
wrong tangent (a sign, a factor or another direction fails by O(1)).
"""
from __future__ import annotations

import pytest
import torch

import losses
from helpers import assert_meta_gradients_close, batch, tiny_bn_dropout, tiny_conv, tiny_mlp

from toolkit.meta.distributed import Replicas
from toolkit.meta.lookahead import meta_gradient_with_tangent
from toolkit.meta.tangents import finite_difference_tangent, jacobian_vector_product
from toolkit.meta.online import OnlineLossLearner
from toolkit.meta.rules import AdamRule, SGDRule
from toolkit.runs.common import ConfigError, TrainConfig
from toolkit.runs.run import check_data_parallel

MODELS = {"mlp": (tiny_mlp, (5,)), "conv": (tiny_conv, (1, 8, 8)), "bn-dropout": (tiny_bn_dropout, (5,))}
RULES = {"momentum": SGDRule(lr=0.1, momentum=0.9, weight_decay=0.01), "adam": AdamRule(lr=0.01)}


def _routes(model_name, rule, **fd):
    factory, shape = MODELS[model_name]
    torch.manual_seed(0)
    model = factory()
    loss = losses.GradientScaledLoss(losses.MLPLoss(hidden=(6, 6)), max_scale=3.0).double()
    with torch.no_grad():
        loss.scale_logit.fill_(0.4)  # away from 0, where the scale's meta-gradient vanishes
    params = {k: p.detach().clone() for k, p in model.named_parameters()}
    train, valid = batch(16, shape, 3, seed=1), batch(12, shape, 3, seed=2)
    results = []
    for route in ({}, {"tangent": "fd", **fd}):
        torch.manual_seed(7)  # the same dropout masks on both routes
        buffers = {k: b.clone() for k, b in model.named_buffers()}
        results.append(meta_gradient_with_tangent(model, params, buffers, loss, dict(loss.named_parameters()), train,
                                                  valid, rule, **route))
    return results


@pytest.mark.parametrize("rule_name", RULES)
@pytest.mark.parametrize("model_name", MODELS)
def test_fd_meta_gradient_agrees_with_the_exact_one_in_float64(model_name, rule_name):
    exact, fd = _routes(model_name, RULES[rule_name], fd_epsilon=1e-6)
    assert_meta_gradients_close(fd, exact, rtol=1e-5)
    for k in exact.params:  # the base step does not depend on the tangent
        torch.testing.assert_close(fd.params[k], exact.params[k], rtol=0, atol=0)


def test_fd_error_is_first_order_in_epsilon():
    def error(eps):
        exact, fd = _routes("mlp", RULES["momentum"], fd_epsilon=eps)
        a = torch.cat([g.flatten() for g in exact.meta_grads.values()])
        b = torch.cat([g.flatten() for g in fd.meta_grads.values()])
        return float((a - b).norm() / a.norm())

    coarse, fine = error(1e-3), error(1e-5)
    assert 30 < coarse / fine < 300  # 100× for a first-order error over two decades


def test_fd_tangent_matches_the_jvp_and_is_zero_along_zero():
    torch.manual_seed(0)
    model = tiny_mlp()
    params = dict(model.named_parameters())
    x = batch(6, (5,), 3, seed=3)[0]
    w = {k: torch.randn_like(p) for k, p in params.items()}
    with torch.no_grad():
        f = model(x)
    exact = jacobian_vector_product(model, params, {}, x, w)
    fd = finite_difference_tangent(model, params, {}, x, w, f, epsilon=1e-7)
    torch.testing.assert_close(fd, exact, rtol=1e-5, atol=1e-8)
    zero = finite_difference_tangent(model, params, {}, x, {k: torch.zeros_like(p) for k, p in params.items()}, f)
    assert torch.equal(zero, torch.zeros_like(f))


def test_unknown_tangent_is_refused():
    with pytest.raises(ValueError, match="tangent must be one of jvp, reverse, fd"):
        meta_gradient_with_tangent(tiny_mlp(), {}, {}, losses.MLPLoss(), {}, batch(2, (5,), 3, seed=0),
                                   batch(2, (5,), 3, seed=0), SGDRule(lr=0.1), tangent="spline")


def test_fd_learner_trains_like_the_exact_one():
    torch.manual_seed(0)
    model = tiny_mlp()
    loss = losses.MLPLoss(hidden=(6, 6)).double()
    learners = [OnlineLossLearner(m, l, rule=SGDRule(lr=0.1), meta_gradient=route, snapshot_every=0,
                                  online_meta_lr=1e-2)
                for m, l, route in ((model, loss, "fast"), (_copy(model), _copy(loss), "fd"))]
    for step in range(3):
        train, valid = batch(8, (5,), 3, seed=10 + step), batch(8, (5,), 3, seed=20 + step)
        for learner in learners:
            learner.step(train, valid)
    for (k, a), b in zip(learners[0].loss.named_parameters(), learners[1].loss.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=k)


def _copy(module):
    import copy
    return copy.deepcopy(module)


def test_fd_is_refused_in_a_data_parallel_run():
    """The fd route is never exact: data-parallel runs keep the exact routes (checked before any collective)."""
    replicas = Replicas(rank=0, world_size=2)
    with pytest.raises(ConfigError, match="--meta-gradient fast"):
        check_data_parallel(TrainConfig(meta_gradient="fd", batch_size=8), replicas)
    with pytest.raises(ValueError, match="meta_gradient='fast'"):
        OnlineLossLearner(tiny_mlp(), losses.MLPLoss().double(), rule=SGDRule(lr=0.1), meta_gradient="fd",
                          replicas=replicas)


def test_train_config_takes_fd():
    assert TrainConfig(meta_gradient="fd").meta_gradient == "fd"

