"""Training objectives (``train.loss`` of a run spec).

- ``ce``: cross-entropy averaged over the batch; a model that defines ``training_loss`` (the maxout
  network of Courbariaux et al. 2014, whose objective is Σ_batch CE / K with a rounded output
  gradient) uses its own.
- ``sq_hinge``: BinaryConnect's squared hinge loss (reference code: ``T.mean(T.sqr(T.maximum(0.,
  1. - target*output)))``), averaged over the batch and the K outputs, with targets t ∈ {−1, +1}.
- ``dice``: the soft dice loss of the U-Net reference code (AskariHemmat et al. 2019, ``losses.py``,
  GM/NIH training): 1 − (2·Σ p·t + ε)/(Σ p + Σ t + ε), ε = 1e-4, p = sigmoid(logit), the sums over the
  whole batch flattened (not per image). The GM copy returns −dice, the EM/NIH one 1 − dice: the same
  gradient; 1 − dice is used.
- ``bce_dice``: the reference's EM loss ``calc_loss``, 0.5·BCE + 0.5·dice, BCE the mean binary
  cross-entropy over every pixel. The reference's EM model already ends in a sigmoid, so its
  ``binary_cross_entropy_with_logits`` and dice see sigmoid(sigmoid(z)) and probabilities taken as logits;
  that double sigmoid is not copied: BCE takes the logits and dice sigmoid(logits), as ``calc_loss`` was
  written to be used.

Segmentation targets are binary masks of the logits' shape, or without their channel dimension
((N, H, W) for logits (N, 1, H, W)); any dtype (bool, uint8, float) with values in {0, 1}.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

LOSSES = ("ce", "sq_hinge", "dice", "bce_dice")
#: the soft dice smoothing constant of the U-Net reference code (``eps = 0.0001``)
DICE_EPS = 1e-4
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def squared_hinge(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    t = 2 * F.one_hot(target, logits.shape[1]).to(logits.dtype) - 1
    return torch.clamp(1 - t * logits, min=0).pow(2).mean()


def mask_like(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``target`` as a float mask of ``logits``' shape (a missing channel dimension of size 1 added)."""
    if target.shape != logits.shape and target.ndim == logits.ndim - 1 and logits.shape[1] == 1:
        target = target.unsqueeze(1)
    if target.shape != logits.shape:
        raise ValueError(
            f"segmentation target of shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}"
        )
    return target.to(logits.dtype)


def soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, eps: float = DICE_EPS, per_image: bool = False
) -> torch.Tensor:
    """1 − (2Σ p·t + ε)/(Σ p + Σ t + ε), p = sigmoid(logits), over the whole batch (the reference) or,
    with ``per_image``, one value per image (sums over all dimensions but the first)."""
    t = mask_like(logits, target)
    p = torch.sigmoid(logits)
    dims = tuple(range(1, p.ndim)) if per_image else tuple(range(p.ndim))
    intersection = (p * t).sum(dim=dims)
    union = p.sum(dim=dims) + t.sum(dim=dims)
    return 1 - (2 * intersection + eps) / (union + eps)


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The reference's soft dice loss over the batch (ε = 1e-4; module docstring)."""
    return soft_dice_loss(logits, target)


def bce_dice(
    logits: torch.Tensor, target: torch.Tensor, bce_weight: float = 0.5, per_image: bool = False
) -> torch.Tensor:
    """w·BCE + (1 − w)·dice, w = 0.5 (the reference's EM ``calc_loss``); BCE is the mean over pixels
    (per image with ``per_image``, as the dice term then is)."""
    t = mask_like(logits, target)
    bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    bce = bce.flatten(1).mean(dim=1) if per_image else bce.mean()
    return bce_weight * bce + (1 - bce_weight) * soft_dice_loss(logits, t, per_image=per_image)


def training_loss(name: str, model: nn.Module) -> Loss:
    if name == "sq_hinge":
        return squared_hinge
    if name == "dice":
        return dice_loss
    if name == "bce_dice":
        return bce_dice
    if name == "ce":
        return getattr(model, "training_loss", None) or F.cross_entropy
    raise ValueError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}")
