# Self-supervised pretraining: one job per (model, plm, pretraining entry) on the entry's corpus datasets; its
# encoder's state_dict feeds every training run whose `pretrain` names a `pretrained` entry with `pretraining:`.
# The authors' published checkpoints are sources of their own (download_published).


rule pretrain_model:
    input:
        unpack(pretrain_inputs),
    output:
        encoder=f"{RESULTS}/pretrain/{{model}}/{{plm}}/{{pretraining}}/encoder.pt",
        checkpoint=f"{RESULTS}/pretrain/{{model}}/{{plm}}/{{pretraining}}/model.pt",
        metrics=f"{RESULTS}/pretrain/{{model}}/{{plm}}/{{pretraining}}/metrics.json",
    log:
        f"{LOGS}/pretrain/{{model}}/{{plm}}/{{pretraining}}.log",
    benchmark:
        f"{BENCHMARKS}/pretrain/{{model}}/{{plm}}/{{pretraining}}.tsv"
    conda:
        torch_env("train")
    threads: 2
    resources:
        gpu=lambda wildcards: int(pretraining_spec(wildcards).get("gpus", 1)),
        mem_mb=32000,
        runtime=7 * 24 * 60,
    params:
        spec=pretraining_spec,
        model=lambda wildcards: config["models"][wildcards.model],
        graph=lambda wildcards: geoplm_config.graph_settings(
            config, config["models"][wildcards.model].get("graph", "gearnet")
        ),
        esm=lambda wildcards: (
            plm_params(wildcards.plm) if wildcards.plm != geoplm_config.NO_PLM else {}
        ),
        seed=lambda wildcards: int(pretraining_spec(wildcards).get("seed", 0)),
    script:
        "../scripts/pretrain_model.py"


rule download_published:
    output:
        f"{RAW}/published/{{checkpoint}}",
    log:
        f"{LOGS}/download/published/{{checkpoint}}.log",
    benchmark:
        f"{BENCHMARKS}/download/published/{{checkpoint}}.tsv"
    wildcard_constraints:
        checkpoint=r"[A-Za-z0-9_]+\.pth",
    retries: 3
    localrule: True
    conda:
        "../envs/download.yaml"
    params:
        lock=config.get("checksum_lock", "checksums.lock.tsv"),
    script:
        "../scripts/download_published.py"
