# Your own structures through a trained encoder (geoplm.apply): per-residue and per-protein embeddings and, with a
# fine-tuned run, its task's predictions; the job comes from the config's structures / encoder / model / plm / embed
# (geoplm.apply.workflow_job; its weights are a dependency: a run is trained, a pretraining run, a checkpoint fetched).
#   snakemake embed --cores N --config structures=my.tsv encoder=results/train/ec/gearnet_edge/none/none/seed0
#   snakemake embed --cores N --config structures=my_folder/ encoder=published_mc model=gearnet_edge

from geoplm import apply as geoplm_apply

EMBED = f"{RESULTS}/embed"


rule embed_structures:
    input:
        unpack(lambda wildcards: geoplm_apply.workflow_job(config, RESULTS, RESOURCES)["inputs"]),
    output:
        shard=f"{EMBED}/{{name}}/shards/{{shard}}.pt",
        skipped=f"{EMBED}/{{name}}/shards/{{shard}}.skipped.tsv",
    log:
        f"{LOGS}/embed/{{name}}/{{shard}}.log",
    benchmark:
        f"{BENCHMARKS}/embed/{{name}}/{{shard}}.tsv"
    wildcard_constraints:
        name=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    conda:
        torch_env("train")
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=12 * 60,
    params:
        encoder=lambda wildcards: config["encoder"],
        model=lambda wildcards: config.get("model"),
        plm=lambda wildcards: config.get("plm"),
        # the settings a shard depends on (threshold and top_k only change the gathered predictions.tsv)
        embed=lambda wildcards: {
            key: geoplm_apply.workflow_job(config, RESULTS, RESOURCES)["settings"].get(key)
            for key in ("shards", "max_residues", "truncate", "seed")
        },
        model_config=lambda wildcards: config["models"].get(
            geoplm_apply.workflow_job(config, RESULTS, RESOURCES)["spec"].model
        ),
        results=lambda wildcards, output: str(Path(output.shard).parents[3]),
    script:
        "../scripts/embed_structures.py"


rule gather_embeddings:
    input:
        shards=lambda wildcards: expand(
            f"{EMBED}/{wildcards.name}/shards/{{shard}}.pt",
            shard=geoplm_apply.workflow_job(config, RESULTS, RESOURCES)["shards"],
        ),
        skipped=lambda wildcards: expand(
            f"{EMBED}/{wildcards.name}/shards/{{shard}}.skipped.tsv",
            shard=geoplm_apply.workflow_job(config, RESULTS, RESOURCES)["shards"],
        ),
    output:
        proteins=f"{EMBED}/{{name}}/proteins.parquet",
        predictions=f"{EMBED}/{{name}}/predictions.tsv",
        skipped=f"{EMBED}/{{name}}/skipped.tsv",
        settings=f"{EMBED}/{{name}}/settings.json",
    log:
        f"{LOGS}/embed/{{name}}/gather.log",
    benchmark:
        f"{BENCHMARKS}/embed/{{name}}/gather.tsv"
    wildcard_constraints:
        name=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    localrule: True
    conda:
        torch_env("train")
    params:
        threshold=lambda wildcards: float(geoplm_apply.workflow_job(config, RESULTS, RESOURCES)["settings"]["threshold"]),
        top_k=lambda wildcards: int(geoplm_apply.workflow_job(config, RESULTS, RESOURCES)["settings"]["top_k"]),
    script:
        "../scripts/gather_embeddings.py"


rule embed:
    """Your structures (`structures=`: a TSV sheet or a folder) through an encoder (`encoder=`): README.md "Your own
    structures". The gathering job prints where the outputs are."""
    input:
        lambda wildcards: expand(
            f"{EMBED}/{{name}}/{{file}}",
            name=geoplm_apply.workflow_job(config, RESULTS, RESOURCES)["name"],
            file=["proteins.parquet", "predictions.tsv", "skipped.tsv", "settings.json"],
        ),
