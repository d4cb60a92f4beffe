"""Shared fixtures: a prepared copy of the digits data and small run specs."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from qgen.config import run_spec_schema, validate
from qgen.data import load_prepared, prepare
from qgen.experiments import normalize_spec

REPO = Path(__file__).resolve().parents[1]
DIGITS_PARAMS = {"test_fraction": 0.25, "split_seed": 0}
# fixtures that build a whole pipeline: a test that uses one is marked `slow`
PIPELINE_FIXTURES = {"built", "clone", "recorded", "slurm_cluster", "cluster_built"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if PIPELINE_FIXTURES & set(getattr(item, "fixturenames", ())) or item.get_closest_marker("slurm"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("digits")
    prepare("digits", dict(DIGITS_PARAMS), out)
    return out


@pytest.fixture(scope="session")
def digits_prepared(digits_dir: Path):
    """The prepared digits files as stored (uint8 pixels, meta.json)."""
    return load_prepared(digits_dir)


@pytest.fixture(scope="session")
def digits(digits_prepared):
    """The digits splits as a run reads them (qgen.data.run_data: normalized batches on the CPU)."""
    from qgen.data.run_data import open_run_data

    return open_run_data(digits_prepared, {})


def make_spec(**overrides: Any) -> dict[str, Any]:
    """A small valid run spec; ``overrides`` maps section → dict merged into that section."""
    spec: dict[str, Any] = {
        "data": {"name": "digits", **DIGITS_PARAMS},
        "model": {"name": "mlp", "depth": 2, "width": 32},
        "quant": {"method": "lsq", "weight_bits": 4, "act_bits": 4},
        "optim": {"name": "sgd", "lr": 0.05, "batch_size": 64},
        "train": {"max_epochs": 6, "target_ce": None},
        "seed": 0,
    }
    for key, value in overrides.items():
        if isinstance(value, dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    spec = validate(copy.deepcopy(spec), run_spec_schema(), where="test spec")
    return normalize_spec(spec)


@pytest.fixture
def spec_factory():
    return make_spec


def train_command(spec_json: str, meta: str, out: str, *, checkpoint_every: int) -> list[str]:
    """The `qgen train` command line of one run on CPU writing into the folder ``out``."""
    return [
        sys.executable, "-m", "qgen", "train", "--spec", spec_json, "--data-meta", meta,
        "--out-model", f"{out}/model.pt", "--out-log", f"{out}/train_log.csv",
        "--out-metrics", f"{out}/metrics.json", "--device", "cpu",
        "--checkpoint-every", str(checkpoint_every),
    ]  # fmt: skip


@pytest.fixture(scope="session")
def digits_run(digits):
    """The same as ``digits``."""
    return digits


#: the smallest measure settings that still run every measure (for names, records and plumbing, not values)
TINY_MEASURES: dict[str, Any] = {
    "examples": 32,
    "noise": {"examples": 16},
    "pacbayes": {"draws": 2, "depth": 2},
    "worst_case": {"examples": 16, "steps": 1, "depth": 2},
    "noise_model": {"draws": 2},
    "hessian": {"examples": 16, "max_probes": 2, "min_probes": 2, "power_iters": 2},
}


def dry_run(workdir: Path, *configfiles: Path, profile: str | None = None) -> str:
    """The output of ``snakemake -n`` of ``configfiles`` in ``workdir`` (with ``profiles/<profile>``);
    fails the test with the end of stderr if it does not succeed."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), "-n"]
    cmd += ["--profile", str(REPO / "profiles" / profile)] if profile else []
    cmd += ["--configfile", *map(str, configfiles)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr
