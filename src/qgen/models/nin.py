"""Network-in-Network CNN as used by Jiang et al. (2019) and the robust-generalization-measures code.

block = Conv3x3 (stride 2) → BN → ReLU → [Conv1x1 → BN → ReLU] × 2, with ``base_width × width``
channels; ``depth`` blocks, then Conv1x1 to the classes → BN → ReLU → global average pooling. The ReLU on
the class scores follows the reference code. A float definition, quantized by
:func:`qgen.quant.replace.quantize_model`.

Reconstruction: where Jiang et al. apply dropout inside the NiN is not verified; here a dropout
layer (``dropout`` > 0) follows each block.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn_relu(cin: int, cout: int, k: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
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
        base_width: int = 25,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        channels = base_width * width
        layers: list[nn.Module] = []
        cin = in_channels
        for _ in range(depth):
            layers += _conv_bn_relu(cin, channels, 3, 2)
            layers += _conv_bn_relu(channels, channels, 1, 1)
            layers += _conv_bn_relu(channels, channels, 1, 1)
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            cin = channels
        layers += _conv_bn_relu(cin, num_classes, 1, 1)
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
