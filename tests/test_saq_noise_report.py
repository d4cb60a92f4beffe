"""The SAQ and noise-injection paper tables, figures and claims (issue 17), and config/paper/saq.yaml.

The runs tables are built from the default config's ``saq`` and ``noise`` experiments (their real run specs,
flattened by qgen.runs_table and read back from CSV, as ``collect`` writes them), with metrics set by hand
so that every expected number is known.
"""

from __future__ import annotations

import copy
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qgen.analysis.claims import check_claims, claims_markdown, pooled_seed_std
from qgen.config import ConfigError, load_config, validate_config
from qgen.experiments import all_runs, expand_config
from qgen.report.papers import noise_table, saq_method, saq_table, write_paper_outputs
from qgen.runs_table import read_runs, run_row, write_csv
from tests.conftest import REPO, dry_run

Metrics = Callable[[dict[str, Any]], dict[str, Any]]
DEFAULT = load_config(REPO / "config" / "default.yaml")
SPECS = expand_config({**DEFAULT, "scope": "full"})
#: seed-to-seed jitter of the noise experiment's rounding runs (the same in every cell)
GAP_JITTER = (0.006, -0.004, 0.009, 0.001)
CE_JITTER = (0.002, 0.005, -0.001, 0.003)


def runs_frame(experiment: str, metrics: Metrics, tmp_path: Path, seeds: int | None = None) -> pd.DataFrame:
    """The runs table of a default-config experiment with ``metrics(spec)`` per run (metrics and measures
    of metrics.json / measures.json, plus ``fit``), through runs.csv and back."""
    rows = []
    for run in SPECS[experiment]:
        if seeds is not None and run.spec["seed"] >= seeds:
            continue
        values = metrics(run.spec)
        fit = values.pop("fit")
        measures = {k: values.pop(k) for k in list(values) if k.startswith(("pacbayes.", "search."))}
        record = {"run_id": run.run_id, "status": values.pop("status", "completed"), "spec": run.spec}
        rows.append(run_row({**record, "fit": fit, "metrics": values, "measures": measures}, experiment))
    path = tmp_path / f"{experiment}.csv"
    write_csv(pd.DataFrame(rows), path)
    return read_runs(path)


def saq_metrics(d_err: float = 0.004, d_sigma: float = 0.003, converged: bool = True) -> Metrics:
    """LSQ's test error varies across bits (0.02/bit) and seeds (0.013/seed) far more than SAQ's edge
    ``d_err``: only pairs matched on bits and seed see the edge in every pair."""

    def metrics(spec: dict[str, Any]) -> dict[str, Any]:
        quant, sam, seed = spec["quant"], spec["optim"].get("sam"), spec["seed"]
        if quant["method"] == "float":
            err, sigma = 0.05 + 0.001 * seed, 0.2 + 0.001 * seed
        else:
            bits = quant["weight_bits"]
            err, sigma = 0.1 + 0.02 * (4 - bits) + 0.013 * seed, 0.1 + 0.005 * bits + 0.01 * seed
        if sam and quant["method"] != "float":
            err -= d_err if sam["case"] == 3 else d_err / 2
            sigma += d_sigma if sam["case"] == 3 else 0.0
        return {
            "test_acc": 1 - err,
            "test_error": err,
            "gap_acc": 0.03 + 0.001 * seed,
            "gap_loss": 0.1 + 0.002 * seed,
            "train_ce": 0.02 + 0.001 * seed,
            "pacbayes.sigma": sigma,
            "search.pacbayes.converged": converged,
            "search.pacbayes.bound": "none",
            "fit": {"epochs": 10, "stop_reason": "max_epochs"},
        }

    return metrics


