"""The pure lookahead core against independent references (float64)."""
from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

import losses
from helpers import (CHAINS, FROZEN, STRUCTURES, assert_meta_gradients_close, batch, central_differences,
                     tiny_bn_dropout, tiny_conv, tiny_mlp)
from toolkit.meta.lookahead import _is_own_state, meta_gradient, meta_gradient_naive, meta_gradient_reverse
from toolkit.meta.rules import AdamRule, AdamState, SGDRule, SGDState, torch_optimizer
from losses import task_loss


RULES = {
    "plain": SGDRule(lr=0.1),
    "momentum-wd": SGDRule(lr=0.1, momentum=0.9, weight_decay=0.01),
    "nesterov-wd": SGDRule(lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
    "adam-l2": AdamRule(lr=0.01, weight_decay=0.01),
    "adamw": AdamRule(lr=0.01, betas=(0.8, 0.99), weight_decay=0.05, decoupled=True),
}


def _mlp_loss(hidden, task="classification"):
    return losses.MLPLoss(hidden=hidden, task=task).double()


def _scaled_loss(hidden, task="classification"):
    """The toolkit's default: gradient direction from the MLP, size from the task loss times a learned scale."""
    loss = losses.GradientScaledLoss(losses.MLPLoss(hidden=hidden, task=task), max_scale=3.0).double()
    with torch.no_grad():
        loss.scale_logit.fill_(0.4)  # away from 0, so tanh's slope is not 1
    return loss


LOSSES = {"mlp": _mlp_loss, "scaled": _scaled_loss}
MODELS = {
    "mlp": (tiny_mlp, (5,)),
    "conv": (tiny_conv, (1, 8, 8)),
    "bn-dropout": (tiny_bn_dropout, (5,)),
}


def _state(model, seed, rule=RULES["momentum-wd"]):
    """θ and a warm optimiser state: momentum buffers, or Adam moments after three steps."""
    torch.manual_seed(seed)
    params = {k: p.detach().clone() for k, p in model.named_parameters()}
    if isinstance(rule, AdamRule):
        return params, AdamState(step=torch.tensor(3.0, dtype=torch.float64),
                                 exp_avg={k: 0.1 * torch.randn_like(p) for k, p in params.items()},
                                 exp_avg_sq={k: 0.01 * torch.rand_like(p) + 1e-3 for k, p in params.items()})
    return params, SGDState(momentum={k: 0.1 * torch.randn_like(p) for k, p in params.items()})


def _torch_reference(rule, params):
    """The torch.optim optimiser a rule claims to be, built here from the rule's fields."""
    if isinstance(rule, SGDRule):
        return torch.optim.SGD(params, lr=rule.lr, momentum=rule.momentum, nesterov=rule.nesterov,
                               weight_decay=rule.weight_decay)
    cls = torch.optim.AdamW if rule.decoupled else torch.optim.Adam
    return cls(params, lr=rule.lr, betas=rule.betas, eps=rule.eps, weight_decay=rule.weight_decay)


@pytest.mark.parametrize("rule_name", RULES)
def test_rule_matches_torch_optim(rule_name):
    """Six steps of the rule equal six steps of torch.optim (float64, 1e-12)."""
    rule = RULES[rule_name]
    model = tiny_mlp()
    reference = tiny_mlp()
    reference.load_state_dict(model.state_dict())
    opt = _torch_reference(rule, reference.parameters())
    params = {k: p.detach().clone() for k, p in model.named_parameters()}
    state = rule.init(params)
    for step in range(6):
        x, y = batch(8, (5,), 3, seed=step)
        opt.zero_grad()
        task_loss(reference(x), y, "classification").backward()
        opt.step()
        p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        g = torch.autograd.grad(task_loss(functional_call(model, p, (x,)), y, "classification"), list(p.values()))
        params, state = rule.update(params, dict(zip(p, g)), state)
    for k, p in reference.named_parameters():
        torch.testing.assert_close(params[k], p.detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("loss_name", LOSSES)
@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("rule_name", RULES)
def test_fast_meta_gradient_equals_naive(model_name, rule_name, loss_name):
    factory, shape = MODELS[model_name]
    model = factory()
    loss = LOSSES[loss_name]((6, 6))
    params, state = _state(model, 0, RULES[rule_name])
    train, valid = batch(16, shape, 3, seed=1), batch(12, shape, 3, seed=2)
    results = {}
    for name, fn in (("fast", meta_gradient), ("reverse", meta_gradient_reverse), ("naive", meta_gradient_naive)):
        buffers = {k: b.clone() for k, b in model.named_buffers()}
        torch.manual_seed(123)  # the same dropout masks for every route
        results[name] = fn(model, params, buffers, loss, dict(loss.named_parameters()), train, valid,
                           RULES[rule_name], state, diagnostics=True)
        results[name + "_buffers"] = buffers
    _assert_route_equals_naive(results["reverse"], results["naive"], results["reverse_buffers"],
                               results["naive_buffers"], params)
    fast, naive = results["fast"], results["naive"]
    assert_meta_gradients_close(fast, naive)
    for k in params:
        torch.testing.assert_close(fast.params[k], naive.params[k], rtol=1e-12, atol=1e-12)
    assert type(fast.state) is type(naive.state)
    for key, value in fast.state._asdict().items():  # momentum buffers, Adam moments and step
        expected = getattr(naive.state, key)
        if value is None:
            assert expected is None
            continue
        for k in (value if isinstance(value, dict) else {None: value}):
            a, b = (value, expected) if k is None else (value[k], expected[k])
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast.meta_loss, naive.meta_loss)
    torch.testing.assert_close(fast.grad_ratio, naive.grad_ratio)
    for k, b in results["fast_buffers"].items():  # running statistics updated exactly once, identically
        torch.testing.assert_close(b, results["naive_buffers"][k])


def _assert_route_equals_naive(route, naive, route_buffers, naive_buffers, params):
    assert_meta_gradients_close(route, naive)
    for k in params:
        torch.testing.assert_close(route.params[k], naive.params[k], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(route.meta_loss, naive.meta_loss)
    for k, b in route_buffers.items():
        torch.testing.assert_close(b, naive_buffers[k], rtol=1e-12, atol=1e-12)


def _lookahead_objective(model, params, loss, phi, train, valid, rule, state=None):
    """L_task(θ'(φ)) written out independently: torch.optim's own SGD/Adam/AdamW on a copy, with the
    optimiser state loaded into it, no functional tricks."""
    import copy
    scratch = copy.deepcopy(model)
    fixed = copy.deepcopy(loss)
    with torch.no_grad():
        for k, p in fixed.named_parameters():
            p.copy_(phi[k])
        for k, p in scratch.named_parameters():
            p.copy_(params[k])
    opt = torch_optimizer(rule, scratch.parameters())
    if state:
        for k, p in scratch.named_parameters():
            if isinstance(rule, AdamRule):
                opt.state[p] = {"step": state.step.clone(), "exp_avg": state.exp_avg[k].clone(),
                                "exp_avg_sq": state.exp_avg_sq[k].clone()}
            else:
                opt.state[p] = {"momentum_buffer": state.momentum[k].clone()}
    opt.zero_grad()
    fixed(scratch(train[0]), train[1]).backward()
    opt.step()
    with torch.no_grad():
        return float(task_loss(scratch(valid[0]), valid[1], "classification"))


CENTRAL_RULES = {
    "nesterov-wd": (SGDRule(lr=0.5, momentum=0.9, nesterov=True, weight_decay=0.01), False),
    "adam-warm": (AdamRule(lr=0.05, weight_decay=0.01), True),
    "adamw-warm": (AdamRule(lr=0.05, weight_decay=0.1, decoupled=True), True),
}


@pytest.mark.parametrize("loss_name", LOSSES)
@pytest.mark.parametrize("rule_name", CENTRAL_RULES)
@pytest.mark.parametrize("fn", [meta_gradient, meta_gradient_naive], ids=["fast", "naive"])
def test_meta_gradient_matches_central_differences(fn, rule_name, loss_name):
    """Against torch.optim's own step (the state loaded into it) and central differences in φ."""
    rule, warm = CENTRAL_RULES[rule_name]
    model = tiny_mlp(inputs=3, classes=3)
    loss = LOSSES[loss_name]((3, 3))
    params, state = _state(model, 4, rule) if warm else ({k: p.detach().clone() for k, p in model.named_parameters()},
                                                        None)
    train, valid = batch(10, (3,), 3, seed=5), batch(10, (3,), 3, seed=6)
    result = fn(model, params, {}, loss, dict(loss.named_parameters()), train, valid, rule, state)
    phi = {k: p.detach().clone() for k, p in loss.named_parameters()}
    objective = lambda phi: _lookahead_objective(model, params, loss, phi, train, valid, rule, state)  # noqa: E731
    for name, index, numeric in central_differences(objective, phi):
        analytic = float(result.meta_grads[name].view(-1)[index])
        assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(numeric)), (name, index, numeric, analytic)


@pytest.mark.parametrize("loss_name", LOSSES)
def test_regression_meta_gradient_equals_naive(loss_name):
    model = tiny_mlp(inputs=4, classes=1)
    loss = LOSSES[loss_name]((5, 5), task="regression")
    params = {k: p.detach().clone() for k, p in model.named_parameters()}
    g = torch.Generator().manual_seed(3)
    train = (torch.randn(12, 4, generator=g, dtype=torch.float64), torch.randn(12, 1, generator=g, dtype=torch.float64))
    valid = (torch.randn(9, 4, generator=g, dtype=torch.float64), torch.randn(9, 1, generator=g, dtype=torch.float64))
    kw = dict(task="regression")
    fast = meta_gradient(model, params, {}, loss, dict(loss.named_parameters()), train, valid, SGDRule(lr=0.1), **kw)
    naive = meta_gradient_naive(model, params, {}, loss, dict(loss.named_parameters()), train, valid, SGDRule(lr=0.1), **kw)
    for k in fast.meta_grads:
        torch.testing.assert_close(fast.meta_grads[k], naive.meta_grads[k], rtol=1e-8, atol=1e-12)


def test_nothing_requires_grad_after_a_lookahead():
    model = tiny_conv()
    loss = losses.MLPLoss(hidden=(4, 4)).double()
    params = {k: p.detach() for k, p in model.named_parameters()}
    result = meta_gradient(model, params, {}, loss, dict(loss.named_parameters()),
                                batch(6, (1, 8, 8), 3, seed=0), batch(6, (1, 8, 8), 3, seed=1), SGDRule(lr=0.1))
    tensors = [*result.params.values(), *result.meta_grads.values(), result.train_loss, result.meta_loss]
    assert all(t.grad_fn is None and not t.requires_grad for t in tensors)


def test_bad_rules_are_rejected():
    with pytest.raises(ValueError, match="Nesterov"):
        SGDRule(lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="learning rate must be >= 0"):
        SGDRule(lr=-0.1)
    with pytest.raises(ValueError, match="dampening=0"):
        SGDRule(lr=0.1, momentum=0.9, nesterov=True, dampening=0.1)


def test_fast_meta_gradient_with_frozen_layers_equals_naive():
    """Fine-tuning: θ holds only the trainable parameters; the frozen first convolution is a constant."""
    from toolkit.models.zoo import build_model
    torch.manual_seed(0)
    model = build_model("lenet5", input_shape=(1, 12, 12), num_outputs=3).double()
    model.features[0].requires_grad_(False)
    params = {k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad}
    loss = _scaled_loss((6, 6))
    train, valid = batch(8, (1, 12, 12), 3, seed=1), batch(6, (1, 12, 12), 3, seed=2)
    rule = RULES["momentum-wd"]
    momentum = SGDState(momentum={k: 0.1 * torch.randn_like(p) for k, p in params.items()})
    fast, naive = (fn(model, params, {}, loss, dict(loss.named_parameters()), train, valid, rule, momentum)
                   for fn in (meta_gradient, meta_gradient_naive))
    assert_meta_gradients_close(fast, naive)
    assert set(fast.params) == set(params)


class _PlainModuleLoss(torch.nn.Module):
    """A loss that is not a LearnedLoss: cross-entropy at a learned temperature plus a learned margin."""

    def __init__(self, classes):
        super().__init__()
        self.temperature = torch.nn.Parameter(torch.tensor(1.3, dtype=torch.float64))
        self.margin = torch.nn.Parameter(torch.linspace(-0.5, 0.5, classes, dtype=torch.float64))

    def forward(self, outputs, targets):
        return torch.nn.functional.cross_entropy(outputs / self.temperature + torch.tanh(outputs) * self.margin,
                                                 targets)


def test_fast_meta_gradient_for_any_loss_module_equals_naive():
    """Any nn.Module loss (not a LearnedLoss) gets its derivatives from torch.func too."""
    model = tiny_conv()
    loss = _PlainModuleLoss(3)
    params, momentum = _state(model, 0)
    train, valid = batch(16, (1, 8, 8), 3, seed=1), batch(12, (1, 8, 8), 3, seed=2)
    fast, naive = (fn(model, params, {}, loss, dict(loss.named_parameters()), train, valid, RULES["plain"])
                   for fn in (meta_gradient, meta_gradient_naive))
    assert set(fast.meta_grads) == {"temperature", "margin"}
    assert_meta_gradients_close(fast, naive)


@pytest.mark.parametrize("loss_name", LOSSES)
def test_frozen_loss_parameters_get_zero_meta_gradients_on_both_routes(loss_name):
    model = tiny_mlp()
    loss = LOSSES[loss_name]((6, 6))
    frozen = "shape.layers.1.weight" if loss_name == "scaled" else "layers.1.weight"
    dict(loss.named_parameters())[frozen].requires_grad_(False)
    params, momentum = _state(model, 0)
    train, valid = batch(16, (5,), 3, seed=1), batch(12, (5,), 3, seed=2)
    fast, naive = (fn(model, params, {}, loss, dict(loss.named_parameters()), train, valid, RULES["plain"])
                   for fn in (meta_gradient, meta_gradient_naive))
    assert not fast.meta_grads[frozen].any() and not naive.meta_grads[frozen].any()
    assert_meta_gradients_close(fast, naive, skip=(frozen,))


@pytest.mark.parametrize("model_name", ["conv", "bn-dropout", "frozen-lenet"])
def test_module_own_state_gives_the_functional_result(model_name):
    """Passing the module's own parameters and buffers runs the module directly (no functional_call):
    the lookahead, the buffer updates and the module's parameters must be exactly as with copies."""
    import copy
    from toolkit.models.zoo import build_model
    if model_name == "frozen-lenet":
        torch.manual_seed(0)
        model, shape = build_model("lenet5", input_shape=(1, 12, 12), num_outputs=3).double(), (1, 12, 12)
        model.features[0].requires_grad_(False)
    else:
        factory, shape = MODELS[model_name]
        model = factory()
    twin = copy.deepcopy(model)
    loss = _scaled_loss((6, 6))
    train, valid = batch(16, shape, 3, seed=1), batch(12, shape, 3, seed=2)
    rule = RULES["nesterov-wd"]
    own = {k: p for k, p in model.named_parameters() if p.requires_grad}
    copies = {k: p.detach().clone() for k, p in twin.named_parameters() if p.requires_grad}
    results = []
    for net, params in ((model, own), (twin, copies)):
        buffers = dict(net.named_buffers())  # updated in place by the training forward, in both cases
        assert _is_own_state(net, params, buffers) == (params is own)  # the two routes are taken
        torch.manual_seed(7)  # the same dropout masks
        results.append(meta_gradient(net, params, buffers, loss, dict(loss.named_parameters()), train, valid,
                                          rule, diagnostics=True))
    direct, functional = results
    for field in ("params", "meta_grads"):
        for k, value in getattr(direct, field).items():
            torch.testing.assert_close(value, getattr(functional, field)[k], rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(direct.train_loss, functional.train_loss, rtol=1e-14, atol=0)
    for (k, b), (_, b_twin) in zip(model.named_buffers(), twin.named_buffers()):
        torch.testing.assert_close(b, b_twin, rtol=0, atol=0)
    for (k, p), (_, p_twin) in zip(model.named_parameters(), twin.named_parameters()):
        assert p.grad is None
        torch.testing.assert_close(p, p_twin, rtol=0, atol=0)  # a pure function: neither is changed


def _fast_equals_naive(model, shape, rule=RULES["nesterov-wd"], *, guard=False, classes=3, seed=0):
    loss = _scaled_loss((6, 6))
    params, state = _state(model, seed, rule)
    params = {k: p for k, p in params.items() if dict(model.named_parameters())[k].requires_grad}
    if not isinstance(rule, AdamRule):
        state = SGDState(momentum={k: v for k, v in state.momentum.items() if k in params})
    train, valid = batch(shape[0], shape[1:], classes, seed=1), batch(shape[0], shape[1:], classes, seed=2)
    results, buffers = [], []
    for fn in (meta_gradient, meta_gradient_reverse, meta_gradient_naive):
        own_buffers = {k: b.clone() for k, b in model.named_buffers()}
        torch.manual_seed(11)  # the same dropout masks for every route
        results.append(fn(model, params, own_buffers, loss, dict(loss.named_parameters()), train, valid, rule, state,
                          descent_guard=guard))
        buffers.append(own_buffers)
    fast, reverse, naive = results
    _assert_route_equals_naive(reverse, naive, buffers[1], buffers[2], params)
    buffers = [buffers[0], buffers[2]]
    assert_meta_gradients_close(fast, naive)
    for k in params:
        torch.testing.assert_close(fast.params[k], naive.params[k], rtol=1e-12, atol=1e-12)
    for k, b in buffers[0].items():
        torch.testing.assert_close(b, buffers[1][k], rtol=1e-12, atol=1e-12)
    return fast


@pytest.mark.parametrize("name", STRUCTURES)
@pytest.mark.parametrize("guard", [False, True], ids=["unguarded", "guarded"])
def test_structures_a_hand_written_route_would_miss_are_exact(name, guard):
    """In-place operations, hooks, BatchNorm, max pooling, residual blocks and dropout: the default
    route and the reverse-over-reverse tangent equal the unrolled reference in θ', buffers and
    meta-gradient (1e-8 relative, float64)."""
    factory, shape = STRUCTURES[name]
    _fast_equals_naive(factory(), shape, guard=guard)


def test_the_in_place_model_gets_the_step_torch_optim_takes():
    """θ' itself (not only the meta-gradient) is torch.optim.SGD's step on the learned loss."""
    import copy
    factory, shape = STRUCTURES["in-place"]
    model = factory()
    rule = SGDRule(lr=0.1)
    loss = _scaled_loss((6, 6))
    train, valid = batch(6, (5,), 3, seed=1), batch(6, (5,), 3, seed=2)
    params = {k: p.detach().clone() for k, p in model.named_parameters()}
    result = meta_gradient(model, params, {}, loss, dict(loss.named_parameters()), train, valid, rule)
    reference = copy.deepcopy(model)
    opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    loss(reference(train[0]), train[1]).backward()
    opt.step()
    for k, p in reference.named_parameters():
        torch.testing.assert_close(result.params[k], p.detach(), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("name", CHAINS)
def test_varied_layer_stacks_are_exact(name):
    factory, shape = CHAINS[name]
    torch.manual_seed(0)
    model = factory().double()
    classes = model(torch.zeros(2, *shape[1:], dtype=torch.float64)).shape[1]
    _fast_equals_naive(model, shape, classes=classes)


@pytest.mark.parametrize("name", FROZEN)
def test_frozen_parts_of_lenet_are_exact(name):
    from toolkit.models.zoo import build_model
    torch.manual_seed(0)
    model = build_model("lenet5", input_shape=(1, 12, 12), num_outputs=3).double()
    FROZEN[name](model)
    fast = _fast_equals_naive(model, (4, 1, 12, 12), rule=RULES["adamw"])
    assert set(fast.params) == {k for k, p in model.named_parameters() if p.requires_grad}


def test_a_sum_reduced_loss_trains_as_its_mean_at_a_proportionally_larger_lr():
    """The lookahead differentiates the loss as reduced: "sum" at lr α is "mean" at lr α·B·C, meta-gradient too."""
    torch.manual_seed(0)
    mean = losses.MLPLoss(hidden=(4, 4)).double()
    total = losses.MLPLoss(hidden=(4, 4), reduction="sum").double()
    total.load_state_dict(mean.state_dict())
    model = tiny_mlp()
    params, _ = _state(model, 0)
    train, valid = batch(16, (5,), 3, seed=1), batch(12, (5,), 3, seed=2)
    count = 16 * 3
    got = {fn.__name__: fn(model, params, {}, total, dict(total.named_parameters()), train, valid, SGDRule(lr=1e-3))
           for fn in (meta_gradient, meta_gradient_naive)}
    want = meta_gradient(model, params, {}, mean, dict(mean.named_parameters()), train, valid,
                              SGDRule(lr=1e-3 * count))
    for result in got.values():
        torch.testing.assert_close(result.train_loss, count * want.train_loss, rtol=1e-12, atol=0)
        torch.testing.assert_close(result.params, want.params, rtol=1e-12, atol=1e-14)
        assert_meta_gradients_close(result, want)


@pytest.mark.parametrize("fn", [meta_gradient, meta_gradient_naive])
def test_a_loss_without_a_scalar_reduction_is_refused(fn):
    loss = losses.MLPLoss(hidden=(3,), reduction="none").double()
    params, _ = _state(tiny_mlp(), 0)
    train, valid = batch(8, (5,), 3, seed=1), batch(8, (5,), 3, seed=2)
    with pytest.raises(ValueError, match=r"reduction='none'.*construct it with reduction='mean'"):
        fn(tiny_mlp(), params, {}, loss, dict(loss.named_parameters()), train, valid, RULES["plain"])
    with pytest.raises(ValueError, match=r"MSELoss\(reduction='none'\)"):
        fn(tiny_mlp(), params, {}, torch.nn.MSELoss(reduction="none"), {}, train, valid, RULES["plain"])


def _grouped_rules(model):
    from toolkit.meta.combined import ClippedRule, GroupedRule
    first = tuple(k for k, _ in model.named_parameters() if k.startswith("0."))
    rest = tuple(k for k, _ in model.named_parameters() if not k.startswith("0."))
    sgd = GroupedRule(((first, SGDRule(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
                       (rest, SGDRule(lr=0.3, momentum=0.5, dampening=0.2, weight_decay=0.1))))
    adam = GroupedRule(((first, AdamRule(lr=0.01, amsgrad=True)), (rest, AdamRule(lr=0.05, decoupled=True,
                                                                                 weight_decay=0.1))))
    return {"two-groups-sgd": sgd, "two-groups-adam": adam,
            "clipped-sgd": ClippedRule(SGDRule(lr=0.1, momentum=0.9), max_norm=0.05),
            "clipped-two-groups-adam": ClippedRule(adam, max_norm=0.05)}


@pytest.mark.parametrize("guard", [False, True], ids=["unguarded", "guarded"])
@pytest.mark.parametrize("rule_name", ["two-groups-sgd", "two-groups-adam", "clipped-sgd", "clipped-two-groups-adam"])
def test_groups_and_clipping_are_exact_against_the_unrolled_step(rule_name, guard):
    """Per-group hyper-parameters and clipping by global norm inside the differentiated update: the
    default route equals autograd through the explicit update (create_graph=True), from a warm state."""
    model = tiny_mlp()
    rule = _grouped_rules(model)[rule_name]
    params = {k: p.detach().clone() for k, p in model.named_parameters()}
    torch.manual_seed(3)
    state = rule.init(params)
    for _ in range(2):  # warm the moments and buffers with two updates on random gradients
        state = rule.update(params, {k: torch.randn_like(p) for k, p in params.items()}, state)[1]
    loss = _scaled_loss((6, 6))
    train, valid = batch(16, (5,), 3, seed=1), batch(12, (5,), 3, seed=2)
    fast, naive = (fn(model, params, {}, loss, dict(loss.named_parameters()), train, valid, rule, state,
                      descent_guard=guard) for fn in (meta_gradient, meta_gradient_naive))
    assert_meta_gradients_close(fast, naive)
    for k in params:
        torch.testing.assert_close(fast.params[k], naive.params[k], rtol=1e-12, atol=1e-12)


def test_both_routes_share_one_signature():
    """The learner and the offline phase call either route the same way (``replicas`` a plain keyword)."""
    import inspect

    assert inspect.signature(meta_gradient) == inspect.signature(meta_gradient_naive)
    assert inspect.signature(meta_gradient).parameters["replicas"].kind is inspect.Parameter.KEYWORD_ONLY
