"""Noise-injection training (``quant.method: noise``): a quantizer's rounding replaced by uniform noise.

QGen (papers.md §1a) and QReg (§2) model quantization as additive noise, Q(v) = v + θ with
θ ~ U(−Δ/2, Δ/2) independent of v, Var(θ) = Δ²/12. :class:`NoiseQuantizer` trains with that model
instead of the rounding, so that a noise-trained run and a rounding-trained run at the same Δ test it
directly (issue 17):

- **Training** (train mode): v ↦ clip(v) + u, u = Δ·(r − ½), r ~ U[0, 1) per element, drawn fresh at
  every training forward. The gradient goes straight through the noise: ∂/∂v = 1 on the closed range
  [lo, hi] the uniform quantizer passes its STE on, 0 outside it (``noise_clip: true``, default), or 1
  everywhere (``noise_clip: false``: no clipping, v + u). The noise model's θ is independent of v, so
  values that rounding keeps exact (a ReLU's zeros on an unsigned grid) get noise too.
- **Δ and the range: the uniform quantizer's rule** (the "matched Δ rule"): this class *is* a
  :class:`~qgen.quant.quantizers.UniformQuantizer` (``grid``, per-tensor or per-channel steps, the
  running range of activations updated in training mode) whose rounding is swapped for the noise, so
  ``method: uniform`` with the same bits, grid and per_channel is the matched rounding run. The clip
  range is the uniform quantizer's [lo, hi]: for the symmetric and affine grids exactly the ends of the
  grid; for ``affine_int`` its widened range (ends within Δ/2 of the end levels; our choice).
  The issue's alternative, Δ frozen at the step of a matched *rounding* run, is not implemented (it needs
  another run's trained model as an input of this one). Neither is a learned step as in LSQ: LSQ's step
  gradient (Esser et al. 2020, Eq. 3) is round(v/s) − v/s inside the range, the rounding error itself,
  whose expectation under the noise model is 0; with noise in place of rounding there is no such
  signal, so s could only be learned through the clipped ends or by some other rule, which would not
  be LSQ.
- **Evaluation** (eval mode, ``noise_eval``, recorded in the run spec): ``round`` (default) real
  rounding with the trained Δ rule, exactly the uniform quantizer's forward; ``clean`` the noise-free
  values, clip(v) (v with ``noise_clip: false``); ``noise`` one fixed, seeded realization of the noise:
  a unit draw r − ½ per element of the weight, and for activations per element of *one example* (shape
  of the input without its batch dimension, the same for every example), so the deployed network is a
  fixed function of each input whatever the batch (reconstruction: "the same noise" is not defined
  further by the issue). Everything that evaluates or measures the model (the stopping rule,
  qgen.metrics, qgen.measures.deployed's effective weights, the noise statistics of activations)
  calls the eval-mode forward, so all of it follows ``noise_eval``. The weight-noise statistics use
  :meth:`NoiseQuantizer.train_quantize`, a fresh draw of the training-time noise (as for stochastic
  BinaryConnect).

Determinism without generator state: every draw comes from a fresh ``torch.Generator`` seeded with a
counter-based key, splitmix64(stream, step), where ``stream`` (buffer ``noise_seed``) is drawn once
from the global RNG when the quantizer is built, so it is a function of the run seed (qgen.train.loop
seeds torch before building the model) and of the quantizer's place in the build order (every layer
and role gets its own), and ``step`` (buffer ``noise_step``) counts the training forwards, like
BatchNorm's ``num_batches_tracked``. Both are int64 buffers of the model's state dict, so a checkpoint
(mid-epoch ones included) carries them and a resumed run draws the same noise; no generator state is
saved. A generator costs about 3 µs to create and seed on CPU, per quantizer and training step (the
default digits MLP's step, six quantizers, 1.93 ms against the uniform quantizer's 1.76 ms). A
method that runs two training forwards per optimizer step (SAM) draws twice. Building the quantizer
takes one draw of the global RNG per noisy quantizer, after the model's weights are initialized (so a
noise run starts from the same weights as its matched rounding run). Training draws on the training
device (CPU and CUDA generators differ, so the draws do too); the fixed evaluation noise is drawn on
the CPU and moved, the same on every device.
"""

from __future__ import annotations

from typing import Any

import torch

from qgen.quant.functional import InsideRangeSTE
from qgen.quant.quantizers import UniformQuantizer

#: roles whose rounding may be replaced by noise (``quant.noise_on``)
NOISE_ROLES = ("weight", "act")
#: evaluation modes (``quant.noise_eval``)
EVAL_MODES = ("clean", "noise", "round")
_MASK64 = 2**64 - 1
#: ``step`` values of the keys that are not training steps
_EVAL_KEY, _CALIBRATION_KEY = -1, -2


def noise_key(stream: int, step: int) -> int:
    """A 63-bit generator seed from (stream, step): splitmix64's finalizer (Steele et al. 2014) of
    stream·φ + step, a bijection of step for a fixed stream before the top bit is dropped."""
    z = (stream * 0x9E3779B97F4A7C15 + step) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & (2**63 - 1)


