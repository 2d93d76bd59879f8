"""Tests for toolkit.models.zoo: shapes, sizes, gradients, determinism and errors."""

from __future__ import annotations

import doctest

import pytest
import torch
from torch import nn
from torch.autograd import forward_ad
from torch.func import functional_call, jvp

import toolkit.models.zoo
from toolkit.models.zoo import MIN_IMAGE_SIZE, MODEL_NAMES, ModelError, build_model, model_options

MNIST = (1, 28, 28)
CIFAR = (3, 32, 32)
TABULAR = (64,)
IMAGE_MODELS = tuple(name for name in MODEL_NAMES if name in MIN_IMAGE_SIZE)
TABULAR_MODELS = ("logreg", "mlp")

# Small but valid configurations for tests that only check shapes and gradients.
SMALL = {
    "mlp": {"hidden": (32, 16)},
    "preresnet": {"depth": 8},
    "wideresnet": {"depth": 10, "width": 1},
    "pyramidnet": {"depth": 8, "alpha": 8},
}


@pytest.fixture(autouse=True, scope="module")
def one_intra_op_thread():
    """Small ops on a busy 2-core machine run several times faster on one thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def small(name: str, input_shape: tuple[int, ...], num_outputs: int = 10, **extra) -> nn.Module:
    return build_model(name, input_shape=input_shape, num_outputs=num_outputs,
                       **{**SMALL.get(name, {}), **extra})


def parameter_count(name: str, input_shape=CIFAR, num_outputs=10, **options) -> int:
    # A real build: initialising on the "meta" device first imports torch._dynamo (seconds).
    model = build_model(name, input_shape=input_shape, num_outputs=num_outputs, **options)
    return sum(p.numel() for p in model.parameters())


# Image models on MNIST-like input (small options); default configurations cover
# CIFAR-like input below; tabular models on every shape; residual nets small on CIFAR too.
SHAPE_CASES = (
    [(name, MNIST) for name in IMAGE_MODELS]
    + [(name, CIFAR) for name in ("preresnet", "wideresnet", "pyramidnet")]
    + [(name, shape) for name in TABULAR_MODELS for shape in (TABULAR, MNIST, CIFAR)]
)


@pytest.mark.parametrize("name,shape", SHAPE_CASES, ids=[f"{n}-{'x'.join(map(str, s))}"
                                                         for n, s in SHAPE_CASES])
def test_output_shape(name, shape):
    torch.manual_seed(0)
    model = small(name, shape, num_outputs=7)
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, 7)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_default_configuration_on_cifar_batch(name):
    """Default sizes: logits of the right shape, gradient to every parameter, no in-place layer."""
    torch.manual_seed(0)
    model = build_model(name, input_shape=CIFAR, num_outputs=10, **model_options(name))
    assert not [m for m in model.modules() if getattr(m, "inplace", False)]
    out = model(torch.randn(2, *CIFAR))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None, parameter_name
        assert torch.isfinite(parameter.grad).all(), parameter_name
        assert parameter.grad.abs().sum() > 0, parameter_name
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, *CIFAR)).shape == (1, 10)


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_minimum_image_size_is_exact(name):
    size = MIN_IMAGE_SIZE[name]
    model = small(name, (2, size, size), num_outputs=3)
    assert model(torch.randn(2, 2, size, size)).shape == (2, 3)
    if size > 1:
        with pytest.raises(ModelError, match=f"at least {size}x{size}"):
            small(name, (2, size - 1, size + 5))


@pytest.mark.parametrize("name,shape,options,published", [
    ("lenet5", MNIST, {}, 61_706),
    ("resnet18", CIFAR, {}, 11.17e6),
    ("wideresnet", CIFAR, {"depth": 28, "width": 10}, 36.5e6),
    ("wideresnet", CIFAR, {"depth": 16, "width": 8}, 11.0e6),
    ("preresnet", CIFAR, {"depth": 110}, 1.7e6),
    ("pyramidnet", CIFAR, {"depth": 110, "alpha": 48}, 1.7e6),
    ("vgg16", CIFAR, {}, 14.7e6),
], ids=["lenet5", "resnet18", "wrn-28-10", "wrn-16-8", "preresnet-110", "pyramidnet-110-48",
        "vgg16"])
def test_parameter_count_matches_published(name, shape, options, published):
    count = parameter_count(name, shape, **options)
    assert abs(count - published) <= 0.05 * published, count


def test_lenet5_parameter_count_is_exact_and_flattens_to_400():
    assert parameter_count("lenet5", MNIST) == 61_706
    for shape in (MNIST, CIFAR):
        model = build_model("lenet5", input_shape=shape, num_outputs=10)
        assert model.classifier[1].in_features == 400


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_same_seed_gives_identical_parameters(name):
    def state(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return small(name, CIFAR).state_dict()

    first, second = state(3), state(3)
    assert all(torch.equal(first[key], second[key]) for key in first)
    if name in ("lenet5", "preresnet"):
        other = state(4)
        assert any(not torch.equal(first[key], other[key]) for key in first)


# ---------------------------------------------------------------------------
# Forward-mode and second-order derivatives through functional_call (float64).

DERIVATIVE_CASES = [("lenet5", MNIST), ("preresnet", (3, 12, 12)), ("pyramidnet", (3, 12, 12))]
DERIVATIVE_IDS = [name for name, _ in DERIVATIVE_CASES]


def _copies(buffers: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Buffers for one functional call: BatchNorm's running-stat update stays on the copies."""
    return {k: b.clone() for k, b in buffers.items()}


