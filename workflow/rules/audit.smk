# Audit one run: `snakemake results/audit/<run_id>.json` rebuilds the run from scratch in a scratch
# directory (the same Snakefile, -d <scratch>) and compares its metrics and measures with the recorded
# files: identical on CPU, within a stated tolerance when CUDA was involved (qgen.audit). Not part of
# `all`. The rule has no inputs on purpose: Snakemake must never rebuild the recorded run it audits.
# The job fails when a value differs; its log names every differing key.


rule audit:
    output:
        "results/audit/{run_id}.json",
    params:
        config=lambda wildcards: json.dumps(config, sort_keys=True),
        snakefile=workflow.main_snakefile,
    log:
        "logs/audit/{run_id}.log",
    benchmark:
        "logs/benchmarks/audit/{run_id}.tsv"
    conda:
        "../../environment.yml"
    threads: RUNTIME["threads"]
    resources:
        **rule_resources("train"),  # a training job's request (GPU, memory, time): it rebuilds one run
    shell:
        "qgen audit {wildcards.run_id} --config-json {params.config:q} --snakefile {params.snakefile:q}"
        " --cores {threads} --out {output:q} > {log:q} 2>&1"
