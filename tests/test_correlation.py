"""Rank correlation of measures with the gap: Kendall τ_a, its bootstrap interval, granulated Ψ (τ_a and
τ_b variants), the CMI score, and the correlation table; each against a pairwise (O(n²)) reference."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import kendalltau

from benchmarks.analyse_scale import legacy_cmi as replaced_cmi  # the replaced code, kept verbatim there
from qgen.analysis import correlation
from qgen.analysis.correlation import (
    bootstrap_tau,
    bootstrap_taus,
    conditional_mutual_information,
    correlation_table,
    granulated_kendall,
    kendall_tau,
    pair_sums,
    resample_counts,
)

# ---------------------------------------------------------------- references: pairwise definitions


def signs(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """s_ij = sign(x_i − x_j)·sign(y_i − y_j), the n×n matrix of Jiang's Eq. 1."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    return np.sign(x[:, None] - x[None, :]) * np.sign(y[:, None] - y[None, :])


def pairwise_tau(x: np.ndarray, y: np.ndarray) -> float:
    """The replaced kendall_tau: τ_a from the n×n sign matrix."""
    n = len(x)
    return float(signs(x, y).sum() / (n * (n - 1)))


def replaced_bootstrap(x: np.ndarray, y: np.ndarray, resamples: int, seed: int = 0) -> tuple[float, float]:
    """The replaced interval: τ_a of each resampled table, self-pairs (ties) included."""
    rng = np.random.default_rng(seed)
    taus = [pairwise_tau(x[i], y[i]) for i in (rng.integers(0, len(x), len(x)) for _ in range(resamples))]
    lo, hi = np.nanquantile(taus, [0.025, 0.975])
    return float(lo), float(hi)


def replaced_granulated_kendall(df: pd.DataFrame, measure: str, gap: str, axes: list[str]):
    """The replaced granulated_kendall (groupby, τ_a per group)."""
    psi = {}
    for axis in axes:
        others = [a for a in axes if a != axis]
        groups = df.groupby(others, dropna=False) if others else [((), df)]
        taus = []
        for _, g in groups:
            if g[axis].nunique() > 1:
                d = g[[measure, gap]].dropna()
                taus.append(pairwise_tau(d[measure].to_numpy(), d[gap].to_numpy()) if len(d) > 1 else np.nan)
        taus = [t for t in taus if np.isfinite(t)]
        psi[axis] = float(np.mean(taus)) if taus else float("nan")
    values = [v for v in psi.values() if np.isfinite(v)]
    return (float(np.mean(values)) if values else float("nan")), psi


def grid_table(seed: int, n: int, levels: int = 4) -> pd.DataFrame:
    """Runs on a small grid with tied measures and gaps (and some missing measures)."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {"a": rng.integers(0, 3, n), "b": rng.integers(0, 2, n), "c": rng.choice([0.1, 0.3], n)}
    )
    df["gap"] = np.round(df["a"] + rng.normal(size=n), 1)
    df["measure"] = rng.integers(0, levels, n) - df["b"].to_numpy()
    df.loc[rng.random(n) < 0.1, "measure"] = np.nan
    return df


tied_values = st.lists(st.integers(0, 6), min_size=2, max_size=150)


# ---------------------------------------------------------------- Kendall τ_a


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


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_kendall_equals_the_pairwise_definition_exactly_with_ties(data) -> None:
    """The merge count (n > 65) and the enumeration (small n) both give Eq. 1's value to the last bit."""
    x = np.array(data.draw(tied_values), dtype=float)
    y = np.array(data.draw(st.lists(st.integers(0, 6), min_size=len(x), max_size=len(x))), dtype=float)
    assert kendall_tau(x, y) == pairwise_tau(x, y)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_grouped_pair_sums_agree_between_merge_count_and_enumeration(data) -> None:
    x = np.array(data.draw(tied_values), dtype=float)
    n = len(x)
    y = np.array(data.draw(st.lists(st.integers(0, 6), min_size=n, max_size=n)), dtype=float)
    group = np.array(data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)))
    enumerated = pair_sums(x, y, group, 4)
    original = correlation._ENUMERATE
    try:
        correlation._ENUMERATE = -1
        merged = pair_sums(x, y, group, 4)
    finally:
        correlation._ENUMERATE = original
    for field in ("s", "pairs", "untied_x", "untied_y"):
        assert np.array_equal(getattr(enumerated, field), getattr(merged, field))
    for g in range(4):
        inside = group == g
        if inside.sum() > 1:
            assert merged.tau_a()[g] == pairwise_tau(x[inside], y[inside])


