"""Paper tables, their claims, and the configs that define the BinaryConnect and low-precision experiments."""

from __future__ import annotations

import copy
import itertools
import re

import numpy as np
import pandas as pd
import pytest
import yaml

from qgen.analysis.claims import check_claims
from qgen.config import ConfigError, load_config, validate_config
from qgen.experiments import all_runs, expand_config, run_id
from qgen.report.papers import (
    binaryconnect_method,
    binaryconnect_table,
    error_vs_prop_bits,
    low_precision_table,
    write_paper_outputs,
)
from tests.conftest import REPO, dry_run, make_spec


def _row(run: str, seed: int, **fields) -> dict:
    base = {
        "run_id": run,
        "experiment": "x",
        "status": "completed",
        "model_label": "mlp2x8",
        "seed": seed,
        "model.name": "mlp",
        "model.depth": 2,
        "model.width": 8,
        "model.dropout": 0.0,
        "optim.lr": 0.01,
    }
    return {**base, **fields}


def bc_runs(bc_error: float = 0.01, seeds: int = 5) -> pd.DataFrame:
    rows = []
    for seed in range(seeds):
        noise = 0.001 * seed
        rows.append(
            _row(
                f"fp-{seed}",
                seed,
                bits="FP32",
                quant="fp32",
                **{"quant.method": "float"},
                test_error=0.03 + noise,
                gap_acc=0.03 + noise,
                train_error=0.0,
            )
        )
        rows.append(
            _row(
                f"drop-{seed}",
                seed,
                bits="FP32",
                quant="fp32",
                **{"quant.method": "float", "model.dropout": 0.5},
                test_error=0.025 + noise,
                gap_acc=0.02,
                train_error=0.005,
            )
        )
        for stoch, label in ((False, "bc_det"), (True, "bc_stoch")):
            rows.append(
                _row(
                    f"{label}-{seed}",
                    seed,
                    bits="1",
                    quant=label,
                    **{
                        "quant.method": "binary",
                        "quant.stochastic": stoch,
                        "quant.test_time": "real" if stoch else "binary",
                    },
                    test_error=bc_error + noise,
                    gap_acc=bc_error + noise,
                    train_error=0.0,
                )
            )
    return pd.DataFrame(rows)


def test_binaryconnect_rows_are_labelled_ordered_and_summarised() -> None:
    df = bc_runs()
    assert list(binaryconnect_method(df.iloc[:4])) == [
        "No regularizer",
        "50% Dropout",
        "BC (det.)",
        "BC (stoch.)",
    ]
    table = binaryconnect_table(df)
    assert list(table["method"]) == ["No regularizer", "BC (det.)", "BC (stoch.)", "50% Dropout"]
    row = table.set_index("method").loc["No regularizer"]
    errors = 0.03 + 0.001 * np.arange(5)
    assert row["n"] == 5 and row["test_error_mean"] == pytest.approx(errors.mean())
    assert row["test_error_std"] == pytest.approx(errors.std(ddof=1))
    assert row["run_ids"].split() == [f"fp-{s}" for s in range(5)]
    assert row["paper PI-MNIST (%)"] == "1.30 ± 0.04"
    assert table.set_index("method").loc["BC (stoch.)", "test_time"] == "real"


