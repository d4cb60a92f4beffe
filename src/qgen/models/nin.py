"""Network-in-Network CNN as used by Jiang et al. (2019) and the robust-generalization-measures code.

block = QuantConv3x3 (stride 2) → BN → ReLU → [QuantConv1x1 → BN → ReLU] × 2, with
``base_width × width`` channels; ``depth`` blocks, then QuantConv1x1 to the classes → BN → ReLU →
global average pooling. The ReLU on the class scores follows the reference code.

Reconstruction: where Jiang et al. apply dropout inside the NiN is not verified; here a dropout
layer (``dropout`` > 0) follows each block.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from qgen.quant import QuantConv2d, layer_quant


def _conv_bn_relu(cin: int, cout: int, k: int, stride: int, quant: Any) -> list[nn.Module]:
    return [
        QuantConv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False, quant=quant),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    ]


class NiN(nn.Module):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        depth: int,
        width: int,
        quant: dict[str, Any],
        base_width: int = 25,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        channels = base_width * width
        layers: list[nn.Module] = []
        cin = in_channels
        for i in range(depth):
            first = layer_quant(quant, "first" if i == 0 else "middle", input_signed=i == 0)
            middle = layer_quant(quant, "middle", input_signed=False)
            layers += _conv_bn_relu(cin, channels, 3, 2, first)
            layers += _conv_bn_relu(channels, channels, 1, 1, middle)
            layers += _conv_bn_relu(channels, channels, 1, 1, middle)
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            cin = channels
        layers += _conv_bn_relu(cin, num_classes, 1, 1, layer_quant(quant, "last", input_signed=depth == 0))
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
