"""Shards: the runs of a config packed into jobs of a few runs each, and what each run still needs.

A shard is one Snakemake job (one SLURM job on a cluster) that builds several runs in one worker
(:mod:`qgen.worker`), so the DAG holds one job per shard instead of two per run and a run pays no
interpreter start or ``import torch`` of its own (issue 15). Nothing here imports torch: the Snakefile,
the shard job's controller and ``qgen.dvc_stage`` use it before (or instead of) starting a worker.

Partition (:func:`partition`): the runs of each dataset go to ``n`` buckets by the hash digits their run
id ends with, ``n`` the smallest power of two with ``n * shard_runs >= runs``; empty buckets are dropped.
Shard names say where a run went, ``<dataset>-<bucket>of<n>`` (``digits-03of16``); with ``shard_runs: 1``
every run is its own shard, ``<run_id>-0of1``. The hash is uniform, so
shards mix cheap and expensive runs (they end at about the same time), and stable: adding runs to a
config changes only the shards that receive them, until the run count crosses a power of two. A shard's
run ids are a param of its job, so a changed shard reruns, and skips the runs it finds done.

What a run needs (:func:`run_state`) is decided from file contents, never modification times:
``train`` unless model.pt, train_log.csv and a metrics.json of this run id computed on the prepared data
with the current checksum exist; else ``measure`` unless measures.json of this run id records exactly the
current measure settings; else ``done``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

#: shard names: ``<dataset>-<bucket>of<buckets>``
SHARD_PATTERN = r"[a-z0-9][a-z0-9_-]*-[0-9]+of[0-9]+"
TRAIN, MEASURE, DONE = "train", "measure", "done"
#: the files of one run the shard job writes (the per-run rules declare the same files)
RUN_FILES = ("model.pt", "train_log.csv", "metrics.json", "measures.json")


def _bucket_count(n_runs: int, shard_runs: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, math.ceil(n_runs / shard_runs)))))


def partition(runs: Mapping[str, str], shard_runs: int) -> dict[str, list[str]]:
    """Shard name -> run ids (in the order given) for ``runs``: run id -> dataset name."""
    if shard_runs < 1:
        raise ValueError(f"runtime.shard_runs must be at least 1, not {shard_runs}")
    by_dataset: dict[str, list[str]] = {}
    for rid, dataset in runs.items():
        by_dataset.setdefault(dataset, []).append(rid)
    shards: dict[str, list[str]] = {}
    if shard_runs == 1:  # one run per job (runs of days): the shard is named after its run
        return {f"{rid}-0of1": [rid] for rid in runs}
    for dataset, ids in by_dataset.items():
        n = _bucket_count(len(ids), shard_runs)
        width = len(str(n - 1))
        buckets: dict[int, list[str]] = {}
        for rid in ids:
            buckets.setdefault(int(rid[-8:], 16) % n, []).append(rid)
        for b in sorted(buckets):
            shards[f"{dataset}-{b:0{width}d}of{n}"] = buckets[b]
    return shards


def shards_of(shards: Mapping[str, Iterable[str]], run_ids: Iterable[str]) -> list[str]:
    """The names of the shards that hold any of ``run_ids`` (in shard order)."""
    wanted = set(run_ids)
    return [name for name, ids in shards.items() if wanted.intersection(ids)]


def canonical_settings(settings: Mapping[str, Any]) -> str:
    from qgen.experiments import canonical_json

    return canonical_json(dict(settings))


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def data_checksum(meta: Path) -> str | None:
    """The checksum a prepared dataset's meta.json records (None when it is missing or unreadable)."""
    record = _read(meta)
    return record.get("checksum") if isinstance(record, dict) else None


def run_state(run_dir: Path, run_id: str, checksum: str | None, settings: str) -> str:
    """``train``, ``measure`` or ``done`` for the run whose files are in ``run_dir`` (module docstring);
    ``checksum``: the prepared data's, ``settings``: the measure settings as :func:`canonical_settings`."""
    if not all((run_dir / name).is_file() for name in ("model.pt", "train_log.csv")):
        return TRAIN
    metrics = _read(run_dir / "metrics.json")
    try:
        if metrics["run_id"] != run_id or metrics["provenance"]["data"]["checksum"] != checksum:
            return TRAIN
    except (KeyError, TypeError):
        return TRAIN
    measures = _read(run_dir / "measures.json")
    try:
        if measures["run_id"] != run_id or canonical_settings(measures["settings"]) != settings:
            return MEASURE
    except (KeyError, TypeError, ValueError):
        return MEASURE
    return DONE


def read_runs_table(path: Path, run_ids: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """Run id -> spec from results/runs.tsv (all runs, or those of ``run_ids``: each must be there)."""
    wanted = set(run_ids) if run_ids is not None else None
    specs: dict[str, dict[str, Any]] = {}
    with open(path, encoding="utf-8") as fh:
        header = fh.readline().rstrip("\n").split("\t")
        col = header.index("spec")
        for line in fh:
            fields = line.rstrip("\n").split("\t")
            if wanted is None or fields[0] in wanted:
                specs[fields[0]] = json.loads(fields[col])
    missing = sorted((wanted or set()) - set(specs))
    if missing:
        raise ValueError(f"{path} has no run {', '.join(missing)}: rebuild it (snakemake results/runs.tsv)")
    return specs


def experiment_runs(path: Path, experiment: str) -> list[str]:
    """The run ids of one experiment, in the order of results/runs.tsv."""
    ids = []
    with open(path, encoding="utf-8") as fh:
        header = fh.readline().rstrip("\n").split("\t")
        col = header.index("experiments")
        for line in fh:
            fields = line.rstrip("\n").split("\t")
            if experiment in fields[col].split(","):
                ids.append(fields[0])
    return ids


def name_is_valid(name: str) -> bool:
    return re.fullmatch(SHARD_PATTERN, name) is not None
