"""Audit one number: rebuild the run behind it from scratch and compare it with what was recorded.

``qgen audit RUN_ID`` (and the Snakemake target ``results/audit/<run_id>.json``) looks the run up in
the config, rebuilds it in an empty scratch directory with the project's own Snakefile
(``snakemake -s Snakefile -d <scratch> results/runs/<run_id>/{metrics,measures}.json``: data
preparation, training, evaluation and measures) under the runtime settings recorded with the run
(threads, compile, and its device when this machine has one), then compares every value of the rebuilt
``metrics.json`` and ``measures.json`` with the recorded files. Provenance (times, host, code
version) is printed for both sides, never compared.

- Both sides on CPU: values must be identical (a run is defined by its spec, and CPU builds are
  deterministic).
- Either side on CUDA: numbers agree when ``|a − b| <= CUDA_ATOL + CUDA_RTOL * max(|a|, |b|)``;
  integers, strings, booleans and nulls must still be identical.

Tables name the runs behind each row in a ``run_ids`` column: run ids separated by spaces, or a
reference to the experiment's runs table for rows computed over many runs (``runs.csv`` = every row of
``results/<experiment>/runs.csv``, ``runs.csv#status=completed`` = its completed runs);
``qgen.runs_table.resolve_run_ids`` turns either form into run ids.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from qgen import io as qio

#: relative tolerance when either side ran on CUDA (see the module docstring)
CUDA_RTOL = 1e-3
#: absolute tolerance when either side ran on CUDA
CUDA_ATOL = 1e-6
#: the files of a run that are compared
RUN_FILES = ("metrics.json", "measures.json")


class AuditError(RuntimeError):
    """The audit could not be carried out (unknown run, nothing recorded, rebuild failed)."""


# ---- comparison -----------------------------------------------------------------------------------


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves of a JSON record by dotted path (``metrics.test_acc``, ``layers[0].delta``)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list):
        out = {}
        for i, item in enumerate(value):
            out.update(flatten(item, f"{prefix}[{i}]"))
        return out if value else {prefix: []}
    return {prefix: value}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def values_agree(recorded: Any, rebuilt: Any, rtol: float, atol: float) -> bool:
    """Floats within ``atol + rtol * max(|a|, |b|)`` (exactly when both are 0); anything else equal."""
    floats = isinstance(recorded, float) or isinstance(rebuilt, float)
    if floats and _is_number(recorded) and _is_number(rebuilt):
        if rtol == 0 and atol == 0:
            return recorded == rebuilt
        return abs(recorded - rebuilt) <= atol + rtol * max(abs(recorded), abs(rebuilt))
    return type(recorded) is type(rebuilt) and recorded == rebuilt


def compare_records(
    recorded: dict[str, Any], rebuilt: dict[str, Any], rtol: float = 0.0, atol: float = 0.0
) -> tuple[int, list[dict[str, Any]]]:
    """Compare two result records, provenance aside: (values compared, differences)."""
    old = flatten({k: v for k, v in recorded.items() if k != "provenance"})
    new = flatten({k: v for k, v in rebuilt.items() if k != "provenance"})
    differences = []
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key, "<missing>"), new.get(key, "<missing>")
        if key in old and key in new and values_agree(a, b, rtol, atol):
            continue
        diff = abs(a - b) if _is_number(a) and _is_number(b) else None
        differences.append({"key": key, "recorded": a, "rebuilt": b, "abs_diff": diff})
    return len(old.keys() | new.keys()), differences


def _on_cuda(record: dict[str, Any]) -> bool:
    return str(record.get("provenance", {}).get("device", "cpu")).startswith("cuda")


def provenance_summary(record: dict[str, Any]) -> dict[str, Any]:
    """The provenance fields that say how a record was produced."""
    prov = record.get("provenance", {})
    return {
        "created": prov.get("created"),
        "host": prov.get("host"),
        "code": prov.get("code"),
        "device": prov.get("device"),
        "gpu": prov.get("gpu"),
        "torch_threads": prov.get("torch_threads"),
        "determinism": prov.get("determinism"),
        "runtime": prov.get("runtime"),
        "torch": prov.get("libraries", {}).get("torch"),
        "data_checksum": prov.get("data", {}).get("checksum"),
        "wall_seconds": prov.get("wall_seconds"),
    }


# ---- rebuild --------------------------------------------------------------------------------------


def bit_identity_expected(recorded: dict[str, Any], rebuilt: dict[str, Any]) -> dict[str, Any]:
    """Whether two builds of a run should agree bit for bit, from their provenance: both on CPU, the same
    torch version, and the same deterministic-algorithm setting, thread count and CPU instruction set
    (qgen.runtime.BIT_IDENTITY_KEYS); ``differs`` names what does not match (a record written before
    provenance carried ``determinism`` counts as unknown)."""
    from qgen.runtime import BIT_IDENTITY_KEYS

    a, b = recorded.get("provenance", {}), rebuilt.get("provenance", {})
    differs = []
    if _on_cuda(recorded) or _on_cuda(rebuilt):
        differs.append("device: CUDA")
    if a.get("libraries", {}).get("torch") != b.get("libraries", {}).get("torch"):
        differs.append("torch version")
    da, db = a.get("determinism"), b.get("determinism")
    if da is None or db is None:
        differs.append("determinism settings not recorded")
    else:
        differs += [key for key in BIT_IDENTITY_KEYS if da.get(key) != db.get(key)]
    return {"expected": not differs, "differs": differs}


def default_snakefile(root: str | Path = ".") -> Path:
    """The project's Snakefile: the one in ``root``, else the one of the qgen checkout."""
    local = Path(root) / "Snakefile"
    if local.exists():
        return local.resolve()
    from qgen.config import REPO_ROOT

    return REPO_ROOT / "Snakefile"


def scratch_config(config: dict[str, Any], recorded: dict[str, Any], device: str | None) -> dict[str, Any]:
    """``config`` with the runtime settings recorded with the run (the device if available)."""
    runtime = dict(config.get("runtime", {}))
    recorded_runtime = recorded.get("provenance", {}).get("runtime", {})
    for key in ("threads", "compile"):
        if key in recorded_runtime:
            runtime[key] = recorded_runtime[key]
    if device is None:  # the recorded device class; auto falls back to CPU without a GPU
        device = "auto" if _on_cuda(recorded) else "cpu"
    runtime["device"] = device
    return {**config, "runtime": runtime}


def rebuild(
    run_id: str, config: dict[str, Any], scratch: Path, snakefile: Path, cores: int, root: Path
) -> float:
    """Build the run's metrics.json and measures.json in ``scratch``; return the seconds it took."""
    scratch.mkdir(parents=True, exist_ok=True)
    raw = root / "data" / "raw"
    if raw.is_dir():  # source data is an input, not a product: share it read-only
        (scratch / "data").mkdir(exist_ok=True)
        (scratch / "data" / "raw").symlink_to(raw.resolve(), target_is_directory=True)
    config_path = scratch / "config.json"
    qio.write_json(config_path, config)
    targets = [f"results/runs/{run_id}/{name}" for name in RUN_FILES]
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(snakefile),
        "-d",
        str(scratch),
        "--cores",
        str(cores),
        *targets,
        "--configfile",
        str(config_path),
    ]
    log_path = scratch / "snakemake.log"
    t0 = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=scratch, check=False)
    if proc.returncode != 0:
        tail = "".join(log_path.read_text(encoding="utf-8").splitlines(keepends=True)[-30:])
        raise AuditError(f"rebuilding {run_id} failed ({' '.join(cmd)}):\n{tail}")
    return time.perf_counter() - t0


