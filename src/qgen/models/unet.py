"""The U-Net of the fixed-point segmentation paper's code (AskariHemmat et al. 2019, papers.md §3).

Read from the reference repository (``UNET_GM_DATASET/UNET_Quant_Base/models.py``; the EM and NIH
``models.py`` build the same network), written anew here. With depth d (max-poolings) and width w:

- encoder: d blocks of c_k = w·2^k channels (k = 0 … d − 1), each followed by a 2×2 max-pool; a bottom
  block keeps c_{d−1} channels;
- decoder: d blocks, k = d − 1 … 0: bilinear ×2 upsampling (``F.interpolate(scale_factor=2,
  mode="bilinear")``, align_corners False: the reference's call; no transposed convolution), concatenation
  [upsampled, skip] along channels, a block to c_k channels;
- head: a **3×3** conv (padding 1) to one output channel. The issue and brief say "final 1×1 conv"; the
  reference's ``conv9`` is ``Conv2d(64, 1, kernel_size=3, padding=1)``.
- a block is conv3×3 → ReLU → BatchNorm → Q_act, twice (the reference's order: **ReLU before BatchNorm**,
  so BatchNorm's output, which is quantized, is signed). Dropout: none (the reference comments its
  ``Dropout2d`` out).

Defaults are the paper's: depth 3, width 64 (64-128-256, bottom 256), BatchNorm
momentum 0.1 (4,837,249 parameters). Inputs need H and W divisible by 2^d (EM's 200×200 crops: d ≤ 3).

Output: one channel of **logits** (the reference returns ``sigmoid(conv9(x))`` and its losses take
probabilities; here the sigmoid belongs to the loss and the metric, qgen.train.losses and qgen.metrics).
Binary masks only: ``num_classes`` 1 or 2 gives one channel; more is refused.

Quantization placement (reference ``FIXED`` mode), with ``quant.method: qif``:

- activations: an :class:`~qgen.quant.layers.ActivationQuant` after every BatchNorm, in every block, the
  first included (the reference's ``QuantLayer``), so a block's output is quantized *before* max-pooling,
  before the decoder's upsampling and before it enters a skip concatenation, exactly as in the reference.
  The image entering the first conv is not quantized. Module replacement fills these sites and leaves the
  convs' input quantizers empty (qgen.quant.replace). Quantizing at the conv inputs instead would differ in
  the decoder: it would round the bilinear interpolation of the activations, which the reference feeds to
  the conv unrounded (between levels), and the first block and the head (float weights) would lose the
  quantized inputs the reference gives them.
- weights: every conv except the first block's two (``FIRST_BLOCK``) and the head (``HEAD``), which stay
  float: ``quant.first_layer_names: [down.0.conv1, down.0.conv2]``, ``last_layer_names: [head]`` with
  ``first_layer: float`` and ``last_layer: float``, the defaults of ``method: qif`` on ``model: unet``
  (qgen.experiments.normalize_spec writes them into the run spec).
- ``init: unit_uniform`` reproduces the reference's ``Conv2dQuant`` initialization (weights U(−1, 1) with
  H = 1, zero biases) on the convs it quantizes; the first block and the head keep PyTorch's default, as
  the reference's ``nn.Conv2d``. The reference's float runs (``quantization: Normal``) use PyTorch's
  default everywhere: ``init: torch`` (default).

BatchNorm folding (qgen.measures.folding) folds a BatchNorm only into the conv that computes its input;
here a ReLU stands between every conv and its BatchNorm, so **no BatchNorm folds** (float or quantized;
each record gives the reason). The ``effective`` measures therefore perturb the weights Q(w) exactly on
their grid and keep every BatchNorm as its eval-mode affine map (tests/test_unet.py checks this); the
issue's worry that folding moves Q_{0.f} weights off their grid does not arise for this network. (The
paper's summary says BN is folded at inference; with ReLU before BN that is only possible into the *next*
conv, and the activation quantizer between them forbids it.) For the lead: measure the unfolded model
(the default, nothing to do); folding into the next conv and re-quantizing would change the network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qgen.models.precision import UNET_FIRST_BLOCK, UNET_HEAD
from qgen.quant.layers import ActivationQuant

#: module names of the convs the reference keeps in float (its ``firstlayer=True`` block and ``conv9``)
FIRST_BLOCK, HEAD = UNET_FIRST_BLOCK, UNET_HEAD
INITS = ("torch", "unit_uniform")


class Block(nn.Module):
    """Two (conv3×3 → ReLU → BatchNorm → activation quantizer) stages (the reference's ``DownConv``)."""

    def __init__(self, in_channels: int, out_channels: int, bn_momentum: float = 0.1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.relu1 = nn.ReLU()
        self.bn1 = nn.BatchNorm2d(out_channels, momentum=bn_momentum)
        self.act1 = ActivationQuant(signed=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.relu2 = nn.ReLU()
        self.bn2 = nn.BatchNorm2d(out_channels, momentum=bn_momentum)
        self.act2 = ActivationQuant(signed=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.relu1(self.conv1(x))))
        return self.act2(self.bn2(self.relu2(self.conv2(x))))


class UNet(nn.Module):
    """The reference U-Net (module docstring): ``depth`` poolings, ``width`` channels in the first block."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        depth: int = 3,
        width: int = 64,
        bn_momentum: float = 0.1,
        init: str = "torch",
    ) -> None:
        super().__init__()
        if depth < 1 or width < 1 or in_channels < 1 or out_channels < 1:
            raise ValueError(
                f"unet: depth, width and channels must be positive, got depth={depth}, width={width}, "
                f"in_channels={in_channels}, out_channels={out_channels}"
            )
        if init not in INITS:
            raise ValueError(f"unet: init must be one of {', '.join(INITS)}, got {init!r}")
        self.depth = depth
        channels = [width * 2**k for k in range(depth)]
        self.down = nn.ModuleList()
        previous = in_channels
        for c in channels:
            self.down.append(Block(previous, c, bn_momentum))
            previous = c
        self.pool = nn.MaxPool2d(2)
        self.bottom = Block(previous, previous, bn_momentum)
        self.up = nn.ModuleList()
        for c in reversed(channels):
            self.up.append(Block(previous + c, c, bn_momentum))
            previous = c
        self.head = nn.Conv2d(previous, out_channels, kernel_size=3, padding=1)
        if init == "unit_uniform":
            self._unit_uniform()

    @torch.no_grad()
    def _unit_uniform(self) -> None:
        """U(−1, 1) weights and zero biases on the convs the reference quantizes (its ``Conv2dQuant``)."""
        keep = {*FIRST_BLOCK, *HEAD}
        for name, module in self.named_modules():
            if isinstance(module, nn.Conv2d) and name not in keep:
                module.weight.uniform_(-1.0, 1.0)
                if module.bias is not None:
                    module.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = self.bottom(self.pool(x))
        for block, skip in zip(self.up, reversed(skips), strict=True):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)


def check_input_size(depth: int, input_shape: tuple[int, ...]) -> None:
    """Refuse inputs whose height or width the ``depth`` poolings do not divide (the skips would not
    line up with the upsampled maps)."""
    if len(input_shape) != 3:
        raise ValueError(f"unet: input shape must be (C, H, W), got {input_shape}")
    h, w = input_shape[1:]
    if h % 2**depth or w % 2**depth:
        raise ValueError(
            f"unet: input {h}x{w} is not divisible by 2^depth = {2**depth} (depth {depth}); "
            "crop or pad the images or lower model.depth"
        )
