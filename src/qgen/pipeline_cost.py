"""Where a pipeline's time went: wall and CPU seconds per rule and per experiment, and the overhead share
(``qgen cost``; issue 16).

It reads what a build leaves behind, nothing else:
- ``logs/benchmarks/<rule>/<job>.tsv``: Snakemake's ``benchmark:`` file of every job (wall seconds ``s``
  from outside, the shell included; peak memory ``max_rss``; a polled ``cpu_time``);
- the last line of each job's log, written by :mod:`qgen.job_cost`: exact CPU seconds (the process and the
  children it waited for), start-up (interpreter, ``import qgen.cli``), imports, and the work left;
- ``results/shards/<shard>.json``: each run's training, evaluation and measuring seconds in a shard job
  and the job's overhead (worker start with ``import torch``, data loading, per-run bookkeeping);
- ``results/runs/<run_id>/measures.json``: the seconds of each measure (provenance.wall_seconds);
- ``results/runs.tsv``: which experiments each run belongs to.

Overhead is what a job spends that is not its computation: for a shard job ``overhead_seconds`` of its
record; for any other job its start-up and imports. A job's CPU seconds come from its timing line when
it has one, else from the benchmark file. A shard shared by several experiments (a run in two of them)
is reported under the joined name (``default+grid``). Torch-free.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qgen.job_cost import read_timing

#: rules whose log folder is not named after the rule
LOG_DIRS = {"shard": "shards"}
#: jobs that serve every experiment
SHARED_RULES = ("prepare_data", "runs_table")
EXPERIMENT_COLUMNS = [
    *("experiment", "jobs", "CPU s", "budget share", "train s", "measure s", "run overhead s"),
    *("run overhead %", "other jobs CPU s"),
]
#: measures.json timings (provenance.wall_seconds) that are parts, not the total
MEASURE_TOTAL = "measure"


@dataclass
class Job:
    rule: str
    name: str  # the job's wildcard part ("" for runs_table)
    wall: float
    cpu: float
    max_rss_mb: float | None
    overhead: float  # start-up and imports (non-shard jobs), the record's overhead (shard jobs)
    experiment: str = ""
    extra: dict[str, float] = field(default_factory=dict)  # shard jobs: train / evaluate / measure


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "", "NA", "-") else None
    except ValueError:
        return None


def _benchmark(path: Path) -> dict[str, str] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
    except OSError:
        return None
    return rows[-1] if rows else None  # one row per repeat; we do not repeat


def run_experiments(root: Path) -> dict[str, list[str]]:
    """Run id -> its experiments, from results/runs.tsv (empty when there is none)."""
    table = root / "results" / "runs.tsv"
    if not table.exists():
        return {}
    with open(table, encoding="utf-8") as fh:
        return {row["run_id"]: row["experiments"].split(",") for row in csv.DictReader(fh, delimiter="\t")}


def _shard_experiment(record: dict[str, Any], name: str, runs: dict[str, list[str]]) -> str:
    for rid in record.get("runs", {}):
        if rid in runs:
            return "+".join(sorted(runs[rid]))
    # <dataset>-<exp1+exp2>-<b>of<n>: the group between the dataset and the bucket
    parts = name.rsplit("-", 1)[0].split("-", 1)
    return parts[1] if len(parts) == 2 else ""


def read_jobs(root: Path) -> list[Job]:
    """Every job with a benchmark file under ``root/logs/benchmarks``."""
    bench_root = root / "logs" / "benchmarks"
    runs = run_experiments(root)
    jobs = []
    for path in sorted(bench_root.rglob("*.tsv")) if bench_root.is_dir() else []:
        rel = path.relative_to(bench_root).with_suffix("")
        rule, name = (rel.parts[0], "/".join(rel.parts[1:])) if len(rel.parts) > 1 else (rel.name, "")
        row = _benchmark(path)
        if row is None:
            continue
        logs = root / "logs"
        log = logs / LOG_DIRS.get(rule, rule) / f"{name}.log" if name else logs / f"{rule}.log"
        timing = read_timing(log) or {}
        wall = _float(row.get("s")) or 0.0
        cpu = timing.get("cpu", _float(row.get("cpu_time")) or 0.0)
        overhead = timing.get("startup", 0.0) + timing.get("imports", 0.0)
        job = Job(rule, name, wall, cpu, _float(row.get("max_rss")), overhead)
        if rule == "shard":
            record_path = root / "results" / "shards" / f"{name}.json"
            try:
                record = json.loads(record_path.read_text())
            except (OSError, json.JSONDecodeError):
                record = {}
            job.experiment = _shard_experiment(record, name, runs)
            if record:
                # the controller's own start-up is in its timing line; the record counts it too
                job.overhead = float(record.get("overhead_seconds", 0.0))
                for entry in record.get("runs", {}).values():
                    for key, seconds in entry.get("seconds", {}).items():
                        if key != "data":
                            job.extra[key] = job.extra.get(key, 0.0) + seconds
        elif rule not in SHARED_RULES:
            job.experiment = name
        jobs.append(job)
    return jobs


def _sum(jobs: Iterable[Job], attr: str) -> float:
    return sum(getattr(j, attr) for j in jobs)


def span_seconds(root: Path) -> float | None:
    """Wall time from the first job's start to the last job's end (benchmark files' mtimes minus ``s``)."""
    bench_root = root / "logs" / "benchmarks"
    ends, starts = [], []
    for path in bench_root.rglob("*.tsv") if bench_root.is_dir() else []:
        row = _benchmark(path)
        if row is None:
            continue
        end = path.stat().st_mtime
        ends.append(end)
        starts.append(end - (_float(row.get("s")) or 0.0))
    return max(ends) - min(starts) if ends else None


def measure_seconds(root: Path) -> dict[str, dict[str, float]]:
    """Experiment -> {measure: seconds summed over its runs, "runs": n, "train": training seconds}."""
    out: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for rid, experiments in run_experiments(root).items():
        run_dir = root / "results" / "runs" / rid
        try:
            measured = json.loads((run_dir / "measures.json").read_text())["provenance"]["wall_seconds"]
            trained = json.loads((run_dir / "metrics.json").read_text())["provenance"]["wall_seconds"]
        except (OSError, KeyError, TypeError, json.JSONDecodeError):
            continue
        for exp in experiments:
            row = out[exp]
            row["runs"] += 1
            row["train"] += float(trained.get("train", 0.0)) if isinstance(trained, dict) else 0.0
            for key, seconds in measured.items():
                row[key] += float(seconds)
    return {exp: dict(row) for exp, row in out.items()}


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.1f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def summarize(root: Path, budget_minutes: float = 15.0, cores: int = 2) -> dict[str, Any]:
    """The figures of the report as data (tests and ``--json``)."""
    jobs = read_jobs(root)
    budget = budget_minutes * 60 * cores
    by_rule: dict[str, list[Job]] = defaultdict(list)
    by_exp: dict[str, list[Job]] = defaultdict(list)
    for job in jobs:
        by_rule[job.rule].append(job)
        by_exp[job.experiment or "(shared)"].append(job)
    rules = {
        rule: {
            "jobs": len(js),
            "wall": _sum(js, "wall"),
            "cpu": _sum(js, "cpu"),
            "overhead": _sum(js, "overhead"),
            "max_rss_mb": max((j.max_rss_mb or 0.0) for j in js),
        }
        for rule, js in sorted(by_rule.items())
    }
    experiments = {}
    for exp, js in sorted(by_exp.items()):
        shards = [j for j in js if j.rule == "shard"]
        compute = sum(sum(j.extra.values()) for j in shards)
        experiments[exp] = {
            "jobs": len(js),
            "cpu": _sum(js, "cpu"),
            "budget_share": _sum(js, "cpu") / budget if budget else None,
            "train": sum(j.extra.get("train", 0.0) + j.extra.get("evaluate", 0.0) for j in shards),
            "measure": sum(j.extra.get("measure", 0.0) for j in shards),
            "run_overhead": _sum(shards, "overhead"),
            "run_overhead_share": _sum(shards, "overhead") / compute if compute else None,
            "other_cpu": _sum([j for j in js if j.rule != "shard"], "cpu"),
        }
    return {
        "jobs": len(jobs),
        "wall_span": span_seconds(root),
        "cpu": _sum(jobs, "cpu"),
        "budget_cpu_seconds": budget,
        "rules": rules,
        "experiments": experiments,
        "measures": measure_seconds(root),
    }


def report(root: Path, budget_minutes: float = 15.0, cores: int = 2) -> str:
    """The report as markdown."""
    s = summarize(root, budget_minutes, cores)
    if not s["jobs"]:
        return f"no benchmark files under {root / 'logs' / 'benchmarks'}: build the pipeline first\n"
    span, budget = s["wall_span"], s["budget_cpu_seconds"]
    head = f"{s['jobs']} jobs, {s['cpu']:.0f} CPU-seconds"
    if span:
        head += f", {span / 60:.1f} minutes from the first job's start to the last one's end"
    rule_rows = [
        [r, v["jobs"], v["wall"], v["cpu"], v["overhead"], _pct(v["overhead"], v["wall"]), v["max_rss_mb"]]
        for r, v in s["rules"].items()
    ]
    exp_rows = []
    for e, v in s["experiments"].items():
        compute = v["train"] + v["measure"]
        share, run_share = _pct(v["cpu"], budget), _pct(v["run_overhead"], compute)
        row = [e, v["jobs"], v["cpu"], share, v["train"], v["measure"], v["run_overhead"], run_share]
        exp_rows.append([*row, v["other_cpu"]])
    parts = [
        head,
        "",
        "Per rule (overhead: a shard job's worker start, data loading and per-run bookkeeping; any other "
        "job's interpreter start and imports):",
        "",
        _table(["rule", "jobs", "wall s", "CPU s", "overhead s", "overhead %", "max RSS MB"], rule_rows),
        "",
        f"Per experiment (budget: {budget_minutes:g} minutes on {cores} cores = {budget:.0f} CPU-seconds; "
        "run overhead: the shard jobs' overhead against their runs' training and measuring):",
        "",
        _table(
            EXPERIMENT_COLUMNS,
            exp_rows,
        ),
    ]
    measures = s["measures"]
    if measures:
        names = sorted({k for row in measures.values() for k in row} - {"runs", "train", MEASURE_TOTAL})
        rows = []
        for e, row in sorted(measures.items()):
            n, total = row["runs"], row.get(MEASURE_TOTAL, 0.0)
            cells = [f"{row.get(m, 0.0) / n:.2f} ({_pct(row.get(m, 0.0), total)})" for m in names]
            ratio = f"{total / row['train']:.2f}" if row["train"] else "-"
            rows.append([e, int(n), *cells, total / n, row["train"] / n, ratio])
        parts += [
            "",
            "Measures per run (mean seconds, and share of the run's measuring; then all measures against "
            "the run's training):",
            "",
            _table(["experiment", "runs", *names, "measures s", "training s", "measures / training"], rows),
        ]
    return "\n".join(parts) + "\n"


def _pct(part: float | None, whole: float | None) -> str:
    return f"{100 * part / whole:.1f} %" if part is not None and whole else "-"
