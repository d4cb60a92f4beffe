"""Weight and activation quantizers (uniform STE and LSQ), one module each.

Every quantizer holds its integer range ``[−Q_N, Q_P]`` and a step ``s`` (the Δ of the noise
model θ = Q(w) − w ~ U(−Δ/2, Δ/2)); ``forward`` returns ``s · clamp(round(v/s), −Q_N, Q_P)``, or for
the uniform quantizer's affine grids the same grid shifted by an offset (:meth:`Quantizer.level_bounds`
gives any grid's ends in units of Δ).
Data-dependent initial values are set by one calibration pass (:func:`qgen.quant.init_quantizers`)
before training, never inside the hot path, so the forward has no branch on tensor values.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from qgen.quant.functional import fake_quantize, range_quantize

_EPS = 1e-8
#: grids of the uniform quantizer (see UniformQuantizer)
GRIDS = ("symmetric", "affine", "affine_int")


def int_range(bits: int, signed: bool) -> tuple[int, int]:
    """(Q_N, Q_P) of a b-bit integer grid (LSQ, Sec. 2): signed [−2^(b−1), 2^(b−1)−1], unsigned [0, 2^b−1]."""
    if not 2 <= bits <= 16:
        raise ValueError(f"bits must lie in [2, 16], got {bits}")
    return (2 ** (bits - 1), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


class Quantizer(nn.Module):
    """Base class: ``bits``, ``signed``, integer range and a per-tensor or per-channel step.

    ``channels`` (weights only) gives one step per output channel; the step then has shape
    ``(channels, 1, ..., 1)`` matching a weight of ``ndim`` dimensions. ``needs_calibration``: the
    quantizer sets data-dependent initial state in :func:`qgen.quant.init_quantizers`.
    """

    needs_calibration = True

    def __init__(
        self,
        bits: int,
        signed: bool,
        role: str = "weight",
        channels: int | None = None,
        ndim: int = 1,
        qrange: tuple[float, float] | None = None,
    ) -> None:
        super().__init__()
        if role not in ("weight", "act"):
            raise ValueError(f"role must be 'weight' or 'act', got {role!r}")
        if channels is not None and role == "act":
            raise ValueError("activation quantizers are per-tensor")
        self.role = role
        self.bits, self.signed = int(bits), bool(signed)
        # the grid is {−Q_N, …, Q_P}·Δ; ``qrange`` gives it directly for grids that are not b-bit integers
        self.qn, self.qp = qrange if qrange is not None else int_range(self.bits, self.signed)
        self.channels = channels
        self.step_shape = (channels,) + (1,) * (ndim - 1) if channels else (1,)
        self.calibrating = False

    @property
    def per_channel(self) -> bool:
        return self.channels is not None

    def _reduce_dims(self, v: torch.Tensor) -> tuple[int, ...]:
        return tuple(range(1, v.ndim)) if self.per_channel else tuple(range(v.ndim))

    def _abs_stat(self, v: torch.Tensor, how: str) -> torch.Tensor:
        a = v.detach().abs()
        dims = self._reduce_dims(v)
        stat = a.amax(dim=dims) if how == "max" else a.mean(dim=dims)
        return stat.reshape(self.step_shape)

    def step_for(self, v: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def calibrate(self, v: torch.Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def level_bounds(self, v: torch.Tensor) -> tuple[float | torch.Tensor, float | torch.Tensor]:
        """(Q_N, Q_P) such that the grid applied to ``v`` runs from −Q_N·Δ to Q_P·Δ (Δ = ``step_for(v)``):
        the integer range for a zero-centred grid; tensors shaped like the step for a shifted one."""
        return self.qn, self.qp

    def train_quantize(self, v: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The value ``v`` takes during training (what the training-time noise θ = Q(v) − v is made of).

        Deterministic quantizers give their forward; stochastic ones draw with ``generator``."""
        return self(v)

    def extra_repr(self) -> str:
        kind = "per-channel" if self.per_channel else "per-tensor"
        return f"{self.role}, bits={self.bits}, signed={self.signed}, {kind}"


