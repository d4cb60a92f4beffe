"""Analysis: the reconstructed bound and the regularization check.

The rank correlations (Kendall τ, granulated Ψ, CMI) are tested in test_correlation.py, the claims in
test_claims.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from qgen.analysis import bound, regularization
from qgen.data.batches import Examples
from qgen.measures.deployed import deploy
from qgen.measures.noise_model import noise_model_measures
from qgen.models import build_model
from qgen.quant import init_quantizers


def _noise_model(scale: float) -> dict[str, float]:
    torch.manual_seed(0)
    quant = {"method": "lsq", "weight_bits": 4, "act_bits": 4, "first_layer": "same", "last_layer": "same"}
    model = build_model({"model": {"name": "mlp", "depth": 1, "width": 16}, "quant": quant}, (1, 4, 4), 3)
    x = torch.randn(256, 1, 4, 4)
    init_quantizers(model, x)
    with torch.no_grad():
        y = model.eval()(x).argmax(-1)  # labels the model fits exactly, so noise can only hurt
    view = deploy(model)
    view.steps = {n: s * scale for n, s in view.steps.items()}
    trace = {n: 1.0 for n in view.steps}
    return noise_model_measures(view, Examples.from_tensors(x, y), view.weights(), trace, draws=40, seed=0)


def test_bound_grows_as_delta_grows() -> None:
    small, large = _noise_model(1.0), _noise_model(3.0)
    assert large["noise_model.error_increase"] > small["noise_model.error_increase"]
    assert large["noise_model.loss_increase"] > small["noise_model.loss_increase"]
    assert large["noise_model.predicted_loss_increase"] == pytest.approx(
        9 * small["noise_model.predicted_loss_increase"]
    )
    assert large["noise_model.kl_orig"] == pytest.approx(small["noise_model.kl_orig"] / 9)
    rows = pd.DataFrame([small, large]).assign(
        **{
            "train_error": 0.0,
            "measure.m": 256.0,
            "norm.l2": 3.0,
            "norm.l2_dist": 1.0,
            "pacbayes.sigma": 0.1,
        }
    )
    with_pacbayes_kl = bound.evaluate_bound(rows, {"kl_sigma": "pacbayes"})
    assert with_pacbayes_kl["bound.value"].iloc[1] > with_pacbayes_kl["bound.value"].iloc[0]
    # with σ² = Δ²/12 the KL term shrinks as Δ grows, so that variant is not monotone in Δ
    with_quant_kl = bound.evaluate_bound(rows, {"kl_sigma": "quantization"})
    assert with_quant_kl["bound.kl"].iloc[1] < with_quant_kl["bound.kl"].iloc[0]


def test_bound_terms_add_up() -> None:
    row = pd.DataFrame(
        [
            {
                "train_error": 0.1,
                "noise_model.error_increase": 0.02,
                "noise_model.kl_orig": 50.0,
                "noise_model.kl_init": 5.0,
                "measure.m": 1000.0,
            }
        ]
    )
    out = bound.evaluate_bound(row, {"prior": "zero", "delta": 0.05}).iloc[0]
    assert out["bound.complexity"] == pytest.approx(4 * np.sqrt((50 + np.log(2000 / 0.05)) / 1000))
    assert out["bound.value"] == pytest.approx(0.12 + out["bound.complexity"])


def test_gap_fit_recovers_a_linear_relation() -> None:
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"a": rng.normal(size=50), "b": rng.normal(size=50)})
    df["gap"] = 2 * df["a"] - df["b"] + 0.5
    fit = bound.fit_gap(df, "gap", ["a", "b"]).set_index("term")["value"]
    assert fit["r2"] == pytest.approx(1.0) and fit["tau_fitted_vs_observed"] == pytest.approx(1.0)
    assert fit["a"] == pytest.approx(2 * df["a"].std(ddof=0))


def test_least_squares_noise_term_is_delta_squared_over_12_times_x_norm() -> None:
    table = regularization.least_squares_check(draws=4000)
    assert np.allclose(table["ratio"], 1.0, atol=0.03)
    assert (table["predicted"].diff().dropna() < 0).all()  # more bits, less noise
