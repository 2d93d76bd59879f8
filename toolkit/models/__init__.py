"""The model zoo in plain torch: build any supported network by name for a dataset's input shape.

The names below load their module on first use, so importing the package stays cheap."""
from __future__ import annotations

from importlib import import_module

_WHERE = {
    "MODEL_NAMES": "zoo",
    "ModelError": "zoo",
    "build_model": "zoo",
    "model_options": "zoo",
    "LogisticRegression": "zoo",
    "MLP": "zoo",
    "LeNet5": "cnn",
    "AlexNet": "cnn",
    "VGG16": "cnn",
    "AllCNNC": "cnn",
    "SqueezeNet": "cnn",
    "ResNet18": "resnet",
    "PreActResNet": "resnet",
    "PyramidNet": "resnet",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