def test_kendall_is_nan_with_fewer_than_two_finite_pairs() -> None:
    assert math.isnan(kendall_tau([1.0, np.nan], [1.0, 2.0]))


# ---------------------------------------------------------------- bootstrap interval


def test_bootstrap_interval_contains_tau_and_excludes_zero_for_strong_dependence() -> None:
    rng = np.random.default_rng(0)
    g = rng.normal(size=60)
    m = g + 0.3 * rng.normal(size=60)
    lo, hi = bootstrap_tau(m, g, resamples=300)
    assert lo <= kendall_tau(m, g) <= hi and lo > 0.4


def test_bootstrap_is_not_pulled_toward_zero_by_self_pairs() -> None:
    """A perfectly monotone table has τ = 1. Resampled with replacement, τ_a of the resampled table counts
    each run's pairs with its own copies as ties: the replaced interval ended well below 1. Over the pairs
    of distinct runs every resample has τ = 1."""
    x = np.arange(20.0)
    old_lo, old_hi = replaced_bootstrap(x, 2 * x, resamples=300)
    assert old_hi < 0.98 and old_lo < 0.93  # E τ*_a ≈ (n − 2)/(n − 1) = 0.947
    assert bootstrap_tau(x, 2 * x, resamples=300) == (1.0, 1.0)
    assert bootstrap_tau(x, -x, resamples=300) == (-1.0, -1.0)


@pytest.mark.parametrize("n", [30, 150])  # one dense block; dense blocks and merge levels
def test_bootstrap_resamples_equal_the_weighted_pairwise_definition(n: int) -> None:
    """τ* = Σ_{i≠j} w_i w_j s_ij / Σ_{i≠j} w_i w_j, computed here from the n×n sign matrix."""
    rng = np.random.default_rng(n)
    x = rng.integers(0, 8, n).astype(float)
    y = np.round(x + rng.normal(size=n), 0)
    w = resample_counts(n, 70, 3)
    assert (w.sum(axis=1) == n).all()
    s, ww = signs(x, y), w.astype(float)
    expected = np.einsum("ri,ij,rj->r", ww, s, ww) / ((ww.sum(1) ** 2) - (ww**2).sum(1))
    assert np.allclose(bootstrap_taus(x, y, w), expected, rtol=0, atol=1e-12)
    lo, hi = bootstrap_tau(x, y, resamples=70, seed=3)
    assert (lo, hi) == tuple(np.nanquantile(expected, [0.025, 0.975]))


def test_bootstrap_interval_covers_the_population_tau() -> None:
    """Bivariate normal with ρ = 0.5: population τ = (2/π)·arcsin ρ = 1/3; the 95 % interval covers it in
    about 95 % of 200 independent samples of 40 runs (binomial s.e. 1.5 %)."""
    rng = np.random.default_rng(5)
    rho, n, reps = 0.5, 40, 200
    population = 2 / np.pi * np.arcsin(rho)
    covered = 0
    for rep in range(reps):
        z = rng.normal(size=(n, 2))
        x, y = z[:, 0], rho * z[:, 0] + np.sqrt(1 - rho**2) * z[:, 1]
        lo, hi = bootstrap_tau(x, y, resamples=200, seed=rep)
        covered += lo <= population <= hi
    assert 0.90 <= covered / reps <= 0.99


# ---------------------------------------------------------------- granulated Kendall Ψ


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


@pytest.mark.parametrize("seed", range(6))
def test_granulated_kendall_equals_the_replaced_implementation(seed: int) -> None:
    df = grid_table(seed, n=90 + 40 * seed)
    assert granulated_kendall(df, "measure", "gap", ["a", "b", "c"]) == replaced_granulated_kendall(
        df, "measure", "gap", ["a", "b", "c"]
    )


@pytest.mark.parametrize("seed", range(4))
def test_psi_tau_b_follows_the_reference_code(seed: int) -> None:
    """scipy's τ_b inside each group; groups where it is undefined (all measures or gaps tied) skipped."""
    df = grid_table(seed, n=80, levels=2)
    axes = ["a", "b", "c"]
    expected = {}
    for axis in axes:
        taus = []
        for _, g in df.groupby([a for a in axes if a != axis], dropna=False):
            d = g[["measure", "gap"]].dropna()
            if g[axis].nunique() > 1 and len(d) > 1:
                taus.append(kendalltau(d["measure"], d["gap"]).statistic)
        taus = [t for t in taus if np.isfinite(t)]
        expected[axis] = np.mean(taus) if taus else np.nan
    big_psi, psi = granulated_kendall(df, "measure", "gap", axes, variant="tau_b")
    assert psi == pytest.approx(expected, nan_ok=True, abs=1e-12)
    assert big_psi == pytest.approx(np.nanmean(list(expected.values())), abs=1e-12)