def _float64_setup(name, shape):
    torch.manual_seed(0)
    model = small(name, shape, num_outputs=3).double()
    params = {k: p.detach() for k, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    tangents = {k: torch.randn_like(p) for k, p in params.items()}
    norm = torch.sqrt(sum((t**2).sum() for t in tangents.values()))
    tangents = {k: t / norm for k, t in tangents.items()}  # a unit direction in parameter space
    images = torch.randn(4, *shape, dtype=torch.float64)
    return model, params, buffers, tangents, images


def _central_difference(model, params, buffers, tangents, images, eps=1e-6):
    def at(sign):
        shifted = {k: p + sign * eps * tangents[k] for k, p in params.items()}
        return functional_call(model, (shifted, _copies(buffers)), (images,))

    return (at(1) - at(-1)) / (2 * eps)


# torch's forward-mode decompositions call the deprecated torch.jit.script on first use.
forward_mode = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")


@forward_mode
@pytest.mark.parametrize("name,shape", DERIVATIVE_CASES, ids=DERIVATIVE_IDS)
def test_func_jvp_matches_central_difference(name, shape):
    model, params, buffers, tangents, images = _float64_setup(name, shape)
    before = _copies(buffers)

    def outputs(p):  # buffers copied inside: jvp refuses in-place updates of captured tensors
        return functional_call(model, (p, _copies(buffers)), (images,))

    _, directional = jvp(outputs, (params,), (tangents,))
    expected = _central_difference(model, params, buffers, tangents, images)
    torch.testing.assert_close(directional, expected, rtol=1e-6, atol=1e-7)
    assert all(torch.equal(before[k], buffers[k]) for k in buffers)


@forward_mode
@pytest.mark.parametrize("name,shape", DERIVATIVE_CASES[:2], ids=DERIVATIVE_IDS[:2])
def test_dual_tensor_jvp_matches_central_difference(name, shape):
    model, params, buffers, tangents, images = _float64_setup(name, shape)
    with forward_ad.dual_level():
        duals = {k: forward_ad.make_dual(p, tangents[k]) for k, p in params.items()}
        out = functional_call(model, (duals, _copies(buffers)), (images,))
        directional = forward_ad.unpack_dual(out).tangent
    expected = _central_difference(model, params, buffers, tangents, images)
    torch.testing.assert_close(directional, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name,shape", DERIVATIVE_CASES[:3], ids=DERIVATIVE_IDS[:3])
def test_hessian_vector_product_matches_central_difference(name, shape):
    model, params, buffers, tangents, images = _float64_setup(name, shape)
    targets = torch.randn(4, 3, dtype=torch.float64)
    names = list(params)

    def gradient(values, create_graph):
        leaves = {k: v if create_graph else v.clone().requires_grad_() for k, v in values.items()}
        out = functional_call(model, (leaves, _copies(buffers)), (images,))
        loss = ((out - targets) ** 2).mean()
        return torch.autograd.grad(loss, [leaves[k] for k in names], create_graph=create_graph)

    leaves = {k: p.clone().requires_grad_() for k, p in params.items()}
    grads = gradient(leaves, create_graph=True)
    dot = sum((g * tangents[k]).sum() for g, k in zip(grads, names))
    hvp = torch.autograd.grad(dot, [leaves[k] for k in names])
    eps = 1e-5
    plus = gradient({k: p + eps * tangents[k] for k, p in params.items()}, create_graph=False)
    minus = gradient({k: p - eps * tangents[k] for k, p in params.items()}, create_graph=False)
    for k, h, gp, gm in zip(names, hvp, plus, minus):
        torch.testing.assert_close(h, (gp - gm) / (2 * eps), rtol=1e-5, atol=1e-7, msg=k)


# ---------------------------------------------------------------------------
# Names, options and errors.

def test_aliases_and_case_insensitive_names():
    assert isinstance(build_model("LeNet", input_shape=MNIST, num_outputs=10),
                      toolkit.models.zoo.LeNet5)
    assert isinstance(build_model("Logistic", input_shape=TABULAR, num_outputs=3),
                      toolkit.models.zoo.LogisticRegression)
    wrn = build_model("WRN", input_shape=CIFAR, num_outputs=10, depth=10, width=1)
    assert isinstance(wrn, toolkit.models.zoo.PreActResNet)


def test_model_options_defaults():
    assert model_options("mlp") == {"hidden": (1000, 1000), "activation": "relu", "dropout": 0.0}
    assert model_options("preresnet") == {"depth": 20}
    assert model_options("wrn") == {"depth": 16, "width": 8, "dropout": 0.0}
    assert model_options("pyramidnet") == {"depth": 110, "alpha": 48}
    assert model_options("vgg16") == {"batch_norm": True}
    assert model_options("logreg") == {} and model_options("resnet18") == {}
    options = model_options("mlp")
    options["hidden"] = (1,)
    assert model_options("mlp")["hidden"] == (1000, 1000)
    assert set(model_options("allcnn")) == {"batch_norm", "dropout"}
    assert set(model_options("alexnet")) == set(model_options("squeezenet")) == {"dropout"}


def test_mlp_options():
    model = build_model("mlp", input_shape=TABULAR, num_outputs=3, hidden=[20, 10],
                        activation="Tanh", dropout=0.1)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 20), (20, 10), (10, 3)]
    assert any(isinstance(m, nn.Tanh) for m in model.modules())
    assert any(isinstance(m, nn.Dropout) for m in model.modules())
    assert build_model("mlp", input_shape=TABULAR, num_outputs=3, hidden=())(
        torch.randn(2, 64)).shape == (2, 3)