def noise_metrics(gap_offset: float = 0.0, ce_offset: float = 0.0, reached: bool = True) -> Metrics:
    """Rounding runs: a per-cell value plus the seed jitter (pooled std over seeds = std(jitter)); noise
    runs: their rounding twin's value + offset + a small per-seed wobble."""

    def metrics(spec: dict[str, Any]) -> dict[str, Any]:
        quant, seed, target = spec["quant"], spec["seed"], spec["train"]["target_ce"]
        bits = quant["weight_bits"]
        gap = 0.02 + 0.004 * bits + (0.01 if target else 0.0) + GAP_JITTER[seed]
        ce = 0.05 + 0.01 * (8 - bits) + CE_JITTER[seed]
        if quant["method"] == "noise":
            gap += gap_offset + 0.0005 * (seed - 1) * (bits / 4)
            ce += ce_offset + 0.0004 * (seed - 1) * (bits / 4)
        stop = (
            "max_epochs" if target is None or not (reached or quant["method"] == "uniform") else "target_ce"
        )
        return {
            "test_acc": 0.9 - gap,
            "test_error": 0.1 + gap,
            "gap_acc": gap,
            "gap_loss": 2 * gap,
            "train_ce": ce,
            "pacbayes.sigma": 0.1,
            "search.pacbayes.converged": True,
            "search.pacbayes.bound": "none",
            "fit": {"epochs": 8 if target is None else 20 + seed, "stop_reason": stop},
        }

    return metrics


def by_name(df: pd.DataFrame, **options: Any) -> dict[str, dict]:
    return {c["claim"]: c for c in check_claims(df, {"resamples": 50, **options})}


# ---------------------------------------------------------------- the SAQ table and figure


def test_saq_table_labels_orders_and_summarises_each_method_and_bit_width(tmp_path) -> None:
    df = runs_frame("saq", saq_metrics(), tmp_path)
    table = saq_table(df)
    assert len(table) == 16 and set(table["n"]) == {4}  # FP32, SAM, 3 x (LSQ + 3 cases), 2 sweep rows
    assert list(table["bits"].iloc[:2]) == ["FP32", "FP32"] and list(table["method"].iloc[:2]) == [
        "FP32",
        "SAM",
    ]
    four = table[table["bits"] == "4"]
    assert list(four["method"]) == [
        "LSQ",
        "SAQ case 1",
        "SAQ case 2",
        "SAQ case 3",
        "SAQ case 3, ρ = 0.2",
        "SAQ case 3, ρ = 0.8",
    ]
    assert list(four["rho"]) == ["–", "0.4", "0.4", "0.4", "0.2", "0.8"]
    assert table.set_index(["method", "bits"]).loc[("SAM", "FP32"), "rho"] == "0.05"
    assert list(table["bits"].drop_duplicates()) == ["FP32", "4", "3", "2"]
    row = table.set_index(["method", "bits"]).loc[("LSQ", "2")]
    errors = 0.1 + 0.04 + 0.013 * np.arange(4)
    assert row["test_acc_mean"] == pytest.approx((1 - errors).mean())
    assert row["test_acc_std"] == pytest.approx(errors.std(ddof=1))
    assert row["pacbayes.sigma_mean"] == pytest.approx((0.11 + 0.01 * np.arange(4)).mean())
    lsq2 = {
        r.run_id
        for r in SPECS["saq"]
        if r.spec["quant"].get("weight_bits") == 2 and not r.spec["optim"].get("sam")
    }
    assert set(row["run_ids"].split()) == lsq2 and len(lsq2) == 4
    # every run in exactly one row
    ids = [rid for cell in table["run_ids"] for rid in cell.split()]
    assert sorted(ids) == sorted(df["run_id"])


def test_saq_table_leaves_out_and_counts_runs_that_did_not_complete(tmp_path) -> None:
    df = runs_frame("saq", saq_metrics(), tmp_path)
    lsq4 = df.index[(saq_method(df)["method"] == "LSQ") & (df["bits"] == "4")]
    df.loc[lsq4[0], "status"] = "diverged"
    df.loc[lsq4[0], "test_acc"] = 0.0
    row = saq_table(df).set_index(["method", "bits"]).loc[("LSQ", "4")]
    assert row["n"] == 3 and row["diverged"] == 1
    kept = df.loc[lsq4[1:], "test_acc"]
    assert row["test_acc_mean"] == pytest.approx(kept.mean())
    assert df.loc[lsq4[0], "run_id"] in row["run_ids"].split()  # still named


def test_saq_labels_name_settings_that_vary_and_uniform_saq() -> None:
    df = pd.DataFrame(
        {
            "quant.method": ["lsq", "lsq", "uniform", "float"],
            "optim.sam.rho": [0.4, 0.4, 0.4, np.nan],
            "optim.sam.case": [3, 3, 1, np.nan],
            "optim.sam.adaptive": [False, True, False, np.nan],
            "optim.sam.include_bn": [True, False, True, np.nan],
        }
    )
    labels = saq_method(df)
    assert list(labels["method"]) == [
        "SAQ case 3 include_bn=True",
        "SAQ case 3 (adaptive) include_bn=False",
        "SAQ case 1 (uniform) include_bn=True",
        "FP32",
    ]
    assert list(labels["rho"]) == ["0.4", "0.4", "0.4", "–"]


