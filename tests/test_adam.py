"""The meta optimiser (the base rules' AdamRule, clipped, skipped on the device) against torch.optim.Adam (float64)."""
from __future__ import annotations

import pytest
import torch

from toolkit.meta.adam import all_finite, apply_meta_update, meta_optimizer, meta_state_from_checkpoint

F64 = torch.float64


def _params():
    torch.manual_seed(0)
    return {"a": torch.nn.Parameter(torch.randn(3, 4, dtype=F64)), "b": torch.nn.Parameter(torch.randn(5, dtype=F64))}


def test_meta_optimizer_matches_torch_optim_adam_with_clip_grad_norm():
    params = _params()
    reference = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    opt = torch.optim.Adam(reference.values(), lr=0.01)
    rule = meta_optimizer(lr=0.01, clip=0.5)
    state = rule.init({k: p.detach() for k, p in params.items()})
    for _ in range(6):
        grads = {k: torch.randn_like(v) for k, v in params.items()}
        norm = torch.sqrt(sum((g ** 2).sum() for g in grads.values()))
        for k, p in reference.items():  # clip_grad_norm_ with the meta clip's guard, 1e-12 (torch's is 1e-6)
            p.grad = grads[k] * min(1.0, 0.5 / (float(norm) + 1e-12))
        opt.step()
        state = apply_meta_update(params, grads, state, rule)
    for k in params:
        torch.testing.assert_close(params[k].detach(), reference[k].detach(), rtol=1e-12, atol=1e-14)
    assert float(state.step) == 6.0


def test_a_skipped_update_leaves_parameters_and_moments_untouched():
    params = {"w": torch.nn.Parameter(torch.ones(3, dtype=F64))}
    rule = meta_optimizer(lr=1e-3)
    state = apply_meta_update(params, {"w": torch.ones(3, dtype=F64)}, rule.init(params), rule)
    after_one = params["w"].detach().clone()
    skipped = apply_meta_update(params, {"w": torch.full((3,), float("nan"), dtype=F64)}, state, rule,
                                apply=torch.tensor(False))
    torch.testing.assert_close(params["w"].detach(), after_one, rtol=0, atol=0)
    torch.testing.assert_close(skipped.exp_avg["w"], state.exp_avg["w"], rtol=0, atol=0)
    assert float(skipped.step) == 1.0


def test_clipping_scales_the_meta_gradient_to_the_norm_and_leaves_small_ones():
    rule = meta_optimizer(lr=1.0, clip=1.0)
    grads = {"a": torch.tensor([3.0, 0.0], dtype=F64), "b": torch.tensor([4.0], dtype=F64)}
    scaled = rule.update(grads, grads, rule.init(grads))[1].exp_avg  # m' = 0.1 g after clipping
    torch.testing.assert_close(torch.cat([scaled["a"], scaled["b"]]) / 0.1, torch.tensor([0.6, 0.0, 0.8], dtype=F64))
    with pytest.raises(ValueError, match="meta_clip must be positive"):
        meta_optimizer(lr=1.0, clip=0.0)


def test_checkpoints_of_the_older_adam_state_load_as_the_rules_state():
    """Checkpoints wrote AdamState.state_dict(): {"step", "exp_avg", "exp_avg_sq"}; they load unchanged."""
    params = _params()
    older = {"step": torch.tensor(2.0, dtype=F64), "exp_avg": {k: torch.full_like(p, 0.1) for k, p in params.items()},
             "exp_avg_sq": {k: torch.full_like(p, 0.2) for k, p in params.items()}}
    state = meta_state_from_checkpoint(older)
    rule = meta_optimizer(lr=0.01)
    assert type(state) is type(rule.init({k: p.detach() for k, p in params.items()}))
    assert state.exp_avg is not older["exp_avg"] and state.step is older["step"]
    apply_meta_update(params, {k: torch.ones_like(p) for k, p in params.items()}, state, rule)
    with pytest.raises(ValueError, match="lacks"):
        meta_state_from_checkpoint({"exp_avg": {}})


def test_all_finite():
    assert bool(all_finite([torch.ones(2), torch.zeros(3)]))
    assert not bool(all_finite([torch.ones(2), torch.tensor([float("inf")])]))
