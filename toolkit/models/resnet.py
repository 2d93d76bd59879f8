"""Residual networks for CIFAR-sized images: ResNet-18, PreResNet, WideResNet, PyramidNet.

All use a 3x3 stem (no stride, no max pool), basic blocks of two 3x3
convolutions, global average pooling and one linear layer; inputs are
``(B, C, H, W)``, outputs logits ``(B, num_outputs)``. Depth arrives here as
blocks per stage; :mod:`toolkit.models.zoo` turns a user's depth into it and
rejects invalid depths.

Residual sums are written ``out + shortcut`` and no ReLU works in place, so
the networks can be differentiated twice and in forward mode through
:func:`torch.func.functional_call`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from toolkit.models.cnn import reset_conv_bn

__all__ = ["ResNet18", "PreActResNet", "PyramidNet", "BasicBlock", "PreActBlock", "PyramidBlock"]


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def _stage(
    make_block: Callable[[int, int, int], nn.Module], channels: Sequence[int], stride: int
) -> nn.Sequential:
    """Chains blocks through ``channels`` (input first); only the first block strides."""
    blocks = [
        make_block(channels[i], channels[i + 1], stride if i == 0 else 1)
        for i in range(len(channels) - 1)
    ]
    return nn.Sequential(*blocks)


class BasicBlock(nn.Module):
    """Post-activation basic block (He et al., 2016): relu(bn(conv(relu(bn(conv x)))) + x).

    A 1x1 convolution with BatchNorm projects the shortcut when the stride or
    the channel count changes.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Maps ``(B, in, H, W)`` to ``(B, out, H / stride, W / stride)``."""
        out = F.relu(self.bn1(self.conv1(features)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(features))


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al., 2016b; Zagoruyko & Komodakis, 2016).

    bn-relu-conv, bn-relu-(dropout)-conv, plus the shortcut. When the shape
    changes, a 1x1 convolution projects the *pre-activated* input.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, *, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Maps ``(B, in, H, W)`` to ``(B, out, H / stride, W / stride)``."""
        activated = F.relu(self.bn1(features))
        shortcut = features if self.shortcut is None else self.shortcut(activated)
        out = self.conv1(activated)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + shortcut


class PyramidBlock(nn.Module):
    """PyramidNet basic block (Han et al., 2017): bn-conv-bn-relu-conv-bn plus shortcut.

    The shortcut is parameter-free: 2x2 average pooling when striding, and
    zero channels appended when the block widens.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            _conv3x3(in_channels, out_channels, stride),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            _conv3x3(out_channels, out_channels),
            nn.BatchNorm2d(out_channels),
        )
        self.pool: nn.Module = nn.Identity()
        if stride != 1:
            self.pool = nn.AvgPool2d(2, stride=2, ceil_mode=True)
        self.extra_channels = out_channels - in_channels

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Maps ``(B, in, H, W)`` to ``(B, out, H / stride, W / stride)``."""
        shortcut = F.pad(self.pool(features), (0, 0, 0, 0, 0, self.extra_channels))
        return self.residual(features) + shortcut


class ResNet18(nn.Module):
    """ResNet-18 for CIFAR (He et al., 2016): 3x3 stem, 4 stages of 2 basic blocks.

    Stage widths 64, 128, 256, 512; strides 1, 2, 2, 2; about 11.17M parameters
    for 10 outputs.

    Args:
      in_channels: image channels C.
      num_outputs: number of logits.
    """

    MIN_SIZE = 1

    def __init__(self, in_channels: int, num_outputs: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv3x3(in_channels, 64), nn.BatchNorm2d(64), nn.ReLU())
        widths = (64, 128, 256, 512)
        stages = []
        previous = 64
        for index, width in enumerate(widths):
            stages.append(_stage(BasicBlock, (previous, width, width), 1 if index == 0 else 2))
            previous = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_outputs)
        )
        reset_conv_bn(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Maps images ``(B, C, H, W)`` to logits ``(B, num_outputs)``."""
        return self.head(self.stages(self.stem(images)))


class PreActResNet(nn.Module):
    """Pre-activation ResNet with three stages: PreResNet and WideResNet.

    A 3x3 stem to 16 channels, three stages of ``blocks_per_stage``
    pre-activation blocks (strides 1, 2, 2), then bn-relu, global average
    pooling and a linear layer. PreResNet-(6n+2) uses widths (16, 32, 64);
    WRN-(6n+4)-k uses (16k, 32k, 64k) with dropout inside the blocks.

    Args:
      in_channels: image channels C.
      num_outputs: number of logits.
      blocks_per_stage: n, at least 1.
      widths: the three stage widths.
      dropout: dropout probability between the two convolutions of a block.
    """

    MIN_SIZE = 1

    def __init__(
        self, in_channels: int, num_outputs: int, *, blocks_per_stage: int,
        widths: Sequence[int] = (16, 32, 64), dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.stem = _conv3x3(in_channels, 16)

        def make_block(block_in: int, block_out: int, stride: int) -> nn.Module:
            return PreActBlock(block_in, block_out, stride, dropout=dropout)

        stages = []
        previous = 16
        for index, width in enumerate(widths):
            channels = (previous, *(width,) * blocks_per_stage)
            stages.append(_stage(make_block, channels, 1 if index == 0 else 2))
            previous = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(
            nn.BatchNorm2d(previous), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(previous, num_outputs),
        )
        reset_conv_bn(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Maps images ``(B, C, H, W)`` to logits ``(B, num_outputs)``."""
        return self.head(self.stages(self.stem(images)))


class PyramidNet(nn.Module):
    """PyramidNet with basic blocks (Han et al., 2017).

    The width grows by ``alpha / (3 n)`` channels per block, from 16 to
    ``16 + alpha`` (each block's width is rounded); three stages of n blocks
    with strides 1, 2, 2. PyramidNet-110 with alpha 48 has about 1.7M
    parameters.

    Args:
      in_channels: image channels C.
      num_outputs: number of logits.
      blocks_per_stage: n, at least 1 (depth 6n + 2).
      alpha: total widening over the network.
    """

    MIN_SIZE = 1

    def __init__(
        self, in_channels: int, num_outputs: int, *, blocks_per_stage: int, alpha: float
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv3x3(in_channels, 16), nn.BatchNorm2d(16))
        total_blocks = 3 * blocks_per_stage
        step = alpha / total_blocks
        widths = [16] + [int(round(16 + step * (i + 1))) for i in range(total_blocks)]
        stages = []
        for index in range(3):
            channels = widths[index * blocks_per_stage: (index + 1) * blocks_per_stage + 1]
            stages.append(_stage(PyramidBlock, channels, 1 if index == 0 else 2))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(
            nn.BatchNorm2d(widths[-1]), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(widths[-1], num_outputs),
        )
        reset_conv_bn(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Maps images ``(B, C, H, W)`` to logits ``(B, num_outputs)``."""
        return self.head(self.stages(self.stem(images)))
