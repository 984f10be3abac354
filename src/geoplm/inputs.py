"""What an encoder reads about a protein, loaded and batched apart from any label.

Every task (supervised, :mod:`geoplm.tasks`) and every self-supervised pretraining task reads proteins the
same way: a residue record (:mod:`geoplm.structure`) becomes a :class:`ProteinInput` -- its graph nodes
(residues with a Cα, torchdrug ``AlphaCarbonNode``), their residue types, the node input features (residue
one-hot or stored ESM-2 rows), the cached graph edges where there are some, and the sequence an ESM-2 inside
the model reads -- and a batch of them is packed into one :class:`geoplm.graph.ResidueGraph` by
:func:`pack`. Labels never pass through here: a task pairs inputs with its targets.

Truncation follows torchdrug 0.2.1 ``transforms.TruncateProtein`` (DeepGraphLearning/torchdrug,
``torchdrug/transforms/transform.py``, tag v0.2.1, commit 6066fbd): a protein of more than ``max_length``
residues keeps ``max_length`` consecutive residues, from the first (``random: false``, the downstream
configs of ESM-GearNet: ``TruncateProtein(max_length=550)``) or from a uniformly drawn start
(``random: true``, GearNet's pretraining configs). It cuts the *record* before anything is derived from it,
so the graph, the ESM-2 rows and the ESM-2 input sequence all describe the same residues, as in the
reference where the transform runs before graph construction and before the ESM reads the sequence.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from geoplm.errors import GeoplmError
from geoplm.structure import NUM_RESIDUE_TYPES

log = logging.getLogger(__name__)

#: Per-residue record fields (first dimension L), sliced together by :func:`truncate_record`.
_PER_RESIDUE_TENSORS = ("residue_number", "backbone", "backbone_mask", "b_factor", "residue_mask", "chain_index")
_PER_RESIDUE_LISTS = ("residue_name", "insertion_code")


@dataclass
class ProteinInput:
    """One protein as an encoder reads it.

    Attributes:
        id: record id.
        position: ``(n, 3)`` Cα coordinates in Å of the graph nodes (residues with a Cα, in sequence order).
        residue_type: ``(n,)`` long residue types 0-20 (:data:`geoplm.structure.RESIDUE_VOCAB`).
        node_feature: ``(n, F)`` float node input: residue one-hot (F = 21) or ESM-2 rows.
        residue_index: ``(n,)`` long index of each node among the record's L residues (after truncation),
            to place per-residue labels.
        length: L, the record's residues (after truncation).
        residue_number: ``(n,)`` long author residue numbers of the nodes (CDConv's sequence positions), or None.
        edge_list: ``(E, 3)`` cached ``[node_in, node_out, relation]`` (``build_graphs``), or None to build the
            graph on the packed batch.
        esm_input: for an ESM-2 inside the model: the record's sequence and the ``(L,)`` bool mask of its
            residues that are nodes (:func:`geoplm.models.fusion.record_esm_inputs`); None otherwise.
        chain_index: ``(n,)`` long chain of every node (0, 1, ... in the order the chains were merged:
            :func:`geoplm.graph.record_chain_index`, :func:`concatenate_proteins`), or None: one chain. GearNet's
            sequential edges stop where it changes (torchdrug ``SequentialEdge`` compares ``chain_id``).
    """

    id: str
    position: Tensor
    residue_type: Tensor
    node_feature: Tensor
    residue_index: Tensor
    length: int
    residue_number: Tensor | None = None
    edge_list: Tensor | None = None
    esm_input: tuple[str, Tensor] | None = None
    chain_index: Tensor | None = None

    @property
    def num_nodes(self) -> int:
        return int(self.position.shape[0])

    def chains(self) -> Tensor:
        """``(n,)`` long chain of every node: :attr:`chain_index`, or zeros for an input of one chain."""
        if self.chain_index is None:
            return torch.zeros(self.num_nodes, dtype=torch.long)
        return self.chain_index.long()

    def crop(self, start: int, end: int) -> ProteinInput:
        """The nodes ``start .. end - 1`` (and the residues they span), for a window such as
        ESM-GearNet's ``TruncateProteinPair``; the cached graph is dropped (it is rebuilt on the batch)."""
        if not 0 <= start < end <= self.num_nodes:
            raise GeoplmError(f"{self.id}: node window {start}..{end} outside 0..{self.num_nodes}")
        first, last = int(self.residue_index[start]), int(self.residue_index[end - 1]) + 1
        esm_input = None
        if self.esm_input is not None:
            esm_input = (self.esm_input[0][first:last], self.esm_input[1][first:last])
        return ProteinInput(
            id=self.id,
            position=self.position[start:end],
            residue_type=self.residue_type[start:end],
            node_feature=self.node_feature[start:end],
            residue_index=self.residue_index[start:end] - first,
            length=last - first,
            residue_number=None if self.residue_number is None else self.residue_number[start:end],
            esm_input=esm_input,
            chain_index=None if self.chain_index is None else self.chain_index[start:end],
        )


def concatenate_proteins(proteins: Sequence[ProteinInput], protein_id: str) -> ProteinInput:
    """Several chains as one protein (in the given order), as the reference builds one protein of a whole
    ATOM3D complex (ESM-GearNet ``Atom3DDataset.protein_from_data_frame``): nodes, features and residues
    concatenated; an in-model ESM-2 reads the concatenated sequence. The cached graphs are dropped. Every input
    keeps its own chains (``chain_index``, numbered on after the previous inputs' chains), so no sequential edge
    joins two of them (the reference keeps each residue's ``chain_id``).

    Raises:
        GeoplmError: no protein, or node features of different widths.
    """
    if not proteins:
        raise GeoplmError(f"{protein_id}: no chain to concatenate")
    if len({p.node_feature.shape[1] for p in proteins}) > 1:
        raise GeoplmError(f"{protein_id}: chains with node features of different widths")
    offsets = torch.tensor([0] + [p.length for p in proteins[:-1]]).cumsum(0).tolist()
    chains, first = [], 0
    for p in proteins:
        own = p.chains()
        chains.append(own + first)
        first += int(own.max()) + 1 if len(own) else 1
    esm_input = None
    if all(p.esm_input is not None for p in proteins):
        esm_input = ("".join(p.esm_input[0] for p in proteins), torch.cat([p.esm_input[1] for p in proteins]))
    return ProteinInput(
        id=protein_id,
        position=torch.cat([p.position for p in proteins]),
        residue_type=torch.cat([p.residue_type for p in proteins]),
        node_feature=torch.cat([p.node_feature for p in proteins]),
        residue_index=torch.cat([p.residue_index + o for p, o in zip(proteins, offsets, strict=True)]),
        length=sum(p.length for p in proteins),
        residue_number=(
            torch.cat([p.residue_number for p in proteins])
            if all(p.residue_number is not None for p in proteins)
            else None
        ),
        esm_input=esm_input,
        chain_index=torch.cat(chains) if len(proteins) > 1 else proteins[0].chain_index,
    )


@dataclass
class Batch:
    """A packed batch of proteins, ready for ``encoder(graph, node_feature, **encoder_inputs)``.

    Attributes:
        graph: :class:`geoplm.graph.ResidueGraph` of all proteins (``node2graph`` gives each node's protein).
        node_feature: ``(N, F)`` node inputs, on the graph's device.
        encoder_inputs: extra encoder arguments (``sequences`` / ``residue_mask`` of an in-model ESM-2).
    """

    graph: object
    node_feature: Tensor
    encoder_inputs: dict


def truncate_record(record: Mapping, max_length: int, start: int = 0) -> dict:
    """The record cut to the residues ``start .. start + max_length - 1`` (torchdrug ``TruncateProtein``).

    Args:
        record: a residue record (:data:`geoplm.structure.RECORD_KEYS`, L residues).
        max_length: residues to keep (>= 1).
        start: first residue kept, ``0 <= start <= L - max_length``.

    Returns:
        The record itself when ``L <= max_length``, else a shallow copy whose sequence and per-residue fields
        are sliced (other keys shared).

    Raises:
        GeoplmError: ``max_length < 1`` or ``start`` out of range.
    """
    length = len(record["sequence"])
    if max_length < 1:
        raise GeoplmError(f"truncation length must be >= 1, got {max_length}")
    if length <= max_length:
        return dict(record)
    if not 0 <= start <= length - max_length:
        raise GeoplmError(f"{record['id']}: truncation start {start} outside 0..{length - max_length}")
    end = start + max_length
    out = dict(record)
    out["sequence"] = record["sequence"][start:end]
    for key in _PER_RESIDUE_TENSORS + _PER_RESIDUE_LISTS:
        if key in record:
            out[key] = record[key][start:end]
    return out


def load_embedding_index(paths: Sequence[str | os.PathLike]) -> dict[str, str]:
    """Record id -> embedding file, from the ``embed_esm`` index TSVs of a dataset."""
    from geoplm.steps import read_tsv

    index: dict[str, str] = {}
    for path in paths:
        frame = read_tsv(path)
        index.update(zip(frame["id"], frame["path"], strict=True))
    return index


def read_embedding(path: str | os.PathLike, record_id: str, length: int) -> Tensor:
    """The ``(L, D)`` representation stored in a fair-esm extract.py-style file.

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


def load_graphs(paths: Sequence[str | os.PathLike]) -> dict[str, Tensor]:
    """Record id -> cached ``(E, 3)`` edge list, from ``build_graphs`` shard files."""
    graphs: dict[str, Tensor] = {}
    for path in paths:
        data = torch.load(path, map_location="cpu", weights_only=True)
        graphs.update({rid: graph["edge_list"] for rid, graph in data["graphs"].items()})
    return graphs


class InputLoader:
    """Turns residue records into :class:`ProteinInput` s with the workflow's stored inputs.

    Args:
        embeddings: record id -> ESM-2 embedding file (``embed_esm`` index); None for residue one-hot
            node features.
        graphs: record id -> cached GearNet edge list (``build_graphs``); None to build graphs per batch.
        esm_inputs: keep each protein's sequence and node mask for an ESM-2 inside the model.
        max_length: truncate records longer than this many residues (:func:`truncate_record`); None keeps all.
        random_start: draw the truncation start uniformly (from ``rng``) instead of keeping the first residues.
        rng: the generator of random truncation starts.

    Calling the loader on a record returns its :class:`ProteinInput`, or None (with a warning) when the record
    has no residue with a Cα. A truncated protein never uses its cached graph (built on the full record): its
    graph is built on the batch, as torchdrug builds it after ``TruncateProtein``.

    Raises (on call):
        GeoplmError: a record without an embedding (or cached graph) when those are used.
    """

    def __init__(
        self,
        embeddings: Mapping[str, str] | None = None,
        graphs: Mapping[str, Tensor] | None = None,
        esm_inputs: bool = False,
        max_length: int | None = None,
        random_start: bool = False,
        rng: random.Random | None = None,
    ):
        self.embeddings = embeddings
        self.graphs = graphs
        self.esm_inputs = esm_inputs
        self.max_length = max_length
        self.random_start = random_start
        self.rng = rng or random.Random(0)

    @property
    def uses_embeddings(self) -> bool:
        return self.embeddings is not None

    def embedding(self, record: Mapping) -> Tensor | None:
        """The ``(L, D)`` ESM-2 rows of a whole record, or None without an embedding index.

        Raises:
            GeoplmError: the record is not in the index, or its embedding file is missing or of another length.
        """
        if self.embeddings is None:
            return None
        if record["id"] not in self.embeddings:
            raise GeoplmError(f"record {record['id']} has no ESM embedding in the index")
        return read_embedding(self.embeddings[record["id"]], record["id"], len(record["sequence"]))

    def __call__(self, record: Mapping) -> ProteinInput | None:
        from geoplm.graph import record_chain_index, record_graph_inputs
        from geoplm.models.fusion import record_esm_inputs

        length = len(record["sequence"])
        start, truncated = 0, self.max_length is not None and length > self.max_length
        if truncated:
            start = self.rng.randrange(length - self.max_length + 1) if self.random_start else 0
            record_view = truncate_record(record, self.max_length, start)
        else:
            record_view = record
        keep = ~torch.isnan(record_view["backbone"][:, 1]).any(dim=-1)
        position, residue_type = record_graph_inputs(record_view)
        if len(position) == 0:
            log.warning("%s: no residue with a Cα; left out", record["id"])
            return None
        full = self.embedding(record)
        if full is None:
            node_feature = nn.functional.one_hot(residue_type, NUM_RESIDUE_TYPES).float()
        else:
            node_feature = full[start : start + len(record_view["sequence"])][keep]
        edge_list = None
        if self.graphs is not None and not truncated:
            if record["id"] not in self.graphs:
                raise GeoplmError(f"record {record['id']} has no cached graph (rerun build_graphs)")
            edge_list = self.graphs[record["id"]]
        return ProteinInput(
            id=record["id"],
            position=position,
            residue_type=residue_type,
            node_feature=node_feature,
            residue_index=torch.nonzero(keep).flatten(),
            length=len(record_view["sequence"]),
            residue_number=record_view["residue_number"][keep].long() if "residue_number" in record_view else None,
            edge_list=edge_list,
            esm_input=record_esm_inputs(record_view) if self.esm_inputs else None,
            chain_index=record_chain_index(record_view),
        )


def make_graph(
    proteins: Sequence[ProteinInput],
    device: str | torch.device = "cpu",
    settings: Mapping | None = None,
    node_mask: Tensor | None = None,
):
    """Pack proteins into one residue graph: their cached edge lists when every protein has one (GearNet's
    graph), else the graph of ``settings`` (:func:`geoplm.graph.build_batch_graph`) built on the packed batch,
    with the proteins' ``chain_index`` (GearNet's sequential edges stop at chain breaks, as the cached graphs
    do). Both give the same graph (``tests/test_train.py``, ``tests/test_multichain.py``). The nodes' author
    residue numbers go with the graph (``residue_number``, read by CDConv) when every protein has them.

    ``node_mask``: optional ``(N,)`` bool over the packed nodes: only the subgraph these nodes induce in that graph
    (:func:`geoplm.graph.subgraph`; built without the rest where the kind allows, :data:`geoplm.graph.MASK_KINDS`),
    as multiview contrast crops its views."""
    from geoplm.graph import build_batch_graph, graph_kind, pack_graphs, subgraph

    kind, options = graph_kind(settings)
    numbers = [p.residue_number for p in proteins]
    residue_numbers = numbers if proteins and all(n is not None for n in numbers) else None
    if kind == "gearnet" and proteins and all(p.edge_list is not None for p in proteins):
        num_relation = 2 * int(options.get("sequential_max_distance", 2)) + 3
        graph = pack_graphs(
            [p.position for p in proteins], [p.residue_type for p in proteins], [p.edge_list for p in proteins],
            num_relation, residue_numbers=residue_numbers,
        )  # fmt: skip
        if node_mask is not None:
            graph = subgraph(graph, node_mask.cpu())[0]
        return graph.to(device)
    position = torch.cat([p.position for p in proteins])
    residue_type = torch.cat([p.residue_type for p in proteins])
    node2graph = torch.repeat_interleave(torch.arange(len(proteins)), torch.tensor([p.num_nodes for p in proteins]))
    chain_id = None
    if any(p.chain_index is not None for p in proteins):  # chains only matter within a protein
        chain_id = torch.cat([p.chains() for p in proteins])
    mask = None if node_mask is None else node_mask.cpu()
    graph = build_batch_graph(position, residue_type, node2graph, settings, chain_id=chain_id, node_mask=mask)
    if residue_numbers is not None:
        numbers = torch.cat(residue_numbers).to(position.device)
        graph = replace(graph, residue_number=numbers if mask is None else numbers[mask])
    return graph.to(device)


def pack(
    proteins: Sequence[ProteinInput], device: str | torch.device = "cpu", settings: Mapping | None = None
) -> Batch:
    """A :class:`Batch` of proteins: their graph (:func:`make_graph`), stacked node features and, when they
    carry ESM-2 inputs, the sequences and node masks of the ESM-2 inside the model."""
    inputs: dict = {}
    if proteins and proteins[0].esm_input is not None:
        inputs = {"sequences": [p.esm_input[0] for p in proteins], "residue_mask": [p.esm_input[1] for p in proteins]}
    return Batch(
        graph=make_graph(proteins, device, settings),
        node_feature=torch.cat([p.node_feature for p in proteins]).to(device),
        encoder_inputs=inputs,
    )
