"""Training augmentation of raw image batches: random crop with zero padding and horizontal flip.

The convention is torchvision's ``RandomCrop(H, padding=p)`` followed by ``RandomHorizontalFlip()``, the
standard CIFAR augmentation (p = 4; issue 13: flip for CIFAR, none for SVHN and MNIST): each image is padded
with ``p`` zeros on every side (0 = black in raw pixel units, so this runs BEFORE normalization), cropped
back to H×W at an offset (dy, dx) drawn uniformly from {0, …, 2p}² for each image independently, then
mirrored left-right with probability ½ per image.

Every random choice is drawn on the CPU from the ``torch.Generator`` the caller passes (qgen.data.batches
seeds one per (run seed, epoch, batch position)), and only the small index tensors move to the batch's
device, so a CPU and a CUDA run see the same crops and flips. The crop and the flip are one gather through
index grids: no Python loop over images.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

SPEC_KEYS = ("crop_padding", "flip")


class Draws(NamedTuple):
    """The random choices of a batch: ``offsets`` int64 [B, 2] as (dy, dx) in [0, 2p]; ``flips`` bool [B]."""

    offsets: torch.Tensor
    flips: torch.Tensor


@dataclass(frozen=True)
class Augment:
    """Random crop with ``crop_padding`` zero pixels per side (0: no crop) and, if ``flip``, a horizontal
    flip with probability ½; called on a raw batch [B, C, H, W] with a CPU generator."""

    crop_padding: int = 0
    flip: bool = False

    def __post_init__(self) -> None:
        p = self.crop_padding
        if isinstance(p, bool) or not isinstance(p, int) or p < 0:
            raise ValueError(f"augment.crop_padding must be a non-negative integer, got {p!r}")
        if not isinstance(self.flip, bool):
            raise ValueError(f"augment.flip must be true or false, got {self.flip!r}")

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None) -> Augment | None:
        """The augmentation of a spec ``{"crop_padding": p, "flip": bool}`` (or ``"none"``, as a run spec
        writes it off against an augmenting default); None when it does nothing."""
        if spec is None or spec == "none":
            return None
        if not isinstance(spec, Mapping):
            raise ValueError(f"augment must be a mapping with keys {list(SPEC_KEYS)}, got {spec!r}")
        unknown = sorted(set(spec) - set(SPEC_KEYS))
        if unknown:
            raise ValueError(f"augment: unknown key(s) {unknown}; expected some of {list(SPEC_KEYS)}")
        augment = cls(**spec)
        return augment if augment.active else None

    def to_spec(self) -> dict[str, Any]:
        return {"crop_padding": self.crop_padding, "flip": self.flip}

    @property
    def active(self) -> bool:
        return self.crop_padding > 0 or self.flip

    def draw(self, batch: int, generator: torch.Generator) -> Draws:
        """The offsets, then the flips, of ``batch`` images, drawn on the CPU ``generator`` (in that order;
        nothing is drawn for a part that is off, whose offsets are 0 or flips False)."""
        if generator.device.type != "cpu":
            raise ValueError(f"augmentation draws need a CPU generator, got one on {generator.device}")
        span = 2 * self.crop_padding + 1
        if self.crop_padding > 0:
            offsets = torch.randint(0, span, (batch, 2), generator=generator)
        else:
            offsets = torch.zeros(batch, 2, dtype=torch.int64)
        if self.flip:
            flips = torch.randint(0, 2, (batch,), generator=generator).bool()
        else:
            flips = torch.zeros(batch, dtype=torch.bool)
        return Draws(offsets, flips)

    def apply(self, x: torch.Tensor, draws: Draws) -> torch.Tensor:
        """``x`` [B, C, H, W] padded with zeros, cropped at ``draws.offsets``, flipped where ``draws.flips``;
        same dtype, shape and device as ``x``."""
        if x.ndim != 4:
            raise ValueError(f"augmentation expects a batch [B, C, H, W], got shape {tuple(x.shape)}")
        b, c, h, w = x.shape
        if draws.offsets.shape != (b, 2) or draws.flips.shape != (b,):
            raise ValueError(f"draws for {len(draws.flips)} images, batch has {b}")
        p = self.crop_padding
        if p > 0:
            padded = x.new_zeros(b, c, h + 2 * p, w + 2 * p)
            padded[:, :, p : p + h, p : p + w] = x
        else:
            padded = x
        offsets, flips = draws.offsets.to(x.device), draws.flips.to(x.device)
        cols = torch.arange(w, device=x.device)
        cols = torch.where(flips[:, None], w - 1 - cols, cols) + offsets[:, 1:]  # [B, W]
        rows = torch.arange(h, device=x.device) + offsets[:, :1]  # [B, H]
        images = torch.arange(b, device=x.device)[:, None, None, None]
        channels = torch.arange(c, device=x.device)[None, :, None, None]
        return padded[images, channels, rows[:, None, :, None], cols[:, None, None, :]]

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The augmented batch; its random choices are :meth:`draw` ``(len(x), generator)``."""
        if not self.active:
            return x
        return self.apply(x, self.draw(len(x), generator))
