"""Analysis: Kendall τ, granulated Ψ, CMI, the reconstructed bound, the regularization check.

The claims are tested in test_claims.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import kendalltau

from qgen.analysis import bound, regularization
from qgen.analysis.correlation import (
    bootstrap_tau,
    conditional_mutual_information,
    granulated_kendall,
    kendall_tau,
)
from qgen.measures.deployed import deploy
from qgen.measures.noise_model import noise_model_measures
from qgen.models import build_model
from qgen.quant import init_quantizers


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=3, max_size=40, unique=True),
    st.randoms(use_true_random=False),
)
def test_kendall_matches_scipy_without_ties(x, rnd) -> None:
    y = list(x)
    rnd.shuffle(y)
    assert kendall_tau(x, y) == pytest.approx(kendalltau(x, y).statistic, abs=1e-12)


def test_kendall_counts_ties_as_zero() -> None:
    # pairs: (0,1): +1, (0,2): +1, (1,2): tie in x -> 0  =>  τ_a = 2·2 / (3·2) = 2/3
    assert kendall_tau([1, 2, 2], [1, 2, 3]) == pytest.approx(2 / 3)


def test_bootstrap_interval_contains_tau_and_excludes_zero_for_strong_dependence() -> None:
    rng = np.random.default_rng(0)
    g = rng.normal(size=60)
    m = g + 0.3 * rng.normal(size=60)
    lo, hi = bootstrap_tau(m, g, resamples=300)
    assert lo <= kendall_tau(m, g) <= hi and lo > 0.4


def test_granulated_kendall_on_a_hand_computed_grid() -> None:
    grid = pd.DataFrame([(a, b) for a in (0, 1) for b in (0, 1, 2)], columns=["a", "b"])
    grid["gap"] = grid["a"] + 10 * grid["b"]
    grid["measure"] = grid["a"] - grid["b"]  # agrees with the gap along a, disagrees along b
    big_psi, psi = granulated_kendall(grid, "measure", "gap", ["a", "b"])
    assert psi == {"a": pytest.approx(1.0), "b": pytest.approx(-1.0)}
    assert big_psi == pytest.approx(0.0)
    # plain τ over the 15 pairs: 3 concordant (a only), 6 discordant (b only); of the 6 pairs that differ
    # in both, b' = b + 1 gives a tie in the measure (2 pairs) and the other 4 are discordant
    assert kendall_tau(grid["measure"], grid["gap"]) == pytest.approx((3 - 10) / 15)


def test_cmi_is_near_zero_for_independent_and_positive_for_dependent_data() -> None:
    rng = np.random.default_rng(1)
    n = 120
    df = pd.DataFrame({"h": rng.integers(0, 3, n), "k": rng.integers(0, 2, n)})
    df["gap"] = rng.normal(size=n)
    df["dependent"] = df["gap"] + 0.2 * rng.normal(size=n)
    df["independent"] = rng.normal(size=n)
    dep, _ = conditional_mutual_information(df, "dependent", "gap", ["h", "k"])
    ind, _ = conditional_mutual_information(df, "independent", "gap", ["h", "k"])
    assert ind < 0.01 and dep > 0.3


def test_cmi_explains_away_a_confounding_hyperparameter() -> None:
    """A measure that only reflects the hyperparameter driving the gap scores ~0 once conditioned on it."""
    rng = np.random.default_rng(2)
    n = 150
    df = pd.DataFrame({"h": rng.integers(0, 3, n), "k": rng.integers(0, 2, n)})
    df["gap"] = df["h"] + 0.05 * rng.normal(size=n)
    df["measure"] = df["h"] + 0.05 * rng.normal(size=n)
    unconditioned, _ = conditional_mutual_information(df, "measure", "gap", ["h", "k"], max_condition=0)
    score, condition = conditional_mutual_information(df, "measure", "gap", ["h", "k"], max_condition=1)
    assert unconditioned > 0.2 and score < 0.05 and condition == "h"


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
    return noise_model_measures(view, x, y, view.weights(), trace, draws=40, seed=0)


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
