"""Generalization gap of the quantized model as deployed (eval mode, quantizers active).

QGen's exact gap definition is not verified (papers.md §1d), so both are reported:
  gap_acc  = train accuracy − test accuracy
  gap_loss = test cross-entropy − train cross-entropy
"""

from __future__ import annotations

import torch
from torch import nn

from qgen.data import PreparedData
from qgen.metrics import accuracy_and_ce


def generalization_metrics(
    model: nn.Module, data: PreparedData, device: torch.device | str = "cpu"
) -> dict[str, float]:
    train_acc, train_ce = accuracy_and_ce(model, data.train["x"], data.train["y"], device=device)
    test_acc, test_ce = accuracy_and_ce(model, data.test["x"], data.test["y"], device=device)
    return {
        "train_acc": train_acc,
        "test_acc": test_acc,
        "train_ce": train_ce,
        "test_ce": test_ce,
        "train_error": 1 - train_acc,
        "test_error": 1 - test_acc,
        "gap_acc": train_acc - test_acc,
        "gap_loss": test_ce - train_ce,
    }
