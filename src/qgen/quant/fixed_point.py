"""Low-precision arithmetic of Courbariaux, Bengio & David (2014), "Training deep neural networks with low
precision multiplications", as their code (deep-learning-multipliers) defines it.

Formats (``quant.method``): ``float`` (single float, FLP: nothing is rounded), ``half`` (float16
emulation, HFLP: round to nearest even, as CUDA's ``__float2half_rn``), ``fixed`` (FXP) and
``dynamic_fixed`` (DFXP).

Fixed point with NOB bits besides the sign and NOIB integer bits (the radix position, the "range"):

    fixed_point(x) = clip(round(x · 2^(NOB−NOIB)), −(2^NOB − 1), 2^NOB − 1) / 2^(NOB−NOIB)

i.e. round-to-nearest (ties away from zero, as Theano's round then) with saturation on a grid of
step 2^−(NOB−NOIB). The paper counts the sign
bit, the code does not: a run spec gives the paper's bit widths (``prop_bits: 10`` is NOB = 9).
:func:`fixed_point_counts` computes it bit for bit in five element-wise passes and takes the overflow
counts (below) from the same magnitudes; the optimizer rounds in place into the tensors it owns.

Every layer has ten groups, each with its own range in dynamic fixed point: the weights and biases
(W, b), pre-activations z, activations y, their gradients dE/dz, dE/dy, dE/dW, dE/db, and the
momentum "updates" of W and b. Propagations (W and b as used in the products, z, y, all gradients,
the updates) use the propagation bit width; the stored parameters after ``W + update`` use the
(larger) update bit width, with the range of their group.

Dynamic fixed point range rule (code: ``overflow``, ``new_range``): the overflow rate of a group is
the fraction of its (rounded) values with |v| ≥ (2^NOB − 1)/2^(NOB−NOIB); rates at the current range
and at range − 1 are summed over batches, and every ``range_update_every`` batches their means give

    range += 1  if rate(range) > max_overflow
    range += 0  elif rate(range − 1) > max_overflow
    range −= 1  otherwise,

then the sums restart. Initial ranges come from ``range_init_epochs`` epochs trained at 31 bits
(after which the parameters are reset to their initial values; see qgen.train.loop).

Deviation from the code (documented choice): the reference resets its batch counter at every epoch
but not the overflow sums, so leftover batches of an epoch are averaged over too few batches; here
the counter runs across epochs. With the paper's 500 batches per epoch and a frequency of 100 the two
agree.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import nn

from qgen.quant.quantizers import Quantizer

FORMATS = ("float", "half", "fixed", "dynamic_fixed")
#: the ten groups of one layer (code: z, dEdz, y, dEdy, w, b, dEdw, dEdb, update_w, update_b)
GROUPS = ("w", "b", "z", "y", "dEdz", "dEdy", "dEdw", "dEdb", "update_w", "update_b")
#: groups whose overflow is measured at the update bit width (the stored parameters); the rest use
#: the propagation bit width
UPDATE_PRECISION_GROUPS = ("w", "b")


def straight_through(v: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The value ``q`` exactly, with the gradient of ``v`` (∂q/∂v = 1); differentiable twice and
    vmap-able. (``v + (q − v).detach()`` would not give exactly ``q`` in floating point.)"""
    return q + (v - v.detach())


def fixed_point(
    x: torch.Tensor,
    nob: int,
    noib: int | torch.Tensor,
    out: torch.Tensor | None = None,
    scale: float = 1.0,
    positive_zero: bool = False,
) -> torch.Tensor:
    """``x`` rounded to nearest, ties away from zero (``T.round``'s default in the Theano releases the
    reference code ran on), on the grid 2^−(nob−noib), saturating at ±(2^nob − 1) steps, times
    ``scale`` (one rounding, as ``fixed_point(x) * scale``). ``out`` receives the result; it may be ``x``.
    ``positive_zero``: −0 comes out as +0, as ``result + 0`` gives it (:func:`straight_through`).
    Exactness and cost: :func:`fixed_point_counts`."""
    return _rounded(x, nob, int(noib), out, scale, positive_zero)[0]


