"""Shards: the runs of a config packed into jobs of a few runs each, and what each run still needs.

A shard is one Snakemake job (one SLURM job on a cluster) that builds several runs in one worker
(:mod:`qgen.worker`), so the DAG holds one job per shard instead of two per run and a run pays no
interpreter start or ``import torch`` of its own (issue 15). Nothing here imports torch: the Snakefile,
the shard job's controller and ``qgen.dvc_stage`` use it before (or instead of) starting a worker.

Partition (:func:`partition`): runs are grouped by dataset and by the experiments they belong to (so that
building one experiment builds no other experiment's runs); each group's runs go to ``n`` buckets by the
hash digits their run id ends with, ``n`` the smallest power of two with ``n * shard_runs >= runs``; empty
buckets are dropped. Shard names say where a run went, ``<dataset>-<experiments>-<bucket>of<n>``
(``digits-grid-03of16``; a run of two experiments: ``digits-default+grid-0of1``); with ``shard_runs: 1``
every run is its own shard, ``<run_id>-0of1``. The hash is uniform, so shards mix cheap and expensive runs
(they end at about the same time; a shard holds ``shard_runs`` runs on average, a few more or fewer), and
stable: adding runs to a config changes only the shards that receive them, until the group's run count
crosses a power of two. A shard's run ids are a param of its job, so a changed shard reruns, and skips the
runs it finds done.

What a run needs (:func:`run_state`) is decided from file contents, never modification times:
``train`` unless model.pt, train_log.csv and a metrics.json of this run id computed on the prepared data
with the current checksum exist; else ``measure`` unless measures.json of this run id records exactly the
current measure settings and was measured from the model file metrics.json was evaluated from (both
record its sha256 in their provenance); else, for a run of an experiment with the robustness step (issue 18),
``robustness`` unless robustness.json of this run id records the current evaluation settings and corrupted
set (its checksum) and was computed from that model file; else ``done``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

#: shard names: ``<group>-<bucket>of<buckets>``
SHARD_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_+-]*-[0-9]+of[0-9]+"
TRAIN, MEASURE, ROBUSTNESS, DONE = "train", "measure", "robustness", "done"
#: how a run's robustness.json must have been computed: (evaluation settings as canonical JSON, the
#: corrupted set's checksum); None for a run without the robustness step
Robustness = tuple[str, str] | None


def _bucket_count(n_runs: int, shard_runs: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, math.ceil(n_runs / shard_runs)))))


def partition(
    runs: Mapping[str, str], shard_runs: int, group_shard_runs: Mapping[str, int] | None = None
) -> dict[str, list[str]]:
    """Shard name -> run ids (in the order given) for ``runs``: run id -> group (:func:`group_of`).
    ``group_shard_runs``: a group's own runs per shard, instead of ``shard_runs``."""
    sizes = {group: (group_shard_runs or {}).get(group, shard_runs) for group in set(runs.values())}
    for size in (shard_runs, *sizes.values()):
        if size < 1:
            raise ValueError(f"shard_runs must be at least 1, not {size}")
    by_group: dict[str, list[str]] = {}
    for rid, group in runs.items():
        by_group.setdefault(group, []).append(rid)
    shards: dict[str, list[str]] = {}
    for group, ids in by_group.items():
        if sizes[group] == 1:  # one run per job (runs of days): the shard is named after its run
            shards.update({f"{rid}-0of1": [rid] for rid in ids})
            continue
        n = _bucket_count(len(ids), sizes[group])
        width = len(str(n - 1))
        buckets: dict[int, list[str]] = {}
        for rid in ids:
            buckets.setdefault(int(rid[-8:], 16) % n, []).append(rid)
        for b in sorted(buckets):
            shards[f"{group}-{b:0{width}d}of{n}"] = buckets[b]
    return shards


def group_of(dataset: str, experiments: Iterable[str]) -> str:
    """A run's shard group: its dataset and its experiments (``digits-default+grid``)."""
    return f"{dataset}-{'+'.join(sorted(experiments))}"


def shard_config_runs(runs: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, list[str]]:
    """The shards of a config's runs (qgen.experiments.all_runs: run id -> Run): ``runtime.shard_runs``
    runs per shard, or an experiment's own ``shard_runs`` (a run in several experiments: the smallest)."""
    default = int(config["runtime"]["shard_runs"])
    own = {name: exp.get("shard_runs") for name, exp in config["experiments"].items()}
    groups, sizes = {}, {}
    for rid, run in runs.items():
        group = group_of(run.spec["data"]["name"], run.experiments)
        groups[rid] = group
        sizes[group] = min(int(own.get(e) or default) for e in run.experiments)
    return partition(groups, default, sizes)


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


def run_state(run_dir: Path, run_id: str, checksum: str, settings: str, robustness: Robustness = None) -> str:
    """``train``, ``measure``, ``robustness`` or ``done`` for the run whose files are in ``run_dir`` (module
    docstring); ``checksum``: the prepared data's, ``settings``: the measure settings as
    :func:`canonical_settings`, ``robustness``: see :data:`Robustness`."""
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
        if measures["provenance"].get("model_sha256") != metrics["provenance"].get("model_sha256"):
            return MEASURE  # measured from another model file (the run was retrained since)
    except (KeyError, TypeError, ValueError, AttributeError):
        return MEASURE
    if robustness is not None:
        record = _read(run_dir / "robustness.json")
        try:
            if (
                record["run_id"] != run_id
                or canonical_settings(record["settings"]) != robustness[0]
                or record["provenance"]["corrupted"]["checksum"] != robustness[1]
                or record["provenance"].get("model_sha256") != metrics["provenance"].get("model_sha256")
            ):
                return ROBUSTNESS
        except (KeyError, TypeError, ValueError, AttributeError):
            return ROBUSTNESS
    return DONE


def run_states(
    specs: Mapping[str, Mapping[str, Any]],
    settings: str,
    runs_dir: Path,
    data_dir: Path,
    robustness: Mapping[str, Robustness] | None = None,
) -> dict[str, str]:
    """:func:`run_state` of every run in ``specs`` (run id -> spec), from ``runs_dir/<run_id>`` and the
    prepared data in ``data_dir/<dataset>``; a dataset whose meta.json cannot be read is an error (the
    runs' state cannot be known, and nothing may be retrained or deleted for it). ``robustness``: run id ->
    its :data:`Robustness` (runs not in it have no robustness step)."""
    checksums: dict[str, str] = {}
    states = {}
    for rid, spec in specs.items():
        name = spec["data"]["name"]
        if name not in checksums:
            meta = data_dir / name / "meta.json"
            checksum = data_checksum(meta)
            if checksum is None:
                raise ValueError(f"{meta} is missing or unreadable: prepare the dataset first")
            checksums[name] = checksum
        states[rid] = run_state(runs_dir / rid, rid, checksums[name], settings, (robustness or {}).get(rid))
    return states


def robustness_key(settings_json: str, corrupted_meta: Path) -> Robustness:
    """The :data:`Robustness` of runs evaluated with ``settings_json`` (qgen.experiments.robustness_json) on
    the corrupted set of ``corrupted_meta``; an unreadable meta.json is an error (prepare the set first)."""
    from qgen.experiments import robustness_evaluation

    checksum = data_checksum(corrupted_meta)
    if checksum is None:
        raise ValueError(f"{corrupted_meta} is missing or unreadable: prepare the corrupted set first")
    return canonical_settings(robustness_evaluation(settings_json)), checksum


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