def test_saq_outputs_are_written_with_every_run_id(tmp_path) -> None:
    df = runs_frame("saq", saq_metrics(), tmp_path)
    paths = write_paper_outputs(df, ["saq"], tmp_path / "t", tmp_path / "f", "saq")
    assert {p.name for p in paths} == {"saq.md", "saq.csv", "saq.tex", "saq_vs_bits.png", "saq_vs_bits.pdf"}
    md = (tmp_path / "t" / "saq.md").read_text()
    assert "| model_label | method | rho | bits | n | test acc | gap (acc) | gap (CE) | train CE | σ′ |" in md
    assert "SAQ case 3, ρ = 0.8" in md and "LIQ_wn" in md and all(r in md for r in df["run_id"])
    tex = (tmp_path / "t" / "saq.tex").read_text().splitlines()
    body = tex[tex.index("\\midrule") + 1 : tex.index("\\bottomrule")]
    assert len(body) == 16 and all("% run ids:" in line for line in body)
    csv = pd.read_csv(tmp_path / "t" / "saq.csv")
    assert {"test_acc_mean", "pacbayes.sigma_std", "gap_loss_mean", "train_ce_mean", "run_ids"} <= set(csv)
    assert all(p.stat().st_size > 10_000 for p in paths if p.parent.name == "f")


# ---------------------------------------------------------------- the noise-injection table and figure


def test_noise_table_rows_by_stopping_bits_and_training(tmp_path) -> None:
    df = runs_frame("noise", noise_metrics(gap_offset=0.01, reached=False), tmp_path, seeds=3)
    table = noise_table(df)
    assert len(table) == 12 and set(table["n"]) == {3}
    assert list(table["training"].iloc[:2]) == ["rounding (uniform)", "noise"]
    assert list(table["bits"].iloc[::2]) == ["8", "4", "2", "8", "4", "2"]
    assert set(table["stopping"].iloc[:6]) == {"fixed 8 epochs"}
    assert set(table["stopping"].iloc[6:]) == {"CE ≤ 0.01 (max 60 epochs)"}
    # noise runs did not reach the stopping rule's target here, rounding runs did
    assert list(table["reached target"]) == ["–"] * 6 + ["3/3", "0/3"] * 3
    cell = table[(table["stopping"] == "fixed 8 epochs") & (table["bits"] == "4")].set_index("training")
    rounding_gap = 0.02 + 0.016 + np.array(GAP_JITTER[:3])
    assert cell.loc["rounding (uniform)", "gap_acc_mean"] == pytest.approx(rounding_gap.mean())
    assert cell.loc["rounding (uniform)", "gap_acc_std"] == pytest.approx(rounding_gap.std(ddof=1))
    assert cell.loc["noise", "gap_acc_mean"] == pytest.approx(rounding_gap.mean() + 0.01)
    assert cell.loc["noise", "fit.epochs_mean"] == 8
    assert all(r.startswith("digits-mlp2x64-noise_w4a4") for r in cell.loc["noise", "run_ids"].split())


def test_noise_outputs_are_written(tmp_path) -> None:
    df = runs_frame("noise", noise_metrics(), tmp_path, seeds=3)
    paths = write_paper_outputs(df, ["noise_injection"], tmp_path / "t", tmp_path / "f", "noise")
    names = {p.name for p in paths}
    assert names == {f"noise_injection.{e}" for e in ("md", "csv", "tex")} | {
        "noise_vs_rounding.png",
        "noise_vs_rounding.pdf",
    }
    md = (tmp_path / "t" / "noise_injection.md").read_text()
    assert "real rounding at the trained step rule (noise_eval: round)" in md
    assert "| stopping | bits | training | reached target | n |" in md and all(r in md for r in df["run_id"])
    tex = (tmp_path / "t" / "noise_injection.tex").read_text()
    assert tex.count("% run ids:") == 12
    assert all(p.stat().st_size > 10_000 for p in paths if p.parent.name == "f")


# ---------------------------------------------------------------- saq_beats_qat, saq_flatter


