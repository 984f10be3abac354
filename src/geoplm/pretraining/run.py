"""One pretraining run from the workflow's files: the ``pretrain_model`` rule and ``geoplm pretrain``.

The corpus datasets' manifests give the records in order (shard by shard); :class:`~geoplm.pretraining.base.Corpus`
cuts them into splits and reads one split at a time; the one training loop (:func:`geoplm.train.fit`) runs the
pretraining task over GearNet's round-robin schedule (:func:`~geoplm.pretraining.base.round_robin`) and writes the
encoder's ``state_dict`` (``encoder.pt``), the whole model with the task's heads (``model.pt``) and the metrics
(``metrics.json``: per-pass loss, throughput and peak memory in ``history``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from geoplm.config import ESM_TYPES
from geoplm.errors import GeoplmError
from geoplm.pretraining import get_pretraining_task
from geoplm.pretraining.base import Corpus, round_robin

log = logging.getLogger(__name__)


def corpus_members(
    manifests: Sequence[str | os.PathLike], records: Sequence[str | os.PathLike]
) -> list[tuple[str, list[str]]]:
    """``(record shard, [record ids])`` of every corpus record, in manifest order: each manifest row's ``shard``
    is the ``{shard}.pt`` beside the manifest.

    Raises:
        GeoplmError: a manifest row whose shard is not among ``records``.
    """
    from geoplm.steps import read_tsv

    known = {Path(path).resolve(): str(path) for path in records}
    members: list[tuple[str, list[str]]] = []
    for manifest in manifests:
        frame = read_tsv(manifest)
        for shard, ids in frame.groupby("shard", sort=False)["id"]:
            path = (Path(manifest).parent / f"{shard}.pt").resolve()
            if path not in known:
                raise GeoplmError(f"{manifest}: shard {shard} ({path}) is not among the corpus record shards")
            members.append((known[path], list(ids)))
    return members


def pretrain_run(
    spec: Mapping,
    model: Mapping,
    manifests: Sequence[str | os.PathLike],
    records: Sequence[str | os.PathLike],
    seed: int,
    encoder_path: str | os.PathLike,
    metrics_path: str | os.PathLike,
    checkpoint_path: str | os.PathLike,
    run_name: str = "",
    device: str = "cpu",
    threads: int | None = None,
    graph_settings: Mapping | None = None,
    esm_checkpoint: str | os.PathLike | None = None,
    esm_settings: Mapping | None = None,
    name: str = "pretraining",
    model_name: str = "model",
) -> dict:
    """Pretrain ``model``'s encoder with the task of a ``pretraining`` entry on a corpus of record shards.

    Args:
        spec: the ``pretraining`` config entry (``kind``, ``epochs``, ``batch_size``, ``lr``, the task's options).
        model: the ``models`` entry; an ESM type (``esm_gearnet``) runs its ESM-2 inside the model, frozen
            (``esm_in_model``), computing features on the fly from ``esm_checkpoint``.
        manifests, records: the corpus datasets' manifests and record shards.
        encoder_path, metrics_path, checkpoint_path: the outputs (see the module docstring).
        graph_settings: the model's graph (:func:`geoplm.config.graph_settings`).
        esm_settings: the plm's settings for ``esm_checkpoint``.

    Returns:
        The metrics written to ``metrics_path``.

    Raises:
        GeoplmError: an empty corpus, a shard missing, an ESM model without its checkpoint.
        ConfigError: an unknown kind or setting.
    """
    from geoplm.train import fit

    if threads:
        torch.set_num_threads(threads)
    task = get_pretraining_task(spec, name)
    model = dict(model)
    esm = None
    if model.get("type") in ESM_TYPES:
        if esm_checkpoint is None:
            raise GeoplmError(f"{run_name or name}: model {model_name} runs ESM-2 inside and needs its checkpoint")
        from geoplm.esm import load_esm2

        esm_settings = dict(esm_settings or {})
        esm = (*load_esm2(esm_checkpoint, esm_settings.get("checksum")), esm_settings)
        model.update(esm_in_model=True, freeze_esm=True)  # ESM-GearNet's fix_sequence_model: frozen, on the fly
    loader = task.input_loader(esm_inputs=esm is not None)
    members = corpus_members(manifests, records)
    probe = Corpus(members, loader, int(task.settings["max_split_size"]))
    epochs = int(task.settings["epochs"])
    schedule = round_robin(epochs, probe.num_splits, int(task.settings["epochs_per_split"]))
    corpus = Corpus(members, loader, int(task.settings["max_split_size"]), schedule)
    task.settings["epochs"] = len(schedule)  # one loop pass per (split, epoch) of the round robin
    first = corpus.examples(0)
    if not first:
        raise GeoplmError(f"{run_name or name}: no usable protein in the first corpus split")
    log.info("%s: corpus %s", run_name, corpus.describe())
    metrics = fit(
        task,
        model,
        {"train": corpus},
        seed,
        metrics_path,
        checkpoint_path,
        run_name,
        device,
        threads,
        task.input_dim(first[0]),
        plm=esm is not None,
        esm=esm,
        graph_settings=graph_settings,
        extra_settings=(esm_settings, epochs),
        model_name=model_name,
        encoder_path=encoder_path,
    )
    return metrics
