"""Accuracy and cross-entropy of a model on a split, in eval mode, without gradients."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

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
    model: nn.Module | Forward,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 1024,
    device: torch.device | str | None = "cpu",
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` on (x, y), in batches of ``batch_size`` moved to
    ``device`` (None: where x is); a module is left in its prior mode."""
    device = x.device if device is None else device
    correct = torch.zeros((), dtype=torch.float64, device=device)
    total_ce = torch.zeros((), dtype=torch.float64, device=device)
    with _eval_mode(model):
        for start in range(0, len(y), batch_size):
            xb = x[start : start + batch_size].to(device)
            yb = y[start : start + batch_size].to(device)
            logits = model(xb)
            total_ce += F.cross_entropy(logits.double(), yb, reduction="sum")
            correct += (logits.argmax(dim=1) == yb).sum()
    n = len(y)
    return float(correct) / n, float(total_ce) / n
