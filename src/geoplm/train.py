"""Training loop: one (task, model, node features, seed) run, checkpointed, resumable, seeded.

Implements Wu et al. (Communications Biology 2023)'s toy position-recovery tasks on a residue
graph encoder; the loop follows the authors' ``main.py`` in GGNN_Meets_PLM (smiles724, commit
088c1f5): Adam, ``ReduceLROnPlateau(mode="min", factor=0.6, patience=5, min_lr=5e-7)`` stepped on
the validation loss, early stopping once the validation loss has failed to improve ``patience``
times (the reference's counter is never reset, and neither is ours), and the test set evaluated
with the weights of the epoch with the lowest validation loss.

Tasks (GGNN_Meets_PLM ``gvp/atom3d.py``, ``TOYDataset``; labels over the residues that have a Cα):

- ``absolute_position`` ("id"): classify each residue's index ``i`` in ``0..n-1`` among
  ``num_classes`` classes (9,000 in the paper), cross-entropy; metric: accuracy over residues.
- ``relative_position`` ("dist"): regress ``min(i, n - i)``, the residue's sequence distance to
  the nearer chain end as the reference defines it, mean squared error; metric: RMSE (residues).

Node features: residue-type one-hot (21: torchdrug's 20 residue types + unknown), or ESM-2
per-residue embeddings (ESM-GearNet's serial fusion: ESM output is GearNet's node input).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from geoplm import atomic
from geoplm.config import finetunes_esm
from geoplm.errors import GeoplmError
from geoplm.structure import NUM_RESIDUE_TYPES

log = logging.getLogger(__name__)

TASK_KINDS = ("absolute_position", "relative_position", "docking")
#: docking roles of the ground-truth partners and of a given ligand input pose (geoplm.datasets.docking)
RECEPTOR_ROLES = ("receptor_bound", "receptor_complex")
LIGAND_ROLES = ("ligand_bound", "ligand_complex")


@dataclass
class Example:
    """One protein chain ready for the encoder.

    Attributes:
        id: record id.
        position: (n, 3) Cα coordinates in Å (residues without a Cα dropped, as torchdrug's
            ``AlphaCarbonNode`` and the reference's ``df[df.name == "CA"]`` do).
        residue_type: (n,) long residue-type indices (0-20).
        node_feature: (n, F) float node input (one-hot or ESM-2 embedding rows).
        label: (n,) long class (absolute) or float target (relative).
        edge_list: (E, 3) cached graph ``[node_in, node_out, relation]`` (``build_graphs``), or
            None to build the graph on the fly.
        esm_input: for an ESM-2 inside the model (ESM-GearNet fine-tuning), the chain's full sequence and
            the ``(L,)`` bool mask of its residues that are nodes
            (:func:`geoplm.models.fusion.record_esm_inputs`); None otherwise.
    """

    id: str
    position: torch.Tensor
    residue_type: torch.Tensor
    node_feature: torch.Tensor
    label: torch.Tensor
    edge_list: torch.Tensor | None = None
    esm_input: tuple[str, torch.Tensor] | None = None


def position_labels(kind: str, n: int) -> torch.Tensor:
    """Labels of the toy tasks for a chain of ``n`` Cα residues.

    Returns:
        ``absolute_position``: ``arange(n)`` (long); ``relative_position``: ``min(i, n - i)``
        (float) -- GGNN_Meets_PLM ``gvp/atom3d.py`` ``TOYDataset``.

    Raises:
        GeoplmError: unknown task kind.
    """
    index = torch.arange(n)
    if kind == "absolute_position":
        return index
    if kind == "relative_position":
        return torch.minimum(index, n - index).float()
    raise GeoplmError(f"unknown task kind '{kind}' (known: {', '.join(TASK_KINDS)})")


def load_embedding_index(paths: Sequence[str | os.PathLike]) -> dict[str, str]:
    """Record id -> embedding file, from the ``embed_esm`` index TSVs of a dataset."""
    from geoplm.steps import read_tsv

    index: dict[str, str] = {}
    for path in paths:
        frame = read_tsv(path)
        index.update(zip(frame["id"], frame["path"], strict=True))
    return index


def read_embedding(path: str | os.PathLike, record_id: str, length: int) -> torch.Tensor:
    """The (L, D) representation stored in a fair-esm extract.py-style file.

    Raises:
        GeoplmError: the file is missing (the store was cleaned: rerun ``embed_esm``) or its
            length differs from the record's.
    """
    if not Path(path).exists():
        raise GeoplmError(
            f"embedding of {record_id} missing at {path}: rerun embed_esm (snakemake --forcerun embed_esm)"
        )
    data = torch.load(path, map_location="cpu", weights_only=True)
    (representation,) = data["representations"].values()
    if representation.shape[0] != length:
        raise GeoplmError(f"{path}: embedding of {record_id} has {representation.shape[0]} rows, record {length}")
    return representation.float()


def load_graphs(paths: Sequence[str | os.PathLike]) -> dict[str, torch.Tensor]:
    """Record id -> cached ``(E, 3)`` edge list, from ``build_graphs`` shard files."""
    graphs: dict[str, torch.Tensor] = {}
    for path in paths:
        data = torch.load(path, map_location="cpu", weights_only=True)
        graphs.update({rid: graph["edge_list"] for rid, graph in data["graphs"].items()})
    return graphs


def build_examples(
    records: Sequence[Mapping],
    kind: str,
    embeddings: Mapping[str, str] | None = None,
    graphs: Mapping[str, torch.Tensor] | None = None,
    esm_inputs: bool = False,
) -> list[Example]:
    """Turn residue records into :class:`Example` s (Cα residues only, labels per ``kind``).

    Args:
        records: records from :func:`geoplm.structure.load_shard`.
        kind: task kind (see module docstring).
        embeddings: record id -> embedding file; None for residue one-hot node features.
        graphs: record id -> cached edge list (``build_graphs``); None to build graphs per batch.
        esm_inputs: keep each chain's sequence and node mask for an ESM-2 inside the model.

    Raises:
        GeoplmError: a record without an embedding (or cached graph) when those are used.
    """
    from geoplm.graph import record_graph_inputs
    from geoplm.models.fusion import record_esm_inputs

    examples = []
    for record in records:
        keep = ~torch.isnan(record["backbone"][:, 1]).any(dim=-1)
        position, residue_type = record_graph_inputs(record)
        n = len(position)
        if n == 0:
            log.warning("%s: no residue with a Cα; left out", record["id"])
            continue
        if graphs is not None and record["id"] not in graphs:
            raise GeoplmError(f"record {record['id']} has no cached graph (rerun build_graphs)")
        if embeddings is None:
            node_feature = nn.functional.one_hot(residue_type, NUM_RESIDUE_TYPES).float()
        else:
            if record["id"] not in embeddings:
                raise GeoplmError(f"record {record['id']} has no ESM embedding in the index")
            full = read_embedding(embeddings[record["id"]], record["id"], len(record["sequence"]))
            node_feature = full[keep]
        edge_list = graphs[record["id"]] if graphs is not None else None
        esm_input = record_esm_inputs(record) if esm_inputs else None
        examples.append(
            Example(record["id"], position, residue_type, node_feature, position_labels(kind, n), edge_list, esm_input)
        )
    return examples


class ResidueTaskModel(nn.Module):
    """Encoder plus a per-residue head, as the reference's ``TOYModel``.

    Head (GGNN_Meets_PLM ``gvp/atom3d.py`` ``TOYModel``): ``Linear(D, 2D) -> ReLU -> Dropout(0.1)
    -> Linear(2D, C)``, with a final ReLU for the (non-negative) relative-position regression.

    Args:
        encoder: a module mapping ``(graph, node_feature (N, F))`` to ``{"node_feature": (N, D)}``.
        output_dim: D, the encoder's node feature width.
        num_outputs: C, ``num_classes`` or 1.
        regression: append the ReLU and squeeze to (N,).
    """

    def __init__(self, encoder: nn.Module, output_dim: int, num_outputs: int, regression: bool):
        super().__init__()
        self.encoder = encoder
        layers: list[nn.Module] = [
            nn.Linear(output_dim, 2 * output_dim),
            nn.ReLU(),
            nn.Dropout(p=0.1),
            nn.Linear(2 * output_dim, num_outputs),
        ]
        if regression:
            layers.append(nn.ReLU())
        self.head = nn.Sequential(*layers)
        self.regression = regression

    def forward(self, graph, node_feature: torch.Tensor, **encoder_inputs) -> torch.Tensor:
        """(N, C) logits, or (N,) regression outputs; ``encoder_inputs`` go to the encoder (the sequences of an
        in-model ESM-2)."""
        out = self.head(self.encoder(graph, node_feature, **encoder_inputs)["node_feature"])
        return out.squeeze(-1) if self.regression else out


def build_encoder(spec: Mapping, input_dim: int, plm: bool = False, esm=None) -> tuple[nn.Module, int]:
    """The encoder of a ``models`` entry and its node output width (see :mod:`geoplm.models.zoo`); ``esm``:
    ``(model, alphabet, plm settings)`` of an ESM-2 to fine-tune inside the model."""
    from geoplm.models.zoo import build_encoder as build

    return build(spec, input_dim, plm, esm=esm)


def ca_graph(position: torch.Tensor, residue_type: torch.Tensor, node2graph: torch.Tensor, settings: Mapping):
    """Wu et al.'s residue graph on Cα: r-ball (``kind: radius``, ``radius`` Å, 8 by default) or
    kNN (``kind: knn``, ``k``, 10 by default), as GGNN_Meets_PLM builds it with torch_cluster.

    Returns a :class:`geoplm.graph.ResidueGraph` with one relation and no edge features.
    """
    from geoplm.graph import ResidueGraph, knn_graph, radius_graph

    if settings["kind"] == "knn":
        edge_index = knn_graph(position, int(settings.get("k", 10)), node2graph)
    else:
        edge_index = radius_graph(
            position,
            float(settings.get("radius", 8.0)),
            node2graph,
            max_num_neighbors=settings.get("max_num_neighbors"),
        )
    edge_list = torch.cat([edge_index.t(), torch.zeros(edge_index.shape[1], 1, dtype=torch.long)], dim=1)
    return ResidueGraph(
        num_nodes=int(position.shape[0]),
        batch_size=int(node2graph.max()) + 1 if len(node2graph) else 0,
        node_position=position,
        residue_type=residue_type,
        node2graph=node2graph,
        edge_list=edge_list,
        edge_feature=torch.zeros(edge_list.shape[0], 0),
        num_relation=1,
    )


def make_graph(batch: Sequence[Example], device: str, settings: Mapping | None = None):
    """Pack a batch into one residue graph: cached edge lists when the examples carry them,
    else the graph of ``settings`` built on the packed batch (GearNet's, or a Cα r-ball / kNN
    graph when ``settings["kind"]`` is ``radius`` / ``knn``)."""
    from geoplm.graph import build_gearnet_graph, pack_graphs

    settings = dict(settings or {})
    kind = settings.pop("kind", "gearnet")
    if kind == "gearnet" and all(example.edge_list is not None for example in batch):
        num_relation = 2 * int(settings.get("sequential_max_distance", 2)) + 3
        graph = pack_graphs(
            [e.position for e in batch], [e.residue_type for e in batch], [e.edge_list for e in batch], num_relation
        )
        return graph.to(device)
    position = torch.cat([example.position for example in batch])
    residue_type = torch.cat([example.residue_type for example in batch])
    node2graph = torch.repeat_interleave(torch.arange(len(batch)), torch.tensor([len(e.label) for e in batch]))
    if kind in ("radius", "knn"):
        graph = ca_graph(position, residue_type, node2graph, {"kind": kind, **settings})
    else:
        graph = build_gearnet_graph(position, residue_type, node2graph, **settings)
    return graph.to(device)


class Loop:
    """Loss and metric of a task kind, over a batch of examples."""

    def __init__(self, kind: str, num_classes: int):
        self.kind = kind
        self.num_classes = num_classes

    def targets(self, batch: Sequence[Example], device: str) -> torch.Tensor:
        label = torch.cat([example.label for example in batch]).to(device)
        if self.kind == "absolute_position":
            label = torch.where(label < self.num_classes, label, torch.full_like(label, -100))
        return label

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.kind == "absolute_position":
            if (target >= 0).sum() == 0:
                return output.sum() * 0.0
            return nn.functional.cross_entropy(output, target, ignore_index=-100)
        return nn.functional.mse_loss(output, target)

    def metrics(self, outputs: list[torch.Tensor], targets: list[torch.Tensor]) -> dict[str, float]:
        output, target = torch.cat(outputs), torch.cat(targets)
        if self.kind == "absolute_position":
            valid = target >= 0
            correct = (output.argmax(-1)[valid] == target[valid]).float()
            return {
                "accuracy": float(correct.mean()) if len(correct) else float("nan"),
                "residues": int(valid.sum()),
                "residues_beyond_classes": int((~valid).sum()),
            }
        return {"rmse": float(torch.sqrt(nn.functional.mse_loss(output, target))), "residues": len(target)}


def _batches(examples: Sequence[Example], batch_size: int, rng: random.Random | None) -> list[list[Example]]:
    order = list(range(len(examples)))
    if rng is not None:
        rng.shuffle(order)
    return [[examples[i] for i in order[start : start + batch_size]] for start in range(0, len(order), batch_size)]


def settings_hash(*objects) -> str:
    """A short digest of a run's settings: a resume file written under other settings is ignored."""
    return hashlib.sha256(json.dumps(objects, sort_keys=True, default=str).encode()).hexdigest()[:16]


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    """PyTorch's deterministic algorithms on (warn only) for the duration; the previous setting is
    restored afterwards. Multi-threaded CPU kernels otherwise sum in a varying order, and two runs
    with the same seed drift apart in the last digits."""
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def load_resume(
    resume_path: Path,
    settings: str,
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    run_name: str = "",
    scheduler=None,
    rng: random.Random | None = None,
) -> dict | None:
    """Restore a run from its per-epoch resume file when it was written with the same ``settings``:
    weights, optimizer (and scheduler, Python RNG) and torch RNG state; return the loop state saved
    with it, or None (no file, or other settings: training starts over)."""
    if not resume_path.exists():
        return None
    saved = torch.load(resume_path, map_location="cpu", weights_only=True)
    if saved.get("settings") != settings:
        log.info("ignoring %s: written with other settings", resume_path)
        return None
    net.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(saved["scheduler"])
    if rng is not None:
        rng.setstate(saved["rng"])
    torch.set_rng_state(saved["torch_rng"])
    log.info("resuming %s after epoch %d", run_name, saved["state"]["epoch"])
    return saved["state"]


def run(*args, **kwargs) -> dict:
    """Train one run (see :func:`train_run`) with PyTorch's deterministic algorithms switched on
    (:func:`deterministic`)."""
    with deterministic():
        return train_run(*args, **kwargs)


def train_run(
    task: Mapping,
    model: Mapping,
    manifest: str | os.PathLike,
    records: Sequence[str | os.PathLike],
    embedding_indexes: Sequence[str | os.PathLike],
    seed: int,
    metrics_path: str | os.PathLike = "metrics.json",
    checkpoint_path: str | os.PathLike = "model.pt",
    run_name: str = "",
    device: str = "cpu",
    threads: int | None = None,
    graphs: Sequence[str | os.PathLike] = (),
    graph_settings: Mapping | None = None,
    esm_checkpoint: str | os.PathLike | None = None,
    esm_settings: Mapping | None = None,
) -> dict:
    """Train one run and write its metrics (JSON) and best weights; resume after an interruption.

    The state after every epoch goes to ``<checkpoint>.resume.pt``; a rerun with the same
    settings continues from it, a rerun with other settings starts over. It is removed once the
    metrics are written.

    Args:
        task: a ``tasks`` config entry (kind, num_classes, epochs, patience, batch_size, lr).
        model: a ``models`` config entry.
        manifest: the dataset manifest (id, split, ...).
        records: the dataset's record shards.
        embedding_indexes: ESM-2 index TSVs (empty: residue one-hot features).
        seed: seeds Python, NumPy and torch.
        graphs: cached graph shards from ``build_graphs`` (empty: graphs built per batch).
        graph_settings: the ``graphs`` entry the model runs on (relation count, on-the-fly build).
        esm_checkpoint: the plm's fair-esm ESM-2 checkpoint, for an ``esm_gearnet`` entry with
            ``freeze_esm: false``: ESM-2 then runs inside the model on each chain's sequence and is
            fine-tuned at ``esm_lr_ratio`` (0.1) times the learning rate (ESM-GearNet); the stored
            embeddings are not used.
        esm_settings: the plm's settings (``repr_layer``, ``window``, ``stride``, ``toks_per_batch``,
            ``checksum``) for ``esm_checkpoint``.

    Returns:
        The metrics dictionary written to ``metrics_path``.

    Raises:
        GeoplmError: an empty split, a missing embedding, an unknown task kind or model type, or an ESM-2
            to fine-tune without its checkpoint.
    """
    from geoplm.steps import read_tsv
    from geoplm.structure import load_shard

    if task["kind"] == "docking":
        return train_docking(
            task, model, manifest, records, embedding_indexes, seed, metrics_path, checkpoint_path, run_name, device
        )
    if threads:
        torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    kind = task["kind"]
    frame = read_tsv(manifest)
    split_of = dict(zip(frame["id"], frame["split"], strict=True))
    esm = None
    if finetunes_esm(model):
        if esm_checkpoint is None:
            raise GeoplmError(
                f"{run_name or model}: freeze_esm: false fine-tunes ESM-2 inside the model and needs the plm's "
                "ESM-2 checkpoint (esm_checkpoint)"
            )
        from geoplm.esm import load_esm2

        esm_settings = dict(esm_settings or {})
        esm = (*load_esm2(esm_checkpoint, esm_settings.get("checksum")), esm_settings)
        embedding_indexes = ()  # the ESM inside the model replaces the stored embeddings
    embeddings = load_embedding_index(embedding_indexes) if embedding_indexes else None
    all_records = [record for path in records for record in load_shard(path) if record["id"] in split_of]
    cached_graphs = load_graphs(graphs) if graphs else None
    examples = build_examples(all_records, kind, embeddings, cached_graphs, esm_inputs=esm is not None)
    splits = {name: [e for e in examples if split_of[e.id] == name] for name in ("train", "valid", "test")}
    for name, members in splits.items():
        if not members:
            raise GeoplmError(f"{manifest}: the {name} split is empty ({len(examples)} usable chains in all)")
    log.info("%s: %s", run_name, {name: len(members) for name, members in splits.items()})

    input_dim = examples[0].node_feature.shape[1]
    encoder, output_dim = build_encoder(model, input_dim, plm=embeddings is not None or esm is not None, esm=esm)
    num_classes = int(task.get("num_classes", 9000))
    regression = kind == "relative_position"
    net = ResidueTaskModel(encoder, output_dim, 1 if regression else num_classes, regression).to(device)
    loop = Loop(kind, num_classes)
    from geoplm.models.fusion import param_groups

    # ESM-GearNet fine-tuning: ESM-2 parameters at lr x esm_lr_ratio (0.1); everything else at lr
    optimizer = torch.optim.Adam(param_groups(net, float(task["lr"]), float(model.get("esm_lr_ratio", 0.1))))
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, "min", factor=0.6, patience=5, min_lr=5e-7)
    rng = random.Random(seed)

    resume_path = Path(str(checkpoint_path) + ".resume.pt")
    settings = settings_hash(task, model, graph_settings, seed, sorted(split_of.items()), input_dim, esm_settings)
    state = load_resume(resume_path, settings, net, optimizer, run_name, scheduler, rng) or {
        "epoch": 0,
        "best_val": math.inf,
        "best_epoch": -1,
        "wait": 0,
        "best_state": None,
        "history": [],
    }

    def forward(batch: Sequence[Example]) -> torch.Tensor:
        node_feature = torch.cat([example.node_feature for example in batch]).to(device)
        inputs = {}
        if batch[0].esm_input is not None:
            inputs = {"sequences": [e.esm_input[0] for e in batch], "residue_mask": [e.esm_input[1] for e in batch]}
        return net(make_graph(batch, device, graph_settings), node_feature, **inputs)

    def evaluate(members: Sequence[Example]) -> tuple[float, dict]:
        net.eval()
        outputs, targets, losses = [], [], []
        with torch.no_grad():
            for batch in _batches(members, int(task["batch_size"]), None):
                target = loop.targets(batch, device)
                output = forward(batch)
                losses.append(float(loop.loss(output, target)) * len(target))
                outputs.append(output.cpu())
                targets.append(target.cpu())
        total = sum(len(t) for t in targets)
        return sum(losses) / max(total, 1), loop.metrics(outputs, targets)

    started = time.time()
    patience = int(task.get("patience", 8))
    while state["epoch"] < int(task["epochs"]) and state["wait"] < patience:
        net.train()
        train_losses = []
        for batch in _batches(splits["train"], int(task["batch_size"]), rng):
            optimizer.zero_grad()
            target = loop.targets(batch, device)
            output = forward(batch)
            loss = loop.loss(output, target)
            loss.backward()
            optimizer.step()
            train_losses.append(float(loss.detach()))
        val_loss, val_metrics = evaluate(splits["valid"])
        epoch = state["epoch"]
        state["history"].append({"epoch": epoch, "train_loss": float(np.mean(train_losses)), "valid_loss": val_loss})
        log.info("epoch %d: train loss %.5f, valid loss %.5f %s", epoch, np.mean(train_losses), val_loss, val_metrics)
        if val_loss < state["best_val"]:
            state.update(
                best_val=val_loss,
                best_epoch=epoch,
                best_state={k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
            )
        else:
            state["wait"] += 1
        scheduler.step(val_loss)
        state["epoch"] = epoch + 1
        atomic.torch_save(
            {
                "settings": settings,
                "model": net.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng.getstate(),
                "torch_rng": torch.get_rng_state(),
                "state": state,
            },
            resume_path,
        )

    net.load_state_dict(state["best_state"])
    _, valid_metrics = evaluate(splits["valid"])
    _, test_metrics = evaluate(splits["test"])
    metrics = {
        "run": run_name,
        "task_kind": kind,
        "seed": seed,
        "test": test_metrics,
        "valid": valid_metrics,
        "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"],
        "history": state["history"],
        "num_chains": {name: len(members) for name, members in splits.items()},
        "num_parameters": sum(p.numel() for p in net.parameters()),
        "node_input_dim": input_dim,
        "train_seconds": round(time.time() - started, 2),
        "device": device,
    }
    atomic.torch_save(
        {"model": state["best_state"], "task": dict(task), "model_config": dict(model), "input_dim": input_dim},
        checkpoint_path,
    )
    atomic.write_json(metrics_path, metrics)
    resume_path.unlink(missing_ok=True)
    log.info("%s test: %s", run_name, test_metrics)
    return metrics


