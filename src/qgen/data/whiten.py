"""BinaryConnect's CIFAR-10 preprocessing: global contrast normalization (scale 55), then ZCA whitening.

BinaryConnect's ``cifar10.py`` (Courbariaux et al. 2015) reads pylearn2's ``pylearn2_gcn_whitened`` CIFAR-10,
made by ``pylearn2/scripts/datasets/make_cifar10_gcn_whitened.py``: ``CIFAR10(which_set, gcn=55.)`` turns the
raw pixels into float32 (0..255, no centering or rescaling) and applies
``pylearn2.expr.preprocessing.global_contrast_normalize(X, scale=55.)`` with its other defaults; then
a ``pylearn2.datasets.preprocessing.ZCA()`` with its defaults (``filter_bias=0.1``, all components kept) is
fitted on the GCN'd training set (all 50,000 images; BinaryConnect's 45k/5k train/validation split is taken
afterwards from the whitened set) and applied to train and test. Read from lisa-lab/pylearn2 at af81e5c
(2021); these definitions and defaults are unchanged since early 2014. Which pylearn2 version made
BinaryConnect's files is not recorded: taking these is our reconstruction.

- GCN, per image x ∈ R^D: x ← x − mean(x) (``subtract_mean``); x ← x / s with
  s = sqrt(sqrt_bias + Σ x²) / scale, or s = sqrt(sqrt_bias + var(x, ddof=1)) / scale with ``use_std``;
  s < min_divisor is replaced by 1.
- ZCA: μ = mean of the training rows; C = (X − μ)ᵀ(X − μ) / N (divided by N, not N − 1);
  eigh(C + filter_bias·I) = U diag(λ + b) Uᵀ; P = U diag((λ + b)^−½) Uᵀ; x ↦ (x − μ) P.

Ours differs only numerically: the covariance is accumulated in float64 from streamed mini-batches
(memory O(D²)), where pylearn2 used float32 on the whole design matrix; eigenvalues of C that rounding
leaves slightly negative are clamped to 0 (C is only semi-definite: GCN'd rows sum to 0).
"""

from __future__ import annotations

import math
from typing import Any

import torch

#: ``CIFAR10(gcn=55.)`` in make_cifar10_gcn_whitened.py
GCN_SCALE = 55.0
#: pylearn2 ``ZCA.__init__`` default, which make_cifar10_gcn_whitened.py keeps
ZCA_FILTER_BIAS = 0.1
STATE_KEYS = ("mean", "matrix", "scale", "filter_bias")


def global_contrast_normalize(
    x: torch.Tensor,
    scale: float = GCN_SCALE,
    subtract_mean: bool = True,
    use_std: bool = False,
    sqrt_bias: float = 0.0,
    min_divisor: float = 1e-8,
) -> torch.Tensor:
    """pylearn2's ``global_contrast_normalize`` of the rows of ``x`` [B, D] (float): each row minus its mean,
    divided by sqrt(sqrt_bias + Σ x²)/scale (or by sqrt(sqrt_bias + var)/scale, var with ddof = 1, if
    ``use_std``); a divisor below ``min_divisor`` is replaced by 1. Returns a new tensor of x's dtype."""
    if x.ndim != 2 or not x.is_floating_point():
        raise ValueError(
            f"global_contrast_normalize expects a float matrix [B, D], got {x.dtype} {tuple(x.shape)}"
        )
    centered = x - x.mean(dim=1, keepdim=True) if subtract_mean else x
    spread = x.var(dim=1, correction=1) if use_std else centered.square().sum(dim=1)
    divisor = torch.sqrt(sqrt_bias + spread) / float(scale)
    divisor = torch.where(divisor < min_divisor, torch.ones_like(divisor), divisor)
    return centered / divisor[:, None]


