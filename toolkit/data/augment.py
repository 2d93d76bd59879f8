"""Standard training-set augmentation for CIFAR-10/100 and SVHN, as batched tensor operations.

CIFAR-10/100: a random 32×32 crop of the image zero-padded by 4 pixels on each side, then a
horizontal flip with probability 1/2 (torchvision's ``RandomCrop(32, padding=4)`` followed by
``RandomHorizontalFlip()``). SVHN: the crop only, since flipped digits are other glyphs.

Why it is written this way:
    * A pure function of (seed, step): the crop offsets and flips of training batch ``step`` are
      drawn from a CPU ``torch.Generator`` seeded from (seed, step) alone, so a run resumed from
      a checkpoint, a run on another device and every process of a data-parallel run draw the
      same augmentation for the same batch. The draws use their own seed stream
      (:func:`augmentation_seed`), independent of the batch permutations of
      :class:`toolkit.runs.common.BatchStream`.
    * On the training device, without a host sync: only the small index tensors (batch × 2
      offsets, batch flips) travel to the device, asynchronously; the crop and the flip are one
      gather over the padded batch, with no per-sample Python loop and no torchvision.

The zero padding is applied to the tensors the loader gives, which are standardised per
channel (:mod:`toolkit.data.datasets`), so the padded border is the training set's mean colour.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from toolkit.data.datasets import _ALIASES

__all__ = ["Augmentation", "AugmentedBatches", "STANDARD_AUGMENTATIONS", "augment_batch", "augmentation_draws",
           "augmentation_for", "augmentation_seed", "crop_and_flip"]

AUGMENT_STREAM = 0x6175676D
"""Tag mixed into the augmentation seeds ("augm"), so they form a stream of their own."""


@dataclass(frozen=True)
class Augmentation:
    """A dataset's standard augmentation: random crops of the padded image, and optional flips.

    Attributes:
        crop_padding: zero pixels added on each side before a crop of the original size
            (0: no cropping); the crop's offsets lie in ``[0, 2 * crop_padding]``.
        flip: mirror each image left-right with probability 1/2.
    """

    crop_padding: int = 4
    flip: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.crop_padding, bool) or not isinstance(self.crop_padding, int) or self.crop_padding < 0:
            raise ValueError(f"crop_padding must be an integer >= 0, got {self.crop_padding!r}")

    def __call__(self, x: Tensor, *, seed: int, step: int) -> Tensor:
        """The augmented batch ``x`` (N, C, H, W) of training step ``step``; see :func:`augment_batch`."""
        return augment_batch(x, seed=seed, step=step, crop_padding=self.crop_padding, flip=self.flip)


STANDARD_AUGMENTATIONS: dict[str, Augmentation] = {
    "cifar10": Augmentation(crop_padding=4, flip=True),
    "cifar100": Augmentation(crop_padding=4, flip=True),
    "svhn": Augmentation(crop_padding=4, flip=False),
}
"""Canonical dataset name -> its standard augmentation (datasets not listed have none)."""


def augmentation_for(dataset: str) -> Augmentation | None:
    """The standard augmentation of a dataset (a :class:`toolkit.data.datasets.Dataset` name or an alias), or None."""
    key = dataset.strip().lower()
    return STANDARD_AUGMENTATIONS.get(_ALIASES.get(key, key))


def augmentation_seed(seed: int, step: int) -> int:
    """The generator seed of training step ``step``'s augmentation: a hash of (stream tag, seed, step).

    NumPy's ``SeedSequence`` mixes the three integers, so nearby (seed, step) pairs give unrelated
    streams and none coincides with the small seeds :class:`toolkit.runs.common.BatchStream` uses.
    """
    if seed < 0 or step < 0:
        raise ValueError(f"seed and step must be >= 0, got seed={seed}, step={step}")
    word = np.random.SeedSequence([AUGMENT_STREAM, seed, step]).generate_state(1, np.uint64)[0]
    return int(word) >> 1  # 63 bits: within any generator's seed range


def augmentation_draws(batch_size: int, *, seed: int, step: int, crop_padding: int,
                       flip: bool) -> tuple[Tensor, Tensor]:
    """The random choices of one batch's augmentation, on the CPU.

    Args:
        batch_size: images in the batch (N); draw for the whole batch even when a process
            holds a part of it, then take that part's rows.
        seed, step: the run's seed and the training step.
        crop_padding: offsets are drawn uniformly from ``[0, 2 * crop_padding]``.
        flip: draw flips with probability 1/2 (else none is flipped).

    Returns:
        offsets int64 (N, 2): top row and left column of each crop in the padded image;
        flips bool (N,).
    """
    generator = torch.Generator().manual_seed(augmentation_seed(seed, step))
    offsets = torch.randint(0, 2 * crop_padding + 1, (batch_size, 2), generator=generator)
    if flip:
        flips = torch.randint(0, 2, (batch_size,), generator=generator).bool()
    else:
        flips = torch.zeros(batch_size, dtype=torch.bool)
    return offsets, flips


def crop_and_flip(x: Tensor, offsets: Tensor, flips: Tensor, *, crop_padding: int) -> Tensor:
    """Crops each zero-padded image at its offsets, then mirrors the flipped ones: one gather.

    Args:
        x: images (N, C, H, W).
        offsets: int64 (N, 2), top row and left column of each crop in the image padded by
            ``crop_padding`` zeros on every side, each in ``[0, 2 * crop_padding]``.
        flips: bool (N,), images to mirror left-right after cropping.
        crop_padding: the padding, in pixels.

    Returns:
        The augmented images, shape and dtype of ``x``, on ``x``'s device.
    """
    n, _, height, width = x.shape
    device = x.device
    offsets, flips = _to_device(offsets, device), _to_device(flips, device)
    padded = F.pad(x, (crop_padding,) * 4)
    rows = offsets[:, :1] + torch.arange(height, device=device)                   # (N, H)
    columns = torch.arange(width, device=device)
    columns = torch.where(flips[:, None], width - 1 - columns, columns) + offsets[:, 1:]  # (N, W)
    images = torch.arange(n, device=device)[:, None, None]
    # Advanced indices on dims 0, 2, 3 around a slice: the result is (N, H, W, C).
    return padded[images, :, rows[:, :, None], columns[:, None, :]].permute(0, 3, 1, 2).contiguous()


def _to_device(draws: Tensor, device: torch.device) -> Tensor:
    """Small CPU draws on ``device`` without waiting for it: a pinned copy, sent asynchronously."""
    if device.type == "cuda":
        draws = draws.pin_memory()
    return draws.to(device, non_blocking=True)


def augment_batch(x: Tensor, *, seed: int, step: int, crop_padding: int, flip: bool) -> Tensor:
    """Randomly cropped (and flipped) images of training step ``step``, a pure function of its arguments.

    Args:
        x: images (N, C, H, W) on any device.
        seed: the run's seed.
        step: the training step; the same (seed, step) gives the same crops and flips on every
            device and in every process.
        crop_padding: zero padding on each side before the crop of size (H, W).
        flip: mirror left-right with probability 1/2.

    Returns:
        A new tensor, shape, dtype and device of ``x``.

    Raises:
        ValueError: ``x`` is not a batch of images, or ``crop_padding`` is negative.
    """
    if x.ndim != 4:
        raise ValueError(f"augmentation needs images (N, C, H, W); got a tensor of shape {tuple(x.shape)}")
    if crop_padding < 0:
        raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
    offsets, flips = augmentation_draws(len(x), seed=seed, step=step, crop_padding=crop_padding, flip=flip)
    return crop_and_flip(x, offsets, flips, crop_padding=crop_padding)


class AugmentedBatches:
    """A batch stream whose images are augmented: batch t is still a pure function of (seed, t).

    Wraps a callable ``step -> (x, y)`` such as :class:`toolkit.runs.common.BatchStream`; labels pass
    through unchanged.
    """

    def __init__(self, batches: Callable[[int], tuple[Tensor, Tensor]], augmentation: Augmentation, *,
                 seed: int) -> None:
        self.batches, self.augmentation, self.seed = batches, augmentation, seed

    def __call__(self, step: int) -> tuple[Tensor, Tensor]:
        x, y = self.batches(step)
        return self.augmentation(x, seed=self.seed, step=step), y
