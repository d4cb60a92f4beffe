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
    priority: 20  # the shards wait for it (train.smk, rule shard)
    resources:
        **rule_resources("prepare_data"),
    shell:
        "qgen prepare-data {wildcards.dataset} --params {params.prep:q} --meta {output.meta:q} 2> {log:q}"


# Corrupted test sets (issue 18): data/corrupted/<dataset>/ in the released CIFAR-10-C layout, generated from
# the prepared test split (the 15 ImageNet-C corruptions, deterministic), or meta.json (checksums) of the
# released files the robustness section names (robustness.released). Only datasets of experiments with
# `robustness: true` are prepared.


rule prepare_corrupted:
    input:
        test="data/prepared/{dataset}/test.pt",
        meta="data/prepared/{dataset}/meta.json",
    output:
        meta="data/corrupted/{dataset}/meta.json",
    params:
        corrupted=lambda wildcards: json.dumps(corrupted_params(config, wildcards.dataset), sort_keys=True),
    log:
        "logs/prepare_corrupted/{dataset}.log",
    benchmark:
        "logs/benchmarks/prepare_corrupted/{dataset}.tsv"
    conda:
        "../../environment.yml"
    threads: 1
    priority: 20  # the shards wait for it (train.smk, rule shard)
    resources:
        **rule_resources("prepare_data"),
    shell:
        "qgen prepare-corrupted --params {params.corrupted:q} --prepared-meta {input.meta:q}"
        " --meta {output.meta:q} 2> {log:q}"