def test_psi_variants_agree_without_ties_and_differ_with_them() -> None:
    grid = pd.DataFrame([(a, b) for a in range(3) for b in range(4)], columns=["a", "b"])
    grid["gap"] = grid["a"] + 0.1 * grid["b"] + 0.01 * np.arange(12)
    grid["measure"] = np.arange(12.0)[::-1] ** 1.5
    big_psi_b, psi_b = granulated_kendall(grid, "measure", "gap", ["a", "b"], variant="tau_b")
    big_psi, psi = granulated_kendall(grid, "measure", "gap", ["a", "b"])
    assert big_psi_b == pytest.approx(big_psi) and psi_b == pytest.approx(psi)
    grid["measure"] = grid["a"]  # tied inside every group of the b axis: τ_a = 0 there, τ_b undefined
    _, tau_a = granulated_kendall(grid, "measure", "gap", ["a", "b"])
    _, tau_b = granulated_kendall(grid, "measure", "gap", ["a", "b"], variant="tau_b")
    assert tau_a["b"] == 0 and math.isnan(tau_b["b"]) and tau_a["a"] == tau_b["a"] == 1
    with pytest.raises(ValueError, match="variant"):
        granulated_kendall(grid, "measure", "gap", ["a"], variant="tau_c")


# ---------------------------------------------------------------- conditional mutual information


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


@pytest.mark.parametrize(("seed", "max_condition"), [(0, 0), (1, 1), (2, 1), (3, 2), (4, 2)])
def test_cmi_is_the_replaced_score_over_both_orders_of_every_pair(seed: int, max_condition: int) -> None:
    """The replaced code took each pair once, oriented by row order, so a reordered table scored
    differently. Over the table followed by its reverse it sees every ordered pair (twice): that is the
    definition kept, and it no longer depends on the row order."""
    df = grid_table(seed, n=60)
    axes = ["a", "b", "c"]
    both_orders = pd.concat([df, df.iloc[::-1]], ignore_index=True)
    expected = replaced_cmi(both_orders, "measure", "gap", axes, max_condition)
    score, condition = conditional_mutual_information(df, "measure", "gap", axes, max_condition)
    assert condition == expected[1] and score == pytest.approx(expected[0], abs=1e-12)
    shuffled = df.sample(frac=1.0, random_state=seed)
    assert conditional_mutual_information(shuffled, "measure", "gap", axes, max_condition)[
        0
    ] == pytest.approx(score, abs=1e-12)


def test_cmi_of_the_replaced_code_depended_on_the_row_order() -> None:
    df = grid_table(7, n=40)
    scores = {
        replaced_cmi(df.sample(frac=1.0, random_state=k), "measure", "gap", ["a"], 1)[0] for k in range(4)
    }
    assert max(scores) - min(scores) > 1e-3


def test_cmi_treats_a_missing_hyperparameter_value_as_one_value() -> None:
    df = grid_table(8, n=70)
    df.loc[df.index % 5 == 0, "c"] = np.nan
    named = df.assign(c=df["c"].fillna(-1.0))
    assert conditional_mutual_information(df, "measure", "gap", ["a", "c"]) == pytest.approx(
        conditional_mutual_information(named, "measure", "gap", ["a", "c"]), abs=1e-12
    )


# ---------------------------------------------------------------- the table


def test_correlation_table_reports_both_psi_variants_and_the_defined_runs() -> None:
    df = grid_table(9, n=80)
    df["other"] = df["gap"] ** 2
    table = correlation_table(df, ["measure", "other"], ["gap"], ["a", "b", "c"], resamples=50)
    row = table.set_index("measure").loc["measure"]
    assert row["n"] == df["measure"].notna().sum()
    big_psi, psi = granulated_kendall(df, "measure", "gap", ["a", "b", "c"])
    big_psi_b, psi_b = granulated_kendall(df, "measure", "gap", ["a", "b", "c"], variant="tau_b")
    assert row["psi"] == big_psi and row["psi_tau_b"] == big_psi_b
    for axis in ("a", "b", "c"):
        assert row[f"psi[{axis}]"] == psi[axis] and row[f"psi_tau_b[{axis}]"] == psi_b[axis]
    assert (row["tau_lo"], row["tau_hi"]) == bootstrap_tau(df["measure"], df["gap"], resamples=50)
    assert (row["cmi"], row["cmi_condition"]) == conditional_mutual_information(
        df, "measure", "gap", ["a", "b", "c"]
    )
