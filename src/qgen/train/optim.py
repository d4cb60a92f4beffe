"""Optimizers and learning-rate schedules from the ``optim`` section of a run spec."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from qgen.quant import Quantizer


def build_optimizer(model: nn.Module, optim: dict[str, Any]) -> torch.optim.Optimizer:
    """SGD (with momentum) or Adam. Weight decay applies to the network's parameters, not to the
    quantizers' learned step sizes (decaying a step would shrink the grid, not the weights)."""
    quant_params = {id(p) for m in model.modules() if isinstance(m, Quantizer) for p in m.parameters()}
    decay = [p for p in model.parameters() if id(p) not in quant_params]
    steps = [p for p in model.parameters() if id(p) in quant_params]
    groups = [{"params": decay, "weight_decay": optim.get("weight_decay", 0.0)}]
    if steps:
        groups.append({"params": steps, "weight_decay": 0.0})
    if optim["name"] == "sgd":
        return torch.optim.SGD(groups, lr=optim["lr"], momentum=optim.get("momentum", 0.0))
    if optim["name"] == "adam":
        return torch.optim.Adam(groups, lr=optim["lr"])
    raise ValueError(f"unknown optimizer {optim['name']!r}; known: sgd, adam")


def lr_at(optim: dict[str, Any], epoch: int, max_epochs: int) -> float:
    """Learning rate for 0-based ``epoch``: constant, cosine annealing to 0 over max_epochs, or
    step decay by ``gamma`` at each milestone. A pure function of the epoch, so resuming needs no
    scheduler state."""
    base, schedule = float(optim["lr"]), optim.get("schedule", "constant")
    if schedule == "constant":
        return base
    if schedule == "cosine":
        return base * 0.5 * (1 + math.cos(math.pi * epoch / max_epochs))
    if schedule == "step":
        passed = sum(1 for m in optim.get("milestones", []) if epoch >= m)
        return base * optim.get("gamma", 0.1) ** passed
    raise ValueError(f"unknown schedule {schedule!r}; known: constant, cosine, step")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
