"""Accuracy and cross-entropy of a model on a split, in eval mode, without gradients."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def accuracy_and_ce(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 1024,
    device: torch.device | str = "cpu",
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` on (x, y); the model is left in its prior mode."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.float64, device=device)
    total_ce = torch.zeros((), dtype=torch.float64, device=device)
    try:
        for start in range(0, len(y), batch_size):
            xb = x[start : start + batch_size].to(device)
            yb = y[start : start + batch_size].to(device)
            logits = model(xb)
            total_ce += F.cross_entropy(logits.double(), yb, reduction="sum")
            correct += (logits.argmax(dim=1) == yb).sum()
    finally:
        model.train(was_training)
    n = len(y)
    return float(correct) / n, float(total_ce) / n
