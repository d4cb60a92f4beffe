# Shards: `all` builds the runs in shard jobs (qgen.shards, qgen.worker). One job per shard of about
# runtime.shard_runs runs (results/shards/<shard>.json records what it did): a worker process imports
# torch once and builds the shard's runs one after another (runtime.parallel_runs of them at once), each
# with the same code as the per-run rules below, its log in logs/train/<run_id>.log. The job decides from
# file contents what each run needs (train, only measure, or nothing) and skips finished runs, so a
# rerun after a failure, a preemption or new measure settings (a param here) does only what is missing.
# The per-run files are written by the shard job but declared only by the per-run rules: declared here,
# they would be deleted when one run of the shard fails, and a single run's file would build its whole
# shard. docs/architecture.md ("Shards") explains the choice.


rule shard:
    input:
        unpack(shard_data),
        unpack(shard_corrupted),  # the corrupted test set, for runs with the robustness step
        runs=ancient("results/runs.tsv"),  # the runs' specs; a rewritten table alone reruns nothing
    output:
        record="results/shards/{shard}.json",
    params:
        run_ids=lambda wildcards: ",".join(shard_runs(wildcards.shard)),
        settings=MEASURES_JSON,
        robustness=shard_robustness_args,
    log:
        "logs/shards/{shard}.log",
    benchmark:
        "logs/benchmarks/shard/{shard}.tsv"
    conda:
        "../../environment.yml"
    threads: RUNTIME["threads"] * RUNTIME["parallel_runs"]
    # Shards first (after the data, runs table and corrupted sets they wait for, priority 20): they hold nearly
    # all of a build's CPU time, and the short report jobs of finished experiments then fill the cores while
    # the last shards run instead of delaying them. Order only: outputs are unchanged.
    priority: 10
    resources:
        **shard_resources(),
    shell:
        "qgen shard {wildcards.shard} --run-ids {params.run_ids} --runs-table {input.runs:q}"
        " --settings {params.settings:q} --out {output.record:q} --cpus {threads} {params.robustness}"
        " 2> {log:q}"


# One run on its own (`snakemake results/runs/<run_id>/metrics.json`, `qgen audit`). Files of a run rebuilt
# this way (or removed by hand) are newer than (or missing from) its shard's record: `collect` then asks for
# them directly (common.smk, off_shard_files), so `all` completes the run here and collects it again. Per-run work in one process: train (resumable), evaluate, and measure into a cache that the measure
# rule adopts when its settings and the model file still match (an interpreter start with torch costs
# more than a small run's training). Each run's files stay separate DAG targets; measure settings are
# params of `measure` only, so changing them re-measures (the stale cache is ignored), never retrains.
# Undeclared side files, on purpose (docs/architecture.md, "Files of one run"):
# - checkpoint.pt: kept by `qgen train` until model.pt, metrics.json and the cache are written, so when
#   the job fails or is preempted while evaluating or measuring (Snakemake then deletes its outputs), the
#   rerun loads the finished training from it and does not train again.
# - measures.cache.json: declared, it would retrain runs (as an output of train, its removal by measure
#   makes train incomplete; as an input of measure, a new measure setting needs train to remake it). It is
#   keyed instead by the measure settings and model.pt's sha256: train removes any old one before it starts,
#   measure adopts it only if both keys match, measures afresh otherwise, and removes it either way.
# On a cluster both rules belong to the group "runs": profiles/slurm packs the jobs of several runs into
# one SLURM job (group-components), so thousands of small runs do not become thousands of SLURM jobs. A
# group job runs its runs one after another; `runs_at_once` (limited to 1 per group job by the profile)
# makes Snakemake size the request the same way: one run's CPUs, memory and GPUs, the sum of runtimes.


rule train:
    input:
        unpack(run_data),
    output:
        model="results/runs/{run_id}/model.pt",
        log_csv="results/runs/{run_id}/train_log.csv",
        metrics="results/runs/{run_id}/metrics.json",
    params:
        spec=run_spec_json,
    log:
        "logs/train/{run_id}.log",
    benchmark:
        "logs/benchmarks/train/{run_id}.tsv"
    conda:
        "../../environment.yml"
    threads: RUNTIME["threads"]
    resources:
        **rule_resources("train"),
        runs_at_once=1,
    group:
        "runs"
    shell:
        "qgen train --spec {params.spec:q} --data-meta {input.meta:q} --out-model {output.model:q}"
        " --out-log {output.log_csv:q} --out-metrics {output.metrics:q}"
        " --measure-cache $(dirname {output.model:q})/measures.cache.json --threads {threads} 2> {log:q}"


rule measure:
    input:
        unpack(run_data),
        model="results/runs/{run_id}/model.pt",
    output:
        measures="results/runs/{run_id}/measures.json",
    params:
        settings=MEASURES_JSON,
    log:
        "logs/measure/{run_id}.log",
    benchmark:
        "logs/benchmarks/measure/{run_id}.tsv"
    conda:
        "../../environment.yml"
    threads: RUNTIME["threads"]
    resources:
        **rule_resources("measure"),
        runs_at_once=1,
    group:
        "runs"
    shell:
        "qgen measure --model {input.model:q} --data-meta {input.meta:q} --settings {params.settings:q}"
        " --cache $(dirname {input.model:q})/measures.cache.json --out {output.measures:q} --threads {threads}"
        " 2> {log:q}"


# The robustness step of one run (issue 18; experiments with `robustness: true`): its deployed model on the
# corrupted test set. Its settings are params here, so a new corruption set or severity re-evaluates
# robustness only, never retrains or re-measures.


rule robustness:
    input:
        unpack(run_data),
        model="results/runs/{run_id}/model.pt",
        corrupted=lambda wildcards: corrupted_meta(run_record(wildcards.run_id).spec["data"]["name"]),
    output:
        robustness="results/runs/{run_id}/robustness.json",
    params:
        settings=ROBUSTNESS_JSON,
    log:
        "logs/robustness/{run_id}.log",
    benchmark:
        "logs/benchmarks/robustness/{run_id}.tsv"
    conda:
        "../../environment.yml"
    threads: RUNTIME["threads"]
    resources:
        **rule_resources("measure"),
        runs_at_once=1,
    group:
        "runs"
    shell:
        "qgen robustness --model {input.model:q} --data-meta {input.meta:q} --corrupted-meta {input.corrupted:q}"
        " --settings {params.settings:q} --out {output.robustness:q} --threads {threads} 2> {log:q}"