def test_low_precision_table_rows_and_paper_matches() -> None:
    rows = []
    for seed, (fmt, prop, upd) in itertools.product(
        range(2),
        [
            ("float", None, None),
            ("half", None, None),
            ("fixed", 20, 20),
            ("dynamic_fixed", 10, 12),
            ("fixed", 10, 12),
        ],
    ):
        rows.append(
            _row(
                f"{fmt}{prop}-{seed}",
                seed,
                bits=str(prop or 32),
                quant=fmt,
                model_label="maxout2x8",
                **{
                    "model.name": "maxout",
                    "quant.method": fmt,
                    "quant.prop_bits": prop,
                    "quant.update_bits": upd,
                },
                test_error=0.9 if (fmt, prop) == ("fixed", 10) else 0.02 + 0.001 * seed,
                gap_acc=0.01,
                train_error=0.01,
            )
        )
    table = low_precision_table(pd.DataFrame(rows))
    assert list(zip(table["format"], table["prop_bits"], table["update_bits"], strict=True)) == [
        ("single float", 32, 32),
        ("half float", 16, 16),
        ("fixed point", 20, 20),
        ("fixed point", 10, 12),
        ("dynamic fixed point", 10, 12),
    ]
    assert list(table["paper PI-MNIST (%)"]) == ["1.05", "1.10", "1.39", "", "1.28"]
    assert table["test_error_mean"].iloc[3] == pytest.approx(0.9)
    assert table["run_ids"].iloc[4].split() == ["dynamic_fixed10-0", "dynamic_fixed10-1"]


def test_paper_outputs_are_written_with_run_ids(tmp_path) -> None:
    df = bc_runs()
    paths = write_paper_outputs(df, ["binaryconnect"], tmp_path / "t", tmp_path / "f", "bc")
    md = (tmp_path / "t" / "binaryconnect.md").read_text()
    assert {p.name for p in paths} == {"binaryconnect.md", "binaryconnect.csv", "binaryconnect.tex"}
    assert "BC (stoch.)" in md and "1.18 ± 0.04" in md and all(r in md for r in df["run_id"])
    with pytest.raises(ValueError, match="unknown paper table"):
        write_paper_outputs(df, ["nope"], tmp_path, tmp_path, "bc")


def test_error_vs_prop_bits_figure(tmp_path) -> None:
    rows = [
        _row(
            f"{fmt}{p}{u}",
            0,
            bits=str(p),
            quant=fmt,
            **{"quant.method": fmt, "quant.prop_bits": p, "quant.update_bits": u},
            test_error=0.5 / p,
            gap_acc=0.01,
        )
        for fmt in ("fixed", "dynamic_fixed")
        for p in (6, 10, 20)
        for u in (12, 20)
    ] + [_row("fp", 0, bits="FP32", quant="fp32", **{"quant.method": "float"}, test_error=0.02, gap_acc=0.01)]
    paths = error_vs_prop_bits(pd.DataFrame(rows), tmp_path / "fig", "lp")
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size > 10_000 for p in paths)


def test_binaryconnect_claims_pass_when_bc_regularizes_and_fail_otherwise() -> None:
    good = {c["claim"]: c for c in check_claims(bc_runs(bc_error=0.01, seeds=12))}
    assert good["binaryconnect_lowers_test_error"]["verdict"] == "pass"
    assert good["binaryconnect_shrinks_gap"]["verdict"] == "pass"
    steps = good["binaryconnect_lowers_test_error"]["steps"]  # det. and stoch. are separate arms
    assert [(s["step"], s["n_pairs"]) for s in steps] == [
        ("reference->bc_det", 12),
        ("reference->bc_stoch", 12),
    ]
    assert set(good["binaryconnect_lowers_test_error"]["run_ids"].split()) == {
        f"{k}-{s}" for k in ("fp", "bc_det", "bc_stoch") for s in range(12)
    }
    assert not any(
        name.startswith(("gap_shrinks", "eight_bit")) for name in good
    )  # QGen claims need bit widths
    bad = {c["claim"]: c for c in check_claims(bc_runs(bc_error=0.05, seeds=12))}
    assert bad["binaryconnect_lowers_test_error"]["verdict"] == "fail"
    # five seeds: 5 pairs per arm are fewer than min_pairs, whatever the direction
    few = {c["claim"]: c for c in check_claims(bc_runs(bc_error=0.01))}
    assert few["binaryconnect_lowers_test_error"]["verdict"] == "inconclusive"


