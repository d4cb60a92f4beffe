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
SHARED_RULES = ("prepare_data", "prepare_corrupted", "runs_table")
#: jobs of one run (built alone, outside a shard), named by its run id
PER_RUN_RULES = ("train", "measure", "robustness")
#: jobs of one experiment, named by it
EXPERIMENT_RULES = ("collect", "analyse", "report", "notebook", "summary", "binaryconnect_table")
EXPERIMENT_RULES += ("low_precision_table", "saq_table", "noise_injection_table")
EXPERIMENT_RULES += ("robustness_table", "unet_table")
#: ``run:`` rules: Snakemake benchmarks its own process for them, so their polled CPU is not theirs
RUN_BLOCK_RULES = ("runs_table",)
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
    end: float = 0.0  # when it ended (epoch seconds)


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
    for rid in [*record.get("runs", {}), name.removesuffix("-0of1")]:
        if rid in runs:
            return "+".join(sorted(runs[rid]))
    # <dataset>-<exp1+exp2>-<b>of<n> (dataset names may hold "-", experiment names never do)
    group = name.rsplit("-", 1)[0]
    return group.rsplit("-", 1)[1] if "-" in group else ""


def current_jobs(config: dict[str, Any]) -> dict[str, set[str]]:
    """Rule -> the job names the config's DAG can have (benchmark files of other names are left over from
    builds of other configs, e.g. shards of another size)."""
    from qgen.experiments import all_runs
    from qgen.shards import shard_config_runs

    runs = all_runs(config)
    experiments = set(config["experiments"])
    per_run = set(runs)
    return {
        "shard": set(shard_config_runs(runs, config)),
        "prepare_data": {run.spec["data"]["name"] for run in runs.values()},
        "prepare_corrupted": {run.spec["data"]["name"] for run in runs.values()},
        "runs_table": {""},
        **{rule: per_run for rule in PER_RUN_RULES},
        **{rule: experiments for rule in EXPERIMENT_RULES},
    }


def read_jobs(root: Path, config: dict[str, Any] | None = None) -> tuple[list[Job], int]:
    """Every job with a benchmark file under ``root/logs/benchmarks`` (with ``config``: only the jobs its
    DAG can have), and how many benchmark files were left out."""
    bench_root = root / "logs" / "benchmarks"
    runs = run_experiments(root)
    wanted = current_jobs(config) if config is not None else None
    jobs, skipped = [], 0
    for path in sorted(bench_root.rglob("*.tsv")) if bench_root.is_dir() else []:
        rel = path.relative_to(bench_root).with_suffix("")
        rule, name = (rel.parts[0], "/".join(rel.parts[1:])) if len(rel.parts) > 1 else (rel.name, "")
        row = _benchmark(path)
        if row is None or (wanted is not None and name not in wanted.get(rule, set())):
            skipped += 1
            continue
        logs = root / "logs"
        log = logs / LOG_DIRS.get(rule, rule) / f"{name}.log" if name else logs / f"{rule}.log"
        timing = read_timing(log) or {}
        wall = _float(row.get("s")) or 0.0
        polled = 0.0 if rule in RUN_BLOCK_RULES else (_float(row.get("cpu_time")) or 0.0)
        # the timing line is exact for the process and the children it waited for; the polled CPU also sees
        # children nobody waited for (torch.compile's workers), so the larger of the two
        cpu = max(float(timing.get("cpu", 0.0)), polled)
        overhead = timing.get("startup", 0.0) + timing.get("imports", 0.0)
        end = float(timing.get("end") or path.stat().st_mtime)
        job = Job(rule, name, wall, cpu, _float(row.get("max_rss")), overhead, end=end)
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
        elif rule in PER_RUN_RULES:
            job.experiment = "+".join(sorted(runs.get(name, []))) or "(runs not in runs.tsv)"
        elif rule == "audit":
            job.experiment = "(audit)"
        elif rule not in SHARED_RULES:
            job.experiment = name
        jobs.append(job)
    return jobs, skipped


