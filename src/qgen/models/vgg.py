"""BinaryConnect's VGG-like CNN (Courbariaux et al. 2015, reference code cifar10.py / svhn.py).

``depth`` stages of [conv3×3 → BN → ReLU → conv3×3 → max-pool 2 → BN → ReLU] with width·2^stage
channels (CIFAR-10: width 128, i.e. 2×128C3−MP2−2×256C3−MP2−2×512C3−MP2), then two fully connected
layers of ``fc_width`` units (1024) with BN and ReLU, and the output layer followed by BN (no ReLU),
as the squared hinge loss of the paper expects. Convolutions are padded ("same"). A float definition:
:func:`qgen.quant.replace.quantize_model` quantizes every conv and dense layer per the run spec
(BinaryConnect binarizes all of them).
"""

from __future__ import annotations

import torch
from torch import nn


class VGG(nn.Module):
    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        depth: int,
        width: int,
        fc_width: int = 1024,
        bn_momentum: float = 0.1,
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        c, h, w = input_shape

        def bn2(n: int) -> nn.BatchNorm2d:
            return nn.BatchNorm2d(n, eps=bn_eps, momentum=bn_momentum)

        def bn1(n: int) -> nn.BatchNorm1d:
            return nn.BatchNorm1d(n, eps=bn_eps, momentum=bn_momentum)

        layers: list[nn.Module] = []
        cin = c
        for stage in range(depth):
            cout = width * 2**stage
            layers += [nn.Conv2d(cin, cout, 3, padding=1), bn2(cout), nn.ReLU()]
            layers += [
                nn.Conv2d(cout, cout, 3, padding=1),
                nn.MaxPool2d(2),
                bn2(cout),
                nn.ReLU(),
            ]
            cin, h, w = cout, h // 2, w // 2
        if h < 1 or w < 1:
            raise ValueError(f"{depth} pooling stages do not fit an input of {input_shape}")
        layers.append(nn.Flatten())
        fan_in = cin * h * w
        for _ in range(2):
            layers += [nn.Linear(fan_in, fc_width), bn1(fc_width), nn.ReLU()]
            fan_in = fc_width
        layers += [
            nn.Linear(fan_in, num_classes),
            bn1(num_classes),
        ]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
