# Shared set-up: validate the config, expand experiments into runs, helpers for inputs and params.
import json
import os
import re
import shlex
import sys

from snakemake.utils import min_version

from qgen.config import validate_config
from qgen.experiments import (
    DATASET_PATTERN,
    RUN_ID_PATTERN,
    all_runs,
    corrupted_params,
    dataset_entry,
    robust_run,
    robustness_json,
    runs_table,
    weights_path,
)
from qgen.shards import SHARD_PATTERN, shard_config_runs, shards_of

min_version("9.0")

# Fills in schema defaults and stops with a message naming every bad key.
validate_config(config)

RUNS = all_runs(config)
EXPERIMENTS = list(config["experiments"])

# Rules call the `qgen` CLI of the Python environment that runs Snakemake (cluster jobs re-run
# Snakemake from the same environment path), whether or not that environment is activated.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")

# Runtime settings change how a run executes, never what it computes. They reach the jobs through
# the environment (QGEN_RUNTIME), not as params, so changing them does not rerun finished runs;
# each result records them in its provenance.
RUNTIME = config["runtime"]
os.environ["QGEN_RUNTIME"] = json.dumps(RUNTIME, sort_keys=True)
# Every qgen job ends its log with a timing line (qgen.job_cost): start-up, imports and work, read with the
# rules' benchmark files (logs/benchmarks/) by `qgen cost`.
os.environ["QGEN_JOB_TIMING"] = "1"
# Shards (qgen.shards): `all` builds the runs in shard jobs of about runtime.shard_runs runs each (or an
# experiment's own shard_runs), one job per shard in the DAG; the per-run rules build a run on its own when
# one of its files is asked for.
SHARDS = shard_config_runs(RUNS, config)
# The training job also measures its model (one interpreter start per run instead of two) into a
# cache keyed by these settings and the model's sha256; the measure rule adopts it only if both match.
MEASURES_JSON = json.dumps(config["measures"], sort_keys=True)
os.environ["QGEN_MEASURES"] = MEASURES_JSON
# Where each pretrained weights file is (config weights.<name>.path, else $QGEN_WEIGHTS/<name>.pth): through
# the environment too, so moving a file never retrains; the run spec carries the file's sha256, checked
# before loading.
os.environ["QGEN_WEIGHT_FILES"] = json.dumps(
    {name: weights_path(config, name) for name in config["weights"]}, sort_keys=True
)


# Cluster resources: what each job asks the scheduler for (config.resources, config.cluster). They are
# resources, never params, so changing them never reruns a finished job or changes a run id.
CLUSTER_ENV = {
    "partition": "QGEN_SLURM_PARTITION",
    "gpu_partition": "QGEN_SLURM_GPU_PARTITION",
    "account": "QGEN_SLURM_ACCOUNT",
}


def cluster_setting(key):
    """config.cluster.<key>, else its environment variable, else None (SLURM's default)."""
    value = config["cluster"][key] or os.environ.get(CLUSTER_ENV[key]) or None
    if value is not None and not re.fullmatch(r"[A-Za-z0-9_.,-]+", value):
        raise ValueError(f"cluster.{key} / ${CLUSTER_ENV[key]}: {value!r} is not a SLURM name")
    return value


def placement(gpus):
    """Partition and account of a cluster job asking for ``gpus`` GPUs (none set: SLURM's defaults)."""
    res = {}
    partition = (cluster_setting("gpu_partition") if gpus else None) or cluster_setting("partition")
    if partition:
        res["slurm_partition"] = partition
    if cluster_setting("account"):
        res["slurm_account"] = cluster_setting("account")
    return res


def rule_resources(rule):
    """The resources: of a rule that runs as a cluster job, from config.resources.<rule>."""
    settings = config["resources"][rule]
    gpus = settings.get("gpus", 0)
    return {"mem_mb": settings["mem_mb"], "runtime": settings["runtime"], "gpu": gpus, **placement(gpus)}


# Passed on to jobs in distributed execution.
envvars:
    "PATH",
    "QGEN_RUNTIME",
    "QGEN_MEASURES",
    "QGEN_WEIGHT_FILES",
    "QGEN_JOB_TIMING",


wildcard_constraints:
    run_id=RUN_ID_PATTERN,
    shard=SHARD_PATTERN,
    dataset=DATASET_PATTERN,
    experiment="[A-Za-z0-9_]+",


def run_record(run_id):
    """The run's spec; a run id outside the config gets a clear error."""
    if run_id not in RUNS:
        raise ValueError(
            f"run {run_id} is not defined by the current config; `qgen runs <config>` lists the run ids"
        )
    return RUNS[run_id]


def run_spec_json(wildcards):
    return json.dumps({"run_id": wildcards.run_id, "spec": run_record(wildcards.run_id).spec}, sort_keys=True)


DATA_FILES = {"train": "train.pt", "test": "test.pt", "meta": "meta.json"}


def data_files(name):
    return {key: f"data/prepared/{name}/{file}" for key, file in DATA_FILES.items()}


def run_data(wildcards):
    return data_files(run_record(wildcards.run_id).spec["data"]["name"])


