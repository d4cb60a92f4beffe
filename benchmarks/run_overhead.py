"""Per-run overhead before and after the shard worker (issue 15, item 3), measured side by side in one run.

Overhead is what a run costs beyond its compute: interpreter start, imports, data loading, file checks,
idle worker slots. Compute is what the run's own records say it spent training, evaluating and measuring
(metrics.json ``provenance.wall_seconds`` train and evaluate, measures.json ``wall_seconds.measure``).

- before (one run per job): each run as the per-run rules build it, a ``qgen train`` process (training,
  evaluation, measures into the cache) then a ``qgen measure`` process (adopting the cache); overhead =
  the two processes' wall time - compute;
- after (one shard job): the same runs built by one ``qgen shard`` process (one worker); overhead = its
  wall time - compute (the shard record's ``compute_seconds``), shown per run as total / runs.

Both build the same runs of config/default.yaml (the first ``--runs`` of them in run-id hash order, i.e. a
mixed sample of its experiments) on CPU with 1 thread, one process at a time, and the script checks that
their metrics and measures agree bit for bit. ``--records DIR`` instead tabulates the shard records of a
finished pipeline (e.g. ``results/shards`` after the main job): overhead / compute over the whole job.

    python benchmarks/run_overhead.py                     # 4 runs, about 2 minutes on 2 cores
    python benchmarks/run_overhead.py --records results/shards
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
QGEN = [sys.executable, "-m", "qgen"]


def _sample(n: int) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    from qgen.config import load_config
    from qgen.experiments import all_runs

    config = load_config(REPO / "config" / "default.yaml")
    runs = all_runs(config)
    chosen = sorted(runs, key=lambda rid: rid[-8:])[:n]
    return config, {rid: runs[rid].spec for rid in chosen}


def _project(root: Path, config: dict[str, Any], specs: dict[str, dict[str, Any]]) -> None:
    from qgen import io as qio
    from qgen.data import prepare
    from qgen.experiments import Run, dataset_params, runs_table

    for name in sorted({s["data"]["name"] for s in specs.values()}):
        prepare(name, dataset_params(config, name), root / "data" / "prepared" / name)
    table = {rid: Run(rid, spec, ("bench",)) for rid, spec in specs.items()}
    qio.write_text(root / "results" / "runs.tsv", runs_table(table))


def _env(settings: str) -> dict[str, str]:
    runtime = {"device": "cpu", "threads": 1, "parallel_runs": 1}
    return {**os.environ, "QGEN_RUNTIME": json.dumps(runtime), "QGEN_MEASURES": settings}


def _timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def _compute(run_dir: Path) -> float:
    from qgen import io as qio

    train = qio.read_json(run_dir / "metrics.json")["provenance"]["wall_seconds"]
    measure = qio.read_json(run_dir / "measures.json")["provenance"]["wall_seconds"]["measure"]
    return float(train["train"]) + float(train["evaluate"]) + float(measure)


def before(root: Path, specs: dict[str, dict[str, Any]], settings: str) -> dict[str, tuple[float, float]]:
    """Run id -> (overhead, compute) of the per-run jobs."""
    out = {}
    env = _env(settings)
    for rid, spec in specs.items():
        run, meta = f"results/runs/{rid}", f"data/prepared/{spec['data']['name']}/meta.json"
        record = json.dumps({"run_id": rid, "spec": spec})
        cache = f"{run}/measures.cache.json"
        train = [*QGEN, "train", "--spec", record, "--data-meta", meta, "--out-model", f"{run}/model.pt"]
        train += ["--out-log", f"{run}/train_log.csv", "--out-metrics", f"{run}/metrics.json"]
        train += ["--measure-cache", cache, "--threads", "1"]
        measure = [
            *QGEN,
            "measure",
            "--model",
            f"{run}/model.pt",
            "--data-meta",
            meta,
            "--settings",
            settings,
        ]
        measure += ["--cache", cache, "--out", f"{run}/measures.json", "--threads", "1"]
        wall = _timed(train, root, env) + _timed(measure, root, env)
        compute = _compute(root / run)
        out[rid] = (wall - compute, compute)
    return out


def after(root: Path, specs: dict[str, dict[str, Any]], settings: str) -> tuple[float, float]:
    """(overhead, compute) of one shard job building all of ``specs``."""
    from qgen import io as qio

    cmd = [*QGEN, "shard", "bench-0of1", "--run-ids", ",".join(specs), "--runs-table", "results/runs.tsv"]
    cmd += ["--settings", settings, "--out", "results/shards/bench-0of1.json"]
    wall = _timed(cmd, root, _env(settings))
    record = qio.read_json(root / "results/shards/bench-0of1.json")
    compute = float(record["compute_seconds"])
    return wall - compute, compute


def identical(a: Path, b: Path, run_ids: list[str]) -> bool:
    from qgen import io as qio
    from qgen.audit import compare_records

    for rid in run_ids:
        for name in ("metrics.json", "measures.json"):
            _, diffs = compare_records(qio.read_json(a / rid / name), qio.read_json(b / rid / name))
            if diffs:
                print(f"  {rid}/{name} differs: {diffs[:3]}")
                return False
    return True


def overhead_table(runs: int = 4) -> str:
    """The before/after table for ``runs`` runs of the default config (printed and returned)."""
    from qgen.config import measures_schema, validate

    config, specs = _sample(runs)
    settings = json.dumps(
        validate(dict(config["measures"]), measures_schema(), where="measures"), sort_keys=True
    )
    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp) / "before", Path(tmp) / "after"
        for root in (a, b):
            _project(root, config, specs)
        per_run = before(a, specs, settings)
        shard_overhead, shard_compute = after(b, specs, settings)
        same = identical(a / "results/runs", b / "results/runs", list(specs))
    n = len(specs)
    lines = [
        f"Per-run overhead, {n} runs of config/default.yaml on CPU (1 thread, one process at a time):",
        "",
        "| run | compute s | overhead s, one job per run | overhead s, one shard job (share) |",
        "| --- | --- | --- | --- |",
    ]
    for rid, (overhead, compute) in per_run.items():
        lines.append(f"| {rid} | {compute:.2f} | {overhead:.2f} | {shard_overhead / n:.2f} |")
    total_before = sum(o for o, _ in per_run.values())
    compute_before = sum(c for _, c in per_run.values())
    lines += [
        f"| total | {compute_before:.2f} / {shard_compute:.2f} | {total_before:.2f} "
        f"({100 * total_before / compute_before:.1f} % of compute) | {shard_overhead:.2f} "
        f"({100 * shard_overhead / shard_compute:.1f} % of compute) |",
        "",
        f"overhead after / before: {shard_overhead / total_before:.2f}; results bit-identical: {same}",
    ]
    text = "\n".join(lines)
    print(text)
    return text


def records_table(directory: Path) -> str:
    """Overhead over a whole pipeline from its shard records."""
    from qgen import io as qio

    records = [qio.read_json(p) for p in sorted(directory.glob("*.json"))]
    if not records:
        raise SystemExit(f"no shard records in {directory}")
    compute = sum(r["compute_seconds"] for r in records)
    overhead = sum(r["overhead_seconds"] for r in records)
    starts = [w["startup"] for r in records for w in r["workers"]]
    runs = sum(len(r["runs"]) for r in records)
    built = sum(1 for r in records for v in r["runs"].values() if v["action"] != "skipped")
    text = (
        f"{len(records)} shard records, {runs} runs ({built} built): compute {compute:.1f} s, overhead "
        f"{overhead:.1f} s = {100 * overhead / max(compute, 1e-9):.1f} % of compute; {len(starts)} worker "
        f"starts, {sum(starts) / max(1, len(starts)):.2f} s each on average (interpreter, torch, settings)"
    )
    print(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=4, help="runs of the default config to build both ways")
    parser.add_argument("--records", type=Path, help="tabulate the shard records in this folder instead")
    args = parser.parse_args()
    if args.records:
        records_table(args.records)
    else:
        overhead_table(args.runs)


if __name__ == "__main__":
    main()