def _sum(jobs: Iterable[Job], attr: str) -> float:
    return sum(getattr(j, attr) for j in jobs)


def span_seconds(jobs: Iterable[Job]) -> float | None:
    """Wall time from the first job's start to the last job's end (each job's end minus its wall time)."""
    jobs = list(jobs)
    return max(j.end for j in jobs) - min(j.end - j.wall for j in jobs) if jobs else None


def measure_seconds(root: Path) -> dict[str, dict[str, float]]:
    """Experiment -> {measure: mean seconds per run that has that lap, "runs": n, "train": mean training
    seconds}. Means over the runs with each lap, since runs measured by older code may lack a lap (before
    issue 16, ``pacbayes`` held both σ′ searches and there was no ``pacbayes_mag``)."""
    sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for rid, experiments in run_experiments(root).items():
        run_dir = root / "results" / "runs" / rid
        try:
            measured = json.loads((run_dir / "measures.json").read_text())["provenance"]["wall_seconds"]
            trained = json.loads((run_dir / "metrics.json").read_text())["provenance"]["wall_seconds"]
            laps = {"train": float(trained["train"]), **{k: float(v) for k, v in measured.items()}}
        except (OSError, KeyError, TypeError, ValueError, AttributeError):
            continue
        for exp in experiments:
            counts[exp]["runs"] += 1
            for key, seconds in laps.items():
                sums[exp][key] += seconds
                counts[exp][key] += 1
    return {
        exp: {"runs": counts[exp]["runs"], **{k: v / counts[exp][k] for k, v in row.items()}}
        for exp, row in sums.items()
    }


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.1f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def summarize(
    root: Path, budget_minutes: float = 15.0, cores: int = 2, config: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The figures of the report as data (tests and ``--json``); ``config``: count only its DAG's jobs."""
    jobs, skipped = read_jobs(root, config)
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
            # measuring, and the robustness step's evaluation on corrupted data (issue 18)
            "measure": sum(j.extra.get("measure", 0.0) + j.extra.get("robustness", 0.0) for j in shards),
            "run_overhead": _sum(shards, "overhead"),
            "run_overhead_share": _sum(shards, "overhead") / compute if compute else None,
            "other_cpu": _sum([j for j in js if j.rule != "shard"], "cpu"),
        }
    return {
        "jobs": len(jobs),
        "skipped_files": skipped,
        "wall_span": span_seconds(jobs),
        "cpu": _sum(jobs, "cpu"),
        "budget_cpu_seconds": budget,
        "rules": rules,
        "experiments": experiments,
        "measures": measure_seconds(root),
    }


def report(
    root: Path, budget_minutes: float = 15.0, cores: int = 2, config: dict[str, Any] | None = None
) -> str:
    """The report as markdown."""
    s = summarize(root, budget_minutes, cores, config)
    if not s["jobs"]:
        return f"no benchmark files under {root / 'logs' / 'benchmarks'}: build the pipeline first\n"
    span, budget = s["wall_span"], s["budget_cpu_seconds"]
    head = f"{s['jobs']} jobs, {s['cpu']:.0f} CPU-seconds"
    if span:
        head += f", {span / 60:.1f} minutes from the first job's start to the last one's end"
    if s["skipped_files"]:
        head += f" ({s['skipped_files']} benchmark files of jobs the config does not have left out)"
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
        _table(EXPERIMENT_COLUMNS, exp_rows),
    ]
    measures = s["measures"]
    if measures:
        names = sorted({k for row in measures.values() for k in row} - {"runs", "train", MEASURE_TOTAL})
        rows = []
        for e, row in sorted(measures.items()):
            total = row.get(MEASURE_TOTAL, 0.0)
            cells = [f"{row[m]:.2f} ({_pct(row[m], total)})" if m in row else "-" for m in names]
            ratio = f"{total / row['train']:.2f}" if row.get("train") else "-"
            rows.append([e, int(row["runs"]), *cells, total, row.get("train", 0.0), ratio])
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
