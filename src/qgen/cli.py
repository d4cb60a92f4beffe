"""``qgen <step>``: every workflow rule's work is one call of this CLI, so each step can be run by hand.

qgen validate CONFIG                      check a config against the schema
qgen runs CONFIG [--out runs.tsv]         list the runs a config expands to
qgen spec CONFIG RUN_ID [--out spec.json] print or write one run's spec (JSON, for train --spec)
qgen prepare-data NAME --params JSON --meta DIR/meta.json
qgen verify-data DIR/meta.json [--full]   re-check a prepared dataset (--full: re-hash every image)
qgen train --spec SPEC --data-meta meta.json --out-model DIR/model.pt --out-log DIR/train_log.csv
qgen shard NAME --run-ids ID,ID --runs-table runs.tsv --settings JSON --out NAME.json
qgen evaluate --model model.pt --data-meta meta.json --out metrics.json
qgen collect --experiment NAME --out runs.csv METRICS.json...
qgen summary --runs runs.csv --claims claims.json --out summary.json
qgen audit RUN_ID [--config CONFIG] [--keep]   rebuild one run from scratch, compare with its files
qgen report --runs runs.csv --experiment NAME --tables-dir DIR --figures-dir DIR
qgen paper-tables --runs runs.csv --experiment NAME --tables binaryconnect --tables-dir DIR --figures-dir DIR
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from qgen import io as qio
from qgen.config import ConfigError, load_config
from qgen.job_cost import JobClock
from qgen.runner import RUNTIME_DEFAULTS


def _runtime(args: argparse.Namespace) -> dict[str, Any]:
    """Runtime settings: defaults < $QGEN_RUNTIME (set by the workflow from config.runtime) < flags."""
    runtime = {**RUNTIME_DEFAULTS, **json.loads(os.environ.get("QGEN_RUNTIME") or "{}")}
    for key in RUNTIME_DEFAULTS:
        value = getattr(args, key, None)
        if value is not None:
            runtime[key] = value
    return runtime


def _add_runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, help="train through torch.compile")
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--eval-batch-size", type=int, help="batch size of evaluation passes (memory only)")
    p.add_argument("--loader-workers", type=int, help="DataLoader processes reading a folder set (ImageNet)")


def scoped(config: dict[str, Any], scope: str | None) -> dict[str, Any]:
    """``config`` with ``scope`` given (main: the experiments' main_job parts; full: every run)."""
    return config if scope is None else {**config, "scope": scope}


def cmd_validate(args: argparse.Namespace) -> int:
    from qgen.experiments import expand_config

    config = scoped(load_config(args.config), args.scope)
    runs = expand_config(config)
    for name, rs in runs.items():
        print(f"{name}: {len(rs)} runs")
    print(f"{args.config}: valid")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from qgen.experiments import all_runs, runs_table

    text = runs_table(all_runs(scoped(load_config(args.config), args.scope)))
    if args.out:
        qio.write_text(args.out, text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_spec(args: argparse.Namespace) -> int:
    from qgen.experiments import all_runs

    runs = all_runs(scoped(load_config(args.config), "full"))  # any run, of the main job or not
    if args.run_id not in runs:
        raise SystemExit(f"run {args.run_id} is not in {args.config}")
    record = {"run_id": args.run_id, "spec": runs[args.run_id].spec}
    if args.out:
        qio.write_json(args.out, record)
    else:
        print(json.dumps(record, sort_keys=True))
    return 0


def cmd_prepare_data(args: argparse.Namespace) -> int:
    from qgen.data import prepare

    meta = prepare(args.name, json.loads(args.params), Path(args.meta).parent)
    print(f"prepared {args.name}: {meta['n']} examples, checksum {meta['checksum'][:12]}", file=sys.stderr)
    return 0


def cmd_prepare_corrupted(args: argparse.Namespace) -> int:
    from qgen.data.corrupted import prepare_corrupted

    meta = prepare_corrupted(json.loads(args.params), Path(args.prepared_meta).parent, Path(args.meta).parent)
    print(
        f"corrupted set {args.meta}: {len(meta['corruptions'])} corruptions x {len(meta['severities'])} "
        f"severities, checksum {meta['checksum'][:12]}",
        file=sys.stderr,
    )
    return 0


def cmd_robustness(args: argparse.Namespace) -> int:
    from qgen import runtime
    from qgen.runner import robustness_files

    run_cfg = _runtime(args)
    robustness_files(
        args.model, args.data_meta, args.corrupted_meta, args.settings, args.out, run_cfg,
        runtime.configure(run_cfg),
    )  # fmt: skip
    return 0


def cmd_verify_data(args: argparse.Namespace) -> int:
    from qgen.data import verify

    meta = verify(Path(args.meta).parent, full=args.full)
    checked = "every file's sha256" + (" and every image's sha256" if args.full else "")
    print(f"{args.meta}: {meta['dataset']} intact ({checked} checked)", file=sys.stderr)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train (resuming from the run's checkpoint), write model.pt, evaluate into --out-metrics and measure
    into --measure-cache (qgen.runner.train_files)."""
    from qgen import runtime
    from qgen.runner import train_files

    record = json.loads(args.spec) if args.spec.lstrip().startswith("{") else qio.read_json(args.spec)
    run_cfg = _runtime(args)
    train_files(
        record,
        args.data_meta,
        args.out_model,
        args.out_log,
        args.out_metrics,
        run_cfg,
        runtime.configure(run_cfg),
        settings_json=os.environ.get("QGEN_MEASURES") or None,
        measures_path=args.measure_cache,
        as_cache=True,
        pretrained=args.pretrained,
    )
    return 0


def cmd_shard(args: argparse.Namespace) -> int:
    """Build the runs of one shard in worker processes (qgen.worker); skip the finished ones."""
    from qgen.shards import read_runs_table
    from qgen.worker import run_shard

    ids = [rid for rid in args.run_ids.split(",") if rid]
    specs = read_runs_table(Path(args.runs_table), ids)
    run_cfg = _runtime(args)
    if args.cpus:  # the CPUs Snakemake gave the job (it may scale a rule's threads down to --cores)
        fit = max(1, args.cpus // int(run_cfg["threads"]))
        run_cfg["parallel_runs"] = min(int(run_cfg["parallel_runs"]), fit)
    return run_shard(
        args.name,
        {rid: specs[rid] for rid in ids},
        settings_json=args.settings,
        run_cfg=run_cfg,
        out=Path(args.out),
        runs_dir=Path(args.runs_dir),
        data_dir=Path(args.data_dir),
        log_dir=Path(args.log_dir),
        robustness=(
            {"settings": args.robustness, "corrupted_meta": args.corrupted_meta} if args.robustness else None
        ),
    )


def cmd_cost(args: argparse.Namespace) -> int:
    from qgen.pipeline_cost import report, summarize

    root = Path(args.root)
    path = Path(args.config) if args.config else root / "config" / "default.yaml"
    config = None if args.config == "none" or not path.exists() else scoped(load_config(path), args.scope)
    if args.json:
        print(json.dumps(summarize(root, args.budget_minutes, args.cores, config), indent=1, sort_keys=True))
        return 0
    text = report(root, args.budget_minutes, args.cores, config)
    if args.out:
        qio.write_text(args.out, text)
    print(text, end="")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from qgen import runtime
    from qgen.runner import evaluate_model_file
    from qgen.train import preemption

    run_cfg = _runtime(args)
    with preemption.exit_on_signal("evaluating", "nothing was written: run the same command again"):
        evaluate_model_file(args.model, args.data_meta, args.out, run_cfg, runtime.configure(run_cfg))
    return 0


def cmd_measure(args: argparse.Namespace) -> int:
    from qgen.runner import adopt_cache

    # Fast path, before anything imports torch: adopt measures the training job already computed
    # with exactly these settings for exactly this model file.
    if args.cache and adopt_cache(args.cache, args.settings, args.model, args.out) is not None:
        return 0
    from qgen import runtime
    from qgen.runner import measure_files

    run_cfg = _runtime(args)
    measure_files(args.model, args.data_meta, args.settings, args.out, run_cfg, runtime.configure(run_cfg))
    if args.cache:
        Path(args.cache).unlink(missing_ok=True)
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from qgen.report.summary import write_summary

    write_summary(args.runs, args.claims, args.out)
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from qgen.audit import AuditError, audit_run, format_report
    from qgen.config import validate_config

    try:
        if args.config_json:
            config = validate_config(json.loads(args.config_json))
        else:
            config = load_config(args.config)
        report = audit_run(
            args.run_id,
            config,
            root=args.root,
            snakefile=args.snakefile,
            scratch=args.scratch,
            keep=args.keep,
            cores=args.cores,
            device=args.device,
            rtol=args.rtol,
            atol=args.atol,
        )
    except AuditError as err:
        print(f"qgen audit: {err}", file=sys.stderr)
        return 2
    sys.stdout.write(format_report(report))
    if args.out:
        qio.write_json(args.out, report)
    return 0 if report["pass"] else 1


def cmd_collect(args: argparse.Namespace) -> int:
    from qgen.runs_table import collect, write_csv

    metrics, measures = list(args.metrics), list(args.measures)
    if args.runs_table:  # every run of the experiment in the runs table, from its folder in --runs-dir
        from qgen.shards import experiment_runs

        run_dirs = [
            Path(args.runs_dir) / rid for rid in experiment_runs(Path(args.runs_table), args.experiment)
        ]
        needed = ("metrics.json", "measures.json", *(("robustness.json",) if args.robustness else ()))
        missing = [str(d / f) for d in run_dirs for f in needed if not (d / f).exists()]
        if missing:
            raise SystemExit(
                f"{len(missing)} run files are missing, e.g. {missing[0]}: run snakemake again (collect "
                "asks the per-run rules for run files that are missing although their shard has run)"
            )
        metrics += [str(d / "metrics.json") for d in run_dirs]
        measures += [str(d / "measures.json") for d in run_dirs]
        robustness = [str(d / "robustness.json") for d in run_dirs] if args.robustness else []
    else:
        robustness = list(args.robustness_files)
    if not metrics:
        raise SystemExit(f"no runs to collect for experiment {args.experiment}")
    df = collect(metrics, args.experiment, measures, robustness)
    if robustness:
        from qgen.analysis.robustness import with_relative_error

        df = with_relative_error(df)
    write_csv(df, args.out)
    return 0


def cmd_analyse(args: argparse.Namespace) -> int:
    from qgen.analysis.run import analyse
    from qgen.config import analysis_schema, validate
    from qgen.runs_table import read_runs

    settings = validate(json.loads(args.settings), analysis_schema(), where="analysis settings")
    result = analyse(read_runs(args.runs), args.out_dir, settings, args.experiment)
    for claim in result["claims"]:
        print(f"{claim['claim']}: {claim['verdict']} ({claim['regime']})", file=sys.stderr)
    return 0


def cmd_notebook(args: argparse.Namespace) -> int:
    from qgen.report.notebook import execute_to_html

    execute_to_html(args.notebook, args.experiment, args.out)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from qgen.report.figures import gap_vs_bits, measures_vs_bits
    from qgen.report.tables import gap_by_bits, write_gap_tables, write_measure_tables
    from qgen.runs_table import read_runs

    df = read_runs(args.runs)
    figures = Path(args.figures_dir)
    write_gap_tables(gap_by_bits(df), args.tables_dir, args.experiment)
    write_measure_tables(df, args.tables_dir, args.experiment)
    gap_vs_bits(df, figures / "gap_by_bits", args.experiment)
    measures_vs_bits(df, figures / "measures_by_bits", f"{args.experiment}: sharpness")
    if args.analysis_dir:
        import pandas as pd

        from qgen.report.figures import bound_vs_gap, correlation_heatmap, regularization_check

        analysis = Path(args.analysis_dir)
        correlation_heatmap(
            pd.read_csv(analysis / "correlation.csv"), figures / "correlation", args.experiment
        )
        bound_vs_gap(
            pd.read_csv(analysis / "bound_runs.csv", dtype={"bits": str}),
            figures / "bound_vs_gap",
            args.experiment,
        )
        regularization_check(
            pd.read_csv(analysis / "regularization.csv"), figures / "regularization", args.experiment
        )
    return 0


def cmd_paper_tables(args: argparse.Namespace) -> int:
    from qgen.report.papers import write_paper_outputs
    from qgen.runs_table import read_runs

    write_paper_outputs(read_runs(args.runs), args.tables, args.tables_dir, args.figures_dir, args.experiment)
    return 0


def _model_step(sub, name: str, help_text: str, func) -> argparse.ArgumentParser:
    """A step that reads a trained model.pt and its prepared data and writes one JSON file."""
    p = sub.add_parser(name, help=help_text)
    p.add_argument("--model", required=True)
    p.add_argument("--data-meta", required=True)
    p.add_argument("--out", required=True)
    _add_runtime(p)
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qgen", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    scope_help = "main: the experiments' main_job parts; full: every run (default: the config's scope)"
    p = sub.add_parser("validate", help="validate a config and count its runs")
    p.add_argument("config")
    p.add_argument("--scope", choices=["main", "full"], help=scope_help)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("runs", help="list the runs of a config (TSV)")
    p.add_argument("config")
    p.add_argument("--scope", choices=["main", "full"], help=scope_help)
    p.add_argument("--out")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("spec", help="write one run's spec")
    p.add_argument("config")
    p.add_argument("run_id")
    p.add_argument("--out")
    p.set_defaults(func=cmd_spec)

    p = sub.add_parser("prepare-data", help="prepare a dataset into DIR/{train,test}.pt + meta.json")
    p.add_argument("name")
    p.add_argument("--params", default="{}", help="preparation settings as JSON")
    p.add_argument("--meta", required=True, help="path of the meta.json to write; data files go beside it")
    p.set_defaults(func=cmd_prepare_data)

    p = sub.add_parser(
        "prepare-corrupted", help="a prepared dataset's corrupted test set (generated, or released files)"
    )
    p.add_argument("--params", required=True, help="qgen.experiments.corrupted_params as JSON")
    p.add_argument("--prepared-meta", required=True, help="the prepared dataset's meta.json")
    p.add_argument("--meta", required=True, help="the corrupted set's meta.json to write; files go beside it")
    p.set_defaults(func=cmd_prepare_corrupted)

    p = sub.add_parser(
        "verify-data",
        help="check a prepared dataset: each file's sha256 (folder sets: each image's size; --full: sha256)",
    )
    p.add_argument("meta", help="the prepared dataset's meta.json")
    p.add_argument("--full", action="store_true", help="re-hash every image of a folder set (slow)")
    p.set_defaults(func=cmd_verify_data)

    p = sub.add_parser("train", help="train one run (resumes from checkpoint.pt beside --out-model)")
    p.add_argument("--spec", required=True, help="a spec.json path, or its JSON text")
    p.add_argument("--data-meta", required=True)
    p.add_argument("--out-model", required=True)
    p.add_argument("--out-log", required=True)
    p.add_argument("--out-metrics", help="also evaluate the trained model into this metrics.json")
    p.add_argument("--measure-cache", help="also measure (settings from $QGEN_MEASURES) into this cache file")
    p.add_argument(
        "--pretrained", help="the file of the spec's model.pretrained weights (else $QGEN_WEIGHT_FILES)"
    )
    _add_runtime(p)
    p.set_defaults(func=cmd_train)

    _model_step(
        sub, "evaluate", "accuracy, cross-entropy and gap of a trained (quantized) model", cmd_evaluate
    )
    p = _model_step(
        sub, "measure", "noise, sharpness, Hessian and norm measures of a trained model", cmd_measure
    )
    p.add_argument("--settings", default="{}", help="the config's measures section as JSON")
    p.add_argument("--cache", help="measures precomputed by `qgen train --measure-cache` (used if valid)")
    p = _model_step(
        sub,
        "robustness",
        "accuracy and cross-entropy of a trained model on corrupted test data",
        cmd_robustness,
    )
    p.add_argument("--corrupted-meta", required=True, help="the corrupted test set's meta.json")
    p.add_argument("--settings", required=True, help="the config's robustness settings as JSON")

    p = sub.add_parser("shard", help="build the runs of one shard in workers that outlive one run")
    p.add_argument("name", help="the shard's name (its record is --out)")
    p.add_argument("--run-ids", required=True, help="comma-separated run ids")
    p.add_argument("--runs-table", required=True, help="results/runs.tsv: the runs' specs")
    p.add_argument("--settings", required=True, help="the config's measures section as JSON")
    p.add_argument("--out", required=True, help="the shard's record, written when every run is built")
    p.add_argument("--runs-dir", default="results/runs")
    p.add_argument("--data-dir", default="data/prepared")
    p.add_argument(
        "--log-dir", default="logs", help="per-run logs go to LOG_DIR/{train,measure}/<run_id>.log"
    )
    _add_runtime(p)
    p.add_argument("--parallel-runs", type=int, help="runs built at once (worker processes)")
    p.add_argument("--cpus", type=int, help="CPUs of the job: at most CPUS // threads runs at once")
    p.add_argument("--robustness", default="", help="the robustness step's settings as JSON (none: no step)")
    p.add_argument("--corrupted-meta", help="the corrupted test set's meta.json (with --robustness)")
    p.set_defaults(func=cmd_shard)

    p = sub.add_parser("collect", help="collect metrics.json (and measures.json) files into one runs.csv")
    p.add_argument("--experiment", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("metrics", nargs="*", help="metrics.json files (or --runs-table)")
    p.add_argument(
        "--runs-table", help="results/runs.tsv: collect every run of the experiment from --runs-dir"
    )
    p.add_argument("--runs-dir", default="results/runs")
    p.add_argument("--measures", nargs="*", default=[], help="measures.json files, matched to runs by run id")
    p.add_argument(
        "--robustness", action="store_true", help="with --runs-table: also each run's robustness.json"
    )
    p.add_argument(
        "--robustness-files", nargs="*", default=[], help="robustness.json files, matched to runs by run id"
    )
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser(
        "analyse", help="correlation, bound, regularization check and claims of one experiment"
    )
    p.add_argument("--runs", required=True)
    p.add_argument("--experiment", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--settings", default="{}", help="the config's analysis section as JSON")
    p.set_defaults(func=cmd_analyse)

    p = sub.add_parser("summary", help="headline numbers of one experiment (summary.json, dvc metrics)")
    p.add_argument("--runs", required=True)
    p.add_argument("--claims", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser(
        "audit",
        help="rebuild one run from scratch in a scratch directory and compare it with its recorded files",
    )
    p.add_argument("run_id")
    p.add_argument("--config", default="config/default.yaml", help="the config that defines the run")
    p.add_argument("--config-json", help="the config as JSON text (used by the workflow's audit rule)")
    p.add_argument("--root", default=".", help="project folder holding results/runs/<run_id>/")
    p.add_argument("--snakefile", help="default: ROOT/Snakefile, else the one of the qgen checkout")
    p.add_argument("--scratch", help="empty folder to rebuild in (default: a new temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    p.add_argument("--cores", type=int, default=1, help="cores of the rebuild")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: the recorded device class")
    p.add_argument("--rtol", type=float, help="relative tolerance (default: 0 on CPU, 1e-3 with CUDA)")
    p.add_argument("--atol", type=float, help="absolute tolerance (default: 0 on CPU, 1e-6 with CUDA)")
    p.add_argument("--out", help="also write the audit report as JSON")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("notebook", help="execute the report notebook of one experiment into HTML")
    p.add_argument("--notebook", default="notebooks/report.py")
    p.add_argument("--experiment", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_notebook)

    p = sub.add_parser("report", help="tables and figures of one experiment")
    p.add_argument("--runs", required=True)
    p.add_argument("--experiment", required=True)
    p.add_argument("--tables-dir", required=True)
    p.add_argument("--figures-dir", required=True)
    p.add_argument("--analysis-dir", help="folder with the analyse step's outputs (adds their figures)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "cost", help="where a build's time went: per rule, per experiment, overhead share (logs/benchmarks)"
    )
    p.add_argument("--root", default=".", help="the project folder that was built")
    p.add_argument("--budget-minutes", type=float, default=15.0, help="the main job's budget (15)")
    p.add_argument("--cores", type=int, default=2, help="cores of the budget (2)")
    p.add_argument("--out", help="also write the report (markdown) here")
    p.add_argument("--json", action="store_true", help="print the figures as JSON instead")
    p.add_argument(
        "--config",
        help="count only the jobs of this config's DAG (default: ROOT/config/default.yaml if it exists; "
        "'none': every benchmark file)",
    )
    p.add_argument("--scope", choices=["main", "full"], help="the build's scope: " + scope_help)
    p.set_defaults(func=cmd_cost)

    p = sub.add_parser("paper-tables", help="paper-specific tables and figures of one experiment")
    p.add_argument("--runs", required=True)
    p.add_argument("--experiment", required=True)
    p.add_argument("--tables", nargs="+", required=True, help="binaryconnect, low_precision")
    p.add_argument("--tables-dir", required=True)
    p.add_argument("--figures-dir", required=True)
    p.set_defaults(func=cmd_paper_tables)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
    )
    clock = JobClock(args.func.__name__.removeprefix("cmd_").replace("_", "-")) if _timed() else None
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"qgen: {err}", file=sys.stderr)
        return 2
    except (LookupError, RuntimeError) as err:
        from qgen.data.integrity import DatasetError  # torch-free
        from qgen.data.registry import UnknownDatasetError

        if not isinstance(err, DatasetError | UnknownDatasetError):
            raise
        print(f"qgen: {err}", file=sys.stderr)  # a missing or corrupt dataset: the message says which file
        return 2
    finally:
        if clock is not None:
            clock.write()


def _timed() -> bool:
    """Workflow jobs (QGEN_JOB_TIMING=1, set by the Snakefile) end their log with a timing line."""
    return os.environ.get("QGEN_JOB_TIMING") == "1"


if __name__ == "__main__":
    raise SystemExit(main())
