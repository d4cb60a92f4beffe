# Dataset preparation: data/prepared/<dataset>/{train,test}.pt + meta.json (sha256 of every file), read from
# files the user has (datasets.<name>.root or $QGEN_DATA/<name>) or from a package (digits, mnist5k).


rule prepare_data:
    output:
        train="data/prepared/{dataset}/train.pt",
        test="data/prepared/{dataset}/test.pt",
        meta="data/prepared/{dataset}/meta.json",
    params:
        prep=lambda wildcards: json.dumps(dataset_entry(config, wildcards.dataset), sort_keys=True),
    log:
        "logs/prepare_data/{dataset}.log",
    benchmark:
        "logs/benchmarks/prepare_data/{dataset}.tsv"
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        **rule_resources("prepare_data"),
    shell:
        "qgen prepare-data {wildcards.dataset} --params {params.prep:q} --meta {output.meta:q} 2> {log:q}"
