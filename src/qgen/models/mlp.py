"""Fully connected ReLU network of ``depth`` hidden layers of ``width`` units."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """flatten → (Dropout) → [Linear → (BatchNorm1d) → ReLU → (Dropout)] × depth → Linear → (BatchNorm1d).

    A float definition, quantized by :func:`qgen.quant.replace.quantize_model` (the first layer's input is
    the standardized image, signed; later inputs follow a ReLU, unsigned). BinaryConnect's MLP
    (reference code mnist.py) is ``batch_norm`` + ``output_batch_norm`` with its BN settings
    (ε = 1e-4, moving-average factor 0.15) and optional input dropout.
    ``init: glorot`` draws weights from Glorot's uniform distribution with zero biases (Lasagne's
    default, the reference code's float baseline) instead of PyTorch's default initialization;
    quantizers with their own initialization (BinaryConnect: U(−H, H)) redraw the weights when the
    model is quantized.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        depth: int,
        width: int,
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
        linears: list[nn.Linear] = []
        for _ in range(depth):
            linear = nn.Linear(fan_in, width, bias=not batch_norm)
            layers.append(linear)
            linears.append(linear)
            if batch_norm:
                layers.append(nn.BatchNorm1d(width, eps=bn_eps, momentum=bn_momentum))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            fan_in = width
        last = nn.Linear(fan_in, num_classes)
        layers.append(last)
        linears.append(last)
        if output_batch_norm:
            layers.append(nn.BatchNorm1d(num_classes, eps=bn_eps, momentum=bn_momentum))
        self.net = nn.Sequential(*layers)
        if init == "glorot":
            with torch.no_grad():
                for linear in linears:
                    nn.init.xavier_uniform_(linear.weight)
                    if linear.bias is not None:
                        linear.bias.zero_()
        elif init != "torch":
            raise ValueError(f"unknown init {init!r}; known: torch, glorot")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
