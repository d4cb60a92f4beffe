"""Fully connected ReLU network of ``depth`` hidden layers of ``width`` units."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from qgen.quant import QuantLinear, layer_quant


class MLP(nn.Module):
    """flatten → [QuantLinear → (BatchNorm1d) → ReLU → (Dropout)] × depth → QuantLinear.

    The first layer's input is the standardized image (signed); later inputs follow a ReLU
    (unsigned), which sets the activation quantizers' integer ranges.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        depth: int,
        width: int,
        quant: dict[str, Any],
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = in_features
        for i in range(depth):
            position = "first" if i == 0 else "middle"
            layers.append(
                QuantLinear(fan_in, width, bias=not batch_norm, quant=layer_quant(quant, position, i == 0))
            )
            if batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            fan_in = width
        layers.append(QuantLinear(fan_in, num_classes, quant=layer_quant(quant, "last", depth == 0)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
