# Shared set-up: validate the config, expand experiments into runs, helpers for inputs and params.
import json
import os
import re
import sys

from snakemake.utils import min_version

from qgen.config import validate_config
from qgen.experiments import (
    DATASET_PATTERN,
    RUN_ID_PATTERN,
    all_runs,
    dataset_entry,
    runs_table,
    weights_path,
)

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


def rule_resources(rule):
    """The resources: of a rule that runs as a cluster job, from config.resources.<rule>."""
    settings = config["resources"][rule]
    gpus = settings.get("gpus", 0)
    res = {"mem_mb": settings["mem_mb"], "runtime": settings["runtime"], "gpu": gpus}
    partition = (cluster_setting("gpu_partition") if gpus else None) or cluster_setting("partition")
    if partition:
        res["slurm_partition"] = partition
    if cluster_setting("account"):
        res["slurm_account"] = cluster_setting("account")
    return res


# Passed on to jobs in distributed execution.
envvars:
    "PATH",
    "QGEN_RUNTIME",
    "QGEN_MEASURES",
    "QGEN_WEIGHT_FILES",


wildcard_constraints:
    run_id=RUN_ID_PATTERN,
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


def run_data(wildcards):
    name = run_record(wildcards.run_id).spec["data"]["name"]
    return {key: f"data/prepared/{name}/{file}" for key, file in DATA_FILES.items()}


def experiment_run_files(wildcards):
    run_ids = [rid for rid, run in RUNS.items() if wildcards.experiment in run.experiments]
    return {
        "metrics": expand("results/runs/{run_id}/metrics.json", run_id=run_ids),
        "measures": expand("results/runs/{run_id}/measures.json", run_id=run_ids),
    }


def runs_table_text(wildcards):
    return runs_table(RUNS)


# The report notebook ships with the workflow; jobs may run in another working directory (-d).
REPORT_NOTEBOOK = os.path.relpath(os.path.join(workflow.basedir, "notebooks", "report.py"))


def paper_targets(experiments):
    """The files of the paper tables (and figures) the experiments ask for."""
    out = []
    for experiment in experiments:
        for name in config["experiments"][experiment].get("paper_tables", []):
            out += [f"results/{experiment}/tables/{name}.{ext}" for ext in ("md", "csv", "tex")]
            if name == "low_precision":
                out += [f"figures/{experiment}/error_vs_prop_bits.{ext}" for ext in ("png", "pdf")]
    return out
