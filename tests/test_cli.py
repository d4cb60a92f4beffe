"""The qgen command line: validation messages and exit codes."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def qgen(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qgen", *args], capture_output=True, text=True, cwd=REPO)


def test_validate_counts_runs_of_the_default_config() -> None:
    proc = qgen("validate", "config/default.yaml")
    assert proc.returncode == 0 and "default: 24 runs" in proc.stdout


def test_validate_reports_bad_config_with_exit_code_2(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "config/default.yaml").read_text().replace("lr: 0.05", "lr: fast"))
    proc = qgen("validate", str(bad))
    assert proc.returncode == 2
    assert "optim.lr: 'fast' is not of type 'number'" in proc.stderr


def test_spec_prints_the_canonical_spec_of_a_run() -> None:
    runs = qgen("runs", "config/default.yaml").stdout.splitlines()
    run_id = runs[1].split("\t")[0]
    proc = qgen("spec", "config/default.yaml", run_id)
    assert proc.returncode == 0 and f'"run_id": "{run_id}"' in proc.stdout