def fixed_point_counts(
    x: torch.Tensor, nob: int, noib: int | torch.Tensor, out: torch.Tensor | None = None, scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`fixed_point` and the overflow counts of the rounded values (before ``scale``): how many
    have |v| ≥ (2^nob − 1)/2^(nob−noib) and how many |v| ≥ half of it, a float pair of exact integers.

    Bit for bit the closed form of the module docstring (then ``· scale``), signed zeros included
    (sign(−0) = 0 there, so −0 gives +0), for float32 and float64 ``x`` whose dtype holds the grid
    exactly: 2^−k, half of it, 2^nob·2^−k and scale·2^−k normal numbers, k = nob − noib (ValueError
    otherwise). Five element-wise passes, with s = sign(v), v = x·2^k, and m the integer magnitudes:

        m = min(floor(0.5 + 2^k·x·s), 2^nob − 1),   result = s · (scale·2^−k) · m,

    as saturating |v| equals clamping v; 0.5 + 2^k·x·s = 0.5 + |v| is one step with a single rounding
    (the products are exact, or 2^k·x rounds alike in both forms); s = sign(x) for k ≥ 0 (for k < 0,
    x·2^k is formed: it may flush to ±0); and s·fl(m·c) = fl(s·m·c) since rounding is symmetric. The
    counts compare m with 2^nob − 1 and half of it in x's dtype: on an exact grid, |v| against the limits.
    """
    q, magnitude, sign = _rounded(x, nob, int(noib), out, scale, False)
    return q, overflow_counts(magnitude, float(2**nob - 1), scratch=sign)


def _rounded(
    x: torch.Tensor, nob: int, noib: int, out: torch.Tensor | None, scale: float, positive_zero: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The result, as ±0 + its value (−0 keeps the sign of every zero, +0 makes −0 positive), the
    integer magnitudes m and the signs (a temporary the caller may reuse)."""
    k = nob - noib
    if not _exact_grid(nob, k, scale, x.dtype):
        raise ValueError(
            f"fixed point with nob={nob}, noib={noib}, scale={scale}: {x.dtype} does not hold the grid "
            f"exactly (step 2^{-k}, half of it, 2^{nob}·2^{-k} and scale·2^{-k} must be normal numbers)"
        )
    power = 2.0**k
    half, plus_zero, minus_zero = _constants(x.device)
    zero = plus_zero if positive_zero else minus_zero
    sign = torch.sign(x if k >= 0 else x * power)
    magnitude = torch.addcmul(half, x, sign, value=power).floor_().clamp_max_(float(2**nob - 1))
    if out is None:  # no out= arguments: torch.func.vmap (the measures) has no batching rule for them
        return torch.addcmul(zero, sign, magnitude, value=scale / power), magnitude, sign
    return torch.addcmul(zero, sign, magnitude, value=scale / power, out=out), magnitude, sign


@functools.lru_cache(maxsize=8)
def _constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """0.5, +0 and −0 as 0-dim operands on ``device`` (0-dim: the results keep x's dtype)."""
    return (
        torch.tensor(0.5, device=device),
        torch.tensor(0.0, device=device),
        torch.tensor(-0.0, device=device),
    )


@functools.lru_cache(maxsize=1024)
def _exact_grid(nob: int, k: int, scale: float, dtype: torch.dtype) -> bool:
    """Whether ``dtype`` holds 2^−k, 2^−(k+1), 2^(nob−k) and scale·2^−k as normal numbers."""
    info = torch.finfo(dtype)
    e_min, e_max = math.frexp(info.tiny)[1] - 1, math.frexp(info.max)[1] - 1  # 2^e_min, 2^e_max normal
    if not nob - e_max <= k < -e_min:
        return False
    e = math.frexp(scale)[1] - 1  # 2^e ≤ |scale| < 2^(e+1)
    return scale == 0 or (math.isfinite(scale) and e_min <= e <= e_max and e_min <= e - k <= e_max)


def overflow_limit(nob: int, noib: int | torch.Tensor) -> float:
    """The largest representable magnitude (2^nob − 1)/2^(nob−noib); at noib − 1 it is half of it."""
    return (2.0**nob - 1) / 2.0 ** (nob - int(noib))


def overflow_counts(
    magnitude: torch.Tensor, limit: float, scratch: torch.Tensor | None = None
) -> torch.Tensor:
    """How many of ``magnitude`` are ≥ ``limit`` and how many ≥ ``limit``/2 (a float pair of exact
    integers); ``magnitude`` and ``scratch`` (a temporary of its shape and dtype) are overwritten. The
    bounds are rounded to the dtype as a Python scalar operand of a comparison is (for limits
    (2^nob − 1)·2^−k the rounding never goes down, so no value lies between a bound and its rounding)."""
    scratch = torch.empty_like(magnitude) if scratch is None else scratch
    dtype = torch.float64 if magnitude.numel() >= 2**24 else None  # float sums of 0/1 stay exact
    at_half = torch.ge(magnitude, limit / 2, out=scratch).sum(dtype=dtype)
    return torch.stack((magnitude.ge_(limit).sum(dtype=dtype), at_half))


def add_overflow_rates(sums: torch.Tensor, counts: torch.Tensor, numel: int) -> None:
    """``sums += counts / numel`` in float64, as the reference's per-batch ``overflow`` rates."""
    sums.addcdiv_(counts, _numel(numel, sums.device))


@functools.lru_cache(maxsize=256)
def _numel(n: int, device: torch.device) -> torch.Tensor:
    return torch.tensor(float(n), dtype=torch.float64, device=device)


def range_step(rate: float, rate_below: float, max_overflow: float) -> int:
    """+1, 0 or −1: the dynamic fixed point rule on the overflow rates at range and at range − 1."""
    if rate > max_overflow:
        return 1
    if rate_below > max_overflow:
        return 0
    return -1


def half_float(x: torch.Tensor) -> torch.Tensor:
    """float16 emulation: round to the nearest half-precision value (ties to even), back to x's dtype."""
    return x.to(torch.float16).to(x.dtype)


@dataclass
class Arithmetic:
    """The number format of a whole network; shared by reference between its groups.

    ``prop_nob`` and ``update_nob`` are bit widths without the sign bit (the code's NOB). The range
    initialization phase raises both to 31 temporarily.
    """

    format: str = "float"
    prop_nob: int = 31
    update_nob: int = 31
    initial_range: int = 3
    max_overflow: float = 1e-4
    range_update_every: int = 100
    range_init_epochs: int = 0

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"unknown number format {self.format!r}; known: {', '.join(FORMATS)}")

    @property
    def rounds(self) -> bool:
        return self.format != "float"

    @property
    def dynamic(self) -> bool:
        return self.format == "dynamic_fixed"

    def nob(self, precision: str) -> int:
        return self.update_nob if precision == "update" else self.prop_nob


