"""Small float64 models and batches shared by the tests."""
from __future__ import annotations

import torch
from torch import nn


def tiny_mlp(inputs: int = 5, classes: int = 3) -> nn.Module:
    return nn.Sequential(nn.Linear(inputs, 7), nn.Tanh(), nn.Linear(7, classes)).double()


def tiny_bn_dropout(inputs: int = 5, classes: int = 3) -> nn.Module:
    return nn.Sequential(nn.Linear(inputs, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Dropout(0.25),
                         nn.Linear(6, classes)).double()


def tiny_conv(classes: int = 3) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(),
                         nn.Linear(2 * 3 * 3, classes)).double()


def batch(n: int, shape: tuple[int, ...], classes: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, *shape, generator=g, dtype=torch.float64),
            torch.randint(0, classes, (n,), generator=g))
