"""Weight and activation quantizers (uniform STE and LSQ), one module each.

Every quantizer holds its integer range ``[−Q_N, Q_P]`` and a step ``s`` (the Δ of the noise
model θ = Q(w) − w ~ U(−Δ/2, Δ/2)); ``forward`` returns ``s · clamp(round(v/s), −Q_N, Q_P)``.
Data-dependent initial values are set by one calibration pass (:func:`qgen.quant.init_quantizers`)
before training, never inside the hot path, so the forward has no branch on tensor values.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from qgen.quant.functional import fake_quantize

_EPS = 1e-8


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

    def train_quantize(self, v: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The value ``v`` takes during training (what the training-time noise θ = Q(v) − v is made of).

        Deterministic quantizers give their forward; stochastic ones draw with ``generator``."""
        return self(v)

    def extra_repr(self) -> str:
        kind = "per-channel" if self.per_channel else "per-tensor"
        return f"{self.role}, bits={self.bits}, signed={self.signed}, {kind}"


class UniformQuantizer(Quantizer):
    """Uniform fake quantization with a straight-through estimator and a range-derived step.

    Weights: s = max|w| / Q_P, recomputed from the current weights at every forward (per tensor
    or per output channel). Activations: s = r / Q_P where r is an
    exponential moving average (``momentum``) of the batch's max |x|, updated in training mode
    and frozen in eval mode; the first calibration batch initializes it. The step gets no gradient.
    """

    def __init__(
        self,
        bits: int,
        signed: bool,
        role: str = "weight",
        channels: int | None = None,
        ndim: int = 1,
        momentum: float = 0.1,
    ) -> None:
        super().__init__(bits, signed, role, channels, ndim)
        self.momentum = momentum
        if role == "act":
            self.register_buffer("running_max", torch.ones(self.step_shape))

    def calibrate(self, v: torch.Tensor) -> None:
        if self.role == "act":
            self.running_max.copy_(self._abs_stat(v, "max"))

    def _range(self, v: torch.Tensor) -> torch.Tensor:
        if self.role == "weight":
            return self._abs_stat(v, "max")
        if self.training and not self.calibrating:
            with torch.no_grad():
                self.running_max.lerp_(self._abs_stat(v, "max"), self.momentum)
        return self.running_max

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            self.calibrate(v)
        return fake_quantize(v, self._range(v).clamp_min(_EPS) / self.qp, self.qn, self.qp)

    def step_for(self, v: torch.Tensor) -> torch.Tensor:
        """The step Δ applied to ``v`` (eval mode): for weights it is derived from ``v`` itself."""
        source = self._abs_stat(v, "max") if self.role == "weight" else self.running_max
        return source.clamp_min(_EPS) / self.qp


class LSQQuantizer(Quantizer):
    """Learned Step Size Quantization (Esser et al., ICLR 2020).

    The step s is a parameter trained by the LSQ gradient (Eq. 3) scaled by g = 1/√(N·Q_P) (Eq. 4),
    N being the number of elements that share one step: all weights of the tensor (per-tensor),
    the weights of one output channel (per-channel; the paper is per-tensor, this extension is our
    choice), or the features of one example (activations). s is initialized to 2⟨|v|⟩/√Q_P on the
    first calibration batch (Sec. 2.1).
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
        n = v[0].numel() if self.role == "act" else v.numel() // (self.channels or 1)
        return 1.0 / math.sqrt(n * self.qp)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            self.calibrate(v)
        return fake_quantize(v, self.scale, self.qn, self.qp, self.grad_scale(v))

    def step_for(self, v: torch.Tensor) -> torch.Tensor:
        """The step Δ applied to ``v``: the learned s."""
        return self.scale.detach().abs()
