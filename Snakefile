# qgen: data → QAT training → evaluation → tables and figures.
# Run `snakemake` (profiles/default is picked up: all cores, keep going, rerun incomplete jobs).
# Audit one number by building its run:  snakemake results/runs/<run_id>/metrics.json

# ---- configuration -----------------------------------------------------------------------------
configfile: "config/default.yaml"


# ---- rules ---------------------------------------------------------------------------------------
include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"


# ---- targets -------------------------------------------------------------------------------------
rule all:
    default_target: True
    input:
        "results/runs.tsv",
        expand(
            "results/{experiment}/tables/gap_by_bits.{ext}",
            experiment=EXPERIMENTS,
            ext=["md", "csv", "tex"],
        ),
        expand("figures/{experiment}/gap_by_bits.{ext}", experiment=EXPERIMENTS, ext=["png", "pdf"]),
