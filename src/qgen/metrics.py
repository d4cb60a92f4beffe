"""Accuracy and cross-entropy of a model over a stream of batches, in eval mode, without gradients."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

#: anything that maps a batch of inputs to logits: a module, or a measured view with its weights
Forward = Callable[[torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def _eval_mode(model: nn.Module | Forward):
    """Eval mode for a module (its prior mode restored afterwards); any other callable as it is."""
    if not isinstance(model, nn.Module):
        yield
        return
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def accuracy_and_ce(
    model: nn.Module | Forward, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` over ``batches`` (e.g. a split's
    :class:`~qgen.data.batches.Examples`), summed in float64 on the batches' device; a module is
    evaluated in eval mode and left in its prior mode."""
    correct: torch.Tensor | float = 0.0
    total_ce: torch.Tensor | float = 0.0
    n = 0
    with _eval_mode(model):
        for xb, yb in batches:
            logits = model(xb)
            total_ce = total_ce + F.cross_entropy(logits.double(), yb, reduction="sum")
            correct = correct + (logits.argmax(dim=1) == yb).sum()
            n += len(yb)
    if n == 0:
        raise ValueError("accuracy_and_ce: no examples")
    return float(correct) / n, float(total_ce) / n
