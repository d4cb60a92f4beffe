"""The measure cache (``measures.cache.json`` beside model.pt: written by `qgen train --measure-cache`,
adopted by `qgen measure --cache`). It is not a workflow file, so nothing may trip on it: it is adopted only
for the same measure settings and the same model file (sha256); a cache of other settings, of an older
model or an unreadable one is measured afresh and removed; a training job removes the cache of the model
file it replaces before it starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qgen import cli, runner
from qgen import io as qio
from tests.conftest import make_spec, train_command

SETTINGS = json.dumps({"examples": 200}, sort_keys=True)
CACHED = {"run_id": "r", "status": "completed", "measures": {"cached": 1.0}}
FRESH = {"run_id": "r", "status": "completed", "measures": {"fresh": 1.0}}


def measure(monkeypatch, run: Path, settings: str = SETTINGS) -> dict:
    """`qgen measure --cache` in this process; measuring afresh returns FRESH (nothing is computed)."""
    monkeypatch.setattr(runner, "measure_model_file", lambda *args, **kwargs: FRESH)
    out = run / "measures.json"
    argv = ["measure", "--model", str(run / "model.pt"), "--data-meta", str(run / "meta.json")]
    argv += ["--settings", settings, "--cache", str(run / "measures.cache.json"), "--out", str(out)]
    assert cli.main([*argv, "--device", "cpu"]) == 0
    return qio.read_json(out)


@pytest.fixture
def cached_run(tmp_path: Path) -> Path:
    """A run folder with a model file and a valid cache of its measures under SETTINGS."""
    (tmp_path / "model.pt").write_bytes(b"the model file")
    key = runner.cache_key(SETTINGS, str(tmp_path / "model.pt"))
    qio.write_json(tmp_path / "measures.cache.json", {"key": key, "record": CACHED})
    return tmp_path


def test_a_cache_of_these_settings_and_this_model_is_adopted(monkeypatch, capsys, cached_run) -> None:
    assert measure(monkeypatch, cached_run) == CACHED
    assert "measures computed by the training job adopted" in capsys.readouterr().err
    assert not (cached_run / "measures.cache.json").exists()


def test_a_cache_of_other_settings_is_measured_afresh(monkeypatch, capsys, cached_run) -> None:
    assert measure(monkeypatch, cached_run, json.dumps({"examples": 300})) == FRESH
    assert "measure cache is stale" in capsys.readouterr().err
    assert not (cached_run / "measures.cache.json").exists()


def test_a_cache_of_an_older_model_file_is_measured_afresh(monkeypatch, cached_run) -> None:
    (cached_run / "model.pt").write_bytes(b"the model file of a rerun")  # same path, new training
    assert measure(monkeypatch, cached_run) == FRESH
    assert not (cached_run / "measures.cache.json").exists()


@pytest.mark.parametrize("text", ["{not json", "[]", '{"key": {}}', '{"record": {}}'])
def test_an_unreadable_cache_is_measured_afresh_not_an_error(monkeypatch, cached_run, text) -> None:
    (cached_run / "measures.cache.json").write_text(text)
    assert measure(monkeypatch, cached_run) == FRESH
    assert not (cached_run / "measures.cache.json").exists()


def test_a_training_job_removes_the_cache_of_the_model_it_replaces(
    monkeypatch, tmp_path, digits_dir, cached_run
) -> None:
    """Even when it does not measure (no $QGEN_MEASURES), a training job that writes a new model.pt
    leaves no cache of the old one behind it."""
    monkeypatch.setenv("QGEN_MEASURES", "")
    monkeypatch.setenv("QGEN_RUNTIME", "")
    record = json.dumps({"run_id": "digits-mlp2x16-lsq_w4a4-00000000", "spec": make_spec(
        model={"width": 16}, train={"max_epochs": 1}
    )})  # fmt: skip
    argv = train_command(record, str(digits_dir / "meta.json"), str(cached_run), checkpoint_every=100)[3:]
    assert cli.main([*argv, "--measure-cache", str(cached_run / "measures.cache.json")]) == 0
    assert (cached_run / "metrics.json").exists() and not (cached_run / "measures.cache.json").exists()
