"""The fixed-point quantizers Q_{i.f} of the U-Net paper's code (AskariHemmat et al. 2019, papers.md §3).

Read from the reference repository (hossein1387/U-Net-Fixed-Point-Quantization-for-Medical-Image-Segmentation,
``UNET_GM_DATASET/UNET_Quant_Base/quantize.py`` for GM and NIH, ``UNET_EM_DATASET/UNET_EM_DATASET_BASE/
quantize.py`` for EM); written anew here. Both have an identity backward (the reference's ``FixedNN.backward``
returns ``dx``): the straight-through estimator everywhere, saturated values included.

**GM/NIH** (``variant: gm``), :func:`to_fixed_point`: with ``round_clamp(W, n) = round(clamp(W, 0, 2^n −
1)·2^n)/2^n``, ``to_fixed_point(v, i, f) = sign(v)·round_clamp(|v| − ⌊|v|⌋, f) + sign(v)·round_clamp(⌊|v|⌋,
i)``, i.e. sign-magnitude with

- the integer part ⌊|v|⌋ saturated to 2^i − 1 (``round_clamp`` of an integer is its clamp);
- the fraction |v| − ⌊|v|⌋ ∈ [0, 1) rounded (``torch.round``: half to even) to the 2^−f grid. For f ≥ 1
  the clamp to [0, 2^f − 1] does nothing (2^f − 1 ≥ 1 > fraction). A fraction ≥ 1 − 2^−(f+1) rounds up
  to 1 and so **carries into the integer**: Q(v) = ⌊|v|⌋ + 1 (Q_{0.4}: |v| ∈ [0.96875, 1) gives 1; the
  largest value is 2^i, one step above 2^i − 1 + (1 − 2^−f)). For **f = 0** the clamp is to [0, 0]: the
  fraction is dropped, so Q_{i.0}(v) = sign(v)·min(⌊|v|⌋, 2^i − 1) **truncates** toward zero instead of
  rounding (the activations a6.0 etc.: θ = Q(v) − v ∈ (−1, 0] for v > 0, mean −½ step, not U(−½, ½)).
- Above the range the fraction is **kept, not saturated**: |v| ≥ 2^i gives 2^i − 1 plus the rounded
  fraction of |v|, a wrap-around (Q_{0.4}: 1.3 → 0.3125, 1.99 → 1, 2.5 → 0.5); the function is not
  monotone there. sign(0) = 0, so Q(0) = 0.

**EM** (``variant: em``), :func:`power_of_two_fixed`: ``to_fixed_point(to_nearest_power_of_two(v), i, f)``
with ``to_nearest_power_of_two(v) = sign(v)·2^round(log2|v|)`` (log2 computed as ln|v|/ln 2, as the
reference) and an EM ``to_fixed_point`` that only saturates to ±M, M = 2^(i−1)·[i > 0] + Σ_{k=1..f} 2^−k =
2^(i−1)·[i > 0] + 1 − 2^−f. So the values are ±2^k for every 2^k ≤ M, and ±M: rounding is to the nearest
power of two **in the log domain** (the threshold between 2^k and 2^(k+1) is 2^(k+½), not 1.5·2^k), nothing
is flushed to zero at the small end (there is no 2^−f floor: tiny |v| keep tiny powers of two), and M itself
is not a power of two for f ≥ 1 (Q_{0.4}: M = 0.9375, so |v| ≥ 2^−½ gives ±0.9375). Zero: log2 0 = −∞,
2^−∞ = 0 and sign(0) = 0, so Q(0) = 0 with no NaN (as in the reference).

Noise model (what :class:`FixedPointIF` reports to the measures, qgen.measures.noise): for ``gm`` the grid
step is Δ = 2^−f and the levels are k·Δ, |k| ≤ Q_P with Q_P = 2^(i+f) for f ≥ 1 (the carry reaches 2^i) and
2^i − 1 for f = 0. For ``em`` there is no uniform grid; our definition (a reconstruction, the paper gives
none) is the width of the log-rounding cell of each element: Δ(v) = |Q(v)|/√2 (the cell [2^(k−½), 2^(k+½))
of level 2^k is 2^k/√2 wide; θ lies in it, but not centred: θ/2^k ∈ (1 − √2, 1 − 1/√2]), per element and
at least the dtype's smallest normal number (for v = 0), with the range bounds Q_N = Q_P = M/Δ(v).

Bit count: i + f, as the paper counts it ("4 bits for weights", Q_{0.4}); the sign bit is not counted.
"""

from __future__ import annotations

import math

import torch

from qgen.quant.quantizers import Quantizer

VARIANTS = ("gm", "em")
#: largest integer or fraction bit count accepted (float32 holds i + f ≤ 24 bits exactly)
MAX_BITS = 16


def _check_format(int_bits: int, frac_bits: int) -> tuple[int, int]:
    i, f = int(int_bits), int(frac_bits)
    if i != int_bits or f != frac_bits or not (0 <= i <= MAX_BITS and 0 <= f <= MAX_BITS) or i + f < 1:
        raise ValueError(
            f"fixed-point format Q{int_bits}.{frac_bits}: integer and fraction bits must be integers in "
            f"[0, {MAX_BITS}] with at least one bit in all"
        )
    return i, f


def to_fixed_point(v: torch.Tensor, int_bits: int, frac_bits: int) -> torch.Tensor:
    """GM/NIH Q_{i.f}(v) (module docstring): sign(v)·(min(⌊|v|⌋, 2^i − 1) + round((|v| − ⌊|v|⌋)·2^f)/2^f),
    the fraction term absent for f = 0. No gradient handling (see :func:`fixed_point_ste`)."""
    i, f = _check_format(int_bits, frac_bits)
    a = v.abs()
    whole = a.floor()
    sign = v.sign()
    integer = whole.clamp(0, 2**i - 1)
    if f == 0:  # round_clamp(fraction, 0) clamps the fraction to [0, 0]
        return sign * integer
    fraction = torch.round((a - whole) * 2.0**f) / 2.0**f
    return sign * integer + sign * fraction


def saturation(int_bits: int, frac_bits: int) -> float:
    """M = 2^(i−1)·[i > 0] + Σ_{k=1..f} 2^−k, the EM bound."""
    i, f = _check_format(int_bits, frac_bits)
    return (2.0 ** (i - 1) if i > 0 else 0.0) + (1.0 - 2.0**-f)


def power_of_two_fixed(v: torch.Tensor, int_bits: int, frac_bits: int) -> torch.Tensor:
    """EM Q_{i.f}(v): clamp(sign(v)·2^round(ln|v|/ln 2), −M, M) (module docstring)."""
    m = saturation(int_bits, frac_bits)
    ln2 = torch.log(torch.tensor(2.0, dtype=v.dtype, device=v.device))
    power = v.sign() * torch.exp2(torch.round(torch.log(v.abs()) / ln2))
    return power.clamp(-m, m)


def quantize_values(v: torch.Tensor, int_bits: int, frac_bits: int, variant: str) -> torch.Tensor:
    """The forward value of the ``variant`` (``gm`` or ``em``) at Q_{i.f}."""
    if variant == "gm":
        return to_fixed_point(v, int_bits, frac_bits)
    if variant == "em":
        return power_of_two_fixed(v, int_bits, frac_bits)
    raise ValueError(f"fixed-point variant must be one of {', '.join(VARIANTS)}, got {variant!r}")


class _FixedPointSTE(torch.autograd.Function):
    """Q_{i.f}(v) forward, identity backward (the reference's ``FixedNN``); vmap-able, and its backward
    (the identity) is differentiable, so Hessian-vector products pass through."""

    generate_vmap_rule = True

    @staticmethod
    def forward(v: torch.Tensor, int_bits: int, frac_bits: int, variant: str) -> torch.Tensor:  # type: ignore[override]
        return quantize_values(v, int_bits, frac_bits, variant)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad, None, None, None


def fixed_point_ste(v: torch.Tensor, int_bits: int, frac_bits: int, variant: str = "gm") -> torch.Tensor:
    """Q_{i.f}(v) of ``variant`` with the straight-through gradient ∂Q/∂v = 1 everywhere."""
    _check_format(int_bits, frac_bits)
    if variant not in VARIANTS:
        raise ValueError(f"fixed-point variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    return _FixedPointSTE.apply(v, int_bits, frac_bits, variant)


class FixedPointIF(Quantizer):
    """Q_{i.f} of the U-Net reference code as a weight or activation quantizer (no state, no calibration).

    ``bits`` is i + f (the paper's count, no sign bit). The grid is symmetric (sign-magnitude) whatever
    ``signed`` says: an unsigned input (after a ReLU) simply never uses the negative half; ``signed`` is
    kept for the record. :meth:`step_for` and :meth:`level_bounds` give the noise model of the module
    docstring: Δ = 2^−f and Q_N = Q_P for ``gm``; a per-element Δ(v) and bounds for ``em``."""

    needs_calibration = False

    def __init__(
        self,
        int_bits: int,
        frac_bits: int,
        variant: str = "gm",
        role: str = "weight",
        signed: bool = True,
    ) -> None:
        i, f = _check_format(int_bits, frac_bits)
        if variant not in VARIANTS:
            raise ValueError(f"fixed-point variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        top = float(2 ** (i + f) if f > 0 else 2**i - 1)
        super().__init__(i + f, signed, role, qrange=(top, top))
        self.int_bits, self.frac_bits, self.variant = i, f, variant

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return fixed_point_ste(v, self.int_bits, self.frac_bits, self.variant)

    def calibrate(self, v: torch.Tensor) -> None:
        """Nothing is data-dependent in Q_{i.f}."""

    def step_for(self, v: torch.Tensor) -> torch.Tensor:
        """gm: Δ = 2^−f (shape (1,)); em: the log-rounding cell width |Q(v)|/√2 of every element (shape of
        ``v``, at least the smallest normal number)."""
        if self.variant == "gm":
            return torch.full(self.step_shape, 2.0**-self.frac_bits, dtype=v.dtype, device=v.device)
        q = quantize_values(v.detach(), self.int_bits, self.frac_bits, "em")
        return (q.abs() / math.sqrt(2.0)).clamp_min(torch.finfo(v.dtype).tiny)

    def level_bounds(self, v: torch.Tensor) -> tuple[float | torch.Tensor, float | torch.Tensor]:
        """gm: (Q_P, Q_P) in steps of 2^−f; em: M/Δ(v) per element, both sides."""
        if self.variant == "gm":
            return self.qn, self.qp
        top = saturation(self.int_bits, self.frac_bits) / self.step_for(v)
        return top, top

    def extra_repr(self) -> str:
        return f"{self.role}, Q{self.int_bits}.{self.frac_bits}, variant={self.variant}, signed={self.signed}"
