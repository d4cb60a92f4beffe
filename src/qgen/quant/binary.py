"""BinaryConnect weight binarization (Courbariaux, Bengio & David, NIPS 2015, Sec. 2.2-2.5).

Forward and backward propagations use binary weights W_b ∈ {−H, +H}; the real-valued (latent)
weights W receive the gradient computed with respect to W_b and are clipped to [−H, H] after every
update (the optimizer's job, :func:`constrain_latent_weights`). With p = hard_sigmoid(W/H) =
clip((W/H + 1)/2, 0, 1):

- deterministic (Eq. 1):  W_b = +H if p ≥ ½ (i.e. W ≥ 0) else −H — the reference code rounds p
  half away from zero, so W = 0 maps to +H;
- stochastic (Eq. 2-3):  W_b = +H with probability p, −H otherwise, drawn anew at every forward in
  training, so E[W_b] = H·(2p − 1) = clip(W, −H, H).

Test time (recorded in the run spec as ``quant.test_time``): deterministic BinaryConnect keeps its
binary weights; the reference code's stochastic BinaryConnect uses the real-valued W at test time
(``real``); ``binary`` uses the deterministic sign instead.

H is 1 in the reference scripts, or Glorot's √(1.5/(fan_in + fan_out)) (``H: glorot``); binary
layers are initialized uniformly in [−H, H]. Their learning rate is scaled per layer by
``lr_scale`` = 1/√(1.5/(fan_in + fan_out)) (the code's ``W_LR_scale = "Glorot"``), fan_in and
fan_out counting kernel positions for convolutions.

As a noise model (QGen §1a), W_b lies on the two-point grid {−½, +½}·Δ with Δ = 2H; deterministic
binarization is rounding onto it, so θ = W_b − W ∈ [−Δ/2, Δ/2].
"""

from __future__ import annotations

import math

import torch
from torch import nn

from qgen.quant.fixed_point import straight_through
from qgen.quant.quantizers import Quantizer

TEST_TIME = ("real", "binary")


def glorot_fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) of a Linear (out, in) or Conv (out, in, kh, kw) weight, kernel positions included."""
    receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def glorot_scale(shape: tuple[int, ...]) -> float:
    """√(1.5/(fan_in + fan_out)), the half-width of Glorot's uniform initialization divided by 2."""
    fan_in, fan_out = glorot_fans(shape)
    return math.sqrt(1.5 / (fan_in + fan_out))


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp((x + 1) / 2, 0, 1)


class BinaryQuantizer(Quantizer):
    """W ↦ W_b ∈ {−H, +H} with a straight-through gradient (∂W_b/∂W = 1, BinaryConnect Sec. 2.3)."""

    needs_calibration = False

    def __init__(
        self,
        weight_shape: tuple[int, ...],
        stochastic: bool,
        H: float | str = 1.0,
        lr_scale: float | str = "glorot",
        test_time: str | None = None,
    ) -> None:
        super().__init__(bits=1, signed=True, role="weight", qrange=(0.5, 0.5))
        test_time = test_time or ("real" if stochastic else "binary")
        if test_time not in TEST_TIME:
            raise ValueError(f"test_time must be one of {TEST_TIME}, got {test_time!r}")
        self.stochastic, self.test_time = bool(stochastic), test_time
        shape = tuple(weight_shape)
        self.H = glorot_scale(shape) if H == "glorot" else float(H)
        self.lr_scale = 1 / glorot_scale(shape) if lr_scale == "glorot" else float(lr_scale)
        if self.H <= 0:
            raise ValueError(f"H must be positive, got {self.H}")

    def _binarize(self, v: torch.Tensor, sample: bool, generator: torch.Generator | None) -> torch.Tensor:
        if sample:
            plus = torch.bernoulli(hard_sigmoid(v.detach() / self.H), generator=generator).bool()
        else:
            plus = v.detach() >= 0
        h = torch.full((), self.H, dtype=v.dtype, device=v.device)
        return torch.where(plus, h, -h)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        if not self.training and self.test_time == "real":
            return v
        return straight_through(v, self._binarize(v, self.training and self.stochastic, None))

    def train_quantize(self, v: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self._binarize(v, self.stochastic, generator)

    def step_for(self, v: torch.Tensor) -> torch.Tensor:
        """Δ = 2H: the binary values are ±Δ/2."""
        return torch.full(self.step_shape, 2 * self.H, dtype=v.dtype, device=v.device)

    def calibrate(self, v: torch.Tensor) -> None:
        """Nothing is data-dependent in BinaryConnect."""

    @torch.no_grad()
    def init_weight(self, weight: torch.Tensor) -> None:
        """Latent weights start uniform in [−H, H] (reference code: ``lasagne.init.Uniform((-H, H))``)."""
        weight.uniform_(-self.H, self.H)

    @torch.no_grad()
    def constrain(self, weight: torch.Tensor) -> None:
        """Clip the latent weights to [−H, H] after an update (BinaryConnect Algorithm 1)."""
        weight.clamp_(-self.H, self.H)

    def extra_repr(self) -> str:
        kind = "stochastic" if self.stochastic else "deterministic"
        return f"{kind}, H={self.H:.4g}, lr_scale={self.lr_scale:.4g}, test_time={self.test_time}"


def constrain_latent_weights(modules: list[tuple[nn.Module, BinaryQuantizer]]) -> None:
    """Apply each binary layer's clipping to its latent weight (``modules``: (layer, quantizer) pairs)."""
    for layer, quantizer in modules:
        quantizer.constrain(layer.weight)
