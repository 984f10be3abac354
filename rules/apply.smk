# Your own structures through a trained encoder (geoplm.apply): per-residue and per-protein embeddings and, with a
# fine-tuned run, its task's predictions.
#   snakemake embed --cores N --config structures=my.tsv encoder=results/train/ec/gearnet_edge/none/none/seed0
#   snakemake embed --cores N --config structures=my_folder/ encoder=published_mc model=gearnet_edge
# The encoder's weights are a dependency: a run is trained, a pretraining run, a published checkpoint downloaded.

from geoplm import apply as geoplm_apply

EMBED = f"{RESULTS}/embed"


def embed_settings():
    """The `embed` section over geoplm.apply.DEFAULTS (shards, max_residues, threshold, top_k, truncate, ...)."""
    return {**geoplm_apply.DEFAULTS, **(config.get("embed") or {})}


def embed_spec():
    """The encoder `encoder=` names (geoplm.apply.resolve_encoder); an error when `structures` or `encoder` is unset."""
    if not config.get("structures") or not config.get("encoder"):
        raise WorkflowError(
            "the embed target needs a sheet and an encoder: snakemake embed --config structures=my.tsv "
            "encoder=<run folder | task/model/plm/pretrain/seedN | pretrained entry> [model=<models entry>] [plm=...]"
        )
    with geoplm_config.exit_on_config_error("geoplm: embed"):
        return geoplm_apply.resolve_encoder(
            config,
            str(config["encoder"]),
            config.get("model"),
            config.get("plm"),
            seed=int(embed_settings().get("seed", 0)),
            results=RESULTS,
            raw=RAW,
        )


def embed_name():
    return embed_settings().get("name") or geoplm_apply.run_name(config["structures"], embed_spec())


def embed_shard_ids():
    return geoplm_config.shard_ids(int(embed_settings()["shards"]))


def embed_shard_inputs(wildcards):
    """The sheet, the encoder's weights, the plm's checkpoint, and a fine-tuned run's dataset manifest (names)."""
    spec = embed_spec()
    inputs = {"sheet": config["structures"], "weights": str(spec.weights)}
    if spec.plm != geoplm_config.NO_PLM:
        inputs.update({f"esm_{key}": path for key, path in esm_checkpoint(spec.plm).items()})
    if spec.dataset and spec.dataset in config["datasets"]:
        inputs["manifest"] = f"{RECORDS}/{spec.dataset}/manifest.tsv"
    return inputs


def embed_outputs(name):
    return {key: f"{EMBED}/{name}/{key.replace('_', '.')}" for key in ("proteins_parquet", "predictions_tsv",
                                                                        "skipped_tsv", "settings_json")}


rule embed_structures:
    input:
        unpack(embed_shard_inputs),
    output:
        shard=f"{EMBED}/{{name}}/shards/{{shard}}.pt",
        skipped=f"{EMBED}/{{name}}/shards/{{shard}}.skipped.tsv",
    log:
        "logs/embed/{name}/{shard}.log",
    benchmark:
        "benchmarks/embed/{name}/{shard}.tsv"
    wildcard_constraints:
        name=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    conda:
        "../envs/train.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=12 * 60,
    params:
        encoder=lambda wildcards: config["encoder"],
        model=lambda wildcards: config.get("model"),
        plm=lambda wildcards: config.get("plm"),
        seed=lambda wildcards: int(embed_settings().get("seed", 0)),
        shards=lambda wildcards: int(embed_settings()["shards"]),
        max_residues=lambda wildcards: int(embed_settings()["max_residues"]),
        truncate=lambda wildcards: embed_settings().get("truncate"),
        model_config=lambda wildcards: config["models"].get(embed_spec().model),
        results=RESULTS,
    script:
        "../scripts/embed_structures.py"


rule gather_embeddings:
    input:
        shards=lambda wildcards: expand(f"{EMBED}/{wildcards.name}/shards/{{shard}}.pt", shard=embed_shard_ids()),
        skipped=lambda wildcards: expand(
            f"{EMBED}/{wildcards.name}/shards/{{shard}}.skipped.tsv", shard=embed_shard_ids()
        ),
    output:
        proteins=f"{EMBED}/{{name}}/proteins.parquet",
        predictions=f"{EMBED}/{{name}}/predictions.tsv",
        skipped=f"{EMBED}/{{name}}/skipped.tsv",
        settings=f"{EMBED}/{{name}}/settings.json",
    log:
        "logs/embed/{name}/gather.log",
    benchmark:
        "benchmarks/embed/{name}/gather.tsv"
    wildcard_constraints:
        name=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    localrule: True
    conda:
        "../envs/train.yaml"
    params:
        threshold=lambda wildcards: float(embed_settings()["threshold"]),
        top_k=lambda wildcards: int(embed_settings()["top_k"]),
    script:
        "../scripts/gather_embeddings.py"


rule embed:
    """Your structures (`structures=`: a TSV sheet or a folder) through an encoder (`encoder=`): see README.md."""
    input:
        unpack(lambda wildcards: embed_outputs(embed_name())),
    localrule: True
    run:
        print(geoplm_apply.describe(geoplm_apply.read_summary(input.settings_json)))