def audit_run(
    run_id: str,
    config: dict[str, Any],
    root: str | Path = ".",
    snakefile: str | Path | None = None,
    scratch: str | Path | None = None,
    keep: bool = False,
    cores: int = 1,
    device: str | None = None,
    rtol: float | None = None,
    atol: float | None = None,
) -> dict[str, Any]:
    """Rebuild ``run_id`` of the validated ``config`` from scratch and compare it with the files
    recorded under ``root``; return the audit report (``pass``, differences, provenance of both)."""
    from qgen.experiments import all_runs, canonical_json

    root = Path(root)
    runs = all_runs({**config, "scope": "full"})  # a run of any scope: main_job parts are subsets
    if run_id not in runs:
        raise AuditError(
            f"run {run_id} is not defined by the config ({len(runs)} runs); `qgen runs <config>` lists them"
        )
    recorded_dir = root / "results" / "runs" / run_id
    missing = [name for name in RUN_FILES if not (recorded_dir / name).exists()]
    if missing:
        raise AuditError(f"nothing recorded to audit: {recorded_dir} has no {', '.join(missing)}")
    recorded = {name: qio.read_json(recorded_dir / name) for name in RUN_FILES}
    if canonical_json(recorded["metrics.json"].get("spec", {})) != canonical_json(runs[run_id].spec):
        raise AuditError(f"{recorded_dir / 'metrics.json'} records another spec than the config's {run_id}")

    made_scratch = scratch is None
    scratch_dir = Path(tempfile.mkdtemp(prefix=f"qgen-audit-{run_id}-") if scratch is None else scratch)
    if not made_scratch and scratch_dir.exists() and any(scratch_dir.iterdir()):
        raise AuditError(f"scratch directory {scratch_dir} is not empty; the audit builds from nothing")
    try:
        seconds = rebuild(
            run_id,
            scratch_config(config, recorded["metrics.json"], device),
            scratch_dir,
            Path(snakefile) if snakefile else default_snakefile(root),
            cores,
            root,
        )
        rebuilt_dir = scratch_dir / "results" / "runs" / run_id
        rebuilt = {name: qio.read_json(rebuilt_dir / name) for name in RUN_FILES}
    finally:
        if not keep:
            shutil.rmtree(scratch_dir, ignore_errors=True)

    cuda = any(_on_cuda(r) for r in (*recorded.values(), *rebuilt.values()))
    tol = {"rtol": CUDA_RTOL, "atol": CUDA_ATOL} if cuda else {"rtol": 0.0, "atol": 0.0}
    tol = {"rtol": tol["rtol"] if rtol is None else rtol, "atol": tol["atol"] if atol is None else atol}
    compared, differences = 0, []
    for name in RUN_FILES:
        n, diffs = compare_records(recorded[name], rebuilt[name], **tol)
        compared += n
        differences += [{"file": name, **d} for d in diffs]
    expect = bit_identity_expected(recorded["metrics.json"], rebuilt["metrics.json"])
    return {
        "run_id": run_id,
        "pass": not differences,
        "bit_identity": expect,
        "compared": compared,
        "differences": differences,
        "tolerance": {**tol, "basis": "CUDA involved" if cuda else "both on CPU: identical"},
        "recorded": str(recorded_dir),
        "rebuilt": str(scratch_dir / "results" / "runs" / run_id) if keep else None,
        "rebuild_seconds": round(seconds, 1),
        "provenance": {
            "recorded": provenance_summary(recorded["metrics.json"]),
            "rebuilt": provenance_summary(rebuilt["metrics.json"]),
        },
    }


# ---- report ---------------------------------------------------------------------------------------


def _short(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def _provenance_line(p: dict[str, Any]) -> str:
    code = p.get("code") or {}
    commit = (code.get("commit") or "unknown")[:10] + (" (dirty)" if code.get("dirty") else "")
    device = p.get("device") or "?"
    if p.get("gpu"):
        device += f" ({p['gpu']})"
    data = (p.get("data_checksum") or "?")[:12]
    return (
        f"created {p.get('created')} on {p.get('host')}, code {commit}, {device}, "
        f"{p.get('torch_threads')} thread(s), torch {p.get('torch')}, data {data}"
    )


def format_report(report: dict[str, Any]) -> str:
    tol = report["tolerance"]
    lines = [
        f"audit of {report['run_id']}",
        f"  recorded: {report['recorded']}",
        f"            {_provenance_line(report['provenance']['recorded'])}",
        f"  rebuilt:  {report['rebuilt'] or 'scratch directory (removed; --keep keeps it)'}"
        f" in {report['rebuild_seconds']} s",
        f"            {_provenance_line(report['provenance']['rebuilt'])}",
        f"  comparison: {tol['basis']} (rtol {tol['rtol']:g}, atol {tol['atol']:g}), "
        f"{report['compared']} values of {' and '.join(RUN_FILES)}, provenance aside",
    ]
    identity = report.get("bit_identity")
    if identity is not None:
        lines.append(
            "  bit identity: expected"
            if identity["expected"]
            else f"  bit identity: not guaranteed ({', '.join(identity['differs'])} differ)"
        )
    diffs = report["differences"]
    if not diffs:
        lines.append("  PASS: every value agrees")
    else:
        lines.append(f"  FAIL: {len(diffs)} value(s) differ:")
        for d in diffs:
            delta = f"  |diff| {d['abs_diff']:.3g}" if d["abs_diff"] is not None else ""
            lines.append(
                f"    {d['file']}: {d['key']}: recorded {_short(d['recorded'])}, "
                f"rebuilt {_short(d['rebuilt'])}{delta}"
            )
    return "\n".join(lines) + "\n"