def low_precision_runs(seeds: int, dfxp_error: float = 0.021) -> pd.DataFrame:
    rows = []
    for seed in range(seeds):
        common = {"model.name": "maxout", "model_label": "maxout2x8"}
        jitter = 0.0005 * (seed % 3 - 1)
        rows.append(
            _row(
                f"fp{seed}",
                seed,
                bits="FP32",
                quant="fp32",
                **common,
                **{"quant.method": "float"},
                test_error=0.020 + jitter,
            )
        )
        for p, u in ((10, 12), (20, 20), (6, 12)):
            for fmt, err in (
                ("dynamic_fixed", dfxp_error if p != 6 else 0.03),
                ("fixed", 0.025 if p == 20 else 0.8),
            ):
                rows.append(
                    _row(
                        f"{fmt}{p}{u}-{seed}",
                        seed,
                        bits=str(p),
                        quant=fmt,
                        **common,
                        **{"quant.method": fmt, "quant.prop_bits": p, "quant.update_bits": u},
                        test_error=err + jitter * (seed % 2),
                    )
                )
    return pd.DataFrame(rows).assign(gap_acc=0.0, train_ce=0.1)


def test_low_precision_claims() -> None:
    claims = {c["claim"]: c for c in check_claims(low_precision_runs(12))}
    assert claims["dynamic_fixed_10_12_matches_float"]["verdict"] == "pass"
    group = claims["dynamic_fixed_10_12_matches_float"]["groups"][0]
    assert group["mean"] == pytest.approx(0.001, abs=3e-4) and group["n"] == 12
    assert claims["fixed_20_20_matches_float"]["verdict"] == "pass"  # 0.005 above float, inside ±0.01
    beats = claims["dynamic_fixed_beats_fixed"]
    assert beats["verdict"] == "pass" and (beats["in_direction"], beats["n_pairs"]) == (36, 36)
    worse = {c["claim"]: c for c in check_claims(low_precision_runs(12, dfxp_error=0.05))}
    assert worse["dynamic_fixed_10_12_matches_float"]["verdict"] == "fail"
    # two seeds (the embedded default): a mean difference inside the tolerance is no equivalence
    two = {c["claim"]: c for c in check_claims(low_precision_runs(2))}
    assert two["dynamic_fixed_10_12_matches_float"]["verdict"] == "inconclusive"
    assert two["fixed_20_20_matches_float"]["verdict"] == "inconclusive"
    # fixed-point runs that never trained (degenerate) are the 2014 result at that width: they are compared;
    # diverged runs (no metrics) are left out and counted
    runs = low_precision_runs(12)
    runs.loc[runs["run_id"].str.startswith("fixed6"), "status"] = "degenerate"
    runs.loc[runs["run_id"].str.startswith("fixed2020"), "status"] = "diverged"
    beats = {c["claim"]: c for c in check_claims(runs)}["dynamic_fixed_beats_fixed"]
    assert beats["n_pairs"] == 24 and len(beats["excluded"]["status diverged"]) == 12
    assert {f"fixed612-{s}" for s in range(12)} <= set(beats["run_ids"].split())


def test_default_config_defines_the_paper_experiments() -> None:
    config = load_config(REPO / "config" / "default.yaml")
    runs = expand_config(config)
    bc = runs["binaryconnect"]
    labels = binaryconnect_method(
        pd.DataFrame(
            [
                {
                    "quant.method": r.spec["quant"]["method"],
                    "quant.stochastic": r.spec["quant"].get("stochastic", False),
                    "model.dropout": r.spec["model"]["dropout"],
                    "quant": "",
                }
                for r in bc
            ]
        )
    )
    assert labels.value_counts().to_dict() == {
        "No regularizer": 5,
        "BC (det.)": 5,
        "BC (stoch.)": 5,
        "50% Dropout": 5,
    }
    assert all(
        r.spec["train"]["loss"] == "sq_hinge" and r.spec["optim"]["schedule"] == "exponential" for r in bc
    )
    lp = expand_config({**config, "scope": "full"})["lowprec"]
    methods = pd.Series([r.spec["quant"]["method"] for r in lp]).value_counts().to_dict()
    assert methods == {
        "float": 2,
        "half": 2,
        "fixed": 28,
        "dynamic_fixed": 28,
    }  # float/half: one run per seed
    main = runs["lowprec"]  # the main job: 4 of the 7 propagation bit widths, every format and update width
    assert len(main) == 2 + 2 + 2 * 2 * 4 * 2 and {r.run_id for r in main} <= {r.run_id for r in lp}
    assert {r.spec["quant"].get("prop_bits") for r in main} == {None, 4, 10, 12, 20}
    assert {
        (r.spec["quant"]["prop_bits"], r.spec["quant"]["update_bits"])
        for r in lp
        if r.spec["quant"]["method"] == "dynamic_fixed"
    } >= {(10, 12), (20, 20)}
    assert config["experiments"]["lowprec"]["paper_tables"] == ["low_precision"]


