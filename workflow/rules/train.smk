# Per-run work in one process: train (resumable), evaluate, and measure into a cache that the measure
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
        settings=lambda wildcards: json.dumps(config["measures"], sort_keys=True),
    log:
        "logs/measure/{run_id}.log",
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