class NumberGroup(nn.Module):
    """One group's range (NOIB) and overflow sums; buffers, so checkpoints carry them."""

    def __init__(self, arithmetic: Arithmetic, precision: str) -> None:
        super().__init__()
        self.arithmetic = arithmetic
        self.precision = precision  # bit width at which this group's overflow is measured
        self.register_buffer("range", torch.tensor(arithmetic.initial_range, dtype=torch.int64))
        self.register_buffer("overflow", torch.zeros(2, dtype=torch.float64))  # at range, range − 1
        self._noib_read: tuple[torch.Tensor, int, int] | None = None  # (buffer, its version, value)

    @property
    def noib(self) -> int:
        """The range as a Python int, read from the buffer (a device sync off the CPU) only when it is
        another tensor or was changed in place since the last read (its version counter)."""
        r = self.range
        read = self._noib_read
        if read is None or read[0] is not r or read[1] != r._version:
            read = self._noib_read = (r, r._version, int(r))
        return read[2]

    def quantize(
        self,
        x: torch.Tensor,
        precision: str | None = None,
        observe: bool = False,
        out: torch.Tensor | None = None,
        scale: float = 1.0,
    ) -> torch.Tensor:
        """``scale`` × ``x`` in this group's format (``precision``: this group's bit width unless
        given); with ``observe``, dynamic fixed point adds the overflow rates of the rounded values, counted
        in the same pass. ``out`` receives the result (it may be ``x``: rounding in place)."""
        q, counts = self.round(x, precision, observe, out, scale)
        if counts is not None:
            add_overflow_rates(self.overflow, counts, x.numel())
        return q

    def round(
        self,
        x: torch.Tensor,
        precision: str | None = None,
        count: bool = False,
        out: torch.Tensor | None = None,
        scale: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`quantize` without adding the rates: the value and, with ``count`` in dynamic fixed
        point, its overflow counts at this range (:func:`fixed_point_counts`; else None)."""
        a = self.arithmetic
        if a.format in ("float", "half"):
            q = half_float(x) if a.format == "half" else x
            if scale != 1:
                return torch.mul(q, scale, out=out), None
            return (q if out is None or out is q else out.copy_(q)), None
        nob, noib = a.nob(precision or self.precision), self.noib
        if count and a.dynamic:
            return fixed_point_counts(x, nob, noib, out, scale)
        return fixed_point(x, nob, noib, out, scale), None

    @torch.no_grad()
    def observe(
        self, x: torch.Tensor, precision: str | None = None, counts: torch.Tensor | None = None
    ) -> None:
        """Add this batch's overflow rates of the stored values ``x`` (dynamic fixed point only), from
        ``counts`` where the caller knows them (those of exactly ``x`` at this range and bit width)."""
        if not self.arithmetic.dynamic:
            return
        if counts is None:
            limit = overflow_limit(self.arithmetic.nob(precision or self.precision), self.noib)
            counts = overflow_counts(x.detach().abs(), limit)
        add_overflow_rates(self.overflow, counts, x.numel())

    @torch.no_grad()
    def adjust(self, batches: int) -> int:
        """Apply the range rule to the mean rates over ``batches`` batches; restart the sums."""
        rate, below = (self.overflow / max(batches, 1)).tolist()
        step = range_step(rate, below, self.arithmetic.max_overflow)
        self.range += step
        self.overflow.zero_()
        return step


class _QuantizeWithGradient(torch.autograd.Function):
    """Forward: round ``x`` in ``value``'s format (and count its overflow). Backward: the incoming
    gradient passes straight through the rounding, then is itself rounded in ``grad``'s format
    (dE/dz, dE/dy of the reference code's hand-written bprop)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, value: NumberGroup, grad: NumberGroup) -> torch.Tensor:  # type: ignore[override]
        ctx.grad_group = grad
        return value.quantize(x, observe=True)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        return ctx.grad_group.quantize(g, observe=True), None, None


def round_value(x: torch.Tensor, value: NumberGroup, grad: NumberGroup, training: bool) -> torch.Tensor:
    """Round an activation-like tensor in training (values and gradients) or at test time (values;
    the straight-through form keeps it differentiable twice, for Hessian-vector products)."""
    if not value.arithmetic.rounds:
        return x
    if training:
        return _QuantizeWithGradient.apply(x, value, grad)
    return straight_through(x, value.quantize(x.detach()))


class _RoundedWeight(torch.autograd.Function):
    """Training's view of a parameter: :func:`straight_through`'s value (the rounding at the propagation
    bit width, −0 made +0 by its ``+ 0``) and gradient (passed to the parameter unchanged)."""

    @staticmethod
    def forward(ctx, v: torch.Tensor, group: NumberGroup) -> torch.Tensor:  # type: ignore[override]
        return fixed_point(v, group.arithmetic.prop_nob, group.noib, positive_zero=True)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        return g, None


class FixedPointWeight(Quantizer):
    """A parameter as the products see it: its group's format at the propagation bit width, with an
    identity gradient (the reference code applies dE/dW_fixed to the stored W).

    For the noise statistics it exposes the fixed point grid: Δ = 2^−(NOB−NOIB), Q_N = Q_P = 2^NOB − 1,
    ``bits`` = NOB + 1 (the paper's count, sign included)."""

    needs_calibration = False

    def __init__(self, group: NumberGroup) -> None:
        nob = group.arithmetic.prop_nob
        top = 2**nob - 1
        super().__init__(bits=nob + 1, signed=True, role="weight", qrange=(top, top))
        # a reference, not a submodule: the layer owns the group (and its buffers in the state_dict)
        object.__setattr__(self, "group", group)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        if self.training:  # the same value and gradient, without straight_through's two extra passes
            return _RoundedWeight.apply(v, self.group)
        return straight_through(v, self.group.quantize(v.detach(), "prop"))

    def step_for(self, v: torch.Tensor) -> torch.Tensor:
        nob = self.group.arithmetic.prop_nob
        step = 2.0 ** (-(nob - self.group.noib))
        return torch.full(self.step_shape, step, dtype=v.dtype, device=v.device)

    def calibrate(self, v: torch.Tensor) -> None:
        """Ranges are set by the range rule, not by calibration."""


class HalfWeight(nn.Module):
    """A parameter in float16 emulation (not a uniform grid, so no noise-model step)."""

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return straight_through(v, half_float(v.detach()))