def docking_examples(
    records: Sequence[Mapping], split_of: Mapping[str, str], embeddings: Mapping[str, str] | None = None
) -> dict[str, list]:
    """EquiDock examples per split from docking records (DB5.5 / DIPS readers), one per complex.

    The receptor and ligand are the ground-truth partners (roles :data:`RECEPTOR_ROLES`,
    :data:`LIGAND_ROLES`); a DIPS ``ligand`` record is the given input pose. A complex's split is its
    receptor's.

    Raises:
        GeoplmError: a complex without both partners, or a record without an ESM embedding when
            ``embeddings`` is given.
    """
    from geoplm.docking import complex_from_records

    groups: dict[str, dict[str, Mapping]] = {}
    for record in records:
        groups.setdefault(record.get("group") or record["id"], {})[record.get("role", "")] = record
    out: dict[str, list] = {"train": [], "valid": [], "test": []}
    for group, members in sorted(groups.items()):
        receptor = next((members[r] for r in RECEPTOR_ROLES if r in members), None)
        ligand = next((members[r] for r in LIGAND_ROLES if r in members), None)
        if receptor is None or ligand is None:
            raise GeoplmError(f"complex {group}: needs a receptor and a ligand record, has roles {sorted(members)}")
        split = split_of.get(receptor["id"], "")
        if split not in out:
            continue

        def esm(record):
            if embeddings is None:
                return None
            if record["id"] not in embeddings:
                raise GeoplmError(f"record {record['id']} has no ESM embedding in the index")
            return read_embedding(embeddings[record["id"]], record["id"], len(record["sequence"]))

        out[split].append(
            complex_from_records(receptor, ligand, members.get("ligand"), esm(receptor), esm(ligand), group)
        )
    return out


