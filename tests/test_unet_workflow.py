"""The U-Net experiment through training, evaluation, measures, the paper table and the claim (issue 19)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from qgen.analysis.claims import check_claims
from qgen.analysis.unet import PAPER_DROPS, unet_claims
from qgen.config import ConfigError, load_config, measures_schema, run_spec_schema, validate
from qgen.data import prepare
from qgen.experiments import expand_experiment, normalize_spec
from qgen.metrics import Objective, dice_score, objective_for, split_metrics
from qgen.report.unet import unet_table, write_unet_outputs
from qgen.runner import RUNTIME_DEFAULTS, open_data, train_files
from tests.conftest import REPO, TINY_MEASURES

EM = {"n_train": 12, "n_test": 6, "size": 16, "seed": 0}
W4A6 = {"method": "qif", "weight_format": [0, 4], "act_format": [6, 0], "variant": "em"}


def _spec(quant: dict, **train) -> dict:
    spec = {
        "data": {"name": "em_synth", **EM},
        "model": {"name": "unet", "depth": 1, "width": 4},
        "quant": quant,
        "optim": {"name": "adam", "lr": 0.01, "batch_size": 4, "schedule": "constant"},
        "train": {"max_epochs": 3, "target_ce": None, "loss": "bce_dice", **train},
        "seed": 0,
    }
    return normalize_spec(validate(copy.deepcopy(spec), run_spec_schema(), where="test spec"))


@pytest.fixture(scope="module")
def em_meta(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("em_synth")
    prepare("em_synth", dict(EM), out)
    return out / "meta.json"


@pytest.fixture(scope="module")
def trained(em_meta: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("unet_run")
    settings = json.dumps(validate(copy.deepcopy(TINY_MEASURES), measures_schema()))
    record = {"spec": _spec(W4A6), "run_id": "unet-w4a6"}
    train_files(
        record, em_meta, out / "model.pt", out / "train_log.csv", out / "metrics.json",
        dict(RUNTIME_DEFAULTS), torch.device("cpu"), settings_json=settings,
        measures_path=out / "measures.json",
    )  # fmt: skip
    return out


def test_a_segmentation_run_trains_and_its_metrics_have_dice(trained: Path, em_meta: Path) -> None:
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["fit"]["stop_reason"] == "max_epochs"
    m = metrics["metrics"]
    for key in ("train_dice", "test_dice", "train_loss", "test_loss", "gap_dice", "gap_loss", "train_acc"):
        assert math.isfinite(m[key]), key
    assert 0 <= m["test_dice"] <= 1 and 0 <= m["train_acc"] <= 1
    assert m["gap_dice"] == pytest.approx(m["train_dice"] - m["test_dice"])
    assert m["gap_loss"] == pytest.approx(m["test_loss"] - m["train_loss"])  # the training loss's gap
    log = pd.read_csv(trained / "train_log.csv")
    assert {"train_dice", "train_loss"} <= set(log.columns) and len(log) == 3
    assert log["train_loss"].iloc[-1] < log["train_loss"].iloc[0]  # it learned something
    # the recorded test dice is the one recomputed from the model file
    from qgen.models import model_from_payload, read_model_file

    payload = read_model_file(trained / "model.pt")
    data = open_data(em_meta, payload["spec"], torch.device("cpu"))
    model = model_from_payload(payload, data.input_shape, data.num_classes, "cpu")
    with torch.no_grad():
        x, y = next(iter(data.test.batches(len(data.test))))
        expected = float(dice_score(model.eval()(x), y).mean())
    assert m["test_dice"] == pytest.approx(expected, abs=1e-9)


def test_measures_run_on_the_unet_with_dice_searches_and_activation_sites(trained: Path) -> None:
    body = json.loads((trained / "measures.json").read_text())
    assert body["status"] == "completed"
    assert body["objective"] == {
        "task": "segmentation",
        "score": "dice",
        "loss": "bce_dice",
        "threshold": 0.5,
    }
    m = body["measures"]
    assert m["bn.folded"] == 0 and m["bn.unfolded"] > 0  # conv -> ReLU -> BN: the unfolded model is measured
    for key in ("pacbayes.sigma", "sharpness.alpha", "hessian.trace", "norm.margin", "noise.act.var_ratio"):
        assert m[key] is not None and math.isfinite(m[key]), key
    sites = [r for r in body["layers"] if r.get("site")]
    assert sites and all(r["act"]["bits"] == 6 for r in sites)  # a6.0 at every activation site
    # each search step's "accuracy" is a dice in [0, 1]
    assert all(0 <= s["accuracy"] <= 1 for s in body["searches"]["pacbayes"]["steps"])


def test_split_metrics_are_pixel_accuracy_bce_and_dice() -> None:
    logits = torch.tensor([[[[2.0, -1.0], [0.5, -3.0]]], [[[-2.0, -2.0], [-2.0, -2.0]]]])
    masks = torch.tensor([[[[1, 0], [0, 0]]], [[[0, 0], [0, 1]]]], dtype=torch.uint8)
    objective = Objective("segmentation", "dice")
    got = split_metrics(lambda x: x, [(logits, masks)], objective)
    # image 1: pred [1,0,1,0] vs [1,0,0,0]: acc 3/4, dice 2/3; image 2: nothing vs one pixel: acc 3/4, dice 0
    assert got["acc"] == pytest.approx(0.75)
    assert got["dice"] == pytest.approx((2 / 3 + 0) / 2)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits.double(), masks.double())
    assert got["ce"] == pytest.approx(float(bce))
    with pytest.raises(ValueError, match="segmentation run needs"):
        Objective("segmentation", "ce")
    with pytest.raises(ValueError, match="threshold"):
        Objective("segmentation", "dice", threshold=1.0)
    strict = Objective("segmentation", "dice", threshold=0.999)
    assert split_metrics(lambda x: x, [(logits, masks)], strict)["dice"] < got["dice"] + 1e-12


def test_dice_threshold_is_a_run_spec_key_and_the_default_does_not_split_ids() -> None:
    assert "dice_threshold" not in _spec(W4A6, dice_threshold=0.5)["train"]
    spec = _spec(W4A6, dice_threshold=0.999)
    assert spec["train"]["dice_threshold"] == 0.999
    assert objective_for(spec, "segmentation").threshold == 0.999
    assert not objective_for({"train": {}}, "classification").segmentation


def test_a_segmentation_run_with_a_ce_target_is_refused(em_meta: Path, tmp_path: Path) -> None:
    from qgen.train import train_run

    spec = _spec(W4A6, target_ce=0.01)
    data = open_data(em_meta, spec, torch.device("cpu"))
    with pytest.raises(ValueError, match="target_ce: null"):
        train_run(spec, data, tmp_path, dict(RUNTIME_DEFAULTS), torch.device("cpu"))


# ---- the table and the claim on constructed runs tables ---------------------------------------------------


def _runs(drops_points: list[float], float_dice: float = 0.9, dataset: str = "em_synth") -> pd.DataFrame:
    rows = []
    for seed, drop in enumerate(drops_points):
        base = {"experiment": "unet", "status": "completed", "seed": seed, "data.name": dataset,
                "model.name": "unet", "model.width": 4, "optim.lr": 0.001, "train.max_epochs": 8}  # fmt: skip
        rows.append({**base, "run_id": f"fp-{seed}", "quant.method": "float", "test_dice": float_dice,
                     "train_dice": float_dice + 0.01})  # fmt: skip
        rows.append({**base, "run_id": f"q-{seed}", "quant.method": "qif", "quant.weight_format": "0,4",
                     "quant.act_format": "6,0", "quant.variant": "em", "test_dice": float_dice - drop / 100,
                     "train_dice": float_dice})  # fmt: skip
        rows.append({**base, "run_id": f"q2-{seed}", "quant.method": "qif", "quant.weight_format": "0,2",
                     "quant.act_format": "4,0", "quant.variant": "em", "test_dice": float_dice - 0.2,
                     "train_dice": float_dice})  # fmt: skip
    return pd.DataFrame(rows)


OPT = {"alpha": 0.05, "unet_margin": 2.0, "unet_min_pairs": 3}


def test_the_table_shows_dice_the_paired_drop_and_the_paper_delta(tmp_path: Path) -> None:
    df = _runs([1.0, 2.0, 3.0])
    table = unet_table(df)
    assert list(table["precision"]) == ["float", "a6.0/w0.4", "a4.0/w0.2"]  # float first, then by weight bits
    w4a6 = table[table["precision"] == "a6.0/w0.4"].iloc[0]
    assert w4a6["drop_mean"] == pytest.approx(0.02) and w4a6["drop_std"] == pytest.approx(0.01)
    assert w4a6["paper drop"] == f"{PAPER_DROPS['EM']:.2f} (EM)" and w4a6["n"] == 3
    assert table[table["precision"] == "a4.0/w0.2"].iloc[0]["paper drop"] == "NF"
    assert w4a6["run_ids"] == "q-0 q-1 q-2"
    paths = write_unet_outputs(df, tmp_path / "t", tmp_path / "f", "unet", "em_synth")
    assert {p.suffix for p in paths} == {".md", ".csv", ".tex", ".png", ".pdf"}
    md = (tmp_path / "t" / "unet.md").read_text()
    assert "SYNTHETIC" in md and "2.00 ± 1.00" in md and "90.00" in md


@pytest.mark.parametrize(
    ("drops", "verdict"),
    [
        ([1.0, 1.5, 2.0], "pass"),  # well under 2.21 + 2
        ([9.0, 10.0, 11.0], "fail"),  # far above it
        ([0.0, 4.0, 12.0], "inconclusive"),  # the interval straddles it
        ([1.0, 1.5], "inconclusive"),  # too few pairs
    ],
)
def test_the_claim_passes_fails_and_is_inconclusive(drops: list[float], verdict: str) -> None:
    (claim,) = unet_claims(_runs(drops), OPT)
    assert claim["claim"] == "w4a6_drop_matches_paper" and claim["verdict"] == verdict
    assert claim["paper_drop"] == 2.21 and claim["n_pairs"] == len(drops)
    assert "SYNTHETIC" in claim["data_note"]
    (group,) = claim["groups"]
    assert group["mean"] == pytest.approx(np.mean(drops))
    if len(drops) >= 2:
        assert group["ci"][0] < group["mean"] < group["ci"][1]


def test_the_claim_is_per_dataset_and_enters_check_claims() -> None:
    df = pd.concat([_runs([1.0, 1.0, 1.0]), _runs([5.0, 5.5, 6.0], dataset="spinal_gm")], ignore_index=True)
    df["run_id"] = df["run_id"] + "-" + df["data.name"]
    claims = [c for c in check_claims(df, OPT) if c["claim"] == "w4a6_drop_matches_paper"]
    by_set = {c["dataset"]: c for c in claims}
    assert by_set["em_synth"]["verdict"] == "pass"
    assert by_set["spinal_gm"]["paper_drop"] == 0.57 and by_set["spinal_gm"]["verdict"] == "fail"


# ---- the experiment --------------------------------------------------------------------------------------


def test_the_unet_experiment_expands_to_float_and_three_precisions_times_three_seeds() -> None:
    config = load_config(REPO / "config" / "default.yaml")
    exp = config["experiments"]["unet"]
    runs = expand_experiment("unet", exp, config)
    assert len(runs) == 12
    arms = {
        (
            r.spec["quant"]["method"],
            r.spec["quant"].get("variant"),
            tuple(r.spec["quant"].get("weight_format") or ()),
        )
        for r in runs
    }
    assert arms == {("float", None, ()), *{("qif", "em", (0, f)) for f in (8, 4, 2)}}
    assert {r.spec["seed"] for r in runs} == {0, 1, 2}
    assert all(r.spec["train"]["target_ce"] is None and r.spec["train"]["loss"] == "bce_dice" for r in runs)
    assert exp["paper_tables"] == ["unet"]


def test_an_unknown_loss_on_segmentation_is_refused() -> None:
    with pytest.raises((ConfigError, ValueError)):
        Objective("segmentation", "sq_hinge")


UNET_CONFIG = """
runtime: {device: cpu, checkpoint_every: 5}
measures:
  examples: 12
  pacbayes: {depth: 4, draws: 2}
  worst_case: {examples: 12, depth: 4, steps: 2}
  hessian: {examples: 12, max_probes: 10, power_iters: 10}
  noise: {examples: 12}