def test_saq_claims_pass_on_matched_pairs_and_fail_when_saq_is_worse(tmp_path) -> None:
    claims = by_name(runs_frame("saq", saq_metrics(), tmp_path))
    beats, flatter = claims["saq_beats_qat"], claims["saq_flatter"]
    assert beats["verdict"] == "pass" and flatter["verdict"] == "pass"
    # 12 pairs (4 seeds x 2/3/4 bits): a mispairing across seeds or bits would put pairs against the claim
    assert (beats["n_pairs"], beats["in_direction"]) == (12, 12)
    assert beats["steps"][0]["p_holm"] == pytest.approx(2 * 0.5**12)
    assert beats["reference_rho"] == 0.4 and beats["reference_rho_source"] == "the rho most case-3 runs use"
    case3 = {
        r.run_id
        for r in SPECS["saq"]
        if r.spec["optim"].get("sam", {}).get("case") == 3 and r.spec["optim"]["sam"]["rho"] == 0.4
    }
    lsq = {
        r.run_id for r in SPECS["saq"] if r.spec["quant"]["method"] == "lsq" and "sam" not in r.spec["optim"]
    }
    assert set(beats["run_ids"].split()) == case3 | lsq and beats["n_runs_used"] == 24
    sweep = beats["excluded"]["SAQ case 3 at another rho than the reference 0.4"]
    assert len(sweep) == 8
    worse = by_name(runs_frame("saq", saq_metrics(d_err=-0.004, d_sigma=-0.003), tmp_path))
    assert worse["saq_beats_qat"]["verdict"] == "fail" and worse["saq_flatter"]["verdict"] == "fail"
    assert worse["saq_beats_qat"]["in_direction"] == 0
    md = claims_markdown(list(claims.values()), "saq")
    assert "plain QAT->SAQ case 3 rho=0.4: 12/12 in direction" in md


def test_saq_claims_are_inconclusive_with_too_few_pairs_or_unconverged_searches(tmp_path) -> None:
    three = by_name(runs_frame("saq", saq_metrics(), tmp_path, seeds=3))
    assert three["saq_beats_qat"]["verdict"] == "inconclusive" and three["saq_beats_qat"]["n_pairs"] == 9
    # the rho sweep as the reference: 4 pairs at 4 bits only
    rho = by_name(runs_frame("saq", saq_metrics(), tmp_path), saq_rho=0.8)["saq_beats_qat"]
    assert rho["verdict"] == "inconclusive" and rho["n_pairs"] == 4
    assert (rho["reference_rho"], rho["reference_rho_source"]) == (0.8, "analysis.claims.saq_rho")
    assert len(rho["excluded"]["SAQ case 3 at another rho than the reference 0.8"]) == 16
    stuck = by_name(runs_frame("saq", saq_metrics(converged=False), tmp_path))
    assert stuck["saq_flatter"]["verdict"] == "inconclusive" and stuck["saq_flatter"]["n_pairs"] == 0
    assert len(stuck["saq_flatter"]["excluded"]["σ′ search did not converge"]) == 24
    assert stuck["saq_beats_qat"]["verdict"] == "pass"  # test error needs no σ′ search


def test_no_saq_or_noise_claims_without_their_runs(tmp_path) -> None:
    df = runs_frame("saq", saq_metrics(), tmp_path)
    plain = df[df["optim.sam.rho"].isna()]
    assert not {"saq_beats_qat", "saq_flatter"} & set(by_name(plain))
    assert not any(name.startswith("noise_matches") for name in by_name(df))


@settings(max_examples=6, deadline=None)
@given(order=st.permutations(range(64)))
def test_saq_table_and_claims_do_not_depend_on_the_row_order(order, tmp_path_factory) -> None:
    df = runs_frame("saq", saq_metrics(), tmp_path_factory.mktemp("saq"))
    shuffled = df.iloc[list(order)].reset_index(drop=True)
    a, b = saq_table(df), saq_table(shuffled)
    assert list(a["method"]) == list(b["method"]) and list(a["bits"]) == list(b["bits"])
    assert np.allclose(a["test_acc_mean"], b["test_acc_mean"])
    assert [set(x.split()) for x in a["run_ids"]] == [set(x.split()) for x in b["run_ids"]]
    ca, cb = by_name(df)["saq_beats_qat"], by_name(shuffled)["saq_beats_qat"]
    assert (ca["verdict"], ca["n_pairs"], ca["steps"][0]["p_value"]) == (
        cb["verdict"],
        cb["n_pairs"],
        cb["steps"][0]["p_value"],
    )


