# Cheap steps over finished runs: editing a table or a plot never retrains anything.


rule runs_table:
    output:
        "results/runs.tsv",
    params:
        table=runs_table_text,
    log:
        "logs/runs_table.log",
    benchmark:
        "logs/benchmarks/runs_table.tsv"
    localrule: True
    priority: 20  # the shards wait for it (train.smk, rule shard)
    run:
        from qgen.io import write_text

        write_text(output[0], params.table)
        write_text(log[0], f"{len(RUNS)} runs\n")


rule collect:
    input:
        runs="results/runs.tsv",
        shards=experiment_shards,
        rebuilt=experiment_off_shard_files,  # run files missing or rebuilt since their shard ran
    output:
        "results/{experiment}/runs.csv",
    log:
        "logs/collect/{experiment}.log",
    benchmark:
        "logs/benchmarks/collect/{experiment}.tsv"
    conda:
        "../../environment.yml"
    localrule: True
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        robustness=lambda wildcards: (
            "--robustness" if config["experiments"][wildcards.experiment].get("robustness") else ""
        ),
    shell:
        "qgen collect --experiment {wildcards.experiment} --out {output:q} --runs-table {input.runs:q}"
        " --runs-dir results/runs {params.robustness} 2> {log:q}"


rule analyse:
    input:
        runs="results/{experiment}/runs.csv",
    output:
        correlation="results/{experiment}/correlation.csv",
        bound="results/{experiment}/bound.csv",
        bound_runs="results/{experiment}/bound_runs.csv",
        regularization="results/{experiment}/regularization.csv",
        claims="results/{experiment}/claims.json",
        claims_table="results/{experiment}/tables/claims.md",
    params:
        settings=lambda wildcards: json.dumps(config["analysis"], sort_keys=True),
    log:
        "logs/analyse/{experiment}.log",
    benchmark:
        "logs/benchmarks/analyse/{experiment}.tsv"
    conda:
        "../../environment.yml"
    localrule: True
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "qgen analyse --runs {input.runs:q} --experiment {wildcards.experiment} --settings {params.settings:q}"
        " --out-dir $(dirname {output.claims:q}) 2> {log:q}"


rule report:
    input:
        runs="results/{experiment}/runs.csv",
        correlation="results/{experiment}/correlation.csv",
        bound_runs="results/{experiment}/bound_runs.csv",
        regularization="results/{experiment}/regularization.csv",
    output:
        tables=multiext("results/{experiment}/tables/gap_by_bits", ".md", ".csv", ".tex"),
        measure_tables=multiext("results/{experiment}/tables/measures_by_bits", ".md", ".csv", ".tex"),
        figures=multiext("figures/{experiment}/gap_by_bits", ".png", ".pdf"),
        measure_figures=multiext("figures/{experiment}/measures_by_bits", ".png", ".pdf"),
        analysis_figures=expand(
            "figures/{{experiment}}/{name}.{ext}",
            name=["correlation", "bound_vs_gap", "regularization"],
            ext=["png", "pdf"],
        ),
    log:
        "logs/report/{experiment}.log",
    benchmark:
        "logs/benchmarks/report/{experiment}.tsv"
    conda:
        "../../environment.yml"
    localrule: True
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "qgen report --runs {input.runs:q} --experiment {wildcards.experiment}"
        " --tables-dir $(dirname {output.tables[0]:q}) --figures-dir $(dirname {output.figures[0]:q})"
        " --analysis-dir $(dirname {input.correlation:q}) 2> {log:q}"


rule notebook:
    input:
        notebook=REPORT_NOTEBOOK,
        runs="results/{experiment}/runs.csv",
        claims="results/{experiment}/claims.json",
        figures=rules.report.output,
        papers=lambda wildcards: paper_targets([wildcards.experiment]),
    output:
        html="reports/{experiment}.html",
    log:
        "logs/notebook/{experiment}.log",
    benchmark:
        "logs/benchmarks/notebook/{experiment}.tsv"
    conda:
        "../../environment.yml"
    localrule: True
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    shell:
        "qgen notebook --notebook {input.notebook:q} --experiment {wildcards.experiment} --out {output.html:q}"
        " 2> {log:q}"


rule summary:
    input:
        runs="results/{experiment}/runs.csv",
        claims="results/{experiment}/claims.json",
    output:
        "results/{experiment}/summary.json",
    log:
        "logs/summary/{experiment}.log",
    benchmark:
        "logs/benchmarks/summary/{experiment}.tsv"
    conda:
        "../../environment.yml"
    localrule: True
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "qgen summary --runs {input.runs:q} --claims {input.claims:q} --out {output:q} 2> {log:q}"
