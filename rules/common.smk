# Input functions and config look-ups shared by the stage files; no rules here. The config has been checked
# (geoplm.config.check_config, in the Snakefile, which also puts src/ on sys.path and imports geoplm_config).

import os
import sys
from pathlib import Path

# Every output under the config's `outdir` ("": the workflow's folder; config/demo.yaml: demo/), so the demo and a
# full run never see each other's outputs as stale nor overwrite them.
OUT = geoplm_config.output_prefix(config)
RESOURCES = f"{OUT}resources"
RAW = f"{RESOURCES}/raw"
RECORDS = f"{RESOURCES}/records"
EMBEDDINGS = f"{RESOURCES}/embeddings"
GRAPHS = f"{RESOURCES}/graphs"
RESULTS = f"{OUT}results"
LOGS = f"{OUT}logs"
BENCHMARKS = f"{OUT}benchmarks"


wildcard_constraints:
    source=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    dataset=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    shard=r"\d{4}",
    plm=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    model=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    task=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    pretrain=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    seed=r"\d+",
    table=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    graph=r"[A-Za-z0-9][A-Za-z0-9_.-]*",


# PyTorch build of the GPU rules' conda envs (--use-conda): envs/{train,esm}.yaml pin conda-forge's CUDA build,
# their -cpu twins the CPU build; GEOPLM_TORCH=cpu picks the twins on a machine without a GPU (README).
TORCH_BUILD = os.environ.get("GEOPLM_TORCH", "cuda")
if TORCH_BUILD not in ("cuda", "cpu"):
    raise WorkflowError(f"GEOPLM_TORCH={TORCH_BUILD!r}: cuda (the default) or cpu")


def torch_env(name):
    """The conda env file (relative to rules/) of a GPU rule's env ``name`` for the PyTorch build chosen."""
    return f"../envs/{name}.yaml" if TORCH_BUILD == "cuda" else f"../envs/{name}-cpu.yaml"


def source_files(wildcards):
    return geoplm_config.source_shard_files(config, wildcards.source, wildcards.shard)


def dataset_source(dataset):
    return config["datasets"][dataset]["source"]


def parse_inputs(wildcards):
    """The download manifest(s) a record shard is parsed from."""
    spec = config["datasets"][wildcards.dataset]
    source = spec["source"]
    if spec["reader"] == "structures":
        return {"downloads": [f"{RAW}/{source}/download_{wildcards.shard}.tsv"]}
    return {
        "downloads": expand(
            f"{RAW}/{source}/download_{{shard}}.tsv",
            shard=geoplm_config.source_shards(config, source),
        )
    }


def record_shards(dataset):
    return expand(
        f"{RECORDS}/{dataset}/{{shard}}.pt",
        shard=geoplm_config.dataset_shards(config, dataset),
    )


def esm_checkpoint(plm):
    """Checkpoint and contact-regression file of a configured protein language model."""
    spec = config["plms"][plm]
    if "random_init" in spec:
        stem = f"{RESOURCES}/esm/random_init/{plm}"
    else:
        stem = f"{RAW}/esm/{spec['checkpoint']}"
    return {"model": f"{stem}.pt", "regression": f"{stem}-contact-regression.pt"}


def embedding_store(index_path):
    """Root of the shared embedding store, from an index path {root}/{plm}/index/{dataset}/{shard}.tsv."""
    return str(Path(index_path).parents[3])


def embed_inputs(wildcards):
    return {
        "records": f"{RECORDS}/{wildcards.dataset}/{wildcards.shard}.pt",
        **esm_checkpoint(wildcards.plm),
    }


def plm_params(plm):
    """Settings of a plm that change its embeddings (so a change reruns embed_esm)."""
    spec = dict(config["plms"][plm])
    return {
        "repr_layer": spec["repr_layer"],
        "toks_per_batch": spec.get("toks_per_batch", 4096),
        "window": spec.get("window", 1022),
        "stride": spec.get("stride", 511),
        "checksum": spec.get("checksum"),
        # embedding options, passed only where set (so adding them reruns nothing that did not set them)
        **{key: spec[key] for key in ("precision", "fused_attention") if key in spec},
    }


def fine_tunes_esm(wildcards):
    """Whether a training run loads its plm's ESM-2 into the model and fine-tunes it."""
    return wildcards.plm != geoplm_config.NO_PLM and geoplm_config.finetunes_esm(config["models"][wildcards.model])


def train_esm_params(wildcards):
    """Settings of the ESM-2 a fine-tuning run loads (empty for every other run)."""
    return plm_params(wildcards.plm) if fine_tunes_esm(wildcards) else {}


