# Parsing: raw structure files -> residue-level records, sharded, with manifest and skipped report.


rule parse_structures:
    input:
        unpack(parse_inputs),
    output:
        records=f"{RECORDS}/{{dataset}}/{{shard}}.pt",
        manifest=f"{RECORDS}/{{dataset}}/{{shard}}.manifest.tsv",
        skipped=f"{RECORDS}/{{dataset}}/{{shard}}.skipped.tsv",
    log:
        f"{LOGS}/structures/{{dataset}}/{{shard}}.log",
    benchmark:
        f"{BENCHMARKS}/structures/{{dataset}}/{{shard}}.tsv"
    conda:
        "../envs/structures.yaml"
    resources:
        mem_mb=4000,
    params:
        reader=lambda wildcards: config["datasets"][wildcards.dataset]["reader"],
        subset=lambda wildcards: config["datasets"][wildcards.dataset].get("subset"),
        shards=lambda wildcards: len(
            geoplm_config.dataset_shards(config, wildcards.dataset)
        ),
        on_error=config.get("on_error", "skip"),
        options=lambda wildcards: config["datasets"][wildcards.dataset].get("options", {}),
    script:
        "../scripts/parse_structures.py"


rule gather_records:
    input:
        manifests=lambda wildcards: expand(
            f"{RECORDS}/{wildcards.dataset}/{{shard}}.manifest.tsv",
            shard=geoplm_config.dataset_shards(config, wildcards.dataset),
        ),
        skipped=lambda wildcards: expand(
            f"{RECORDS}/{wildcards.dataset}/{{shard}}.skipped.tsv",
            shard=geoplm_config.dataset_shards(config, wildcards.dataset),
        ),
    output:
        manifest=f"{RECORDS}/{{dataset}}/manifest.tsv",
        skipped=f"{RECORDS}/{{dataset}}/skipped.tsv",
    log:
        f"{LOGS}/structures/{{dataset}}/gather.log",
    benchmark:
        f"{BENCHMARKS}/structures/{{dataset}}/gather.tsv"
    localrule: True
    conda:
        "../envs/structures.yaml"
    params:
        split=lambda wildcards: config["datasets"][wildcards.dataset].get("split", {}),
    script:
        "../scripts/gather_records.py"
