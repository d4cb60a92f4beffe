# qgen: data → QAT training → evaluation → tables and figures.
# Run `snakemake` (profiles/default is picked up: all cores, keep going, rerun incomplete jobs).
# Audit one number by building its run:  snakemake results/runs/<run_id>/metrics.json

# ---- configuration -----------------------------------------------------------------------------
# `--configfile my.yaml` replaces the default: Snakemake would merge my.yaml into a `configfile:` it
# reads here (the default's experiments included), so the default is read only when no config file
# is given on the command line. `--config key=value` overrides either.
if not workflow.overwrite_configfiles:

    configfile: "config/default.yaml"


# ---- rules ---------------------------------------------------------------------------------------
include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/papers.smk"
include: "workflow/rules/audit.smk"


# ---- targets -------------------------------------------------------------------------------------
rule all:
    default_target: True
    input:
        "results/runs.tsv",
        expand("results/{experiment}/claims.json", experiment=EXPERIMENTS),
        expand("results/{experiment}/summary.json", experiment=EXPERIMENTS),
        expand("reports/{experiment}.html", experiment=EXPERIMENTS),
        expand(
            "results/{experiment}/tables/{table}.{ext}",
            experiment=EXPERIMENTS,
            table=["gap_by_bits", "measures_by_bits"],
            ext=["md", "csv", "tex"],
        ),
        expand(
            "figures/{experiment}/{figure}.{ext}",
            experiment=EXPERIMENTS,
            figure=["gap_by_bits", "measures_by_bits", "correlation", "bound_vs_gap", "regularization"],
            ext=["png", "pdf"],
        ),
        paper_targets(EXPERIMENTS),
