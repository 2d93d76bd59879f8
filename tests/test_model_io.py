"""Own loops: models returning tuples/dicts or taking keywords, and mixed precision under torch.autocast."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import losses
from helpers import batch, tiny_mlp
from toolkit.meta.online import OnlineLossLearner
from toolkit.meta.rules import SGDRule


class TupleModel(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        return self.body(x), x.sum()


class DictModel(TupleModel):
    def forward(self, x):
        return {"logits": self.body(x), "features": x}


class KeywordModel(TupleModel):
    def forward(self, *, input_ids, scale=1.0):
        return self.body(input_ids) * scale


CASES = {
    "tuple": (TupleModel, dict(output_fn=lambda out: out[0])),
    "dict": (DictModel, dict(output_fn=lambda out: out["logits"])),
    "keywords": (KeywordModel, dict(input_fn=lambda x: {"input_ids": x, "scale": 1.0})),
}


def _train(model, steps=3, **kw):
    torch.manual_seed(0)
    loss = losses.MLPLoss(hidden=(5,)).double()
    learner = OnlineLossLearner(model, loss, rule=SGDRule(lr=0.1, momentum=0.9), snapshot_every=0,
                                meta_interval=2, **kw)
    for step in range(steps):
        learner.step(batch(8, (5,), 3, seed=step), batch(8, (5,), 3, seed=20 + step))
    return learner


@pytest.mark.parametrize("name", CASES)
def test_adapted_models_train_as_the_plain_tensor_model(name):
    """Lookahead, JVP, plain steps and the descent guard through input_fn/output_fn: the same numbers
    as the bare model (parameters and learned loss after three steps)."""
    body = tiny_mlp()
    plain = _train(copy.deepcopy(body))
    wrapper, options = CASES[name]
    adapted = _train(wrapper(copy.deepcopy(body)), **options)
    for p, q in zip(plain.model.parameters(), adapted.model.body.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-13, atol=1e-14)
    for p, q in zip(plain.loss.parameters(), adapted.loss.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-13, atol=1e-14)


def test_a_non_tensor_output_without_output_fn_names_it():
    learner = OnlineLossLearner(DictModel(tiny_mlp()), losses.MLPLoss().double(), rule=SGDRule(lr=0.1))
    with pytest.raises(TypeError, match=r"returned a dict, not a tensor: pass output_fn"):
        learner.step(batch(8, (5,), 3, seed=0), batch(8, (5,), 3, seed=1))


def _float_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))


def _mixed_learner(model, device):
    torch.manual_seed(1)
    loss = losses.GradientScaledLoss(losses.MLPLoss(hidden=(8,))).to(device)  # the toolkit default
    return OnlineLossLearner(model.to(device), loss, rule=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                             snapshot_every=0)


def _check_autocast(device: str, dtype: torch.dtype, tolerance: float):
    """Under autocast one step agrees with the float32 step to the low precision's tolerance, the
    parameters and the loss stay float32, and thirty steps halve the training batch's cross-entropy."""
    x, _ = batch(64, (5,), 3, seed=0)
    x_v, _ = batch(64, (5,), 3, seed=1)
    teacher = torch.randn(5, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y, y_v = (x @ teacher).argmax(1), (x_v @ teacher).argmax(1)  # a learnable task
    train, valid = (x.float().to(device), y.to(device)), (x_v.float().to(device), y_v.to(device))
    reference, mixed = _mixed_learner(_float_model(), device), _mixed_learner(_float_model(), device)
    before = [p.detach().clone() for p in reference.model.parameters()]
    reference.step(train, valid)
    with torch.autocast(device, dtype=dtype):
        info = mixed.step(train, valid)
    assert info["meta_loss"].dtype == torch.float32
    for p in [*mixed.model.parameters(), *mixed.loss.parameters()]:
        assert p.dtype == torch.float32
    for p0, p, q in zip(before, reference.model.parameters(), mixed.model.parameters()):
        step, mixed_step = p.detach() - p0, q.detach() - p0
        assert (mixed_step - step).norm() <= tolerance * step.norm()
    torch.testing.assert_close(info["meta_loss"], reference.last["meta_loss"], rtol=tolerance, atol=0)
    start = F.cross_entropy(mixed.model(train[0]), train[1])
    for _ in range(30):
        with torch.autocast(device, dtype=dtype):
            mixed.step(train, valid)
    assert F.cross_entropy(mixed.model(train[0]), train[1]) < 0.5 * start


def test_cpu_bfloat16_autocast():
    _check_autocast("cpu", torch.bfloat16, tolerance=0.05)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA float16 autocast needs a CUDA device")
def test_cuda_float16_autocast():
    _check_autocast("cuda", torch.float16, tolerance=0.01)
