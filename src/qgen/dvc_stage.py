"""The command of every ``dvc repro`` stage: the project's Snakemake DAG, restricted to one stage.

DVC decides *whether* a stage runs (one of its params, deps or outs differs from dvc.lock); this
module decides *what Snakemake rebuilds* inside it, from file contents only. It never trusts
modification times or ``.snakemake/metadata``: a fresh clone has no metadata, and ``dvc pull`` /
``dvc checkout`` restore files with new modification times in any order, so a plain ``snakemake``
afterwards may find a prepared dataset newer than a checkpoint and retrain everything.

1. *Settle*: every file under the pushed outputs (``data/prepared``, ``results/runs``) gets one
   modification time, the oldest among them, so no recorded checkpoint or metric looks older than
   its inputs. Snakemake then runs with ``--rerun-triggers mtime`` (no decision depends on metadata,
   so a fresh clone decides like the machine that built the results).
2. *Expensive stages* (``prepare``, ``runs``) build what is missing (a changed run spec is a new run
   id, hence a new folder) and force what records other settings than the config: a dataset
   prepared with other parameters (``meta.json``), measures computed with other measure settings
   (``measures.json``). Package code changes never retrain: provenance records the code version and
   ``qgen audit`` rebuilds any run with the current code.
3. *Cheap stages* of one experiment (``collect``, ``analyse``, ``report``, ``notebook``) force every
   job of theirs: DVC runs them only when something they read changed. Their files are found in
   the DAG of ``all`` (``snakemake --summary``), so new tables and figures are picked up by rule:
   ``collect`` → runs.csv, ``analyse`` → the analyse and summary rules, ``notebook`` → the report
   notebook, ``report`` → every other file of the experiment (tables, figures, paper tables).

``python -m qgen.dvc_stage settle`` only does step 1 (then a plain ``snakemake`` after
``dvc checkout`` retrains nothing). Extra Snakemake arguments, e.g. a cluster profile, come from the
environment variable ``QGEN_SNAKEMAKE_ARGS``.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import shlex
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

#: outputs that DVC caches and pushes (the expensive ones)
PUSHED = ("data/prepared", "results/runs")
#: the config dvc.yaml tracks as params (the Snakefile's default config)
CONFIG = "config/default.yaml"
#: rules of the expensive stages; everything else is cheap and rebuilt when its stage runs
PREPARE_RULES = ("prepare_data",)
RUN_RULES = ("shard", "train", "measure")
#: cheap per-experiment stages named by their rules; ``report`` takes the experiment's other files
STAGE_RULES = {"collect": ("collect",), "analyse": ("analyse", "summary"), "notebook": ("notebook",)}
EXPERIMENT_STAGES = ("collect", "analyse", "report", "notebook")
STAGES = ("settle", "prepare", "runs", *EXPERIMENT_STAGES)


def _say(message: str) -> None:
    print(f"qgen.dvc_stage: {message}", file=sys.stderr, flush=True)


def pushed_files(root: Path) -> list[Path]:
    return [p for top in PUSHED if (root / top).is_dir() for p in (root / top).rglob("*") if p.is_file()]


def settle_mtimes(root: Path) -> int:
    """Give every pushed file the oldest modification time among them; return how many changed."""
    files = pushed_files(root)
    if not files:
        return 0
    stats = {p: p.stat() for p in files}
    oldest = min(s.st_mtime_ns for s in stats.values())
    changed = 0
    for path, st in stats.items():
        if st.st_mtime_ns != oldest:
            os.utime(path, ns=(st.st_atime_ns, oldest))
            changed += 1
    return changed


def stale_prepared(config: dict, root: Path) -> list[str]:
    """``meta.json`` of datasets the config uses that were prepared with other parameters."""
    from qgen.experiments import all_runs, canonical_json, dataset_params
    from qgen.io import read_json

    stale = []
    for name in sorted({run.spec["data"]["name"] for run in all_runs(config).values()}):
        meta = root / "data" / "prepared" / name / "meta.json"
        if meta.exists():
            recorded = read_json(meta).get("params")
            if canonical_json(recorded or {}) != canonical_json(dataset_params(config, name)):
                stale.append(meta.relative_to(root).as_posix())
    return stale


def stale_measures(config: dict, root: Path) -> list[str]:
    """``measures.json`` of the config's runs computed with other measure settings than the config's."""
    from qgen.config import measures_schema, validate
    from qgen.experiments import all_runs, canonical_json
    from qgen.io import read_json

    wanted = canonical_json(validate(dict(config["measures"]), measures_schema(), where="measures"))
    stale = []
    for run_id in all_runs(config):
        path = root / "results" / "runs" / run_id / "measures.json"
        if path.exists() and canonical_json(read_json(path).get("settings") or {}) != wanted:
            stale.append(path.relative_to(root).as_posix())
    return stale


def pending_shards(config: dict, root: Path) -> list[str]:
    """Records of the shards (results/shards/<shard>.json) with a run that is not done by content
    (qgen.shards.run_state: missing files, other data, other measure settings): forced, since a shard's
    record may be older than nothing it depends on and still be stale."""
    from qgen.config import measures_schema, validate
    from qgen.experiments import all_runs
    from qgen.shards import DONE, canonical_settings, data_checksum, partition, run_state

    runs = all_runs(config)
    settings = canonical_settings(validate(dict(config["measures"]), measures_schema(), where="measures"))
    shard_runs = int(config.get("runtime", {}).get("shard_runs", 8))
    checksums: dict[str, str | None] = {}
    stale = []
    for name, ids in partition({rid: r.spec["data"]["name"] for rid, r in runs.items()}, shard_runs).items():
        record = root / "results" / "shards" / f"{name}.json"
        if not record.exists():
            continue  # missing: Snakemake builds it anyway
        for rid in ids:
            dataset = runs[rid].spec["data"]["name"]
            if dataset not in checksums:
                checksums[dataset] = data_checksum(root / "data" / "prepared" / dataset / "meta.json")
            if run_state(root / "results" / "runs" / rid, rid, checksums[dataset], settings) != DONE:
                stale.append(record.relative_to(root).as_posix())
                break
    return stale


def snakemake_base() -> list[str]:
    return [sys.executable, "-m", "snakemake"]


def extra_args() -> list[str]:
    return shlex.split(os.environ.get("QGEN_SNAKEMAKE_ARGS", ""))


def dag_outputs(root: Path) -> list[tuple[str, str]]:
    """(file, rule) of every output in the DAG of the default target, from ``snakemake --summary``."""
    proc = subprocess.run(
        [*snakemake_base(), "--summary", *extra_args()], cwd=root, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"snakemake --summary failed:\n{proc.stderr[-3000:]}")
    rows = list(csv.DictReader(io.StringIO(proc.stdout), delimiter="\t"))
    if not rows or not {"output_file", "rule"} <= set(rows[0]):
        raise RuntimeError(f"unexpected output of snakemake --summary:\n{proc.stdout[:1000]}")
    return [(row["output_file"], row["rule"]) for row in rows]


def experiment_files(outputs: Iterable[tuple[str, str]], experiment: str, stage: str) -> list[str]:
    """The files of one experiment that ``stage`` builds (see the module docstring)."""
    prefixes = (f"results/{experiment}/", f"figures/{experiment}/", f"reports/{experiment}.")
    mine = [(f, rule) for f, rule in outputs if f.startswith(prefixes)]
    if stage in STAGE_RULES:
        return sorted(f for f, rule in mine if rule in STAGE_RULES[stage])
    named = {rule for rules in STAGE_RULES.values() for rule in rules}
    expensive = {*PREPARE_RULES, *RUN_RULES}
    return sorted(f for f, rule in mine if rule not in named | expensive)


def snakemake_command(
    targets: Sequence[str], forced: Sequence[str] = (), until: Sequence[str] = (), dry_run: bool = False
) -> list[str]:
    cmd = [*snakemake_base(), *targets, *extra_args(), "--rerun-triggers", "mtime"]
    if dry_run:
        cmd.append("--dry-run")
    if until:
        cmd += ["--until", *until]
    if forced:
        cmd += ["--forcerun", *forced]
    return cmd


def plan(
    stage: str, root: Path, experiment: str | None = None
) -> tuple[list[str], list[str], tuple[str, ...]]:
    """(targets, forced files or rules, --until rules) of one stage."""
    from qgen.config import load_config

    if stage in EXPERIMENT_STAGES:
        if not experiment:
            raise SystemExit(f"stage {stage} needs an experiment name")
        files = experiment_files(dag_outputs(root), experiment, stage)
        if not files:
            raise SystemExit(f"the workflow has no {stage} outputs for experiment {experiment!r}")
        return files, files, ()
    config = load_config(root / CONFIG)
    if stage == "prepare":
        stale = stale_prepared(config, root)
        if stale:
            _say(f"prepared with other parameters than {CONFIG}: {' '.join(stale)}")
        return ["all"], stale, PREPARE_RULES
    if stage == "runs":
        stale = stale_measures(config, root)
        if stale:
            _say(f"{len(stale)} measures.json computed with other measure settings than {CONFIG}")
        pending = pending_shards(config, root)
        if pending:
            _say(f"{len(pending)} shards have runs to train or measure: {' '.join(pending[:5])}")
        return ["all"], [*pending, "runs_table"], ("shard", "runs_table")
    raise SystemExit(f"unknown stage {stage!r}; one of {', '.join(STAGES)}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qgen.dvc_stage", description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("experiment", nargs="?", help="for the per-experiment stages")
    parser.add_argument("-n", "--dry-run", action="store_true", help="show what Snakemake would run")
    args = parser.parse_args(argv)
    root = Path.cwd()
    if not (root / "Snakefile").exists():
        raise SystemExit(f"no Snakefile in {root}: run from the repository root (as dvc repro does)")
    settled = settle_mtimes(root)
    if settled:
        _say(f"gave {settled} files under {', '.join(PUSHED)} one modification time")
    if args.stage == "settle":
        return 0
    targets, forced, until = plan(args.stage, root, args.experiment)
    cmd = snakemake_command(targets, forced, until, args.dry_run)
    _say(f"{args.stage}{'@' + args.experiment if args.experiment else ''}: {shlex.join(cmd[2:])}")
    return subprocess.run(cmd, cwd=root).returncode


if __name__ == "__main__":
    raise SystemExit(main())
