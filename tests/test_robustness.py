"""The robustness step (issue 18): corrupted test sets evaluated per run in its shard (equal to the per-run
command), its state decided by content, the relative corruption error, the paired table, the claim and the
LaTeX colouring."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from qgen import io as qio
from qgen.analysis.robustness import robustness_claim, robustness_table, with_relative_error
from qgen.data.corrupted import load_corrupted, prepare_corrupted
from qgen.measures.robustness import array_batches, robustness_of, summarize
from qgen.report.robustness import latex_cell, to_latex
from qgen.shards import DONE, ROBUSTNESS, canonical_settings, data_checksum, robustness_key, run_state
from tests.conftest import REPO
from tests.test_worker import IDS as WORKER_IDS
from tests.test_worker import SETTINGS, env, make_project, shard_command
from tests.test_worker import SPECS as WORKER_SPECS

ROBUST = {
    "corruptions": ["gaussian_noise", "contrast"],
    "severities": [1, 5],
    "examples": None,
    "batch_size": 64,
}
CORRUPTED = {"corruptions": ["gaussian_noise", "contrast"], "severities": [1, 5], "seed": 0,
             "small_images": "residual", "frost_textures": None}  # fmt: skip
OPTS = {"alpha": 0.05, "min_pairs": 3}


def _corrupted(project: Path, params: dict = CORRUPTED) -> Path:
    out = project / "data" / "corrupted" / "digits"
    prepare_corrupted(params, project / "data" / "prepared" / "digits", out)
    return out / "meta.json"


def _shard(project: Path, robust: dict = ROBUST) -> subprocess.CompletedProcess:
    cmd = shard_command(WORKER_IDS[:2])
    cmd += ["--robustness", json.dumps(robust), "--corrupted-meta", "data/corrupted/digits/meta.json"]
    return subprocess.run(cmd, cwd=project, env=env(), capture_output=True, text=True)


@pytest.fixture(scope="module")
def robust_project(tmp_path_factory, digits_dir) -> Path:
    project = make_project(tmp_path_factory.mktemp("robust"), digits_dir, WORKER_SPECS[:2])
    _corrupted(project)
    proc = _shard(project)
    assert proc.returncode == 0, proc.stderr
    return project


def test_the_shard_evaluates_each_run_like_the_per_run_command(robust_project: Path, tmp_path: Path) -> None:
    rid = WORKER_IDS[1]
    run = robust_project / "results" / "runs" / rid
    record = qio.read_json(run / "robustness.json")
    assert set(record["results"]) == {"gaussian_noise", "contrast"}
    assert set(record["results"]["contrast"]) == {"1", "5"}
    assert (
        record["provenance"]["model_sha256"]
        == qio.read_json(run / "metrics.json")["provenance"]["model_sha256"]
    )
    out = tmp_path / "alone.json"
    proc = subprocess.run(
        [sys.executable, "-m", "qgen", "robustness", "--model", str(run / "model.pt"), "--data-meta",
         "data/prepared/digits/meta.json", "--corrupted-meta", "data/corrupted/digits/meta.json",
         "--settings", json.dumps(ROBUST), "--out", str(out)],
        cwd=robust_project, env=env(), capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    alone = qio.read_json(out)
    assert alone["results"] == record["results"] and alone["summary"] == record["summary"]
    # severity 5 of gaussian noise hurts more than severity 1, and the mean is the mean of the cells
    cells = record["results"]["gaussian_noise"]
    assert cells["5"]["acc"] <= cells["1"]["acc"]
    flat = [c["acc"] for per in record["results"].values() for c in per.values()]
    assert record["summary"]["acc"] == pytest.approx(np.mean(flat))


def test_other_robustness_settings_re_evaluate_without_retraining(robust_project: Path, tmp_path) -> None:
    import shutil

    project = tmp_path / "p"
    shutil.copytree(robust_project, project)
    models = {rid: (project / "results/runs" / rid / "model.pt").read_bytes() for rid in WORKER_IDS[:2]}
    proc = _shard(project, {**ROBUST, "severities": [5]})
    assert proc.returncode == 0, proc.stderr
    assert "0 to train, 0 to measure, 2 to evaluate on corrupted data" in proc.stderr
    for rid, content in models.items():
        assert (project / "results/runs" / rid / "model.pt").read_bytes() == content
        assert set(
            qio.read_json(project / "results/runs" / rid / "robustness.json")["results"]["contrast"]
        ) == {"5"}
    again = _shard(project, {**ROBUST, "severities": [5]})
    assert "0 to evaluate on corrupted data, 2 done" in again.stderr


def test_robustness_state_is_decided_by_content(robust_project: Path) -> None:
    rid = WORKER_IDS[0]
    run = robust_project / "results" / "runs" / rid
    checksum = data_checksum(robust_project / "data/prepared/digits/meta.json")
    settings = canonical_settings(json.loads(SETTINGS))
    meta = robust_project / "data/corrupted/digits/meta.json"
    key = robustness_key(json.dumps(ROBUST), meta)
    assert run_state(run, rid, checksum, settings, key) == DONE
    assert run_state(run, rid, checksum, settings, None) == DONE  # no robustness step: done
    assert run_state(run, rid, checksum, settings, (key[0], "other")) == ROBUSTNESS  # another corrupted set
    other = robustness_key(json.dumps({**ROBUST, "examples": 10}), meta)
    assert run_state(run, rid, checksum, settings, other) == ROBUSTNESS
    assert run_state(run, "other-id", checksum, settings, key) != DONE


def test_the_corrupted_set_records_its_settings_and_array_batches_read_it_in_order(
    robust_project: Path,
) -> None:
    meta = qio.read_json(robust_project / "data/corrupted/digits/meta.json")
    assert meta["params"] == CORRUPTED and meta["severities"] == [1, 5]
    data = load_corrupted(robust_project / "data/corrupted/digits")
    images, labels = data.images("contrast", 5), data.labels(5)
    batches = list(array_batches(images, labels, lambda x: x.float(), torch.device("cpu"), 100))
    assert [len(b[1]) for b in batches] == [100] * (len(labels) // 100) + [len(labels) % 100]
    x = torch.cat([b[0] for b in batches])
    assert torch.equal(x, torch.from_numpy(np.asarray(images).transpose(0, 3, 1, 2)).float())
    # a model that predicts the label from the pixels it sees: robustness_of gives its accuracy per cell
    model = _Oracle(labels)
    body = robustness_of(model, data, lambda x: x.float(), torch.device("cpu"), ROBUST)
    assert body["summary"]["acc"] == pytest.approx(1.0) and body["summary"]["contrast.s5.acc"] == 1.0


class _Oracle(torch.nn.Module):
    """Logits that are right for the images in order (a counter over the batches)."""

    def __init__(self, labels: np.ndarray) -> None:
        super().__init__()
        self.labels, self.pos = torch.as_tensor(np.asarray(labels)), 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.labels[self.pos : self.pos + len(x)]
        self.pos = (self.pos + len(x)) % len(self.labels)
        return torch.nn.functional.one_hot(y, 10).float() * 10


# ---- over a runs table ----------------------------------------------------------------------------


def _runs(deltas: dict[str, float], widths=(32, 64), seeds=(0, 1, 2, 3, 4)) -> pd.DataFrame:
    """A runs table: float and quantized runs (bits -> accuracy shift), per width and seed."""
    rows = []
    rng = np.random.default_rng(0)
    for width in widths:
        for seed in seeds:
            base = 0.8 + 0.01 * rng.standard_normal()
            for bits, delta in {"FP32": 0.0, **deltas}.items():
                method = "float" if bits == "FP32" else "lsq"
                w = None if bits == "FP32" else int(bits)
                row = {
                    "run_id": f"r-{bits}-{width}-{seed}", "status": "completed", "bits": bits, "seed": seed,
                    "model.width": width, "quant.method": method, "quant.weight_bits": w, "quant.act_bits": w,
                    "precision.weight_bits": w, "precision.act_bits": w, "fit.stop_reason": "max_epochs",
                    "train.target_ce": None,
                }  # fmt: skip
                for c in ("gaussian_noise", "fog"):
                    for s in (1, 2):
                        row[f"robust.{c}.s{s}.acc"] = base + delta - 0.05 * s
                row["robust.acc"] = np.mean([row[k] for k in row if k.endswith(".acc") and ".s" in k])
                rows.append(row)
    return pd.DataFrame(rows)


def test_the_table_pairs_each_quantized_run_with_its_float_twin() -> None:
    df = _runs({"8": 0.01, "4": -0.02})
    table = robustness_table(df)
    assert set(table["bits"]) == {"8", "4"} and set(table["corruption"]) == {"gaussian_noise", "fog"}
    four = table[(table["bits"] == "4") & (table["corruption"] == "fog")].iloc[0]
    assert four["d_s1"] == pytest.approx(-0.02) and four["d_mean"] == pytest.approx(-0.02) and four["n"] == 10
    ids = set(four["run_ids"].split())
    assert ids == {f"r-{b}-{w}-{s}" for b in ("FP32", "4") for w in (32, 64) for s in range(5)}
    # a quantized run whose width has no float run is not paired
    lonely = df[~((df["bits"] == "FP32") & (df["model.width"] == 64))]
    assert robustness_table(lonely).iloc[0]["n"] == 5


def test_relative_corruption_error_is_one_for_float_and_the_error_ratio_for_quantized() -> None:
    df = with_relative_error(_runs({"4": -0.02}))
    assert (df.loc[df["bits"] == "FP32", "robust.rel_ce"] == 1.0).all()
    row = df[(df["bits"] == "4")].iloc[0]
    twin = df[
        (df["bits"] == "FP32") & (df["model.width"] == row["model.width"]) & (df["seed"] == row["seed"])
    ]
    err = lambda r, c: sum(1 - r[f"robust.{c}.s{s}.acc"] for s in (1, 2))  # noqa: E731
    expected = np.mean([err(row, c) / err(twin.iloc[0], c) for c in ("gaussian_noise", "fog")])
    assert row["robust.rel_ce"] == pytest.approx(expected) and row["robust.rel_ce"] > 1


def test_the_claim_passes_when_quantized_runs_are_more_robust_and_fails_otherwise() -> None:
    assert robustness_claim(_runs({"8": 0.01, "4": 0.02}), OPTS)["verdict"] == "pass"
    claim = robustness_claim(_runs({"8": 0.01, "4": -0.02}), OPTS)
    assert claim["verdict"] == "fail" and claim["n_pairs"] == 20
    assert robustness_claim(_runs({"4": 0.02}, seeds=(0,)), OPTS)["verdict"] == "inconclusive"  # 2 pairs


def test_latex_cells_are_coloured_by_the_sign_of_the_difference() -> None:
    assert latex_cell(0.012, 0.003).startswith("\\cellcolor{tab4_g}+1.2")
    assert latex_cell(-0.012, np.nan).startswith("\\cellcolor{tab4_r}-1.2")
    assert "cellcolor" not in latex_cell(0.0, 0.1) and latex_cell(np.nan, np.nan) == "--"
    tex = to_latex(robustness_table(_runs({"4": -0.02})))
    assert (
        "\\definecolor{tab4_r}" in tex
        and tex.count("tab4_r}-2.0") == 6  # 2 corruptions x (2 severities + mean)
        and "tab4_g}" not in tex.split("tabular")[1]
    )
    assert "% run ids: r-4-32-0" in tex or "% run ids: r-FP32-32-0" in tex


def test_summarize_means_over_cells_and_per_corruption() -> None:
    results = {
        "a": {"1": {"acc": 0.9, "ce": 0.1}, "2": {"acc": 0.7, "ce": 0.3}},
        "b": {"1": {"acc": 0.5, "ce": 1}},
    }
    s = summarize(results)
    assert s["acc"] == pytest.approx(0.7) and s["a.acc"] == pytest.approx(0.8) and s["b.s1.acc"] == 0.5
    assert s["error"] == pytest.approx(0.3)


def test_the_default_config_evaluates_the_qgen_experiments() -> None:
    from qgen.config import load_config
    from qgen.experiments import robust_experiments

    config = load_config(REPO / "config" / "default.yaml")
    assert robust_experiments(config) == ["default", "default_fixed", "grid"]


def test_imagenet_c_folders_are_evaluated_per_cell_with_a_centre_crop_only(tmp_path: Path) -> None:
    from PIL import Image

    from qgen.data.corrupted import prepare_released_imagenet_c
    from qgen.measures.robustness import robustness_of_folders

    for corruption in ("fog", "snow"):  # 8x8 JPEGs whose red value tells the class (0, 100, 200)
        for s in (1, 2):
            for k, wnid in enumerate(("n01", "n02", "n03")):
                folder = tmp_path / "inc" / corruption / str(s) / wnid
                folder.mkdir(parents=True)
                for i in range(k + 1):
                    Image.new("RGB", (8, 8), (100 * k, 10 * i, 10 * s)).save(folder / f"img{i}.JPEG")
    prepare_released_imagenet_c(tmp_path / "inc", tmp_path / "set", ["fog", "snow"], (1, 2))
    data = load_corrupted(tmp_path / "set")

    class RedIsClass(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            k = (x[:, 0].float().mean(dim=(1, 2)) / 100).round().clamp(0, 2).long()
            return torch.nn.functional.one_hot(k, 3).float()

    settings = {"corruptions": "all", "severities": [1, 2], "examples": None, "batch_size": 4}
    body = robustness_of_folders(
        RedIsClass(), data, lambda x: x, torch.device("cpu"), settings, image_size=8, workers=0
    )
    assert set(body["results"]) == {"fog", "snow"} and body["summary"]["acc"] == 1.0
    limited = robustness_of_folders(
        RedIsClass(), data, lambda x: x, torch.device("cpu"), {**settings, "examples": 2}, 8, workers=0
    )
    assert limited["results"]["fog"]["1"]["acc"] == 1.0  # the first 2 images of the cell