def unit_noise(
    shape: tuple[int, ...], key: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """r − ½ with r ~ U[0, 1) per element, from a generator on ``device`` seeded with ``key``. Drawn
    outside any torch.func transform (the draw depends on the shape only), so a vmapped measure can
    call a quantizer that adds noise."""
    with torch._C._DisableFuncTorch():
        gen = torch.Generator(device=device).manual_seed(key)
        return torch.rand(shape, generator=gen, device=device, dtype=dtype) - 0.5


class _ClipAddNoise(InsideRangeSTE):
    """clamp(v, lo, hi) + u with ∂/∂v = 1 on lo ≤ v ≤ hi, else 0 (the uniform quantizer's STE range);
    no gradient for lo, hi (functions of the data) or u (a draw). ``u`` None adds nothing."""

    @staticmethod
    def forward(v, lo, hi, u):  # type: ignore[override]
        out = torch.clamp(v, lo, hi)
        return (out if u is None else out + u), (v >= lo) & (v <= hi)


def clip_add_noise(
    v: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, u: torch.Tensor | None
) -> torch.Tensor:
    """``clamp(v, lo, hi) + u`` with the straight-through gradient on the closed range [lo, hi]."""
    return _ClipAddNoise.apply(v, lo, hi, u)[0]


class NoiseQuantizer(UniformQuantizer):
    """The uniform quantizer with its rounding replaced by U(−Δ/2, Δ/2) noise in training (see the module
    docstring); ``noise_clip`` keeps the clipping to the range, ``noise_eval`` picks the eval-mode forward."""

    needs_calibration = True

    def __init__(
        self,
        bits: int,
        signed: bool,
        role: str = "weight",
        channels: int | None = None,
        ndim: int = 1,
        momentum: float = 0.1,
        grid: str = "symmetric",
        noise_clip: bool = True,
        noise_eval: str = "round",
    ) -> None:
        super().__init__(bits, signed, role, channels, ndim, momentum, grid)
        if noise_eval not in EVAL_MODES:
            raise ValueError(f"quant.noise_eval must be one of {', '.join(EVAL_MODES)}, got {noise_eval!r}")
        self.noise_clip, self.noise_eval = bool(noise_clip), noise_eval
        stream = int(torch.randint(0, 2**62, (), dtype=torch.int64))
        self.register_buffer("noise_seed", torch.tensor(stream, dtype=torch.int64))
        self.register_buffer("noise_step", torch.zeros((), dtype=torch.int64))
        # Python mirrors of the two buffers, read on every draw without a device synchronization
        self._stream, self._step = stream, 0
        self._eval_noise: dict[tuple[Any, ...], torch.Tensor] = {}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[override]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._stream, self._step = int(self.noise_seed), int(self.noise_step)
        self._eval_noise.clear()

    def _training_noise(self, v: torch.Tensor) -> torch.Tensor:
        """This training forward's unit draw; counts the step (calibration draws count nothing)."""
        if self.calibrating:
            key = noise_key(self._stream, _CALIBRATION_KEY)
        else:
            key = noise_key(self._stream, self._step)
            self._step += 1
            self.noise_step.fill_(self._step)
        return unit_noise(tuple(v.shape), key, v.device, v.dtype)

    def _fixed_noise(self, v: torch.Tensor) -> torch.Tensor:
        """The evaluation-mode unit draw (``noise_eval: noise``): the weight's shape, or one example's."""
        shape = tuple(v.shape) if self.role == "weight" else tuple(v.shape[1:])
        cache = (shape, v.device, v.dtype)
        if cache not in self._eval_noise:
            draw = unit_noise(shape, noise_key(self._stream, _EVAL_KEY))
            with torch._C._DisableFuncTorch():
                self._eval_noise[cache] = draw.to(device=v.device, dtype=v.dtype)
        return self._eval_noise[cache]

    def _add(
        self, v: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, u: torch.Tensor | None
    ) -> torch.Tensor:
        if self.noise_clip:
            return clip_add_noise(v, lo, hi, u)
        return v if u is None else v + u

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        if not self.training and self.noise_eval == "round":
            return super().forward(v)  # exactly the uniform quantizer
        if self.calibrating:
            self.calibrate(v)
        step, _, lo, hi = self._grid(*self._range(v))
        if self.training:
            unit: torch.Tensor | None = self._training_noise(v)
        else:
            unit = self._fixed_noise(v) if self.noise_eval == "noise" else None
        return self._add(v, lo, hi, None if unit is None else unit * step)

    def train_quantize(self, v: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """clip(v) + u with u ~ U(−Δ/2, Δ/2) drawn with ``generator`` (Δ and range in eval mode: the
        frozen running range for activations); counts no step and moves no running range."""
        step, _, lo, hi = self._grid(*self._eval_range(v))
        unit = torch.rand(v.shape, generator=generator, dtype=v.dtype, device=v.device) - 0.5
        return self._add(v, lo, hi, unit * step)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, noise_clip={self.noise_clip}, noise_eval={self.noise_eval}"


def prepare_compile() -> None:
    """Keep the training draw out of torch.compile's graphs (a fresh generator and a Python counter per
    step; Dynamo runs it eagerly). Called before compiling a model, not at import: ``torch.compiler.disable``
    imports Dynamo, 2.4 s of every worker's start on the 2-core machine (benchmarks/run_overhead.py)."""
    if not getattr(NoiseQuantizer._training_noise, "_qgen_compile_disabled", False):
        disabled = torch.compiler.disable(NoiseQuantizer._training_noise)
        disabled._qgen_compile_disabled = True  # type: ignore[attr-defined]
        NoiseQuantizer._training_noise = disabled  # type: ignore[method-assign]