def test_paper_scale_configs_dry_run(tmp_path) -> None:
    out = dry_run(
        tmp_path, REPO / "config/paper/binaryconnect.yaml", REPO / "config/paper/low_precision.yaml"
    )
    assert "binaryconnect_table" in out and "low_precision_table" in out
    planned = sum(len(ids.split(",")) for ids in re.findall(r"qgen shard \S+ --run-ids (\S+)", out))
    assert planned == 60 and re.search(r"^prepare_data\s+3$", out, re.M)  # 60 runs in shard jobs


@pytest.mark.parametrize("name", ["binaryconnect.yaml", "low_precision.yaml"])
def test_paper_scale_configs_validate(name) -> None:
    config = load_config(REPO / "config" / "paper" / name)
    runs = all_runs(config)
    assert len(runs) >= 3
    datasets = {r.spec["data"]["name"] for r in runs.values()}
    assert datasets <= {"mnist", "cifar10", "svhn"}


def test_new_options_keep_old_run_ids_and_spelled_out_defaults_do_not_split_ids() -> None:
    assert run_id(make_spec()) == "digits-mlp2x32-lsq_w4a4-26f53062"  # frozen before issue 5
    plain = make_spec(quant={"method": "float"})
    spelled = make_spec(
        quant={"method": "float"},
        model={"init": "torch", "input_dropout": 0, "bn_eps": 1e-5},
        train={"loss": "ce"},
    )
    assert run_id(plain) == run_id(spelled)
    bc = make_spec(quant={"method": "binary", "stochastic": True})
    assert bc["quant"] == {
        "method": "binary",
        "stochastic": True,
        "H": 1,
        "lr_scale": "glorot",
        "test_time": "real",
        "first_layer": "same",
        "last_layer": "same",
    }
    assert "-bc_stoch-" in run_id(bc)
    dfxp = make_spec(
        model={"name": "maxout"}, quant={"method": "dynamic_fixed", "prop_bits": 10, "update_bits": 12}
    )
    assert "-dfxp_p10u12-" in run_id(dfxp) and dfxp["model"]["pieces"] == 5


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"model": {"name": "maxout"}, "quant": {"method": "lsq"}},
            "model maxout is computed in a number format",
        ),
        ({"quant": {"method": "fixed", "prop_bits": 8, "update_bits": 8}}, "needs model.name: maxout"),
        (
            {"model": {"name": "maxout"}, "quant": {"method": "fixed"}},
            "needs quant.prop_bits and quant.update_bits",
        ),
        ({"quant": {"method": "binary", "first_layer": "8bit"}}, "not 8bit"),
        ({"optim": {"schedule": "exponential"}}, "needs optim.lr_final"),
    ],
)
def test_incompatible_options_are_rejected_with_the_reason(overrides, message) -> None:
    config = yaml.safe_load((REPO / "config" / "default.yaml").read_text())
    exp = copy.deepcopy(config["experiments"]["default"])
    for section, values in overrides.items():
        exp["base"][section] = {**exp["base"][section], **values}
    exp["grid"] = {}
    config["experiments"] = {"bad": exp}
    with pytest.raises(ConfigError, match=message):
        all_runs(validate_config(config))
