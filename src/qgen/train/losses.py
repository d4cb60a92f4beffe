"""Training objectives (``train.loss`` of a run spec).

- ``ce``: cross-entropy averaged over the batch; a model that defines ``training_loss`` (the maxout
  network of Courbariaux et al. 2014, whose objective is Σ_batch CE / K with a rounded output
  gradient) uses its own.
- ``sq_hinge``: BinaryConnect's squared hinge loss (reference code: ``T.mean(T.sqr(T.maximum(0.,
  1. - target*output)))``), averaged over the batch and the K outputs, with targets t ∈ {−1, +1}.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

LOSSES = ("ce", "sq_hinge")
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def squared_hinge(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    t = 2 * F.one_hot(target, logits.shape[1]).to(logits.dtype) - 1
    return torch.clamp(1 - t * logits, min=0).pow(2).mean()


def training_loss(name: str, model: nn.Module) -> Loss:
    if name == "sq_hinge":
        return squared_hinge
    if name == "ce":
        return getattr(model, "training_loss", None) or F.cross_entropy
    raise ValueError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}")