# ---------------------------------------------------------------- noise_matches_rounding


def test_noise_claims_pass_within_the_seed_spread_and_record_the_margin(tmp_path) -> None:
    claims = by_name(runs_frame("noise", noise_metrics(), tmp_path, seeds=3))
    gap = claims["noise_matches_rounding"]
    assert gap["verdict"] == "pass" and gap["n_pairs"] == 18 and gap["metric"] == "gap_acc"
    spread = float(np.std(GAP_JITTER[:3], ddof=1))  # the same jitter in each of the 6 bits x stopping cells
    assert gap["margin"] == pytest.approx(spread) and gap["margin_dof"] == 12
    assert "pooled std over seeds of the rounding runs' gap_acc" in gap["margin_source"]
    assert f"±{spread:.4g}" in gap["threshold"]
    assert gap["regime"] == "fixed_epochs+target" and gap["n_runs_used"] == 36
    # training loss: fixed-epoch runs only (9 pairs < min_pairs 10), the target regime listed as excluded
    loss = claims["noise_matches_rounding_train_loss"]
    assert loss["verdict"] == "inconclusive" and loss["n_pairs"] == 9
    assert len(loss["excluded"]["target regime: the stopping rule equalizes training CE"]) == 18
    assert loss["margin"] == pytest.approx(np.std(CE_JITTER[:3], ddof=1)) and loss["margin_dof"] == 6
    testable = by_name(runs_frame("noise", noise_metrics(), tmp_path, seeds=3), min_pairs=9)
    assert testable["noise_matches_rounding_train_loss"]["verdict"] == "pass"
    # the default config's four seeds: 12 fixed-epoch pairs, enough for the default min_pairs
    four = by_name(runs_frame("noise", noise_metrics(), tmp_path))["noise_matches_rounding_train_loss"]
    assert four["n_pairs"] == 12 and four["verdict"] == "pass"


def test_noise_claims_fail_outside_the_margin_and_use_a_configured_one(tmp_path) -> None:
    shifted = by_name(
        runs_frame("noise", noise_metrics(gap_offset=0.02, ce_offset=0.02), tmp_path, seeds=3), min_pairs=9
    )
    assert shifted["noise_matches_rounding"]["verdict"] == "fail"
    assert shifted["noise_matches_rounding"]["groups"][0]["mean"] == pytest.approx(0.02, abs=1e-3)
    assert shifted["noise_matches_rounding_train_loss"]["verdict"] == "fail"
    # the same shift inside a configured margin passes; the margin and its source are recorded
    wide = by_name(
        runs_frame("noise", noise_metrics(gap_offset=0.02), tmp_path, seeds=3),
        noise_margin={"gap": 0.05, "train_ce": None},
    )["noise_matches_rounding"]
    assert wide["verdict"] == "pass" and wide["margin"] == 0.05
    assert wide["margin_source"] == "analysis.claims.noise_margin.gap" and wide["margin_dof"] is None
    tight = by_name(runs_frame("noise", noise_metrics(), tmp_path, seeds=3), noise_margin={"gap": 1e-5})
    assert tight["noise_matches_rounding"]["verdict"] == "fail"


def test_noise_claims_pair_only_eligible_twins_and_need_a_margin(tmp_path) -> None:
    df = runs_frame("noise", noise_metrics(reached=False), tmp_path, seeds=3)
    gap = by_name(df)["noise_matches_rounding"]  # noise runs that missed the stopping rule's target drop out
    assert gap["n_pairs"] == 9 and len(gap["excluded"]["stopping target not reached"]) == 9
    one = by_name(runs_frame("noise", noise_metrics(), tmp_path, seeds=1), min_pairs=2)
    claim = one["noise_matches_rounding"]  # one seed: no seed-to-seed spread, no margin
    assert (
        claim["verdict"] == "inconclusive" and np.isnan(claim["margin"]) and "no margin" in claim["threshold"]
    )


def test_pooled_seed_std_weights_cells_by_their_degrees_of_freedom() -> None:
    runs = pd.DataFrame({"cell": ["a"] * 3 + ["b"] * 2 + ["c"], "v": [1.0, 2.0, 3.0, 10.0, 14.0, 7.0]})
    value, dof = pooled_seed_std(runs, "v", ["cell"])
    assert dof == 3 and value == pytest.approx(np.sqrt((2.0 + 8.0) / 3))