def train_inputs(wildcards):
    dataset = config["tasks"][wildcards.task]["dataset"]
    inputs = {
        "manifest": f"{RECORDS}/{dataset}/manifest.tsv",
        "records": record_shards(dataset),
    }
    graph = geoplm_config.cached_graph(config, wildcards.model)
    if graph:
        inputs["graphs"] = expand(
            f"{GRAPHS}/{dataset}/{graph}/{{shard}}.pt",
            shard=geoplm_config.dataset_shards(config, dataset),
        )
    if fine_tunes_esm(wildcards):
        esm_files = esm_checkpoint(wildcards.plm)  # ESM-2 runs inside the model, fine-tuned
        inputs["esm_checkpoint"] = esm_files["model"]
        inputs["esm_regression"] = esm_files["regression"]
    elif wildcards.plm != geoplm_config.NO_PLM:
        inputs["embeddings"] = expand(
            f"{EMBEDDINGS}/{wildcards.plm}/index/{dataset}/{{shard}}.tsv",
            shard=geoplm_config.dataset_shards(config, dataset),
        )
    start = pretrain_start(wildcards)
    if start is not None:  # start from those weights (a `pretrained` entry)
        inputs["init_checkpoint"] = start[0]
    return inputs


def pretrain_start(wildcards):
    """(checkpoint, part) a training run starts from (geoplm.train.load_init), or None from scratch: a finished
    run of another task (`task:`), a pretraining stage's encoder (`pretraining:`), or an authors' published
    checkpoint (`published:`)."""
    start = geoplm_config.pretrain_start(config, dict(wildcards.items()))
    if start is None:
        return None
    if start["from"] == "task":
        return f"{train_dir(start['run'])}/model.pt", start["part"]
    if start["from"] == "pretraining":
        return f"{pretrain_dir(wildcards.model, wildcards.plm, start['pretraining'])}/encoder.pt", start["part"]
    return f"{RAW}/published/{start['checkpoint']}", start["part"]


def train_pretrain_params(wildcards):
    """The part of the weights a run starts from (empty for a run trained from scratch)."""
    start = pretrain_start(wildcards)
    return {} if start is None else {"part": start[1]}


def pretraining_spec(wildcards):
    """A pretraining entry's settings for the run's model (geoplm.config.pretraining_spec)."""
    return geoplm_config.pretraining_spec(config, wildcards.pretraining, wildcards.model)


def pretrain_dir(model, plm, pretraining):
    return f"{RESULTS}/pretrain/{model}/{plm}/{pretraining}"


def pretrain_inputs(wildcards):
    """The corpus datasets' manifests and record shards of a pretraining run, and the ESM-2 checkpoint of a model
    that runs ESM-2 inside (ESM-GearNet's pretraining: frozen, on the fly)."""
    corpus = config["pretraining"][wildcards.pretraining]["corpus"]
    inputs = {
        "manifests": [f"{RECORDS}/{dataset}/manifest.tsv" for dataset in corpus],
        "records": [shard for dataset in corpus for shard in record_shards(dataset)],
    }
    if wildcards.plm != geoplm_config.NO_PLM:
        esm_files = esm_checkpoint(wildcards.plm)
        inputs["esm_checkpoint"] = esm_files["model"]
        inputs["esm_regression"] = esm_files["regression"]
    return inputs


def train_dir(job):
    return "{results}/train/{task}/{model}/{plm}/{pretrain}/seed{seed}".format(
        results=RESULTS, **job
    )


def table_inputs(table):
    return [
        f"{train_dir(job)}/metrics.json"
        for job in geoplm_config.table_jobs(config, table)
    ]


def all_datasets():
    """Manifest and skipped report of every dataset; with a mirror set, of every dataset the
    mirror (or an earlier download) holds at least one file of (the others are named on stderr)."""
    datasets = geoplm_config.available_datasets(config, RAW)
    left_out = sorted(set(config["datasets"]) - set(datasets))
    if left_out:
        print(
            f"geoplm: the mirror holds no file of {len(left_out)} datasets, left out of 'all' "
            f"(request {RECORDS}/<dataset>/manifest.tsv to download them): {', '.join(left_out)}",
            file=sys.stderr,
        )
    return [f"{RECORDS}/{dataset}/{name}.tsv" for dataset in datasets for name in ("manifest", "skipped")]


def all_tables():
    return expand(f"{RESULTS}/tables/{{table}}.csv", table=list(config["tables"]))