def test_numpy_integers_are_accepted():
    np = pytest.importorskip("numpy")
    model = build_model("wrn", input_shape=tuple(np.array([3, 16, 16])), num_outputs=np.int64(4),
                        depth=np.int64(10), width=1)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 4)


def test_dropout_options_add_dropout_layers():
    for name, options in [("wideresnet", {"depth": 10, "width": 1, "dropout": 0.3}),
                          ("alexnet", {"dropout": 0.5})]:
        model = build_model(name, input_shape=CIFAR, num_outputs=2, **options)
        rates = {m.p for m in model.modules() if isinstance(m, nn.Dropout)}
        assert rates == {options["dropout"]}


def _error(name="mlp", input_shape=TABULAR, num_outputs=10, **options) -> str:
    with pytest.raises(ModelError) as info:
        build_model(name, input_shape=input_shape, num_outputs=num_outputs, **options)
    message = str(info.value)
    assert "\n" not in message
    assert isinstance(info.value, ValueError)
    return message


def test_conv_model_with_tabular_input_names_the_fix():
    assert _error("lenet5", TABULAR) == (
        "model 'lenet5' needs image input (C, H, W); dataset gives (64,): use 'mlp' or 'logreg'")
    assert "needs image input" in _error("resnet18", (28, 28))


def test_error_messages():
    assert "choose one of logreg, mlp" in _error("resnet50")
    message = _error("mlp", width=3)
    assert "no option width" in message and "hidden=(1000, 1000)" in message
    assert "accepted options are none" in _error("logreg", depth=3)
    assert "6n+4" in _error("wideresnet", CIFAR, depth=20)
    assert "6n+2" in _error("preresnet", CIFAR, depth=21)
    assert "depth=110" in _error("pyramidnet", CIFAR, depth=2)
    assert "6n+2" in _error("preresnet", CIFAR, depth="20")
    assert "width" in _error("wideresnet", CIFAR, width=0)
    assert "alpha" in _error("pyramidnet", CIFAR, depth=8, alpha=-1)
    assert "activation" in _error("mlp", activation="swishy")
    assert "hidden" in _error("mlp", hidden="100")
    assert "hidden" in _error("mlp", hidden=(100, 0))
    assert "dropout" in _error("mlp", dropout=1.0)
    assert "batch_norm" in _error("vgg16", CIFAR, batch_norm="yes")
    assert "num_outputs" in _error("mlp", num_outputs=0)
    assert "input_shape" in _error("mlp", input_shape=(0,))
    assert "input_shape" in _error("mlp", input_shape=())
    assert "input_shape" in _error("mlp", input_shape=(3.5,))
    assert "input_shape" in _error("mlp", input_shape=64)
    assert "at least 16x16" in _error("vgg16", (3, 8, 8))


def test_module_docstring_example():
    result = doctest.testmod(toolkit.models.zoo, verbose=False)
    assert result.attempted > 0 and result.failed == 0


def test_lenet5_variants_keep_the_parameter_count_and_check_their_options():
    torch.manual_seed(0)
    classic = build_model("lenet5", input_shape=MNIST, num_outputs=10)
    modern = build_model("lenet5", input_shape=MNIST, num_outputs=10, activation="relu", pooling="max",
                         init="torch")
    assert sum(p.numel() for p in modern.parameters()) == 61_706
    assert [type(m).__name__ for m in modern.features] == ["Conv2d", "ReLU", "MaxPool2d"] * 2
    # Glorot with the tanh gain: U(±gain·√(6/(fan_in+fan_out))); PyTorch's default: U(±1/√fan_in).
    fc = classic.classifier[1].weight.detach()
    bound = nn.init.calculate_gain("tanh") * (6 / (400 + 120)) ** 0.5
    assert float(fc.abs().max()) <= bound and float(fc.abs().max()) > 0.9 * bound
    assert float(modern.classifier[1].weight.detach().abs().max()) <= 1 / 400 ** 0.5
    assert float(modern.classifier[1].bias.detach().abs().max()) > 0  # PyTorch draws biases too
    with pytest.raises(ModelError, match="model 'lenet5' option init must be one of glorot, torch; got 'he'"):
        build_model("lenet5", input_shape=MNIST, num_outputs=10, init="he")
