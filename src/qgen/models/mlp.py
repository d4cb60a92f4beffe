"""Fully connected ReLU network of ``depth`` hidden layers of ``width`` units."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from qgen.quant import QuantLinear, layer_quant


class MLP(nn.Module):
    """flatten → (Dropout) → [QuantLinear → (BatchNorm1d) → ReLU → (Dropout)] × depth → QuantLinear
    → (BatchNorm1d).

    The first layer's input is the standardized image (signed); later inputs follow a ReLU
    (unsigned), which sets the activation quantizers' integer ranges. BinaryConnect's MLP
    (reference code mnist.py) is ``batch_norm`` + ``output_batch_norm`` with its BN settings
    (ε = 1e-4, moving-average factor 0.15) and optional input dropout.
    ``init: glorot`` draws weights from Glorot's uniform distribution with zero biases (Lasagne's
    default, the reference code's float baseline) instead of PyTorch's default initialization;
    quantizers with their own initialization (BinaryConnect: U(−H, H)) keep theirs.
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
        *,
        input_dropout: float = 0.0,
        output_batch_norm: bool = False,
        bn_momentum: float = 0.1,
        bn_eps: float = 1e-5,
        init: str = "torch",
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        if input_dropout > 0:
            layers.append(nn.Dropout(input_dropout))
        fan_in = in_features
        linears: list[QuantLinear] = []
        for i in range(depth):
            position = "first" if i == 0 else "middle"
            linear = QuantLinear(
                fan_in, width, bias=not batch_norm, quant=layer_quant(quant, position, i == 0)
            )
            layers.append(linear)
            linears.append(linear)
            if batch_norm:
                layers.append(nn.BatchNorm1d(width, eps=bn_eps, momentum=bn_momentum))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            fan_in = width
        last = QuantLinear(fan_in, num_classes, quant=layer_quant(quant, "last", depth == 0))
        layers.append(last)
        linears.append(last)
        if output_batch_norm:
            layers.append(nn.BatchNorm1d(num_classes, eps=bn_eps, momentum=bn_momentum))
        self.net = nn.Sequential(*layers)
        if init == "glorot":
            with torch.no_grad():
                for linear in linears:
                    if not hasattr(linear.weight_quant, "init_weight"):
                        nn.init.xavier_uniform_(linear.weight)
                    if linear.bias is not None:
                        linear.bias.zero_()
        elif init != "torch":
            raise ValueError(f"unknown init {init!r}; known: torch, glorot")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