def fit_gcn_zca(
    x: torch.Tensor,
    *,
    batch_size: int = 2048,
    scale: float = GCN_SCALE,
    filter_bias: float = ZCA_FILTER_BIAS,
) -> dict[str, torch.Tensor]:
    """Fit the ZCA whitening of the GCN'd training images ``x`` [N, C, H, W] (uint8 or float, raw pixels).

    Streams ``batch_size`` rows at a time (GCN in float64, running sums of x and of x xᵀ, shifted by the
    first batch's mean for accuracy), then one eigendecomposition of the D×D covariance. Returns the state
    of :class:`GcnZca`: ``mean`` float32 [D], ``matrix`` float32 [D, D] (symmetric), and the settings
    ``scale`` and ``filter_bias`` as 0-d float64 tensors."""
    if x.ndim < 2 or len(x) == 0:
        raise ValueError(f"fit_gcn_zca expects a non-empty batch of images, got shape {tuple(x.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not filter_bias > 0:
        raise ValueError(
            f"filter_bias must be > 0 (GCN'd data has a zero-variance direction), got {filter_bias}"
        )
    n, d = len(x), math.prod(x.shape[1:])
    shift: torch.Tensor | None = None
    total = torch.zeros(d, dtype=torch.float64)
    outer = torch.zeros(d, d, dtype=torch.float64)
    for start in range(0, n, batch_size):
        rows = x[start : start + batch_size].reshape(-1, d).to(device="cpu", dtype=torch.float64)
        rows = global_contrast_normalize(rows, scale=scale)
        if shift is None:
            shift = rows.mean(dim=0)
        rows -= shift
        total += rows.sum(dim=0)
        outer.addmm_(rows.T, rows)
    assert shift is not None
    delta = total / n
    covariance = outer / n - torch.outer(delta, delta)
    covariance = (covariance + covariance.T) / 2
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    inv_sqrt = (eigenvalues.clamp(min=0.0) + filter_bias).rsqrt()
    matrix = (eigenvectors * inv_sqrt) @ eigenvectors.T
    return {
        "mean": (shift + delta).to(torch.float32),
        "matrix": matrix.to(torch.float32),
        "scale": torch.tensor(float(scale), dtype=torch.float64),
        "filter_bias": torch.tensor(float(filter_bias), dtype=torch.float64),
    }


class GcnZca:
    """GCN then ZCA whitening of a raw batch, with a state fitted by :func:`fit_gcn_zca`.

    ``x_raw`` [B, C, H, W] holds raw pixels (uint8 0..255, or float in any positive scale such as 0..1:
    GCN with sqrt_bias = 0 is invariant to a positive factor, except that a divisor below min_divisor is
    never rescaled). It must NOT be standardized per channel first. Returns float32 [B, C, H, W] on x's
    device; the mean and matrix are moved to each device once."""

    def __init__(self, mean: torch.Tensor, matrix: torch.Tensor, scale: float, filter_bias: float) -> None:
        d = mean.numel()
        if mean.shape != (d,) or matrix.shape != (d, d):
            raise ValueError(
                f"whitening state: mean {tuple(mean.shape)} and matrix {tuple(matrix.shape)} disagree"
            )
        self.mean, self.matrix = mean.to(torch.float32), matrix.to(torch.float32)
        self.scale, self.filter_bias = float(scale), float(filter_bias)
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> GcnZca:
        missing = [key for key in STATE_KEYS if key not in state]
        if missing:
            raise ValueError(f"whitening state lacks {missing}; expected keys {list(STATE_KEYS)}")
        return cls(state["mean"], state["matrix"], float(state["scale"]), float(state["filter_bias"]))

    def state(self) -> dict[str, torch.Tensor]:
        """The tensors to save (whiten.pt); :meth:`from_state` reads them back."""
        return {
            "mean": self.mean,
            "matrix": self.matrix,
            "scale": torch.tensor(self.scale, dtype=torch.float64),
            "filter_bias": torch.tensor(self.filter_bias, dtype=torch.float64),
        }

    def settings(self) -> dict[str, Any]:
        """The preprocessing's settings, for meta.json."""
        return {
            "method": "gcn_zca",
            "gcn": {"scale": self.scale, "subtract_mean": True, "use_std": False, "sqrt_bias": 0.0},
            "zca": {"filter_bias": self.filter_bias, "n_components": None},
        }

    def _tensors(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._on:
            self._on[device] = (self.mean.to(device), self.matrix.to(device))
        return self._on[device]

    def __call__(self, x_raw: torch.Tensor) -> torch.Tensor:
        d = self.mean.numel()
        if x_raw.ndim < 2 or math.prod(x_raw.shape[1:]) != d:
            raise ValueError(f"whitening fitted on {d} features, got a batch of shape {tuple(x_raw.shape)}")
        mean, matrix = self._tensors(x_raw.device)
        rows = global_contrast_normalize(x_raw.reshape(len(x_raw), d).to(torch.float32), scale=self.scale)
        return ((rows - mean) @ matrix).reshape(x_raw.shape)
