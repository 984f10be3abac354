# Downloads: canonical URLs, checksummed, resumable, served from the mirror first.
# localrule: cluster compute nodes often have no internet.


rule download_structures:
    output:
        f"{RAW}/{{source}}/download_{{shard}}.tsv",
    log:
        f"{LOGS}/download/{{source}}/{{shard}}.log",
    benchmark:
        f"{BENCHMARKS}/download/{{source}}/{{shard}}.tsv"
    retries: 3
    localrule: True
    conda:
        "../envs/download.yaml"
    params:
        files=source_files,
        directory=lambda wildcards: f"{RAW}/{wildcards.source}/files",
        missing_files=config.get("missing_files", "auto"),
        manual=lambda wildcards: config["sources"][wildcards.source].get("manual"),
        lock=config.get("checksum_lock", "checksums.lock.tsv"),
    script:
        "../scripts/download.py"


rule download_esm:
    output:
        model=f"{RAW}/esm/{{checkpoint}}.pt",
        regression=f"{RAW}/esm/{{checkpoint}}-contact-regression.pt",
    log:
        f"{LOGS}/download/esm/{{checkpoint}}.log",
    benchmark:
        f"{BENCHMARKS}/download/esm/{{checkpoint}}.tsv"
    wildcard_constraints:
        checkpoint=r"esm2_t\d+_\d+[MB]_UR50D",
    retries: 3
    localrule: True
    conda:
        "../envs/download.yaml"
    params:
        checksum=lambda wildcards: next(
            (
                spec.get("checksum")
                for spec in config.get("plms", {}).values()
                if spec.get("checkpoint") == wildcards.checkpoint
            ),
            None,
        ),
        lock=config.get("checksum_lock", "checksums.lock.tsv"),
    script:
        "../scripts/download_esm.py"
