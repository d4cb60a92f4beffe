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


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest, ties away from zero: ``T.round``'s default in the Theano releases the reference
    code ran on (Theano later switched its default to ties-to-even)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def fixed_point(x: torch.Tensor, nob: int, noib: int | torch.Tensor) -> torch.Tensor:
    """Round ``x`` to nearest on the grid 2^−(nob−noib) and saturate at ±(2^nob − 1) steps."""
    power = 2.0 ** (nob - int(noib))
    top = float(2**nob - 1)
    return torch.clamp(round_half_away(x * power), -top, top) / power


def overflow_limit(nob: int, noib: int | torch.Tensor) -> float:
    """The largest representable magnitude (2^nob − 1)/2^(nob−noib); at noib − 1 it is half of it."""
    return (2.0**nob - 1) / 2.0 ** (nob - int(noib))


def overflow_rate(x: torch.Tensor, nob: int, noib: int | torch.Tensor) -> torch.Tensor:
    """Fraction of ``x`` at or beyond the largest representable magnitude."""
    return (x.detach().abs() >= overflow_limit(nob, noib)).sum().double() / x.numel()


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

    def quantize(self, x: torch.Tensor, precision: str | None = None) -> torch.Tensor:
        a = self.arithmetic
        if a.format == "float":
            return x
        if a.format == "half":
            return half_float(x)
        return fixed_point(x, a.nob(precision or self.precision), self.range)

    @torch.no_grad()
    def observe(self, x: torch.Tensor, precision: str | None = None) -> None:
        """Add this batch's overflow rates of ``x`` (dynamic fixed point only)."""
        if not self.arithmetic.dynamic:
            return
        limit = overflow_limit(self.arithmetic.nob(precision or self.precision), self.range)
        a = x.detach().abs()
        self.overflow += torch.stack([(a >= limit).sum(), (a >= limit / 2).sum()]).double() / a.numel()

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
        q = value.quantize(x)
        value.observe(q)
        ctx.grad_group = grad
        return q

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        gq = ctx.grad_group.quantize(g)
        ctx.grad_group.observe(gq)
        return gq, None, None


def round_value(x: torch.Tensor, value: NumberGroup, grad: NumberGroup, training: bool) -> torch.Tensor:
    """Round an activation-like tensor in training (values and gradients) or at test time (values;
    the straight-through form keeps it differentiable twice, for Hessian-vector products)."""
    if not value.arithmetic.rounds:
        return x
    if training:
        return _QuantizeWithGradient.apply(x, value, grad)
    return straight_through(x, value.quantize(x.detach()))


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
        return straight_through(v, self.group.quantize(v.detach(), "prop"))

    def step_for(self, v: torch.Tensor) -> torch.Tensor:
        nob = self.group.arithmetic.prop_nob
        step = 2.0 ** (-(nob - int(self.group.range)))
        return torch.full(self.step_shape, step, dtype=v.dtype, device=v.device)

    def calibrate(self, v: torch.Tensor) -> None:
        """Ranges are set by the range rule, not by calibration."""


class HalfWeight(nn.Module):
    """A parameter in float16 emulation (not a uniform grid, so no noise-model step)."""

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return straight_through(v, half_float(v.detach()))
