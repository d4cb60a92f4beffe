"""QGen's regularization argument checked numerically (papers.md §1a, "What a pipeline must compute" 3).

Least squares: for L(w) = mean_k (y_k − wᵀx_k)² and θ ~ U(−Δ/2, Δ/2)^d independent of w,
    E_θ[L(w + θ)] − L(w) = (Δ²/12)·mean_k ‖x_k‖²      (exact: the cross term has zero mean).
:func:`least_squares_check` fits w on synthetic data, then for each bit width measures the left side by
Monte Carlo and with the deterministic rounding error θ = Q(w) − w of a uniform max-abs quantizer, next
to the prediction. For trained networks the measure step provides the Monte-Carlo increase
(``noise_model.loss_increase``) and the second-order prediction (Δ²/24)·tr(H)
(``noise_model.predicted_loss_increase``); :func:`network_check` tabulates them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def least_squares_check(
    bits: list[int] | None = None, *, n: int = 2000, d: int = 32, draws: int = 4000, seed: int = 0
) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    w_true = rng.normal(size=d)
    y = x @ w_true + 0.5 * rng.normal(size=n)
    w = np.linalg.lstsq(x, y, rcond=None)[0]

    def loss(weights: np.ndarray) -> np.ndarray:
        return ((y[:, None] - x @ weights) ** 2).mean(axis=0)

    base = float(loss(w[:, None])[0])
    sq_norm = float((x**2).sum(axis=1).mean())
    rows = []
    for b in bits or [2, 3, 4, 5, 6, 8]:
        qp = 2 ** (b - 1) - 1
        delta = float(np.abs(w).max() / qp)
        theta = rng.uniform(-delta / 2, delta / 2, size=(d, draws))
        measured = loss(w[:, None] + theta) - base
        rounded = np.clip(np.round(w / delta), -qp - 1, qp) * delta
        rows.append(
            {
                "bits": b,
                "delta": delta,
                "predicted": delta**2 / 12 * sq_norm,
                "measured": float(measured.mean()),
                "measured_stderr": float(measured.std(ddof=1) / np.sqrt(draws)),
                "rounding": float(loss(rounded[:, None])[0] - base),
            }
        )
    out = pd.DataFrame(rows)
    out["ratio"] = out["measured"] / out["predicted"]
    return out.assign(model="least squares")


def network_check(runs: pd.DataFrame) -> pd.DataFrame:
    cols = [
        "run_id",
        "bits",
        "model_label",
        "noise_model.loss_increase",
        "noise_model.loss_increase_stderr",
        "noise_model.predicted_loss_increase",
    ]
    if "noise_model.loss_increase" not in runs.columns:
        return pd.DataFrame(columns=cols)
    data = runs[(runs["status"] == "completed") & runs["noise_model.loss_increase"].notna()][cols].copy()
    data = data.rename(
        columns={
            "noise_model.loss_increase": "measured",
            "noise_model.loss_increase_stderr": "measured_stderr",
            "noise_model.predicted_loss_increase": "predicted",
        }
    )
    data["ratio"] = data["measured"] / data["predicted"]
    return data.assign(model=data["model_label"])