def shard_record(name):
    return f"results/shards/{name}.json"


def shard_runs(name):
    if name not in SHARDS:
        raise ValueError(f"shard {name} is not formed by the current config (runtime.shard_runs)")
    return SHARDS[name]


def shard_data(wildcards):
    """The prepared files of a shard's dataset (one dataset per shard)."""
    return data_files(RUNS[shard_runs(wildcards.shard)[0]].spec["data"]["name"])


# The robustness step (issue 18): runs of experiments with `robustness: true` are evaluated on their
# dataset's corrupted test set in their shard, after training and measuring (settings: a param of the shard).
ROBUSTNESS_JSON = robustness_json(config)
ROBUST_RUNS = {rid for rid, run in RUNS.items() if robust_run(config, run)}


def corrupted_meta(name):
    return f"data/corrupted/{name}/meta.json"


def shard_robust(name):
    """Whether the shard's runs have the robustness step (a shard's runs share their experiments)."""
    return shard_runs(name)[0] in ROBUST_RUNS


def shard_corrupted(wildcards):
    if not shard_robust(wildcards.shard):
        return {}
    return {"corrupted": corrupted_meta(RUNS[shard_runs(wildcards.shard)[0]].spec["data"]["name"])}


def shard_robustness_args(wildcards):
    if not shard_robust(wildcards.shard):
        return ""
    name = RUNS[shard_runs(wildcards.shard)[0]].spec["data"]["name"]
    return f"--robustness {shlex.quote(ROBUSTNESS_JSON)} --corrupted-meta {shlex.quote(corrupted_meta(name))}"


def shard_resources():
    """A shard job's request: parallel_runs runs at once, each with one run's CPUs (threads, the rule's
    threads) and memory; one GPU shared by them when a run asks for one; the runtimes of its runs,
    parallel_runs at a time (config.resources.train and .measure are per run)."""
    train, measure = config["resources"]["train"], config["resources"]["measure"]
    k = RUNTIME["parallel_runs"]
    gpus = min(1, max(train.get("gpus", 0), measure.get("gpus", 0)))
    per_run = train["runtime"] + measure["runtime"]
    return {
        "mem_mb": k * max(train["mem_mb"], measure["mem_mb"]),
        "runtime": lambda wildcards: -(-len(shard_runs(wildcards.shard)) // k) * per_run,
        "gpu": gpus,
        **placement(gpus),
    }


def experiment_run_ids(experiment):
    return [rid for rid, run in RUNS.items() if experiment in run.experiments]


def experiment_shards(wildcards):
    return [shard_record(name) for name in shards_of(SHARDS, experiment_run_ids(wildcards.experiment))]


def off_shard_files():
    """Run files that `collect` reads (metrics.json, measures.json) and that are missing or newer than the
    record of their shard (removed by hand, or rebuilt by the per-run rules since the shard ran): the
    per-run files are not inputs of `all`'s jobs, so these few are added to `collect`'s inputs. Snakemake
    then builds the missing ones through the per-run rules (the measure rule adopts a training job's
    cache) and collects again. Four stats per run; shards without a record are built whole anyway."""
    found = {}
    for name, ids in SHARDS.items():
        try:
            recorded = os.stat(shard_record(name)).st_mtime_ns
        except FileNotFoundError:
            continue
        for rid in ids:
            files = ("metrics.json", "measures.json", *(("robustness.json",) if rid in ROBUST_RUNS else ()))
            for file in files:
                path = f"results/runs/{rid}/{file}"
                try:
                    if os.stat(path).st_mtime_ns <= recorded:
                        continue
                except FileNotFoundError:
                    pass
                found.setdefault(rid, []).append(path)
    return found


# Checked by the controller only (collect runs there; not in every cluster job step).
OFF_SHARD = off_shard_files() if workflow.is_main_process else {}


def experiment_off_shard_files(wildcards):
    return [path for rid in experiment_run_ids(wildcards.experiment) for path in OFF_SHARD.get(rid, ())]


def runs_table_text(wildcards):
    return runs_table(RUNS)


# The report notebook ships with the workflow; jobs may run in another working directory (-d).
REPORT_NOTEBOOK = os.path.relpath(os.path.join(workflow.basedir, "notebooks", "report.py"))


def paper_targets(experiments):
    """The files of the paper tables (and figures) the experiments ask for."""
    # the figure each paper table comes with (rules in papers.smk)
    figures = {
        "low_precision": "error_vs_prop_bits",
        "saq": "saq_vs_bits",
        "noise_injection": "noise_vs_rounding",
        "robustness": "robustness",
        "unet": "dice_vs_bits",
    }
    out = []
    for experiment in experiments:
        tables = list(config["experiments"][experiment].get("paper_tables", []))
        if config["experiments"][experiment].get("robustness"):
            tables.append("robustness")  # QGen's Table 4 (qgen.report.robustness)
        for name in tables:
            out += [f"results/{experiment}/tables/{name}.{ext}" for ext in ("md", "csv", "tex")]
            if name in figures:
                out += [f"figures/{experiment}/{figures[name]}.{ext}" for ext in ("png", "pdf")]
    return out
