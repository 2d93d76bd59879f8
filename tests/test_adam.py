"""Pure Adam and its helpers against torch.optim.Adam (float64)."""
from __future__ import annotations

import torch

from toolkit.meta.adam import adam_init, adam_update, all_finite, clip_by_global_norm


def test_adam_matches_torch_optim_adam():
    torch.manual_seed(0)
    params = {"a": torch.randn(3, 4, dtype=torch.float64), "b": torch.randn(5, dtype=torch.float64)}
    reference = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    opt = torch.optim.Adam(reference.values(), lr=0.01, betas=(0.8, 0.99), eps=1e-7)
    state = adam_init(params)
    for _ in range(6):
        grads = {k: torch.randn_like(v) for k, v in params.items()}
        for k, p in reference.items():
            p.grad = grads[k].clone()
        opt.step()
        params, state = adam_update(params, grads, state, lr=0.01, betas=(0.8, 0.99), eps=1e-7)
    for k in params:
        torch.testing.assert_close(params[k], reference[k].detach(), rtol=1e-12, atol=1e-14)


def test_adam_skips_update_where_apply_is_false():
    params = {"w": torch.ones(3, dtype=torch.float64)}
    state = adam_init(params)
    params1, state1 = adam_update(params, {"w": torch.ones(3, dtype=torch.float64)}, state)
    params2, state2 = adam_update(params1, {"w": torch.full((3,), float("nan"), dtype=torch.float64)}, state1,
                                  apply=torch.tensor(False))
    torch.testing.assert_close(params2["w"], params1["w"])
    torch.testing.assert_close(state2.exp_avg["w"], state1.exp_avg["w"])
    assert float(state2.step) == 1.0


def test_clip_by_global_norm():
    grads = {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([4.0])}
    clipped = clip_by_global_norm(grads, 1.0)
    norm = torch.sqrt(sum((g ** 2).sum() for g in clipped.values()))
    assert abs(float(norm) - 1.0) < 1e-6
    assert clip_by_global_norm(grads, 10.0)["a"].equal(grads["a"])
    assert clip_by_global_norm(grads, None)["b"].equal(grads["b"])


def test_all_finite():
    assert bool(all_finite([torch.ones(2), torch.zeros(3)]))
    assert not bool(all_finite([torch.ones(2), torch.tensor([float("inf")])]))
