"""Your own structures through a trained encoder: per-residue and per-protein embeddings, and predictions.

The ``embed`` target of the workflow (``rules/apply.smk``) and ``geoplm embed-structures`` run the same
functions here. A user gives

* a **sheet** (:func:`read_sheet`): a TSV with a ``path`` column and optional ``id`` and ``chain`` columns, or a
  folder. A path is a PDB / mmCIF file (optionally gzipped: :func:`geoplm.structure.parse_structure`), an
  AlphaFold DB tarball or a folder of models (:mod:`geoplm.datasets.alphafold`: one record per entry, the
  preferred of its PDB / mmCIF files, ids ``AF-{accession}-F{n}``). Relative paths are relative to the sheet's
  folder; ``$VARIABLES`` and ``~`` are expanded. ``chain``: one chain id, several separated by commas, or empty
  for every protein chain;
* an **encoder** (:func:`resolve_encoder`): a fine-tuned run (its directory, or ``task/model/plm/pretrain/seedN``
  under ``results/train``; then its task head's predictions too), or a ``pretrained`` config entry with a
  ``models`` entry and a plm (a local pretraining's ``encoder.pt``, an authors' published checkpoint).

Each protein (record) goes to shard ``crc32(key) % shards`` (:func:`shard_of`; ``key``: the record's sheet key,
an AlphaFold tarball member by its entry key as :func:`geoplm.datasets.alphafold.entry_slot` deals it), so adding
structures to a sheet never moves the others to another shard. :func:`embed_shard` parses the shard's
structures, batches them by length (at most ``max_residues`` residues per batch, longest first), encodes them
in eval mode under ``torch.inference_mode`` exactly as the training loop's :meth:`geoplm.tasks.base.Task.encode`
does, and writes one file per shard (:func:`load_shard`; ``torch.load(path, weights_only=True)``)::

    {"format": "geoplm.embeddings/1",
     "ids": [str] (B),                    # record ids: the sheet id (+ "_{chain}" for several chains) or AFDB id
     "entries": [str] (B),                # the sheet row each record came from
     "sources": [str], "chains": [str], "sequences": [str],
     "residue_numbers": [LongTensor (L,)],  # author residue numbers
     "insertion_codes": [[str] (L)],
     "residue_features": [FloatTensor (L, D)],  # encoder node features; NaN rows for residues without a Cα
     "protein_features": FloatTensor (B, D),    # the encoder's graph feature (its readout)
     "digests": [str],                    # sha256 of each record's sequence, chain and coordinates (16 hex)
     "settings": {...}, "settings_hash": str,
     "scores": FloatTensor (B, C) | None,  # with a fine-tuned task: sigmoid (multilabel), softmax
                                           # (classification) or the de-normalised value (regression, C = 1)
     "class_names": [str] (C) | None}

:func:`gather` joins the shards into ``proteins.parquet`` (one row per protein: id, entry, source, chain,
length, shard, ``embedding`` = the (D,) protein feature as a list of float32), ``predictions.tsv`` (id, task,
rank, label, score: terms / classes with a score >= ``threshold``, at most ``top_k`` per protein, best first; a
regression's one value), ``skipped.tsv`` (entry, source_file, reason: every structure that could not be used)
and ``settings.json``. Memory: one shard's records and one batch of graphs at a time; the gathering streams
shard by shard.

Incremental reruns: a shard job reuses the rows of the previous run of the same shard (the file itself, or its
hard link in ``shards/.previous/``, which survives Snakemake's removal of outputs before a job) whose id,
digest and settings hash match, so adding structures to a sheet encodes only the new ones (parsing is redone:
it is what tells a changed file from an unchanged one). Changing ``shards`` changes the assignment (and
recomputes).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from geoplm import atomic
from geoplm.errors import ConfigError, GeoplmError, StructureError

log = logging.getLogger(__name__)

FORMAT = "geoplm.embeddings/1"
SKIPPED_COLUMNS = ["entry", "source_file", "reason"]
PREDICTION_COLUMNS = ["id", "task", "rank", "label", "score"]
#: task kinds whose head's output is written as predictions
PREDICTING_KINDS = ("multilabel", "classification", "regression")
DEFAULTS: dict[str, Any] = {"shards": 1, "max_residues": 4096, "threshold": 0.5, "top_k": 10, "truncate": None}


# --- the sheet -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """One sheet item: a structure file (``kind="file"``, one key) or an AlphaFold DB tarball (``"tarball"``,
    one key per member, dealt by the alphafold reader).

    Attributes:
        key: the record id stem and the sharding key (the sheet ``id``; a folder's file: its AFDB entry key).
        entry: the sheet row (its id) the unit comes from.
        path: the file or tarball.
        chains: chains to keep (None: every protein chain).
    """

    key: str
    entry: str
    path: Path
    kind: str = "file"
    chains: tuple[str, ...] | None = None


def shard_of(key: str, shards: int) -> int:
    """The shard (0 .. shards - 1) of a sheet key: ``crc32(key) % shards``, stable across runs and sheets."""
    return zlib.crc32(key.encode()) % shards


def _folder_units(folder: Path, entry: str) -> tuple[list[Unit], list[dict]]:
    """One unit per AlphaFold DB entry / structure file in ``folder`` (recursively): of several files of one
    entry (a PDB / mmCIF pair, several AFDB versions) the highest version, PDB before mmCIF (as the alphafold
    reader); tarballs inside are units of their own."""
    from geoplm.datasets.alphafold import entry_name, is_tarball
    from geoplm.datasets.generic import expand_files, is_structure_file

    units, by_key = [], {}
    for path in expand_files([folder]):
        if is_tarball(path):
            units.append(Unit(f"{entry}/{path.name}", entry, path, "tarball"))
        elif is_structure_file(path):
            name = entry_name(path.name)
            by_key.setdefault(name.key, []).append((-(name.version or 0), name.file_type != "pdb", path.name, path))
    for key, files in sorted(by_key.items()):
        chosen = sorted(files)[0][-1]
        for *_, other in sorted(files)[1:]:
            log.info("%s: entry %s is read from %s; duplicate ignored", other, key, chosen.name)
        units.append(Unit(key, entry, chosen))
    return units, []


def read_sheet(sheet: str | os.PathLike) -> tuple[list[Unit], list[dict[str, str]]]:
    """The units of a sheet (see the module docstring) and the rows that cannot be used.

    Args:
        sheet: a TSV file (header with ``path``; optional ``id``, ``chain``; ``#`` comment lines) or a folder.

    Returns:
        ``(units, skipped)``: units in sheet order; ``skipped`` rows ``{"entry", "source_file", "reason"}`` for a
        path that does not exist, is neither a structure file, a tarball nor a folder, or an id given twice.

    Raises:
        GeoplmError: the sheet does not exist, or has no ``path`` column.
    """
    from geoplm.datasets.alphafold import is_tarball
    from geoplm.datasets.generic import is_structure_file
    from geoplm.structure import _stem_and_format

    sheet = Path(sheet)
    if sheet.is_dir():
        return _folder_units(sheet, sheet.name)
    if not sheet.is_file():
        raise GeoplmError(f"structures sheet {sheet}: no such file or folder")
    with open(sheet, newline="", encoding="utf-8") as handle:
        lines = [line for line in handle if line.strip() and not line.lstrip().startswith("#")]
    rows = list(csv.DictReader(lines, delimiter="\t"))
    if not lines or "path" not in (csv.DictReader(lines[:1], delimiter="\t").fieldnames or []):
        raise GeoplmError(f"structures sheet {sheet}: no 'path' column (a TSV with columns id, path, chain)")
    units: list[Unit] = []
    skipped: list[dict[str, str]] = []
    seen: set[str] = set()
    for number, row in enumerate(rows, start=2):
        raw = (row.get("path") or "").strip()
        path = Path(os.path.expanduser(os.path.expandvars(raw)))
        if not path.is_absolute():
            path = sheet.parent / path
        entry = (row.get("id") or "").strip() or (_stem_and_format(path.name)[0] if raw else f"row{number}")
        chains_text = (row.get("chain") or "").strip()
        chains = tuple(c.strip() for c in chains_text.split(",")) if chains_text else None

        def skip(reason: str, entry=entry, path=path, number=number) -> None:
            where = f"{sheet.name} line {number}"
            skipped.append({"entry": entry, "source_file": str(path), "reason": f"{where}: {reason}"})

        if not raw:
            skip("no path")
        elif entry in seen:
            skip(f"id {entry!r} given twice (ids name the outputs: make them unique)")
        elif not path.exists():
            skip("no such file or folder")
        elif path.is_dir() or is_tarball(path):
            if chains is not None:
                skip("a chain applies to a structure file, not to a folder or tarball")
            elif path.is_dir():
                seen.add(entry)
                units.extend(_folder_units(path, entry)[0])
            else:
                seen.add(entry)
                units.append(Unit(entry, entry, path, "tarball"))
        elif not is_structure_file(path):
            skip("not a PDB / mmCIF file (.pdb, .ent, .cif, optionally .gz), an AlphaFold DB tarball or a folder")
        else:
            seen.add(entry)
            units.append(Unit(entry, entry, path, "file", chains))
    return units, skipped


def _units_records(
    units: Sequence[Unit], shard: int, shards: int
) -> tuple[list[tuple[dict, str]], list[dict[str, str]]]:
    """Parse this shard's units: ``([(record, entry)], skipped rows)``. A file's record id is its key, with
    ``_{chain}`` when it yields several chains; a tarball's are the alphafold reader's (``AF-{acc}-F{n}``)."""
    from geoplm.datasets import alphafold
    from geoplm.structure import parse_structure

    records, skipped = [], []
    for unit in units:
        if unit.kind == "tarball":
            parsed, bad = alphafold.read_shard([unit.path], shard, shards, None, "skip")
            records.extend((record, unit.entry) for record in parsed)
            skipped.extend(bad)
            continue
        if shard_of(unit.key, shards) != shard:
            continue
        try:
            parsed = parse_structure(unit.path, chains=unit.chains)
        except StructureError as error:
            skipped.append({"entry": unit.key, "source_file": str(unit.path), "reason": error.reason})
            continue
        for record in parsed:
            record["id"] = unit.key if len(parsed) == 1 else f"{unit.key}_{record['chain'] or '_'}"
            records.append((record, unit.entry))
    return records, skipped


def record_digest(record: Mapping) -> str:
    """16 hex digits of the SHA-256 of a record's sequence, chain, residue numbers and backbone coordinates."""
    digest = hashlib.sha256()
    digest.update(f"{record['sequence']}\0{record['chain']}\0".encode())
    digest.update(record["residue_number"].numpy().tobytes())
    digest.update(torch.nan_to_num(record["backbone"], nan=1e9).numpy().tobytes())
    return digest.hexdigest()[:16]


# --- the encoder -----------------------------------------------------------------------------------


@dataclass
class EncoderSpec:
    """Where an encoder's weights are and what it is (:func:`resolve_encoder`).

    Attributes:
        name: what the user named (``encoder=``).
        weights: the weights file (a run's ``model.pt``, a pretraining's ``encoder.pt``, a published checkpoint).
        part: how to read it (:func:`geoplm.train.load_init`: ``run`` = a whole fine-tuned model with its task,
            ``encoder_state``, ``published``, ``encoder`` = the encoder of a run of another task).
        model: the ``models`` entry name; plm: the ``plms`` entry or ``none``.
        task: the fine-tuned ``tasks`` entry (``part == "run"``), else None.
        dataset: that task's dataset (its manifest names the classes of runs saved without them).
    """

    name: str
    weights: Path
    part: str
    model: str
    plm: str = "none"
    task: str | None = None
    dataset: str | None = None
    extra: dict = field(default_factory=dict)

    def slug(self) -> str:
        """A file-name-safe label of the encoder (the default output folder's suffix)."""
        text = self.name if self.part == "run" else f"{self.name}-{self.model}-{self.plm}"
        return "".join(c if c.isalnum() or c in "._-" else "-" for c in text.strip("/")).strip("-")


def _run_spec(directory: Path, name: str, config: Mapping | None) -> EncoderSpec:
    parts = directory.parts
    if len(parts) < 5 or not parts[-1].startswith("seed"):
        raise GeoplmError(
            f"encoder {name}: {directory} is not a training run folder "
            ".../{task}/{model}/{plm}/{pretrain}/seedN"
        )
    task, model, plm = parts[-5], parts[-4], parts[-3]
    dataset = ((config or {}).get("tasks", {}).get(task) or {}).get("dataset")
    return EncoderSpec(name, directory / "model.pt", "run", model, plm, task, dataset)


def resolve_encoder(
    config: Mapping,
    encoder: str,
    model: str | None = None,
    plm: str | None = None,
    seed: int = 0,
    results: str | os.PathLike = "results",
    raw: str | os.PathLike = "resources/raw",
) -> EncoderSpec:
    """The weights and settings an ``encoder=`` names.

    Args:
        config: the workflow config (``models``, ``pretrained``, ``tasks``).
        encoder: a training run folder (or its ``model.pt``), a run as ``task/model/plm/pretrain/seedN`` under
            ``results/train``, or a ``pretrained`` entry (then ``model`` is required).
        model, plm: the ``models`` / ``plms`` entries of a ``pretrained`` encoder (plm: ``none`` by default).
        seed: the seed of a ``pretrained: {task: ...}`` entry's run.

    Raises:
        ConfigError: an unknown ``pretrained`` entry or ``models`` / ``plms`` entry, or no ``model`` for one.
    """
    from geoplm import config as geoplm_config

    path = Path(encoder)
    if path.name == "model.pt":
        path = path.parent
    if (path / "model.pt").exists() or path.name.startswith("seed") and len(path.parts) >= 5:
        if len(path.parts) == 5 and not path.exists():
            path = Path(results) / "train" / path
        return _run_spec(path, encoder, config)
    entries = config.get("pretrained") or {}
    if encoder not in entries:
        raise ConfigError(
            f"encoder '{encoder}': neither a training run folder (results/train/<task>/<model>/<plm>/<pretrain>/seedN"
            f" or task/model/plm/pretrain/seedN) nor a 'pretrained' entry (known: {', '.join(entries) or 'none'})"
        )
    if not model:
        raise ConfigError(f"encoder '{encoder}' is a 'pretrained' entry: name the models entry it encodes (model=)")
    if model not in config.get("models", {}):
        raise ConfigError(f"model '{model}': not a 'models' entry (known: {', '.join(config.get('models', {}))})")
    plm = plm or geoplm_config.NO_PLM
    if plm != geoplm_config.NO_PLM and plm not in config.get("plms", {}):
        raise ConfigError(f"plm '{plm}': not a 'plms' entry (known: {', '.join(config.get('plms', {}))})")
    job = {"task": "embed", "model": model, "plm": plm, "pretrain": encoder, "seed": seed}
    start = geoplm_config.pretrain_start(config, job)
    if start["from"] == "task":
        run = Path(results) / "train" / "{task}/{model}/{plm}/{pretrain}/seed{seed}".format(**start["run"])
        if start["part"] == "model":
            spec = _run_spec(run, encoder, config)
            return spec
        return EncoderSpec(encoder, run / "model.pt", "encoder", model, plm)
    if start["from"] == "pretraining":
        weights = Path(results) / "pretrain" / model / plm / start["pretraining"] / "encoder.pt"
        return EncoderSpec(encoder, weights, "encoder_state", model, plm)
    return EncoderSpec(encoder, Path(raw) / "published" / start["checkpoint"], "published", model, plm)


def plm_checkpoint(config: Mapping, plm: str, resources: str | os.PathLike = "resources") -> Path:
    """The fair-esm checkpoint of a ``plms`` entry (as ``rules/common.smk`` ``esm_checkpoint``)."""
    spec = config["plms"][plm]
    if "random_init" in spec:
        return Path(resources) / "esm" / "random_init" / f"{plm}.pt"
    return Path(resources) / "raw" / "esm" / f"{spec['checkpoint']}.pt"


@dataclass
class LoadedEncoder:
    """A built, weight-loaded network in eval mode, with what encoding needs (:func:`load_encoder`)."""

    spec: EncoderSpec
    net: nn.Module  # TaskModel: .encoder, .head (Identity without a task)
    task: Any  # the geoplm.tasks Task of a fine-tuned run, else None
    graph_settings: dict
    input_dim: int
    settings: dict
    embeddings: Any = None  # (EmbeddingStore, loader, plm settings) for stored ESM-2 rows
    esm_inputs: bool = False
    class_names: list[str] | None = None

    @property
    def predicts(self) -> bool:
        return self.task is not None and self.task.settings["kind"] in PREDICTING_KINDS


def load_encoder(
    spec: EncoderSpec,
    config: Mapping,
    device: str = "cpu",
    manifest: str | os.PathLike | None = None,
    resources: str | os.PathLike = "resources",
    truncate: int | None = None,
) -> LoadedEncoder:
    """Build the network of ``spec`` and load its weights strictly (keys and shapes; the error names them).

    A fine-tuned run is rebuilt from its ``model.pt`` alone (the models entry, task settings, task state and input
    width saved there), its head included; a pretrained encoder from the config's ``models`` entry. The graph is
    the config's ``graphs`` entry of the model. With a plm: stored ESM-2 rows come from (and go to) the shared
    store ``resources/embeddings`` (:class:`geoplm.esm.EmbeddingStore`), computed with the plm's checkpoint for
    sequences not there yet; a model that runs ESM-2 inside (``freeze_esm: false``, or a pretrained ESM type)
    loads the checkpoint into the model.

    Args:
        manifest: the fine-tuned task's dataset manifest: class names of a run saved without them.
        truncate: keep at most this many residues per protein (the first ones; torchdrug ``TruncateProtein``);
            None keeps all.

    Raises:
        GeoplmError: a missing weights file, weights that do not fit the model.
    """
    from geoplm import config as geoplm_config
    from geoplm import train
    from geoplm.esm import file_sha256
    from geoplm.models.zoo import build_encoder
    from geoplm.structure import NUM_RESIDUE_TYPES
    from geoplm.tasks import get_task
    from geoplm.tasks.base import TaskModel

    if not spec.weights.exists():
        raise GeoplmError(f"encoder {spec.name}: weights file {spec.weights} does not exist (train or download it)")
    task, state = None, None
    if spec.part == "run":
        state = torch.load(spec.weights, map_location="cpu", weights_only=True)
        if not isinstance(state, Mapping) or "model_config" not in state:
            raise GeoplmError(f"{spec.weights}: not a training run's model.pt (no model_config)")
        model_spec = dict(state["model_config"])
        input_dim = int(state["input_dim"])
    else:
        model_spec = dict(config["models"][spec.model])
        input_dim = NUM_RESIDUE_TYPES
    uses_plm = spec.plm != geoplm_config.NO_PLM
    esm, embeddings, esm_inputs = None, None, False
    plm_settings: dict = {}
    if uses_plm:
        from geoplm.esm import EmbeddingStore, load_esm2

        plm_settings = dict(config["plms"][spec.plm])
        checkpoint = plm_checkpoint(config, spec.plm, resources)
        in_model = geoplm_config.finetunes_esm(model_spec) or (
            spec.part != "run" and model_spec.get("type") in geoplm_config.ESM_TYPES
        )
        if in_model:
            if spec.part != "run":  # a pretraining ran the ESM-2 inside, frozen (geoplm.pretraining.run)
                model_spec.update(esm_in_model=True, freeze_esm=True)
            esm = (*load_esm2(checkpoint, plm_settings.get("checksum")), plm_settings)
            esm_inputs = True
        else:
            store = EmbeddingStore(Path(resources) / "embeddings", spec.plm, int(plm_settings["repr_layer"]))

            def load_model(checkpoint=checkpoint):
                model, alphabet = load_esm2(checkpoint, plm_settings.get("checksum"))
                return model.to(device), alphabet

            embeddings = (store, load_model, plm_settings)
            if spec.part != "run":  # the stored rows' width: the checkpoint's
                input_dim = int(load_model()[0].embed_dim)
    if spec.part == "run":
        task = get_task(state["task"], spec.task or "task")
        head_weights = [k for k in state["model"] if k.startswith("head.") and k.endswith(".weight")]
        if head_weights and hasattr(task, "num_classes"):
            task.num_classes = int(state["model"][sorted(head_weights, key=_layer_order)[-1]].shape[0])
        task_state = state.get("task_state") or {}
        if "target_mean" in task_state:  # a normalised regression (geoplm.tasks.regression)
            task.mean, task.std = float(task_state["target_mean"]), float(task_state["target_std"])
        net = task.build_model(model_spec, input_dim, uses_plm, esm=esm, name=spec.model)
        train.load_weights(net, state["model"], str(spec.weights), spec.model)
    else:
        encoder, _ = build_encoder(model_spec, input_dim, uses_plm, name=spec.model, esm=esm)
        net = TaskModel(encoder, nn.Identity())
        source, weights = train.load_init(spec.weights, spec.part)
        if callable(weights):
            weights = {f"encoder.{k}": v for k, v in weights(net.encoder).items()}
        train.load_weights(net, weights, source, spec.model)
    net.to(device).eval()
    graph_settings = geoplm_config.graph_settings(config, model_spec.get("graph", "gearnet"))
    if task is not None:
        task.bind(device, graph_settings, 0)
    class_names = None
    if task is not None and task.settings["kind"] in ("multilabel", "classification"):
        listed = dataset_class_names(config, spec.dataset, Path(resources) / "raw") if spec.dataset else None
        class_names = _class_names(task, state, manifest, listed)
    settings = {
        "encoder": spec.name,
        "weights": str(spec.weights),
        "weights_sha256": file_sha256(spec.weights),
        "part": spec.part,
        "model": spec.model,
        "model_config": model_spec,
        "plm": spec.plm,
        "plm_settings": {k: v for k, v in plm_settings.items() if k not in ("toks_per_batch", "fused_attention")},
        "graph": graph_settings,
        "task": spec.task,
        "task_kind": None if task is None else task.settings["kind"],
        "input_dim": input_dim,
        "truncate": truncate,
        "target_label": (
            task.settings.get("label") if task is not None and task.settings["kind"] == "regression" else None
        ),
    }
    return LoadedEncoder(spec, net, task, graph_settings, input_dim, settings, embeddings, esm_inputs, class_names)


def _layer_order(key: str) -> tuple:
    return tuple(int(p) if p.isdigit() else -1 for p in key.split("."))


def _class_names(task, state: Mapping, manifest: str | os.PathLike | None, listed: list[str] | None) -> list[str]:
    """Names of the head's classes: the run's ``task_state["class_names"]``, then its dataset's label files
    (``listed``, :func:`dataset_class_names`), then its dataset manifest's labels, then ``class_{i}``."""
    count = int(task.num_classes)
    names: list[str | None] = list((state.get("task_state") or {}).get("class_names") or [None] * count)
    names = (names + [None] * count)[:count]
    if listed is not None and len(listed) == count:
        names = [name or other for name, other in zip(names, listed, strict=True)]
    if manifest is not None and Path(manifest).exists() and any(n is None for n in names):
        from geoplm.steps import read_tsv

        labels = [json.loads(text) for text in read_tsv(manifest)["labels"] if text]
        from geoplm.tasks.base import class_names_from_labels

        for index, name in enumerate(class_names_from_labels(labels, count)):
            names[index] = names[index] or name
    return [name or f"class_{i}" for i, name in enumerate(names)]


def dataset_class_names(config: Mapping, dataset: str, raw: str | os.PathLike = "resources/raw") -> list[str] | None:
    """The full class list of a ``labelled_chains`` dataset, read from its downloaded label files in the order
    its ``target`` indices use (:mod:`geoplm.datasets.chains`): the DeepFRI annotation file's EC / GO term list,
    ``class_map.txt`` (fold), ``unique_functions.txt`` (reaction); None for other readers or missing files."""
    from geoplm.datasets import chains
    from geoplm.datasets import labels as label_io

    spec = (config.get("datasets") or {}).get(dataset) or {}
    options = spec.get("options") or {}
    task = options.get("task")
    if spec.get("reader") != "labelled_chains" or task not in chains.TASKS:
        return None
    folder = Path(raw) / spec["source"] / "files"
    paths = [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
    try:
        found = chains._find_label_files(task, paths, options.get("label_files") or {})
        if task == "fold" and found.get("class_map"):
            classes = label_io.read_class_map(found["class_map"])
            return [name for name, _ in sorted(classes.items(), key=lambda item: item[1])]
        if task == "reaction" and found.get("classes"):
            return label_io.read_reaction_classes(found["classes"])
        if task in ("ec", "go_bp", "go_mf", "go_cc") and found.get("annotations"):
            terms, _ = label_io.read_deepfri_annotations(found["annotations"])
            return list(terms["EC-numbers" if task == "ec" else chains._GO_COLUMNS[task]])
    except GeoplmError as error:
        log.warning("class names of dataset %s not read from its label files: %s", dataset, error)
    return None


def settings_hash(settings: Mapping) -> str:
    """16 hex digits naming the settings that change a shard's rows."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --- encoding --------------------------------------------------------------------------------------


def length_batches(lengths: Sequence[int], max_residues: int) -> list[list[int]]:
    """Indices grouped into batches of at most ``max_residues`` residues (a longer protein alone), longest first,
    so that padding-free batches of similar size keep memory flat."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, current, total = [], [], 0
    for i in order:
        if current and total + lengths[i] > max_residues:
            batches.append(current)
            current, total = [], 0
        current.append(i)
        total += lengths[i]
    if current:
        batches.append(current)
    return batches


def encode_records(
    loaded: LoadedEncoder, records: Sequence[Mapping], max_residues: int = 4096, device: str = "cpu",
    progress: bool | None = None,
) -> tuple[dict[str, dict[str, Any]], list[dict[str, str]]]:  # fmt: skip
    """Encode records with a loaded encoder.

    Returns:
        ``({id: {"residue_features": (L, D) with NaN rows for residues without a Cα, "protein_features": (D,),
        "scores": (C,) or None}}, skipped rows)``: a record without any residue with a Cα is skipped.
    """
    from geoplm.inputs import InputLoader, pack

    embeddings = None
    if loaded.embeddings is not None and records:
        from geoplm.esm import DEFAULT_STRIDE, DEFAULT_WINDOW, embed_to_store

        store, load_model, plm = loaded.embeddings
        embeddings = embed_to_store(
            store, load_model, None, {r["id"]: r["sequence"] for r in records},
            toks_per_batch=plm.get("toks_per_batch", 4096), window=plm.get("window", DEFAULT_WINDOW),
            stride=plm.get("stride", DEFAULT_STRIDE), device=device, precision=plm.get("precision", "float32"),
            fused_attention=plm.get("fused_attention"),
        )  # fmt: skip
        embeddings = {rid: str(path) for rid, path in embeddings.items()}
    truncate = loaded.settings.get("truncate")
    loader = InputLoader(embeddings=embeddings, esm_inputs=loaded.esm_inputs, max_length=truncate)
    out: dict[str, dict[str, Any]] = {}
    skipped: list[dict[str, str]] = []
    lengths = [min(len(r["sequence"]), truncate or math.inf) for r in records]
    batches = length_batches(lengths, max_residues)
    net = loaded.net
    for batch in tqdm(batches, desc="encoding", unit="batch", disable=not progress if progress is not None else None):
        proteins, kept = [], []
        for i in batch:
            protein = loader(records[i])
            if protein is None:
                skipped.append({"entry": records[i]["id"], "source_file": records[i]["source"],
                                "reason": "no residue with a Cα atom"})  # fmt: skip
                continue
            proteins.append(protein)
            kept.append(records[i])
        if not proteins:
            continue
        with torch.inference_mode():
            packed = pack(proteins, device, loaded.graph_settings)
            output = net.encoder(packed.graph, packed.node_feature, **packed.encoder_inputs)
            graph_feature = output["graph_feature"].float()
            scores = _scores(loaded, net.head(output["graph_feature"])) if loaded.predicts else None
        node_feature = output.get("node_feature")
        counts = [p.num_nodes for p in proteins]
        per_node = None
        if node_feature is not None and node_feature.shape[0] == sum(counts):
            per_node = node_feature.float().cpu().split(counts)
        for j, (protein, record) in enumerate(zip(proteins, kept, strict=True)):
            rows = torch.full((protein.length, graph_feature.shape[1] if per_node is None else per_node[j].shape[1]),
                              float("nan"))  # fmt: skip
            if per_node is not None:
                rows[protein.residue_index] = per_node[j]
            out[record["id"]] = {
                "residue_features": rows,
                "protein_features": graph_feature[j].cpu().clone(),
                "scores": None if scores is None else scores[j].cpu().clone(),
            }
    return out, skipped


def _scores(loaded: LoadedEncoder, output: Tensor) -> Tensor:
    """The head's output as scores: sigmoid (multilabel), softmax (classification), the value (regression,
    de-normalised as :meth:`geoplm.tasks.regression.Regression.forward`), (B, C)."""
    kind = loaded.task.settings["kind"]
    output = output.float()
    if kind == "multilabel":
        return torch.sigmoid(output)
    if kind == "classification":
        return torch.softmax(output, dim=-1)
    return (output * loaded.task.std + loaded.task.mean).reshape(len(output), -1)


# --- one shard -------------------------------------------------------------------------------------


def previous_path(shard_path: str | os.PathLike) -> Path:
    """The hard link that keeps a shard's previous rows across Snakemake's removal of outputs."""
    shard_path = Path(shard_path)
    return shard_path.parent / ".previous" / shard_path.name


def load_shard(path: str | os.PathLike) -> dict[str, Any]:
    """A shard file (the module docstring's layout), with ``torch.load(weights_only=True)`` on the CPU.

    Raises:
        GeoplmError: the file is not such a shard.
    """
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError, OSError, ...
        raise GeoplmError(f"{path}: cannot load embeddings shard: {type(error).__name__}: {error}") from error
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise GeoplmError(f"{path}: not a {FORMAT} shard")
    return data


def _previous_rows(shard_path: Path, digest_of: Mapping[str, str], settings_key: str) -> dict[str, dict[str, Any]]:
    """Rows of the previous run of this shard with the same id, digest and settings."""
    for candidate in (shard_path, previous_path(shard_path)):
        if not candidate.exists():
            continue
        try:
            old = load_shard(candidate)
        except GeoplmError as error:
            log.warning("previous rows not reused: %s", error)
            continue
        if old.get("settings_hash") != settings_key:
            log.info("%s: written with other settings; nothing reused", candidate)
            return {}
        rows = {}
        for i, rid in enumerate(old["ids"]):
            if digest_of.get(rid) == old["digests"][i]:
                rows[rid] = {
                    "residue_features": old["residue_features"][i],
                    "protein_features": old["protein_features"][i],
                    "scores": None if old.get("scores") is None else old["scores"][i],
                }
        return rows
    return {}


def embed_shard(
    sheet: str | os.PathLike,
    loaded: LoadedEncoder,
    shard: int,
    shards: int,
    shard_path: str | os.PathLike,
    skipped_path: str | os.PathLike,
    max_residues: int = 4096,
    device: str = "cpu",
) -> dict[str, int]:
    """Embed (and predict) one shard of a sheet: write the shard file and its skipped report.

    Sheet-level problems (bad paths, repeated ids) are reported by shard 0 only; a structure that does not parse,
    has no requested chain or no residue with a Cα is skipped with the reason; nothing else stops the shard.

    Returns:
        ``{"records", "reused", "encoded", "skipped"}`` counts.
    """
    shard_path, skipped_path = Path(shard_path), Path(skipped_path)
    units, skipped = read_sheet(sheet)
    if shard != 0:
        skipped = []
    pairs, bad = _units_records(units, shard, shards)
    skipped.extend(bad)
    unique: dict[str, tuple[dict, str]] = {}
    for record, entry in pairs:
        if record["id"] in unique:
            taken = unique[record["id"]][0]["source"]
            skipped.append({"entry": record["id"], "source_file": record["source"],
                            "reason": f"record id {record['id']} already taken by {taken}"})  # fmt: skip
            continue
        unique[record["id"]] = (record, entry)
    records = [record for record, _ in unique.values()]
    digests = {record["id"]: record_digest(record) for record in records}
    key = settings_hash(loaded.settings)
    rows = _previous_rows(shard_path, digests, key)
    todo = [record for record in records if record["id"] not in rows]
    reused = len(records) - len(todo)
    log.info("shard %d/%d: %d structures, %d reused, %d to encode", shard, shards, len(records), reused, len(todo))
    encoded, bad = encode_records(loaded, todo, max_residues, device)
    rows.update(encoded)
    skipped.extend(bad)
    kept = [record for record in records if record["id"] in rows]
    protein_features = torch.stack([rows[r["id"]]["protein_features"] for r in kept]) if kept else torch.zeros(0, 0)
    scores = None
    if loaded.predicts:
        scores = torch.stack([rows[r["id"]]["scores"] for r in kept]) if kept else torch.zeros(0, 0)
    data = {
        "format": FORMAT,
        "ids": [r["id"] for r in kept],
        "entries": [unique[r["id"]][1] for r in kept],
        "sources": [r["source"] for r in kept],
        "chains": [r["chain"] for r in kept],
        "sequences": [r["sequence"] for r in kept],
        "residue_numbers": [r["residue_number"].long() for r in kept],
        "insertion_codes": [list(r["insertion_code"]) for r in kept],
        "residue_features": [rows[r["id"]]["residue_features"] for r in kept],
        "protein_features": protein_features,
        "digests": [digests[r["id"]] for r in kept],
        "settings": json.loads(json.dumps(loaded.settings, default=str)),
        "settings_hash": key,
        "scores": scores,
        "class_names": loaded.class_names,
        "task": loaded.spec.task if loaded.predicts else None,
    }
    if loaded.settings.get("truncate"):  # residue numbers etc. of the residues encoded
        limit = int(loaded.settings["truncate"])
        data["residue_numbers"] = [n[:limit] for n in data["residue_numbers"]]
        data["insertion_codes"] = [c[:limit] for c in data["insertion_codes"]]
    atomic.torch_save(data, shard_path)
    _link_previous(shard_path)
    from geoplm.steps import write_tsv

    write_tsv(skipped_path, skipped, SKIPPED_COLUMNS)
    counts = {"records": len(kept), "reused": reused, "encoded": len(encoded), "skipped": len(skipped)}
    log.info("shard %d/%d: %s -> %s", shard, shards, counts, shard_path)
    return counts


def _link_previous(shard_path: Path) -> None:
    """Hard-link the shard into ``.previous/`` (a copy where links are refused) for the next incremental run."""
    import shutil

    link = previous_path(shard_path)
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.part")
    tmp.unlink(missing_ok=True)
    try:
        os.link(shard_path, tmp)
    except OSError:
        shutil.copyfile(shard_path, tmp)
    os.replace(tmp, link)


# --- gathering -------------------------------------------------------------------------------------


def gather(
    shard_paths: Sequence[str | os.PathLike],
    skipped_paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    threshold: float = 0.5,
    top_k: int = 10,
) -> dict[str, Any]:
    """Join shards into ``proteins.parquet``, ``predictions.tsv``, ``skipped.tsv`` and ``settings.json`` in
    ``out_dir`` (one shard in memory at a time).

    Returns:
        A summary: ``proteins``, ``skipped``, ``predictions`` counts and the output paths.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from geoplm.steps import read_tsv, write_tsv

    out_dir = Path(out_dir)
    proteins_path, predictions_path = out_dir / "proteins.parquet", out_dir / "predictions.tsv"
    schema = None
    settings: dict = {}
    count = 0
    predictions: list[dict[str, Any]] = []
    with atomic.atomic_path(proteins_path) as tmp:
        writer = None
        for path in shard_paths:
            data = load_shard(path)
            settings = settings or data["settings"]
            if not data["ids"]:
                continue
            features = data["protein_features"].float().numpy()
            width = features.shape[1] if features.ndim == 2 else 0
            if schema is None:
                schema = pa.schema([
                    ("id", pa.string()), ("entry", pa.string()), ("source", pa.string()), ("chain", pa.string()),
                    ("length", pa.int32()), ("shard", pa.string()), ("embedding", pa.list_(pa.float32(), width)),
                ])  # fmt: skip
                writer = pq.ParquetWriter(tmp, schema)
            table = pa.table(
                {
                    "id": data["ids"], "entry": data["entries"], "source": data["sources"], "chain": data["chains"],
                    "length": [len(s) for s in data["sequences"]], "shard": [Path(path).stem] * len(data["ids"]),
                    "embedding": pa.FixedSizeListArray.from_arrays(pa.array(features.reshape(-1)), width),
                },
                schema=schema,
            )  # fmt: skip
            writer.write_table(table)
            count += len(data["ids"])
            if data.get("scores") is not None:
                predictions.extend(prediction_rows(data, threshold, top_k))
        if writer is None:  # no shard: an empty table
            pq.write_table(pa.table({"id": pa.array([], pa.string())}), tmp)
        else:
            writer.close()
    write_tsv(predictions_path, predictions, PREDICTION_COLUMNS)
    skipped = [row for path in skipped_paths for row in read_tsv(path).to_dict("records")]
    write_tsv(out_dir / "skipped.tsv", skipped, SKIPPED_COLUMNS)
    summary = {
        "proteins": count,
        "skipped": len(skipped),
        "predictions": len(predictions),
        "threshold": threshold,
        "top_k": top_k,
        "shards": [str(p) for p in shard_paths],
        "outputs": {name: str(out_dir / name) for name in ("proteins.parquet", "predictions.tsv", "skipped.tsv")},
    }
    atomic.write_json(out_dir / "settings.json", {**settings, "summary": summary})
    log.info("%d proteins, %d predictions, %d skipped -> %s", count, len(predictions), len(skipped), out_dir)
    return summary


def prediction_rows(data: Mapping[str, Any], threshold: float, top_k: int) -> Iterator[dict[str, Any]]:
    """Rows of ``predictions.tsv`` for one shard: per protein the classes / terms with a score >= ``threshold``,
    at most ``top_k``, best first (rank 1, 2, ...); a regression's value (label: the task's ``label``)."""
    scores, names = data["scores"], data.get("class_names")
    kind, task = data["settings"].get("task_kind"), data.get("task")
    for i, rid in enumerate(data["ids"]):
        if kind == "regression":
            label = data["settings"].get("target_label") or "value"
            yield {"id": rid, "task": task, "rank": 1, "label": label, "score": round(float(scores[i][0]), 6)}
            continue
        values, order = torch.sort(scores[i], descending=True)
        for rank, (value, index) in enumerate(zip(values[:top_k].tolist(), order[:top_k].tolist(), strict=True), 1):
            if value < threshold:
                break
            label = names[index] if names else f"class_{index}"
            yield {"id": rid, "task": task, "rank": rank, "label": label, "score": round(value, 6)}


def run_name(sheet: str | os.PathLike, spec: EncoderSpec) -> str:
    """The default output folder name: ``<sheet stem>-<encoder slug>``."""
    stem = Path(sheet).name.split(".")[0] or "structures"
    return f"{stem}-{spec.slug()}"


def describe(summary: Mapping[str, Any]) -> str:
    """Lines telling where a finished run's outputs are and how to load them."""
    outputs = summary["outputs"]
    folder = Path(outputs["proteins.parquet"]).parent
    return "\n".join([
        f"{summary['proteins']} proteins embedded, {summary['skipped']} skipped, {summary['predictions']} predictions",
        f"  per-protein table:  {outputs['proteins.parquet']}   (pandas.read_parquet; column 'embedding')",
        f"  per-residue shards: {folder / 'shards'}/*.pt   (torch.load(path, weights_only=True))",
        f"  predictions:        {outputs['predictions.tsv']}",
        f"  skipped:            {outputs['skipped.tsv']}",
        f"  settings:           {folder / 'settings.json'}",
    ])  # fmt: skip


def workflow_job(config: Mapping, results: str = "results", resources: str = "resources") -> dict[str, Any]:
    """The ``embed`` target's job from the workflow config (``rules/apply.smk``): ``name`` (the output folder under
    ``results/embed``), ``spec`` (:class:`EncoderSpec`), ``settings`` (``embed`` over :data:`DEFAULTS`), ``shards``
    (shard ids) and a shard job's ``inputs`` (the sheet, the weights -- a dependency: a run is trained, a
    pretraining run, a published checkpoint downloaded --, the plm's checkpoint, a fine-tuned run's manifest).

    Raises:
        ConfigError: ``structures`` or ``encoder`` unset; the errors of :func:`resolve_encoder`.
    """
    from geoplm import config as geoplm_config

    if not config.get("structures") or not config.get("encoder"):
        raise ConfigError(
            "the embed target needs a sheet and an encoder: snakemake embed --config structures=my.tsv "
            "encoder=<run folder | task/model/plm/pretrain/seedN | pretrained entry> [model=<models entry>] [plm=...]"
        )
    settings = {**DEFAULTS, **(config.get("embed") or {})}
    spec = resolve_encoder(config, str(config["encoder"]), config.get("model"), config.get("plm"),
                           int(settings.get("seed", 0)), results, Path(resources) / "raw")  # fmt: skip
    inputs = {"sheet": str(config["structures"]), "weights": str(spec.weights)}
    if spec.plm != geoplm_config.NO_PLM:
        checkpoint = plm_checkpoint(config, spec.plm, resources)
        inputs["esm_model"] = str(checkpoint)
        inputs["esm_regression"] = str(checkpoint.with_name(f"{checkpoint.stem}-contact-regression.pt"))
    if spec.dataset and spec.dataset in (config.get("datasets") or {}):
        inputs["manifest"] = f"{resources}/records/{spec.dataset}/manifest.tsv"
    return {
        "name": settings.get("name") or run_name(config["structures"], spec),
        "spec": spec,
        "settings": settings,
        "shards": geoplm_config.shard_ids(int(settings["shards"])),
        "inputs": inputs,
    }


def read_summary(settings_path: str | os.PathLike) -> dict[str, Any]:
    """The summary :func:`gather` wrote into ``settings.json``."""
    return json.loads(Path(settings_path).read_text())["summary"]


def load_embeddings(out_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Every protein of a finished run folder: ``{id: {"residue_features" (L, D), "protein_features" (D,),
    "residue_numbers" (L,), "sequence", "scores" (C,) or None}}`` (all in memory: for a sheet of moderate size;
    iterate :func:`load_shard` over ``shards/*.pt`` for a proteome)."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted((Path(out_dir) / "shards").glob("*.pt")):
        data = load_shard(path)
        for i, rid in enumerate(data["ids"]):
            out[rid] = {
                "residue_features": data["residue_features"][i],
                "protein_features": data["protein_features"][i],
                "residue_numbers": data["residue_numbers"][i],
                "sequence": data["sequences"][i],
                "scores": None if data.get("scores") is None else data["scores"][i],
            }
    return out


def run(
    sheet: str | os.PathLike,
    encoder: str,
    config: Mapping,
    out_dir: str | os.PathLike,
    model: str | None = None,
    plm: str | None = None,
    shards: int = 1,
    only_shard: int | None = None,
    max_residues: int = 4096,
    threshold: float = 0.5,
    top_k: int = 10,
    truncate: int | None = None,
    device: str = "cpu",
    results: str | os.PathLike = "results",
    resources: str | os.PathLike = "resources",
    manifest: str | os.PathLike | None = None,
) -> dict[str, Any] | None:
    """Everything without Snakemake (``geoplm embed-structures``): every shard (or ``only_shard``), then
    :func:`gather` (when all shards were run). Outputs in ``out_dir`` as the workflow's ``results/embed/<name>``.

    Returns:
        The gather summary, or None when one shard was run.

    Raises:
        ConfigError: bad ``shards``; the errors of :func:`resolve_encoder` and :func:`load_encoder`.
    """
    if shards < 1 or (only_shard is not None and not 0 <= only_shard < shards):
        raise ConfigError(f"shards: {shards} shards, shard {only_shard}: need shards >= 1 and 0 <= shard < shards")
    spec = resolve_encoder(config, encoder, model, plm, results=results, raw=Path(resources) / "raw")
    if manifest is None and spec.dataset:
        manifest = Path(resources) / "records" / spec.dataset / "manifest.tsv"
    loaded = load_encoder(spec, config, device, manifest, resources, truncate)
    out_dir = Path(out_dir)
    wanted = range(shards) if only_shard is None else [only_shard]
    for shard in wanted:
        embed_shard(sheet, loaded, shard, shards, out_dir / "shards" / f"{shard:04d}.pt",
                    out_dir / "shards" / f"{shard:04d}.skipped.tsv", max_residues, device)  # fmt: skip
    if only_shard is not None:
        return None
    ids = [f"{s:04d}" for s in range(shards)]
    return gather([out_dir / "shards" / f"{s}.pt" for s in ids], [out_dir / "shards" / f"{s}.skipped.tsv" for s in ids],
                  out_dir, threshold, top_k)  # fmt: skip