class UniformQuantizer(Quantizer):
    """Uniform fake quantization with a straight-through estimator and a range-derived step.

    The range comes from the data: for weights the current tensor at every forward (per tensor or per
    output channel); for activations an exponential moving average (``momentum``) of each batch's
    statistic, updated in training mode and frozen in eval mode, the first calibration batch setting it.
    The step gets no gradient. The STE passes the gradient on the closed range of the grid, the values
    that set the range included (:func:`qgen.quant.functional.range_quantize`). ``grid``:

    - ``symmetric`` (default, the max-abs grid): r = max|v|, Δ = r/Q_P, levels −Q_N·Δ … Q_P·Δ with
      (Q_N, Q_P) = (2^(b−1), 2^(b−1) − 1) signed, (0, 2^b − 1) unsigned. 0 is a level and ±r are exact.
      A signed weight grid uses only 2^b − 1 of its levels (−Q_N·Δ lies beyond −r): 3 at 2 bits (−Δ, 0, Δ).
    - ``affine``: the min-max grid Δ = (max − min)/(2^b − 1) (papers.md §1a; recalled, not verified against
      QGen, so a reconstruction), levels min + kΔ for k = 0 … 2^b − 1: zero point z = −min/Δ kept real,
      so both range ends are exact and all 2^b levels are used, but 0 is in general not a level.
    - ``affine_int``: the same grid with an integer zero point (Jacob et al. 2018): the range is widened
      to contain 0, z = round(−min/Δ), levels (k − z)·Δ; 0 is exact, the range ends are within Δ/2.

    The affine grids ignore ``signed`` (the data's min sets the bottom) and keep, for activations, a running
    min beside the running max (of v, not |v|).
    """

    def __init__(
        self,
        bits: int,
        signed: bool,
        role: str = "weight",
        channels: int | None = None,
        ndim: int = 1,
        momentum: float = 0.1,
        grid: str = "symmetric",
    ) -> None:
        if grid not in GRIDS:
            raise ValueError(f"quant.grid must be one of {', '.join(GRIDS)}, got {grid!r}")
        codes = None if grid == "symmetric" else (0, 2**bits - 1)  # offset grids count levels from 0
        super().__init__(bits, signed, role, channels, ndim, qrange=codes)
        self.momentum, self.grid = momentum, grid
        if role == "act":
            self.register_buffer("running_max", torch.ones(self.step_shape))
            if grid != "symmetric":
                self.register_buffer("running_min", torch.zeros(self.step_shape))

    def _stats(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(bottom, top) of ``v``: (−max|v|, max|v|) for the symmetric grid, (min, max) otherwise."""
        dims = self._reduce_dims(v)
        if self.grid == "symmetric":
            top = v.detach().abs().amax(dim=dims).reshape(self.step_shape)
            return -top, top
        d = v.detach()
        return d.amin(dim=dims).reshape(self.step_shape), d.amax(dim=dims).reshape(self.step_shape)

    def calibrate(self, v: torch.Tensor) -> None:
        if self.role == "act":
            bottom, top = self._stats(v)
            self.running_max.copy_(top)
            if self.grid != "symmetric":
                self.running_min.copy_(bottom)

    def _range(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.role == "weight":
            return self._stats(v)
        if self.training and not self.calibrating:
            with torch.no_grad():
                bottom, top = self._stats(v)
                self.running_max.lerp_(top, self.momentum)
                if self.grid != "symmetric":
                    self.running_min.lerp_(bottom, self.momentum)
        return (-self.running_max if self.grid == "symmetric" else self.running_min), self.running_max

    def _grid(self, bottom: torch.Tensor, top: torch.Tensor):
        """(Δ, offset or None, lowest, highest value the STE passes) of the grid over [bottom, top]."""
        if self.grid == "symmetric":
            step = top.clamp_min(_EPS) / self.qp
            return step, None, -self.qn * step, top
        if self.grid == "affine_int":
            bottom, top = bottom.clamp(max=0), top.clamp(min=0)
        step = (top - bottom).clamp_min(_EPS) / self.qp
        if self.grid == "affine":
            return step, bottom, bottom, top
        zero = torch.round(-bottom / step).clamp(0, self.qp)
        return step, -zero * step, bottom, top

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            self.calibrate(v)
        step, offset, lo, hi = self._grid(*self._range(v))
        return range_quantize(v, step, -self.qn, self.qp, lo, hi, offset)

    def _eval_range(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.role == "weight":
            return self._stats(v)
        return (-self.running_max if self.grid == "symmetric" else self.running_min), self.running_max

    def step_for(self, v: torch.Tensor) -> torch.Tensor:
        """The step Δ applied to ``v`` (eval mode): for weights it is derived from ``v`` itself."""
        return self._grid(*self._eval_range(v))[0]

    def level_bounds(self, v: torch.Tensor) -> tuple[float | torch.Tensor, float | torch.Tensor]:
        step, offset, _, _ = self._grid(*self._eval_range(v))
        if offset is None:
            return self.qn, self.qp
        return -offset / step, self.qp + offset / step

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, grid={self.grid}"


class LSQQuantizer(Quantizer):
    """Learned Step Size Quantization (Esser et al., ICLR 2020).

    The step s is a parameter trained by the LSQ gradient (Eq. 3) scaled by g = 1/√(N·Q_P) (Eq. 4),
    N being the number of elements that share one step: all weights of the tensor (per-tensor),
    the weights of one output channel (per-channel; the paper is per-tensor, this extension is our
    choice), or the features of one example (activations). s is initialized to 2⟨|v|⟩/√Q_P on the
    first calibration batch (Sec. 2.1).

    The step used everywhere is |s| (at least 1e-8): in the forward, in :meth:`step_for` and so in the
    noise statistics and the bound. Nothing keeps the parameter itself positive (an optimizer step can
    carry it below 0); with |s| the grid stays the same and the gradient reaching s is the LSQ gradient
    times sign(s), so the next steps move |s| as LSQ would. For s > 0 this is exactly LSQ.
    """

    def __init__(
        self, bits: int, signed: bool, role: str = "weight", channels: int | None = None, ndim: int = 1
    ) -> None:
        super().__init__(bits, signed, role, channels, ndim)
        self.scale = nn.Parameter(torch.ones(self.step_shape))

    def calibrate(self, v: torch.Tensor) -> None:
        with torch.no_grad():
            init = 2 * self._abs_stat(v, "mean") / math.sqrt(self.qp)
            self.scale.copy_(init.clamp_min(_EPS))

    def grad_scale(self, v: torch.Tensor) -> float:
        """g = 1/√(N·Q_P), N = elements sharing one step (Esser et al. 2020, Eq. 4)."""
        # from the shape alone: ``v[0].numel()`` would dispatch an indexing op at every forward
        n = v.numel() // (v.shape[0] if self.role == "act" else self.channels or 1)
        return 1.0 / math.sqrt(n * self.qp)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            self.calibrate(v)
        return fake_quantize(v, self._step(), self.qn, self.qp, self.grad_scale(v))

    def _step(self) -> torch.Tensor:
        """|s| (at least 1e-8), differentiable: the step of the grid."""
        return self.scale.abs().clamp_min(_EPS)

    def step_for(self, v: torch.Tensor) -> torch.Tensor:
        """The step Δ applied to ``v``: the learned |s|."""
        return self._step().detach()
