# Paper-specific tables and figures (an experiment's `paper_tables`): cheap, from the runs table only.


rule binaryconnect_table:
    input:
        runs="results/{experiment}/runs.csv",
    output:
        tables=multiext("results/{experiment}/tables/binaryconnect", ".md", ".csv", ".tex"),
    log:
        "logs/binaryconnect_table/{experiment}.log",
    benchmark:
        "logs/benchmarks/binaryconnect_table/{experiment}.tsv"
    conda:
        "../../environment.yml"
    localrule: True
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "qgen paper-tables --runs {input.runs:q} --experiment {wildcards.experiment} --tables binaryconnect"
        " --tables-dir $(dirname {output.tables[0]:q}) --figures-dir figures/{wildcards.experiment} 2> {log:q}"


rule low_precision_table:
    input:
        runs="results/{experiment}/runs.csv",
    output:
        tables=multiext("results/{experiment}/tables/low_precision", ".md", ".csv", ".tex"),
        figures=multiext("figures/{experiment}/error_vs_prop_bits", ".png", ".pdf"),
    log:
        "logs/low_precision_table/{experiment}.log",
    benchmark:
        "logs/benchmarks/low_precision_table/{experiment}.tsv"
    conda:
        "../../environment.yml"
    localrule: True
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "qgen paper-tables --runs {input.runs:q} --experiment {wildcards.experiment} --tables low_precision"
        " --tables-dir $(dirname {output.tables[0]:q}) --figures-dir $(dirname {output.figures[0]:q})"
        " 2> {log:q}"


rule saq_table:
    input:
        runs="results/{experiment}/runs.csv",
    output:
        tables=multiext("results/{experiment}/tables/saq", ".md", ".csv", ".tex"),
        figures=multiext("figures/{experiment}/saq_vs_bits", ".png", ".pdf"),
    log:
        "logs/saq_table/{experiment}.log",
    benchmark:
        "logs/benchmarks/saq_table/{experiment}.tsv"
    conda:
        "../../environment.yml"
    localrule: True
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "qgen paper-tables --runs {input.runs:q} --experiment {wildcards.experiment} --tables saq"
        " --tables-dir $(dirname {output.tables[0]:q}) --figures-dir $(dirname {output.figures[0]:q})"
        " 2> {log:q}"


rule noise_injection_table:
    input:
        runs="results/{experiment}/runs.csv",
    output:
        tables=multiext("results/{experiment}/tables/noise_injection", ".md", ".csv", ".tex"),
        figures=multiext("figures/{experiment}/noise_vs_rounding", ".png", ".pdf"),
    log:
        "logs/noise_injection_table/{experiment}.log",
    benchmark:
        "logs/benchmarks/noise_injection_table/{experiment}.tsv"
    conda:
        "../../environment.yml"
    localrule: True
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "qgen paper-tables --runs {input.runs:q} --experiment {wildcards.experiment} --tables noise_injection"
        " --tables-dir $(dirname {output.tables[0]:q}) --figures-dir $(dirname {output.figures[0]:q})"
        " 2> {log:q}"


rule robustness_table:
    input:
        runs="results/{experiment}/runs.csv",
    output:
        tables=multiext("results/{experiment}/tables/robustness", ".md", ".csv", ".tex"),
        figures=multiext("figures/{experiment}/robustness", ".png", ".pdf"),
    log:
        "logs/robustness_table/{experiment}.log",
    benchmark:
        "logs/benchmarks/robustness_table/{experiment}.tsv"
    conda:
        "../../environment.yml"
    localrule: True
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "qgen paper-tables --runs {input.runs:q} --experiment {wildcards.experiment} --tables robustness"
        " --tables-dir $(dirname {output.tables[0]:q}) --figures-dir $(dirname {output.figures[0]:q})"
        " 2> {log:q}"


rule unet_table:
    input:
        runs="results/{experiment}/runs.csv",
    output:
        tables=multiext("results/{experiment}/tables/unet", ".md", ".csv", ".tex"),
        figures=multiext("figures/{experiment}/dice_vs_bits", ".png", ".pdf"),
    log:
        "logs/unet_table/{experiment}.log",
    benchmark:
        "logs/benchmarks/unet_table/{experiment}.tsv"
    conda:
        "../../environment.yml"
    localrule: True
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "qgen paper-tables --runs {input.runs:q} --experiment {wildcards.experiment} --tables unet"
        " --tables-dir $(dirname {output.tables[0]:q}) --figures-dir $(dirname {output.figures[0]:q})"
        " 2> {log:q}"
