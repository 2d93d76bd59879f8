"""The model zoo in plain torch: build any supported network by name for a dataset's input shape.

The names below load their module on first use, so importing the package stays cheap."""
from __future__ import annotations

from toolkit._faces import lazy_names

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
__getattr__, __dir__, __all__ = lazy_names(__name__, _WHERE)
