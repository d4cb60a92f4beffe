"""The command of every ``dvc repro`` stage: the project's Snakemake DAG, restricted to one stage.

DVC decides *whether* a stage runs (one of its params, deps or outs differs from dvc.lock); this
module decides *what Snakemake rebuilds* inside it, from file contents only. It never trusts
modification times or ``.snakemake/metadata``: a fresh clone has no metadata, and ``dvc pull`` /
``dvc checkout`` restore files with new modification times in any order, so a plain ``snakemake``
afterwards may find a prepared dataset newer than a checkpoint and retrain everything.

1. *Settle*: every file under the pushed outputs (``data/prepared``, ``results/runs``,
   ``results/shards``) gets one modification time, the oldest among them, so no recorded checkpoint or
   metric looks older than its inputs. Snakemake then runs with ``--rerun-triggers mtime`` (no decision
   depends on metadata, so a fresh clone decides like the machine that built the results).
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

4. *Built ahead, in parallel*: DVC runs stages one at a time, so 28 cheap stages (4 per experiment) would
   pay 28 Snakemake starts and use one core. When a cheap stage finds every cheap file of the workflow that
   is not pushed missing (a fresh clone after ``dvc pull``), it builds all of them in one Snakemake
   call on every core, and records their sha256 under the workflow version and a hash of the pushed run
   records (:func:`pushed_state`) in ``.snakemake/qgen/built_ahead/``. A later cheap stage whose files all
   match that record (same workflow version, same pushed records, same bytes) has nothing to rebuild: its
   files are what Snakemake would build from the same inputs (the cheap steps are deterministic functions of
   code, config and run records), so it skips Snakemake. Anything else (an edited file, new results, other
   code or config) forces the stage's files as in step 3.

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
PUSHED = ("data/prepared", "data/corrupted", "results/runs", "results/shards")
#: the config dvc.yaml tracks as params (the Snakefile's default config)
CONFIG = "config/default.yaml"
#: rules of the expensive stages; everything else is cheap and rebuilt when its stage runs
PREPARE_RULES = ("prepare_data", "prepare_corrupted")
RUN_RULES = ("shard", "train", "measure", "robustness")
#: cheap per-experiment stages named by their rules; ``report`` takes the experiment's other files
STAGE_RULES = {"collect": ("collect",), "analyse": ("analyse", "summary"), "notebook": ("notebook",)}
EXPERIMENT_STAGES = ("collect", "analyse", "report", "notebook")
STAGES = ("settle", "prepare", "runs", *EXPERIMENT_STAGES)


def _say(message: str) -> None:
    print(f"qgen.dvc_stage: {message}", file=sys.stderr, flush=True)


def pushed_files(root: Path) -> list[Path]:
    return [p for top in PUSHED if (root / top).is_dir() for p in (root / top).rglob("*") if p.is_file()]


#: Snakemake's benchmark files, which it counts among a job's outputs when it compares modification times
BENCHMARKS = "logs/benchmarks"


def settle_mtimes(root: Path) -> int:
    """Give every pushed file the oldest modification time among them, and the local benchmark files that
    time too (a benchmark file older than a freshly pulled input would rerun its job); return how many
    pushed files changed."""
    files = pushed_files(root)
    if not files:
        return 0
    stats = {p: p.stat() for p in files}
    oldest = min(s.st_mtime_ns for s in stats.values())
    bench = root / BENCHMARKS
    for path in bench.rglob("*") if bench.is_dir() else []:
        if path.is_file():
            os.utime(path, ns=(path.stat().st_atime_ns, oldest))
    changed = 0
    for path, st in stats.items():
        if st.st_mtime_ns != oldest:
            os.utime(path, ns=(st.st_atime_ns, oldest))
            changed += 1
    return changed


def _datasets(config: dict) -> tuple[list[str], list[str]]:
    """(the datasets the config's runs use, those of the runs with the robustness step)."""
    from qgen.experiments import all_runs, robust_run

    runs = all_runs(config).values()
    names = sorted({run.spec["data"]["name"] for run in runs})
    return names, sorted({run.spec["data"]["name"] for run in runs if robust_run(config, run)})


def _stale(root: Path, folder: str, wanted: dict[str, dict]) -> list[str]:
    """``data/<folder>/<name>/meta.json`` whose recorded ``params`` differ from ``wanted[name]``."""
    from qgen.experiments import canonical_json
    from qgen.io import read_json

    stale = []
    for name, params in wanted.items():
        meta = root / "data" / folder / name / "meta.json"
        if meta.exists() and canonical_json(read_json(meta).get("params") or {}) != canonical_json(params):
            stale.append(meta.relative_to(root).as_posix())
    return stale


def stale_prepared(config: dict, root: Path) -> list[str]:
    """``meta.json`` of datasets the config uses that were prepared with other parameters."""
    from qgen.experiments import dataset_params

    return _stale(root, "prepared", {n: dataset_params(config, n) for n in _datasets(config)[0]})


def stale_corrupted(config: dict, root: Path) -> list[str]:
    """``meta.json`` of corrupted test sets prepared with other robustness settings than the config's."""
    from qgen.experiments import corrupted_params

    return _stale(root, "corrupted", {n: corrupted_params(config, n) for n in _datasets(config)[1]})


def prepared_targets(config: dict) -> list[str]:
    """The meta.json of every prepared dataset and corrupted test set the config's runs use."""
    names, robust = _datasets(config)
    return [f"data/prepared/{n}/meta.json" for n in names] + [f"data/corrupted/{n}/meta.json" for n in robust]


def pending_shards(config: dict, root: Path) -> tuple[list[str], dict[str, int]]:
    """Records of the shards (results/shards/<shard>.json) with a run that is not done by content
    (qgen.shards.run_state: missing files, other data, other measure settings), to be forced: a record may
    be newer than everything it depends on and still be stale. Also: how many runs need ``train`` and
    ``measure``."""
    from qgen.config import measures_schema, validate
    from qgen.experiments import all_runs, robust_run, robustness_json
    from qgen.shards import DONE, TRAIN, canonical_settings, robustness_key, run_states, shard_config_runs

    runs = all_runs(config)
    settings = canonical_settings(validate(dict(config["measures"]), measures_schema(), where="measures"))
    prepared = root / "data" / "prepared"
    specs = {rid: run.spec for rid, run in runs.items()}
    ready = {
        rid: spec for rid, spec in specs.items() if (prepared / spec["data"]["name"] / "meta.json").exists()
    }
    robust = {}  # runs with the robustness step whose corrupted set is prepared (else the shard builds it)
    for rid in list(ready):
        if robust_run(config, runs[rid]):
            meta = root / "data" / "corrupted" / specs[rid]["data"]["name"] / "meta.json"
            if meta.exists():
                robust[rid] = robustness_key(robustness_json(config), meta)
            else:
                del ready[rid]
    states = {rid: TRAIN for rid in specs} | run_states(
        ready, settings, root / "results" / "runs", prepared, robust
    )
    counts = {state: sum(s == state for s in states.values()) for state in set(states.values()) - {DONE}}
    stale = []
    for name, ids in shard_config_runs(runs, config).items():
        record = root / "results" / "shards" / f"{name}.json"
        if record.exists() and any(states[rid] != DONE for rid in ids):  # a missing one is built anyway
            stale.append(record.relative_to(root).as_posix())
    return stale, counts


def snakemake_base() -> list[str]:
    return [sys.executable, "-m", "snakemake"]


def extra_args() -> list[str]:
    return shlex.split(os.environ.get("QGEN_SNAKEMAKE_ARGS", ""))


#: where :func:`dag_outputs` keeps the outputs of one workflow version (one file per version)
DAG_CACHE = Path(".snakemake") / "qgen" / "dag_outputs"


def workflow_version(root: Path) -> str:
    """A hash of everything the DAG's file names can depend on: the Snakefile, workflow/, profiles/, the
    default config, qgen's code, the Snakemake version, QGEN_SNAKEMAKE_ARGS and $SNAKEMAKE_PROFILE (not the
    files' states: the experiments' outputs do not depend on which results exist). Files named inside
    QGEN_SNAKEMAKE_ARGS (another --configfile) count by name only."""
    import hashlib
    from importlib.metadata import version

    digest = hashlib.sha256(f"{version('snakemake')}\0{os.environ.get('QGEN_SNAKEMAKE_ARGS', '')}".encode())
    files = [root / "Snakefile", root / CONFIG, *sorted((root / "workflow").rglob("*"))]
    files += sorted((root / "profiles").rglob("*")) + sorted((root / "src" / "qgen").rglob("*"))
    profile = os.environ.get("SNAKEMAKE_PROFILE")
    if profile:
        files += sorted(Path(profile).rglob("*")) if Path(profile).is_dir() else []
    for path in files:
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(path.as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def dag_outputs(root: Path) -> list[tuple[str, str]]:
    """(file, rule) of every output in the DAG of the default target, from ``snakemake --summary``, kept
    per workflow version (:func:`workflow_version`) so that the stages of one ``dvc repro`` ask once."""
    cache = root / DAG_CACHE / f"{workflow_version(root)}.tsv"
    if cache.exists():
        return [tuple(line.split("\t", 1)) for line in cache.read_text().splitlines()]  # type: ignore[misc]
    outputs = _summary_outputs(root)
    from qgen.io import write_text

    for old in cache.parent.glob("*.tsv"):  # other workflow versions' outputs
        old.unlink(missing_ok=True)
    write_text(cache, "".join(f"{f}\t{rule}\n" for f, rule in outputs))
    return outputs


def _summary_outputs(root: Path) -> list[tuple[str, str]]:
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


#: where :func:`build_ahead` records what it built (one file per workflow version)
BUILT_AHEAD = Path(".snakemake") / "qgen" / "built_ahead"
#: cheap files that dvc.yaml pushes all the same (each experiment's summary.json, a DVC metric)
PUSHED_CHEAP = ("summary.json",)
#: the pushed files whose contents the cheap outputs are computed from (besides code and config)
RUN_RECORDS = ("metrics.json", "measures.json", "robustness.json")


def pushed_state(root: Path) -> str:
    """A hash of what the cheap steps read from the pushed outputs: the runs table, the shard records, every
    run's records (not its model file: nothing cheap reads it) and the prepared sets' meta.json."""
    import hashlib

    files = [root / "results" / "runs.tsv", *sorted((root / "results" / "shards").glob("*.json"))]
    files += sorted(p for name in RUN_RECORDS for p in (root / "results" / "runs").glob(f"*/{name}"))
    files += sorted((root / "data" / "prepared").glob("*/meta.json"))
    digest = hashlib.sha256()
    for path in files:
        if path.is_file():
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def cheap_files(outputs: Iterable[tuple[str, str]], experiments: Iterable[str]) -> list[str]:
    """Every file of the per-experiment stages, for all ``experiments``."""
    return sorted(
        {f for e in experiments for stage in EXPERIMENT_STAGES for f in experiment_files(outputs, e, stage)}
    )


def _built_record(root: Path) -> Path:
    return root / BUILT_AHEAD / f"{workflow_version(root)}.json"


def built_ahead(root: Path, files: Sequence[str]) -> bool:
    """Whether :func:`build_ahead` built exactly these files from the current code, config and run records
    (and nothing changed them since)."""
    from qgen.io import read_json, sha256_file

    record_path = _built_record(root)
    if not record_path.is_file():
        return False
    record = read_json(record_path)
    if record.get("pushed") != pushed_state(root):
        return False
    built = record.get("files", {})
    return all(f in built and (root / f).is_file() and sha256_file(root / f) == built[f] for f in files)


def build_ahead(root: Path, files: Sequence[str]) -> int:
    """Build ``files`` (every cheap file, all missing) in one Snakemake call and record them."""
    from qgen.io import sha256_file, write_json

    pushed = pushed_state(root)
    cmd = snakemake_command(files, files)
    _say(f"every cheap file is missing: building all {len(files)} in one call on every core")
    code = subprocess.run(cmd, cwd=root).returncode
    if code == 0:
        for old in (root / BUILT_AHEAD).glob("*.json"):
            old.unlink(missing_ok=True)
        write_json(
            _built_record(root),
            {"pushed": pushed, "files": {f: sha256_file(root / f) for f in files if (root / f).is_file()}},
        )
    return code


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
        stale = stale_prepared(config, root) + stale_corrupted(config, root)
        if stale:
            _say(f"prepared with other parameters than {CONFIG}: {' '.join(stale)}")
        return prepared_targets(config), stale, ()
    if stage == "runs":
        pending, counts = pending_shards(config, root)
        if counts:
            todo = ", ".join(f"{n} to {state}" for state, n in sorted(counts.items()))
            _say(f"runs not done with {CONFIG}'s data and measure settings: {todo}")
        # the runs table is rewritten first, in a call of its own (main): forced together with the shard
        # records, Snakemake 9 drops the forced shards from the DAG
        return ["all"], pending, ("shard",)
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
    if args.stage == "prepare":  # a DVC output even when no experiment has the robustness step
        (root / "data" / "corrupted").mkdir(parents=True, exist_ok=True)
    targets, forced, until = plan(args.stage, root, args.experiment)
    if args.stage in EXPERIMENT_STAGES and not args.dry_run:
        if built_ahead(root, targets):
            _say(f"{args.stage}@{args.experiment}: built ahead from these inputs; nothing to rebuild")
            return 0
        from qgen.config import load_config

        every = cheap_files(dag_outputs(root), load_config(root / CONFIG)["experiments"])
        unpushed = [f for f in every if Path(f).name not in PUSHED_CHEAP]
        if unpushed and not any((root / f).exists() for f in unpushed):
            return build_ahead(root, every)
    if args.stage == "runs":  # the runs' specs first (results/runs.tsv, always rewritten from the config)
        table = snakemake_command(["results/runs.tsv"], ["runs_table"], (), args.dry_run)
        if (code := subprocess.run(table, cwd=root).returncode) != 0:
            return code
    cmd = snakemake_command(targets, forced, until, args.dry_run)
    _say(f"{args.stage}{'@' + args.experiment if args.experiment else ''}: {shlex.join(cmd[2:])}")
    return subprocess.run(cmd, cwd=root).returncode


if __name__ == "__main__":
    raise SystemExit(main())