def train_docking(
    task: Mapping,
    model: Mapping,
    manifest: str | os.PathLike,
    records: Sequence[str | os.PathLike],
    embedding_indexes: Sequence[str | os.PathLike],
    seed: int,
    metrics_path: str | os.PathLike,
    checkpoint_path: str | os.PathLike,
    run_name: str = "",
    device: str = "cpu",
) -> dict:
    """Rigid docking with EquiDock (Ganea et al., ICLR 2022) on a docking dataset, with or without
    ESM-2 input features (Wu et al. 2023); see :func:`geoplm.docking.train_docking_run`.

    Raises:
        GeoplmError: an empty split, a complex lacking a partner, a missing embedding.
    """
    from geoplm.docking import train_docking_run
    from geoplm.steps import read_tsv
    from geoplm.structure import load_shard

    frame = read_tsv(manifest)
    split_of = dict(zip(frame["id"], frame["split"], strict=True))
    embeddings = load_embedding_index(embedding_indexes) if embedding_indexes else None
    all_records = [record for path in records for record in load_shard(path) if record["id"] in split_of]
    examples = docking_examples(all_records, split_of, embeddings)
    for name, members in examples.items():
        if not members:
            raise GeoplmError(f"{manifest}: the {name} split has no complex")
    return train_docking_run(
        task, model, examples, seed, metrics_path, checkpoint_path, device=device, run_name=run_name
    )
