"""Optimizers and learning-rate (and momentum) schedules from the ``optim`` section of a run spec."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from qgen.quant import BinaryQuantizer, Quantizer, quant_layers

SCHEDULES = ("constant", "cosine", "step", "exponential", "linear")


def build_optimizer(model: nn.Module, optim: dict[str, Any]) -> torch.optim.Optimizer:
    """SGD (with momentum), Adam (L2 penalty as weight decay) or AdamW (decoupled). Weight decay applies
    to the network's parameters, not to the quantizers' learned step sizes (decaying a step would shrink
    the grid, not the weights).

    BinaryConnect layers put their latent weight in a group of its own whose learning rate is scaled
    by the layer's ``lr_scale`` (reference code: ``W_LR_scale``; Adam's update is linear in the
    learning rate, so scaling the rate equals the code's scaling of the update). A network computed
    in low-precision arithmetic (``low_precision_layers``) gets qgen.train.low_precision.LowPrecisionSGD.
    """
    if hasattr(model, "low_precision_layers"):
        from qgen.train.low_precision import LowPrecisionSGD

        if optim["name"] != "sgd" or optim.get("weight_decay", 0.0):
            raise ValueError(
                "low-precision training (model maxout) uses SGD with momentum and no weight decay"
            )
        return LowPrecisionSGD(
            model.low_precision_layers(),
            lr=optim["lr"],
            momentum=momentum_at(optim, 0),
            max_col_norm=optim.get("max_col_norm"),
        )
    quant_params = {id(p) for m in model.modules() if isinstance(m, Quantizer) for p in m.parameters()}
    binary = {
        id(layer.weight): layer.weight_quant.lr_scale
        for _, layer in quant_layers(model)
        if isinstance(layer.weight_quant, BinaryQuantizer)
    }
    wd = optim.get("weight_decay", 0.0)
    decay = [p for p in model.parameters() if id(p) not in quant_params and id(p) not in binary]
    groups: list[dict[str, Any]] = [{"params": decay, "weight_decay": wd}]
    groups += [
        {"params": [p], "weight_decay": wd, "lr_scale": binary[id(p)]}
        for p in model.parameters()
        if id(p) in binary
    ]
    steps = [p for p in model.parameters() if id(p) in quant_params]
    if steps:
        groups.append({"params": steps, "weight_decay": 0.0})
    if optim["name"] == "sgd":
        return torch.optim.SGD(groups, lr=optim["lr"], momentum=momentum_at(optim, 0))
    if optim["name"] == "adam":
        return torch.optim.Adam(groups, lr=optim["lr"])
    if optim["name"] == "adamw":  # decoupled weight decay (Loshchilov & Hutter 2019), DeiT's optimizer
        return torch.optim.AdamW(groups, lr=optim["lr"])
    raise ValueError(f"unknown optimizer {optim['name']!r}; known: sgd, adam, adamw")


def lr_at(optim: dict[str, Any], epoch: int, max_epochs: int) -> float:
    """Learning rate for 0-based ``epoch``. A pure function of the epoch, so resuming needs no
    scheduler state.

    - constant; cosine annealing to 0 over max_epochs; step decay by ``gamma`` at each milestone;
    - exponential (BinaryConnect): lr·(lr_final/lr)^(epoch/max_epochs), i.e. multiplied after every
      epoch by (lr_final/lr)^(1/max_epochs);
    - linear (Courbariaux et al. 2014): from lr down to lr_final in ``lr_saturate`` epochs, then
      constant (the reference adds (lr_final − lr)/lr_saturate after every epoch).

    ``warmup_epochs`` w > 0: lr·(epoch+1)/(w+1) for the first w epochs, then the schedule over the
    remaining max_epochs − w epochs.
    """
    base, schedule = float(optim["lr"]), optim.get("schedule", "constant")
    warmup = int(optim.get("warmup_epochs", 0))
    if warmup:  # linear warm-up over the first epochs (ViT/DeiT practice), then the schedule on the rest
        if epoch < warmup:
            return base * (epoch + 1) / (warmup + 1)
        epoch, max_epochs = epoch - warmup, max(max_epochs - warmup, 1)
    if schedule == "constant":
        return base
    if schedule == "cosine":
        return base * 0.5 * (1 + math.cos(math.pi * epoch / max_epochs))
    if schedule == "step":
        passed = sum(1 for m in optim.get("milestones", []) if epoch >= m)
        return base * optim.get("gamma", 0.1) ** passed
    if schedule == "exponential":
        return base * (float(optim["lr_final"]) / base) ** (epoch / max_epochs)
    if schedule == "linear":
        span = optim.get("lr_saturate") or max_epochs
        return base + min(epoch / span, 1.0) * (float(optim["lr_final"]) - base)
    raise ValueError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")


def momentum_at(optim: dict[str, Any], epoch: int) -> float:
    """Momentum for 0-based ``epoch``: constant, or (``momentum_final`` given) linear from ``momentum``
    to ``momentum_final`` over ``momentum_saturate`` epochs (Courbariaux et al. 2014: 0.5 → 0.7)."""
    start = float(optim.get("momentum", 0.0))
    final = optim.get("momentum_final")
    if final is None:
        return start
    span = optim.get("momentum_saturate") or 1
    return start + min(epoch / span, 1.0) * (float(final) - start)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def set_momentum(optimizer: torch.optim.Optimizer, momentum: float) -> None:
    for group in optimizer.param_groups:
        if "momentum" in group:
            group["momentum"] = momentum
