"""The CIFAR ResNets of He et al. (2016) as plain float models (quantized later by module replacement).

He et al. 2016, "Deep residual learning for image recognition", §4.2: a 3×3 stem conv with ``width`` (16)
channels, then three stages of n basic blocks (two 3×3 convs each) on 32², 16², 8² maps with
width·{1, 2, 4} channels, subsampling by stride-2 convs at the start of stages 2 and 3, global average
pooling and a fully connected classifier: depth = 6n + 2 weighted layers (ResNet-20/32/44/56/110:
0.27M/0.46M/0.66M/0.85M/1.7M parameters, table 6). BN follows every conv, ReLU after the addition.
Shortcuts are identities; where the shape changes:

- ``shortcut="A"`` (the paper's choice for CIFAR): subsample by 2 and pad the new channels with zeros,
  parameter-free. Where the zero channels go is not stated; here they are appended after the existing ones
  (our choice; the next conv is learned, so it does not change what the network can represent).
- ``shortcut="B"``: a 1×1 stride-2 conv + BN projection (the paper's ImageNet option B; a reconstruction
  choice for CIFAR).
- ``shortcut="conv"``: a 1×1 stride-2 conv without BN, as SAQ's CIFAR PreResNet (v1 code,
  ``core/models/preresnet.py``, seen in the ziplab/SAQ snapshot; its "ResNet-20" script trains that
  PreResNet-20). Which shortcut the QGen paper's ResNet-20 uses is not verified.

``preact=True`` is the pre-activation ResNet of He et al. 2016b ("Identity mappings in deep residual
networks", fig. 4e): each block is BN → ReLU → conv → BN → ReLU → conv plus the shortcut, with nothing after
the addition, and a final BN → ReLU before pooling. The first block of every stage splits into its two paths
after its BN → ReLU, so its shortcut (identity or projection) sees the pre-activated input; later blocks
split before it. He et al. 2016b (appendix) state this for the first unit after conv1; SAQ's PreResNet
does it for the first block of each stage (the stage-2/3 part is taken from that code, not from a paper).

Initialization: convs He et al. 2015 ("Delving deep into rectifiers") normal with std √(2/n);
``init_mode`` chooses n = k²·c_out (``"fan_out"``: SAQ's PreResNet, fb.resnet.torch and torchvision; the
default) or n = k²·c_in (``"fan_in"``, the forward case of He et al. 2015 Eq. 10): He et al. 2016 cite the
method, not the variant. BN γ = 1, β = 0; the classifier keeps PyTorch's default initialization.

Names: the stem conv is ``conv1`` and the classifier ``fc`` (the precision plan relies on them); stages are
``layer1``–``layer3`` as in torchvision. SAQ's checkpoints name them ``conv``/``bn``/``fc`` and would need
their keys renamed.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Shortcut = Literal["A", "B", "conv"]
InitMode = Literal["fan_in", "fan_out"]


def _conv3x3(cin: int, cout: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option A of He et al. 2016: subsample by ``stride`` and append zero channels (no parameters)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))


def _shortcut(cin: int, cout: int, stride: int, kind: Shortcut) -> nn.Module | None:
    """None where the shape does not change (identity), else the ``kind`` of shortcut."""
    if stride == 1 and cin == cout:
        return None
    if kind == "A":
        return ZeroPadShortcut(cin, cout, stride)
    conv = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
    return conv if kind == "conv" else nn.Sequential(conv, nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """conv3×3 → BN → ReLU → conv3×3 → BN, plus the shortcut, → ReLU (He et al. 2016, fig. 2)."""

    def __init__(self, cin: int, cout: int, stride: int, shortcut: Shortcut) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = _conv3x3(cout, cout, 1)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = _shortcut(cin, cout, stride, shortcut)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        identity = x if self.shortcut is None else self.shortcut(x)
        return self.relu2(out + identity)


class PreActBlock(nn.Module):
    """BN → ReLU → conv3×3 → BN → ReLU → conv3×3, plus the shortcut (He et al. 2016b, fig. 4e).

    ``split_after_preact``: the shortcut starts after the first BN → ReLU (first block of a stage).
    """

    def __init__(
        self, cin: int, cout: int, stride: int, shortcut: Shortcut, split_after_preact: bool
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.conv2 = _conv3x3(cout, cout, 1)
        self.shortcut = _shortcut(cin, cout, stride, shortcut)
        self.split_after_preact = split_after_preact

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(pre))))
        identity = pre if self.split_after_preact else x
        if self.shortcut is not None:
            identity = self.shortcut(identity)
        return out + identity


def blocks_per_stage(depth: int) -> int:
    """n of depth = 6n + 2; any other depth is a ValueError."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"model.depth: a CIFAR ResNet has depth 6n + 2 (8, 14, 20, 32, 56, ...), got {depth!r}"
        )
    return (depth - 2) // 6


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32×32 inputs (He et al. 2016 §4.2), or its pre-activation form (He et al. 2016b)."""

    def __init__(
        self,
        depth: int,
        num_classes: int,
        in_channels: int = 3,
        width: int = 16,
        preact: bool = False,
        shortcut: Shortcut = "A",
        init_mode: InitMode = "fan_out",
    ) -> None:
        super().__init__()
        n = blocks_per_stage(depth)
        if shortcut not in ("A", "B", "conv"):
            raise ValueError(
                f"model.shortcut: 'A' (zero padding), 'B' (conv + BN) or 'conv' (conv only), got {shortcut!r}"
            )
        if init_mode not in ("fan_in", "fan_out"):
            raise ValueError(f"model.init_mode: 'fan_in' or 'fan_out', got {init_mode!r}")
        if width < 1:
            raise ValueError(f"model.width: a positive number of stem channels, got {width!r}")
        self.depth = depth
        self.preact = preact
        self.conv1 = _conv3x3(in_channels, width, 1)
        # the plain network has BN → ReLU after the stem; the pre-activation one starts its first block with
        # them and ends with a final BN → ReLU (None where absent: no identity modules in the graph)
        self.bn1 = None if preact else nn.BatchNorm2d(width)
        self.relu1 = None if preact else nn.ReLU()
        stages: list[nn.Sequential] = []
        cin = width
        for stage in range(3):
            cout = width * 2**stage
            stride = 1 if stage == 0 else 2
            blocks = [
                self._block(cin if i == 0 else cout, cout, stride if i == 0 else 1, shortcut, i == 0)
                for i in range(n)
            ]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.final_bn = nn.BatchNorm2d(cin) if preact else None
        self.final_relu = nn.ReLU() if preact else None
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode=init_mode, nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _block(self, cin: int, cout: int, stride: int, shortcut: Shortcut, first: bool) -> nn.Module:
        if self.preact:
            return PreActBlock(cin, cout, stride, shortcut, split_after_preact=first)
        return BasicBlock(cin, cout, stride, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        if self.bn1 is not None and self.relu1 is not None:
            x = self.relu1(self.bn1(x))
        x = self.layer3(self.layer2(self.layer1(x)))
        if self.final_bn is not None and self.final_relu is not None:
            x = self.final_relu(self.final_bn(x))
        return self.fc(self.flatten(self.avgpool(x)))