analysis: {bootstrap: 20, claims: {min_pairs: 2, unet_min_pairs: 2}}
datasets: {em_synth: {n_train: 12, n_test: 6, size: 16, seed: 0}}
experiments:
  unet:
    base:
      data: {name: em_synth}
      model: {name: unet, depth: 1, width: 4}
      quant: {method: float}
      optim: {name: adam, lr: 0.01, batch_size: 4, schedule: constant}
      train: {max_epochs: 2, target_ce: null, loss: bce_dice}
    variants:
      - {quant: {method: float}}
      - {quant: {method: qif, weight_format: [0, 4], act_format: [6, 0], variant: em}}
    seeds: [0, 1]
    paper_tables: [unet]
"""


@pytest.mark.slow
def test_the_unet_experiment_runs_through_the_workflow(tmp_path: Path) -> None:
    from tests.test_workflow import snakemake

    (tmp_path / "tiny.yaml").write_text(UNET_CONFIG)
    snakemake(tmp_path)
    for rel in ("results/unet/tables/unet.md", "figures/unet/dice_vs_bits.png", "reports/unet.html"):
        assert (tmp_path / rel).stat().st_size > 0, rel
    runs = pd.read_csv(tmp_path / "results/unet/runs.csv")
    assert len(runs) == 4 and runs["test_dice"].between(0, 1).all()
    claims = json.loads((tmp_path / "results/unet/claims.json").read_text())
    names = [c["claim"] for c in claims.get("claims", claims)]
    assert "w4a6_drop_matches_paper" in names
