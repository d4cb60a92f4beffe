# Cheap steps over finished runs: editing a table or a plot never retrains anything.


rule runs_table:
    output:
        "results/runs.tsv",
    params:
        table=runs_table_text,
    log:
        "logs/runs_table.log",
    localrule: True
    run:
        from qgen.io import write_text

        write_text(output[0], params.table)
        write_text(log[0], f"{len(RUNS)} runs\n")


rule collect:
    input:
        unpack(experiment_run_files),
    output:
        "results/{experiment}/runs.csv",
    log:
        "logs/collect/{experiment}.log",
    conda:
        "../../environment.yml"
    localrule: True
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "qgen collect --experiment {wildcards.experiment} --out {output:q} {input.metrics:q}"
        " --measures {input.measures:q} 2> {log:q}"


rule report:
    input:
        runs="results/{experiment}/runs.csv",
    output:
        tables=multiext("results/{experiment}/tables/gap_by_bits", ".md", ".csv", ".tex"),
        measure_tables=multiext("results/{experiment}/tables/measures_by_bits", ".md", ".csv", ".tex"),
        figures=multiext("figures/{experiment}/gap_by_bits", ".png", ".pdf"),
        measure_figures=multiext("figures/{experiment}/measures_by_bits", ".png", ".pdf"),
    log:
        "logs/report/{experiment}.log",
    conda:
        "../../environment.yml"
    localrule: True
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "qgen report --runs {input.runs:q} --experiment {wildcards.experiment}"
        " --tables-dir $(dirname {output.tables[0]:q}) --figures-dir $(dirname {output.figures[0]:q}) 2> {log:q}"