# ---------------------------------------------------------------- configuration


def test_claim_options_and_paper_tables_are_validated() -> None:
    def with_options(claims: dict | None = None, tables: list | None = None) -> dict:
        config = copy.deepcopy(DEFAULT)
        if claims is not None:
            config.setdefault("analysis", {})["claims"] = claims
        if tables is not None:
            config["experiments"]["saq"]["paper_tables"] = tables
        return validate_config(config)

    ok = with_options(
        {"saq_rho": 0.4, "noise_margin": {"gap": 0.01, "train_ce": None}}, ["saq", "noise_injection"]
    )
    assert ok["analysis"]["claims"]["noise_margin"]["gap"] == 0.01
    for bad in ({"noise_margin": {"gap_acc": 0.01}}, {"noise_margin": {"gap": 0}}, {"saq_rho": -0.1}):
        with pytest.raises(ConfigError):
            with_options(bad)
    with pytest.raises(ConfigError):
        with_options(tables=["saq", "nope"])
    assert DEFAULT["experiments"]["saq"]["paper_tables"] == ["saq"]
    assert DEFAULT["experiments"]["noise"]["paper_tables"] == ["noise_injection"]


SAQ_CONFIG = REPO / "config" / "paper" / "saq.yaml"


def test_saq_paper_config_has_the_runs_its_header_says() -> None:
    header = SAQ_CONFIG.read_text()
    total, cifar, imagenet = (
        int(n)
        for n in re.search(r"^# (\d+) runs: (\d+) on CIFAR-100 .*, (\d+) on ImageNet", header, re.M).groups()
    )
    runs = all_runs(load_config(SAQ_CONFIG))
    assert (len(runs), total) == (21, cifar + imagenet)
    by_data = Counter(r.spec["data"]["name"] for r in runs.values())
    assert by_data == {"cifar100": cifar, "imagenet": imagenet}
    assert "LIQ_wn" in header and "SUBSTITUTION" in header
    sam = {
        (r.spec["data"]["name"], s["case"], s["rho"], s["include_aclip"], s["include_bn"], s["include_wclip"])
        for r in runs.values()
        if (s := r.spec["optim"].get("sam"))
    }
    assert sam == {("cifar100", c, 0.4, True, True, False) for c in (1, 2, 3)} | {
        ("imagenet", 3, 0.3, True, True, False)
    }
    for run in runs.values():
        spec = run.spec
        model, quant, optim = spec["model"], spec["quant"], spec["optim"]
        assert model["pretrained"]["name"] in ("preresnet20_cifar100", "resnet18_imagenet")
        if spec["data"]["name"] == "cifar100":
            assert (model["name"], model["depth"], model["preact"], model["shortcut"]) == (
                "resnet_cifar",
                20,
                True,
                "conv",
            )
            assert (optim["lr"], optim["batch_size"], optim["milestones"], spec["train"]["max_epochs"]) == (
                0.01,
                128,
                [80, 120],
                200,
            )
        else:
            assert model["name"] == "resnet18" and optim["schedule"] == "cosine"
            assert (optim["lr"], optim["batch_size"], spec["train"]["max_epochs"]) == (0.02, 512, 90)
        if quant["method"] != "float":
            assert (quant["method"], quant["weight_bits"], quant["act_bits"]) == ("lsq", 4, 4)
            twin = {**spec, "optim": {k: v for k, v in optim.items() if k != "sam"}}
            assert any(r.spec == twin for r in runs.values())  # every SAQ run has its plain-LSQ twin
    assert Counter(r.spec["quant"]["method"] for r in runs.values())["float"] == 3 + 2


def test_saq_paper_config_dry_runs_one_slurm_job_per_run(tmp_path) -> None:
    out = dry_run(tmp_path, SAQ_CONFIG, profile="slurm")  # no data or weights needed to plan
    assert out.count("rule shard:") == 21 and "Group job" not in out  # shard_runs: 1, as the header says
    assert re.search(r"^saq_table\s+2$", out, re.M)
    assert "results/saq_cifar100/tables/saq.md" in out and "figures/saq_imagenet/saq_vs_bits.png" in out
