"""GearNet's five self-supervised pretraining tasks (Zhang et al., "Protein Representation Learning by Geometric
Structure Pretraining", ICLR 2023, arXiv 2203.06125, Sec. 4): multiview contrast and the four self-prediction
tasks (residue type, distance, angle, dihedral).

Re-implemented from DeepGraphLearning/torchdrug @ 6066fbd (tag v0.2.1) -- nothing is copied:

* ``torchdrug/models/infograph.py`` ``MultiviewContrast`` (wrapped by ``tasks.Unsupervised``,
  ``torchdrug/tasks/property_prediction.py``);
* ``torchdrug/tasks/pretrain.py`` ``AttributeMasking``, ``DistancePrediction``, ``AnglePrediction``,
  ``DihedralPrediction``;
* ``torchdrug/layers/geometry/function.py`` ``SubsequenceNode``, ``SubspaceNode``, ``IdentityNode``,
  ``RandomEdgeMask``;
* ``torchdrug/data/graph.py`` ``PackedGraph.node_mask`` / ``edge_mask`` / ``line_graph``;
* ``torchdrug/layers/functional/functional.py`` ``variadic_sample`` / ``variadic_topk``;

with the settings of DeepGraphLearning/GearNet ``config/pretrain/{mc,attr,dis,angle,dihedral}_gearnet_edge.yaml``.

Randomness: the tensors are sampled on torch's global generator (on the task's device), as torchdrug does
(``torch.rand``); multiview contrast's choice of crop and noise function per view (``random.sample`` in the
reference) is drawn from the task's Python generator (:attr:`~geoplm.tasks.base.Task.rng`). Both are seeded by the
loop, so a fixed seed gives the same losses.

The graph helpers :func:`~geoplm.graph.subgraph` and :func:`~geoplm.graph.remove_edges` (re-exported here) work on a
packed :class:`~geoplm.graph.ResidueGraph` and keep ``node2graph`` / ``batch_size`` consistent (a graph keeps its slot
even with no node left, as torchdrug's ``node_mask`` keeps ``num_nodes``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geoplm.errors import ConfigError
from geoplm.graph import NUM_RESIDUE_TYPE, ResidueGraph, cat_graphs, remove_edges, subgraph
from geoplm.inputs import ProteinInput, make_graph, pack
from geoplm.pretraining.base import PretrainingTask
from geoplm.pretraining.masking import MASK_TOKEN, mask_residues
from geoplm.tasks.base import MLP

__all__ = [
    "AnglePrediction",
    "AttributeMasking",
    "DihedralPrediction",
    "DistancePrediction",
    "MultiviewContrast",
    "adjacent_edge_pairs",
    "angle_bins",
    "bond_angle",
    "dihedral_angle",
    "info_nce",
    "random_edge_mask",
    "remove_edges",
    "subgraph",
    "subsequence_mask",
    "subspace_mask",
]

#: settings of the four self-prediction tasks' runs in GearNet's configs: ``TruncateProtein(100, random=True)``
SELF_PREDICTION_LOOP = {"truncate": 100, "truncate_random": True}


# ---------------------------------------------------------------------------------------------------------------
# graph helpers


def _graph_order(item2graph: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
    """``(order, count)``: a stable order of items grouped by graph and the ``(B,)`` item count of every graph."""
    order = torch.sort(item2graph, stable=True).indices
    return order, torch.bincount(item2graph, minlength=batch_size)


def _sample(count: Tensor, per_graph: int, device) -> Tensor:
    """``per_graph`` positions per graph uniformly with replacement into items packed graph after graph
    (torchdrug ``functional.variadic_sample``: ``(rand * size).long()`` + offset); a graph without items gets no
    sample (the reference would index into the next graph's items).

    Returns:
        ``(S,)`` long positions in the packed (graph-sorted) items, graph-major.
    """
    count = count.to(device)
    per = torch.where(count > 0, int(per_graph), 0)
    offset = torch.cumsum(count, 0) - count
    graph = torch.repeat_interleave(torch.arange(len(count), device=device), per)
    return (torch.rand(len(graph), device=device) * count[graph]).long() + offset[graph]


def adjacent_edge_pairs(graph: ResidueGraph) -> tuple[Tensor, Tensor]:
    """The pairs of adjacent edges ``a = (k -> j)``, ``b = (j -> i)`` of the graph's line graph (torchdrug
    ``PackedGraph.line_graph``), without the pairs ``AnglePrediction`` / ``DihedralPrediction`` drop: ``a == b``
    (a self-loop followed by itself) and ``k == i`` (there and back). Pairs through a self-loop edge (``k == j``
    or ``j == i``, a zero vector, angle 0) are kept, as in the reference.

    Returns:
        ``(edge_a, edge_b)``, ``(P,)`` long edge indices, grouped by the middle node ``j`` (ascending), then ``a``,
        then ``b``. Memory ``O(sum_j indeg(j) outdeg(j))``.
    """
    node_in, node_out = graph.edge_list[:, 0], graph.edge_list[:, 1]
    device, n = node_in.device, graph.num_nodes
    incoming = torch.sort(node_out, stable=True).indices  # edges into j, grouped by j
    outgoing = torch.sort(node_in, stable=True).indices  # edges out of j, grouped by j
    deg_in = torch.bincount(node_out, minlength=n)
    deg_out = torch.bincount(node_in, minlength=n)
    size = deg_in * deg_out
    centre = torch.repeat_interleave(torch.arange(n, device=device), size)
    local = torch.arange(int(size.sum()), device=device) - (torch.cumsum(size, 0) - size)[centre]
    inner = deg_out[centre]
    edge_a = incoming[(torch.cumsum(deg_in, 0) - deg_in)[centre] + torch.div(local, inner, rounding_mode="floor")]
    edge_b = outgoing[(torch.cumsum(deg_out, 0) - deg_out)[centre] + local % inner]
    valid = (edge_a != edge_b) & (node_in[edge_a] != node_out[edge_b])
    return edge_a[valid], edge_b[valid]


# ---------------------------------------------------------------------------------------------------------------
# geometry


def bond_angle(pos_i: Tensor, pos_j: Tensor, pos_k: Tensor) -> Tensor:
    """The angle ``∠ i j k`` (radians, in ``[0, π]``) between ``x_i - x_j`` and ``x_k - x_j``, as
    ``atan2(|v1 x v2|, v1 . v2)`` (torchdrug ``AnglePrediction``); 0 where a vector has zero length.

    Shapes: ``(S, 3)`` each (Å) -> ``(S,)``.
    """
    v1, v2 = pos_i - pos_j, pos_k - pos_j
    return torch.atan2(torch.linalg.cross(v1, v2).norm(dim=-1), (v1 * v2).sum(dim=-1))


def dihedral_angle(pos_i: Tensor, pos_j: Tensor, pos_t: Tensor, pos_k: Tensor) -> Tensor:
    """The unsigned dihedral (radians, in ``[0, π]``) of the chain ``k -> t -> j -> i`` about the axis ``t - j``
    (torchdrug ``DihedralPrediction``): ``n1 = v_ctr x v1``, ``n2 = v_ctr x v2`` with ``v_ctr = x_t - x_j``,
    ``v1 = x_i - x_j``, ``v2 = x_k - x_t``; ``atan2(|n1 x n2|, n1 . n2)``.

    Shapes: ``(S, 3)`` each (Å) -> ``(S,)``.
    """
    v_ctr, v1, v2 = pos_t - pos_j, pos_i - pos_j, pos_k - pos_t
    n1, n2 = torch.linalg.cross(v_ctr, v1), torch.linalg.cross(v_ctr, v2)
    return torch.atan2(torch.linalg.cross(n1, n2).norm(dim=-1), (n1 * n2).sum(dim=-1))


def angle_bins(angle: Tensor, num_class: int) -> Tensor:
    """The class of angles in ``[0, π]`` (radians): ``bucketize(angle, arange(0, π, π / num_class), right=True) -
    1`` (torchdrug ``AnglePrediction.boundary``), i.e. ``num_class`` equal bins, ``π`` itself in the last.

    Shapes: ``(S,)`` float -> ``(S,)`` long in ``0 .. num_class - 1``.
    """
    boundary = torch.arange(0, math.pi, math.pi / num_class, device=angle.device)
    return torch.bucketize(angle, boundary, right=True) - 1


def info_nce(x: Tensor, y: Tensor, tau: float) -> Tensor:
    """GearNet's multiview InfoNCE loss (torchdrug ``models.MultiviewContrast``): cosine similarities
    ``s_ab = cos(x_a, y_b) / tau`` of the ``B`` view-1 rows against the ``B`` view-2 rows (the other proteins of
    the batch are the negatives), one direction: ``-mean_a (s_aa - logsumexp_b s_ab)``.

    Shapes: ``x``, ``y`` ``(B, D)`` -> a scalar (the negative mutual-information estimate).
    """
    score = F.cosine_similarity(x.unsqueeze(1), y.unsqueeze(0), dim=-1) / tau
    return -(score.diagonal() - score.logsumexp(dim=-1)).mean()


# ---------------------------------------------------------------------------------------------------------------
# multiview contrast: crops and noise


def subsequence_mask(graph: ResidueGraph, max_length: int) -> Tensor:
    """torchdrug ``SubsequenceNode(max_length)``: per graph of ``n`` nodes, the window ``start .. start +
    min(max_length, n - start) - 1`` with ``start = floor(u * max(n - max_length, 0))``, ``u ~ U[0, 1)`` (one
    ``torch.rand`` per graph): at most ``max_length`` consecutive nodes, the whole graph when shorter.

    Returns:
        ``(N,)`` bool node mask.
    """
    count = graph.num_nodes_per_graph
    device = count.device
    start = (torch.rand(graph.batch_size, device=device) * (count - int(max_length)).clamp(min=0)).long()
    end = torch.minimum(start + int(max_length), count)
    offset = torch.cumsum(count, 0) - count
    local = torch.arange(graph.num_nodes, device=device) - offset[graph.node2graph]
    return (local >= start[graph.node2graph]) & (local < end[graph.node2graph])


def subspace_mask(graph: ResidueGraph, min_neighbor: int, min_radius: float) -> Tensor:
    """torchdrug ``SubspaceNode(min_neighbor, min_radius)``: per graph a centre node drawn uniformly (one
    ``torch.rand`` per graph) and every node closer than ``r = max(min_radius, 1.5 d_k)`` (strict, Å), where
    ``d_k`` is the ``min_neighbor``-th smallest distance from the centre *counting the centre itself* (distance 0;
    ``variadic_topk``), or the largest distance in a graph of fewer nodes.

    Returns:
        ``(N,)`` bool node mask (the centre always in it).
    """
    count = graph.num_nodes_per_graph
    device = count.device
    centre = _sample(count, 1, device)  # one per non-empty graph
    has_nodes = count > 0
    centre_of = torch.zeros(graph.batch_size, dtype=torch.long, device=device)
    centre_of[has_nodes] = centre
    pos = graph.node_position
    dist = (pos - pos[centre_of[graph.node2graph]]).norm(dim=-1)
    radius = torch.zeros(graph.batch_size, dtype=dist.dtype, device=device)
    offset = torch.cumsum(count, 0) - count
    for b in torch.nonzero(has_nodes).flatten().tolist():
        own = dist[int(offset[b]) : int(offset[b] + count[b])]
        k = min(int(min_neighbor), len(own))
        radius[b] = torch.topk(own, k, largest=False).values.max() * 1.5
    radius = radius.clamp(min=float(min_radius))
    return dist < radius[graph.node2graph]


def random_edge_mask(graph: ResidueGraph, mask_rate: float) -> Tensor:
    """torchdrug ``RandomEdgeMask(mask_rate)``: per graph of ``m`` edges, ``max(1, floor(mask_rate * m))`` edges
    drawn uniformly with replacement (duplicates remove one edge); graphs without edges get none.

    Returns:
        ``(S,)`` long indices of the edges to remove (:func:`remove_edges`).
    """
    order, count = _graph_order(graph.edge2graph, graph.batch_size)
    per = torch.where(count > 0, (count * float(mask_rate)).long().clamp(min=1), 0)
    offset = torch.cumsum(count, 0) - count
    sample2graph = torch.repeat_interleave(torch.arange(graph.batch_size, device=count.device), per)
    position = (torch.rand(len(sample2graph), device=count.device) * count[sample2graph]).long() + offset[sample2graph]
    return order[position]


def _encoder_inputs(proteins: Sequence[ProteinInput], inputs: Mapping, kept: Tensor | None = None) -> dict:
    """The encoder's extra inputs (an in-model ESM-2's ``sequences`` / ``residue_mask``), restricted to the kept
    nodes: each protein's sequence becomes the residues of its kept nodes, in order, all of them nodes (as
    torchdrug's ``subresidue`` leaves the ESM of a ``FusionNetwork`` only those residues)."""
    if not inputs or kept is None:
        return dict(inputs)
    kept = kept.cpu()
    sequences, masks, first = [], [], 0
    for protein in proteins:
        own = kept[(kept >= first) & (kept < first + protein.num_nodes)] - first
        residues = protein.residue_index[own].tolist()
        sequence = protein.esm_input[0]
        sequences.append("".join(sequence[r] for r in residues))
        masks.append(torch.ones(len(residues), dtype=torch.bool))
        first += protein.num_nodes
    return {"sequences": sequences, "residue_mask": masks}


# ---------------------------------------------------------------------------------------------------------------
# tasks


class MultiviewContrast(PretrainingTask):
    """Multiview contrast (GearNet paper Sec. 4.1; torchdrug ``models.MultiviewContrast`` in
    ``tasks.Unsupervised``; GearNet ``config/pretrain/mc_gearnet_edge.yaml``).

    The graph is that of the whole proteins (built for each view's nodes only); each of two views picks one crop
    function (``crops``:
    ``subsequence`` = :func:`subsequence_mask` with ``max_length``, ``subspace`` = :func:`subspace_mask` with
    ``min_neighbor`` / ``min_radius`` Å) and one noise function (``noises``: ``identity`` or ``random_edge_mask``
    = :func:`random_edge_mask` with ``edge_mask_rate``) for the whole batch, uniformly from the task's generator.
    A view is the subgraph of the cropped nodes (:func:`subgraph`) less the masked edges (:func:`remove_edges`);
    the encoder's graph features of both views go through the shared projection ``head`` (an MLP ``D -> D -> D``
    for ``num_mlp_layer`` 2, ReLU between) and the loss is :func:`info_nce` with temperature ``tau``.

    Logged: ``loss``, ``mutual_information`` (= -loss, torchdrug's ``multiview mutual information``).

    Raises:
        ConfigError: an unknown crop or noise function, an empty list of them.
    """

    options: ClassVar[dict[str, Any]] = {
        **PretrainingTask.options,
        "crops": ["subsequence", "subspace"],
        "max_length": 50,
        "min_neighbor": 15,
        "min_radius": 15.0,
        "noises": ["identity", "random_edge_mask"],
        "edge_mask_rate": 0.15,
        "tau": 0.07,
        "num_mlp_layer": 2,
    }
    CROPS = ("subsequence", "subspace")
    NOISES = ("identity", "random_edge_mask")

    def __init__(self, spec: Mapping, name: str = "pretraining"):
        super().__init__(spec, name)
        for key, known in (("crops", self.CROPS), ("noises", self.NOISES)):
            chosen = list(self.settings[key] or [])
            if not chosen or any(c not in known for c in chosen):
                section = getattr(self, "section", "tasks")
                raise ConfigError(
                    f"config key '{section}.{name}.{key}': a non-empty list of {', '.join(known)}, not {chosen!r}"
                )

    def head(self, output_dim: int) -> nn.Module:
        """The projection MLP shared by both views: ``MLP(D, [D] * num_mlp_layer)`` (``(B, D) -> (B, D)``)."""
        return MLP(output_dim, [output_dim] * int(self.settings["num_mlp_layer"]))

    def crop(self, graph: ResidueGraph, kind: str) -> Tensor:
        """The ``(N,)`` bool node mask of crop function ``kind``."""
        s = self.settings
        if kind == "subsequence":
            return subsequence_mask(graph, int(s["max_length"]))
        return subspace_mask(graph, int(s["min_neighbor"]), float(s["min_radius"]))

    def view(
        self, graph: ResidueGraph, crop: str, noise: str, proteins: Sequence[ProteinInput]
    ) -> tuple[ResidueGraph, Tensor]:
        """One augmented view: ``(graph, kept)`` with ``kept`` the ``(N',)`` indices of its nodes in ``graph``.

        ``graph``: the batch's nodes (graph kind ``none``; the crops read their positions and residue numbers);
        the view's graph is built for the cropped nodes of ``proteins`` alone (:func:`~geoplm.inputs.make_graph`
        with ``node_mask``): the graph torchdrug crops out of the whole proteins' graph (:func:`subgraph`), without
        building the rest (``tests/test_pretraining_tasks.py`` compares the two)."""
        mask = self.crop(graph, crop)
        view = make_graph(proteins, self.device, self.graph_settings, node_mask=mask)
        kept = torch.nonzero(mask).flatten()
        if noise == "random_edge_mask":
            view = remove_edges(view, random_edge_mask(view, float(self.settings["edge_mask_rate"])))
        return view, kept

    def training_loss(self, model: nn.Module, batch, epoch: int):
        """InfoNCE of two views of the batch: ``(loss, {"loss", "mutual_information"}, 1.0)``. The views' graphs
        are built for their cropped nodes only (:meth:`view`)."""
        proteins = self.batch_inputs(batch)
        packed = pack(proteins, self.device, {"kind": "none"})  # the nodes: each view builds its own graph
        views = []
        for _ in range(2):
            crop, noise = self.rng.choice(list(self.settings["crops"])), self.rng.choice(list(self.settings["noises"]))
            views.append(self.view(packed.graph, crop, noise, proteins))
        if getattr(model.encoder, "accepts_norm_groups", False) and not packed.encoder_inputs:
            # both views in one pass, each batch-normalised on its own (GearNet.forward's norm_groups)
            kept = torch.cat([k for _, k in views])
            output = model.encoder(
                cat_graphs([v for v, _ in views]),
                packed.node_feature[kept],
                norm_groups=[v.num_nodes for v, _ in views],
            )
            projected = model.head(output["graph_feature"]).split(views[0][0].batch_size)
        else:
            projected = []
            for view, kept in views:
                inputs = _encoder_inputs(proteins, packed.encoder_inputs, kept)
                output = model.encoder(view, packed.node_feature[kept], **inputs)
                projected.append(model.head(output["graph_feature"]))
        loss = info_nce(projected[0], projected[1], float(self.settings["tau"]))
        value = float(loss.detach())
        return loss, {"loss": value, "mutual_information": -value}, 1.0


class AttributeMasking(PretrainingTask):
    """Residue type prediction (GearNet paper Sec. 4.2; torchdrug ``tasks.AttributeMasking`` on the residue view;
    GearNet ``config/pretrain/attr_gearnet_edge.yaml``).

    Per protein of ``n`` nodes, ``max(1, floor(mask_rate * n))`` nodes drawn uniformly with replacement; their
    node input row is zeroed and their residue type set to 0 *before* the graph's edges and edge features are
    built (the reference applies the node layer, masks, then the edge layer), so the edge features see type 0.
    The head ``MLP(D, [D] * (num_mlp_layer - 1) + [20])`` reads the encoder's node features of the masked nodes;
    cross-entropy against the original types over torchdrug's 20 residue types (``constant.NUM_AMINO_ACID``; an
    unknown residue, type 20 here, is glycine 0 as torchdrug's parser makes it). Logged: ``loss``, ``accuracy``.

    With an ESM-2 inside the model (ESM-GearNet ``config/pretrain/attr_esm_gearnet.yaml``), the masked residues
    are ESM-2's ``<mask>`` token in its input sequence (:func:`geoplm.pretraining.masking.mask_residues`), as
    ESM-GearNet's residue type prediction masks them.
    """

    options: ClassVar[dict[str, Any]] = {**PretrainingTask.options, "mask_rate": 0.15, "num_mlp_layer": 2}
    loop_defaults: ClassVar[dict[str, Any]] = SELF_PREDICTION_LOOP

    def head(self, output_dim: int) -> nn.Module:
        """``MLP(D, [D] * (num_mlp_layer - 1) + [20])``: ``(S, D) -> (S, 20)``."""
        return MLP(output_dim, [output_dim] * (int(self.settings["num_mlp_layer"]) - 1) + [NUM_RESIDUE_TYPE])

    def mask(self, proteins: Sequence[ProteinInput]) -> tuple[list[ProteinInput], Tensor]:
        """The proteins with their sampled nodes masked and ``(S,)`` long packed indices of the samples
        (duplicates possible), on the task's device."""
        count = torch.tensor([p.num_nodes for p in proteins], device=self.device)
        per = (count * float(self.settings["mask_rate"])).long().clamp(min=1)
        offset = torch.cumsum(count, 0) - count
        sample2graph = torch.repeat_interleave(torch.arange(len(count), device=self.device), per)
        index = (torch.rand(len(sample2graph), device=self.device) * count[sample2graph]).long() + offset[sample2graph]
        local = index.cpu()
        masked, first = [], 0
        for protein in proteins:
            own = local[(local >= first) & (local < first + protein.num_nodes)] - first
            masked.append(mask_residues(protein, own, MASK_TOKEN))
            first += protein.num_nodes
        return masked, index

    def training_loss(self, model: nn.Module, batch, epoch: int):
        """Cross-entropy on the masked residues' types: ``(loss, {"loss", "accuracy"}, 1.0)``."""
        proteins = self.batch_inputs(batch)
        target = torch.cat([p.residue_type for p in proteins]).to(self.device)
        masked, index = self.mask(proteins)
        target = target[index]
        target = torch.where(target >= NUM_RESIDUE_TYPE, torch.zeros_like(target), target)
        packed = pack(masked, self.device, self.graph_settings)
        output = model.encoder(packed.graph, packed.node_feature, **packed.encoder_inputs)
        pred = model.head(output["node_feature"][index])
        loss = F.cross_entropy(pred, target)
        accuracy = float((pred.argmax(dim=-1) == target).float().mean())
        return loss, {"loss": float(loss.detach()), "accuracy": accuracy}, 1.0


class _EdgeTask(PretrainingTask):
    """What the distance, angle and dihedral tasks share: sample, remove the sampled edges, encode, predict from
    the concatenated node features of the sample's nodes."""

    loop_defaults: ClassVar[dict[str, Any]] = SELF_PREDICTION_LOOP
    #: nodes per sample (the head reads ``num_node * D``)
    num_node = 2

    def num_outputs(self) -> int:
        """The head's output width: ``num_class``."""
        return int(self.settings["num_class"])

    def head(self, output_dim: int) -> nn.Module:
        """``MLP(k D, [D] * (num_mlp_layer - 1) + [C])`` for ``k`` nodes per sample: ``(S, k D) -> (S, C)``."""
        hidden = [output_dim] * (int(self.settings["num_mlp_layer"]) - 1)
        return MLP(self.num_node * output_dim, hidden + [self.num_outputs()])

    def samples(self, graph: ResidueGraph) -> tuple[Tensor, Tensor, list[Tensor]]:
        """``(removed edges, target, [node indices (S,) in the order the head reads them])``."""
        raise NotImplementedError

    def training_loss(self, model: nn.Module, batch, epoch: int):
        """Sample (:meth:`samples`), remove the sampled edges, encode the rest, predict: ``(loss, parts, 1.0)``."""
        proteins = self.batch_inputs(batch)
        packed = pack(proteins, self.device, self.graph_settings)
        removed, target, nodes = self.samples(packed.graph)
        graph = remove_edges(packed.graph, removed)
        output = model.encoder(graph, packed.node_feature, **packed.encoder_inputs)["node_feature"]
        pred = model.head(torch.cat([output[n] for n in nodes], dim=-1))
        return self.criterion_parts(pred, target)

    def criterion_parts(self, pred: Tensor, target: Tensor):
        """Cross-entropy of ``(S, C)`` logits against ``(S,)`` classes, and the accuracy."""
        loss = F.cross_entropy(pred, target)
        accuracy = float((pred.argmax(dim=-1) == target).float().mean())
        return loss, {"loss": float(loss.detach()), "accuracy": accuracy}, 1.0


class DistancePrediction(_EdgeTask):
    """Distance prediction (GearNet paper Sec. 4.2; torchdrug ``tasks.DistancePrediction``; GearNet
    ``config/pretrain/dis_gearnet_edge.yaml``).

    ``num_sample`` edges ``node_in -> node_out`` per protein, uniformly with replacement over all its edges
    (self-loops and every relation included), are removed from the graph; the head ``MLP(2D, [D] * (num_mlp_layer -
    1) + [1])`` reads ``[h_in, h_out]`` and regresses the Cα-Cα distance in Å; loss MSE (logged ``loss``).
    """

    options: ClassVar[dict[str, Any]] = {**PretrainingTask.options, "num_sample": 256, "num_mlp_layer": 2}

    def num_outputs(self) -> int:
        """One output: the distance (Å)."""
        return 1

    def samples(self, graph: ResidueGraph):
        """``num_sample`` edges per protein: ``(edges (S,), distances (S,) Å, [node_in, node_out])``."""
        order, count = _graph_order(graph.edge2graph, graph.batch_size)
        edges = order[_sample(count, int(self.settings["num_sample"]), count.device)]
        node_i, node_j = graph.edge_list[edges, 0], graph.edge_list[edges, 1]
        target = (graph.node_position[node_i] - graph.node_position[node_j]).norm(dim=-1)
        return edges, target, [node_i, node_j]

    def criterion_parts(self, pred: Tensor, target: Tensor):
        """MSE of the ``(S, 1)`` predictions against the ``(S,)`` distances (Å²)."""
        loss = F.mse_loss(pred.squeeze(-1), target)
        return loss, {"loss": float(loss.detach())}, 1.0


class AnglePrediction(_EdgeTask):
    """Angle prediction (GearNet paper Sec. 4.2; torchdrug ``tasks.AnglePrediction``; GearNet
    ``config/pretrain/angle_gearnet_edge.yaml``).

    ``num_sample`` pairs of adjacent edges ``(k -> j), (j -> i)`` per protein, uniformly with replacement over the
    pairs of :func:`adjacent_edge_pairs` (the line graph less ``a == b`` and ``k == i``); both edges are removed.
    Target: :func:`angle_bins` of :func:`bond_angle` ``∠ i j k``; head ``MLP(3D, [D] * (num_mlp_layer - 1) +
    [num_class])`` on ``[h_i, h_j, h_k]``; cross-entropy. Logged: ``loss``, ``accuracy``.
    """

    options: ClassVar[dict[str, Any]] = {
        **PretrainingTask.options, "num_sample": 512, "num_class": 8, "num_mlp_layer": 2,
    }  # fmt: skip
    num_node = 3

    def samples(self, graph: ResidueGraph):
        """``num_sample`` edge pairs per protein: ``(both edges (2S,), bins (S,), [i, j, k])``."""
        node_in, node_out = graph.edge_list[:, 0], graph.edge_list[:, 1]
        edge_a, edge_b = adjacent_edge_pairs(graph)
        order, count = _graph_order(graph.node2graph[node_in[edge_b]], graph.batch_size)
        chosen = order[_sample(count, int(self.settings["num_sample"]), count.device)]
        edge_a, edge_b = edge_a[chosen], edge_b[chosen]
        node_i, node_j, node_k = node_out[edge_b], node_in[edge_b], node_in[edge_a]
        pos = graph.node_position
        target = angle_bins(bond_angle(pos[node_i], pos[node_j], pos[node_k]), int(self.settings["num_class"]))
        return torch.cat([edge_a, edge_b]), target, [node_i, node_j, node_k]


class DihedralPrediction(_EdgeTask):
    """Dihedral prediction (GearNet paper Sec. 4.2; torchdrug ``tasks.DihedralPrediction``; GearNet
    ``config/pretrain/dihedral_gearnet_edge.yaml``).

    ``num_sample`` edge triplets ``e1 = (k -> t), e2 = (t -> j), e3 = (j -> i)`` per protein, uniformly with
    replacement over the edges of the line graph of the (filtered) line graph: pairs of adjacent line-graph edges
    ``(e1 -> e2), (e2 -> e3)`` of :func:`adjacent_edge_pairs`. (The reference's second filter, ``l1 == l2`` or
    ``e1 == e3``, never fires on such pairs: ``e1 == e3`` would make ``(e1 -> e2)`` a there-and-back pair, already
    dropped.) They are counted per middle edge (``in x out`` filtered pairs) and drawn without materialising the
    second line graph; the distribution is the reference's. All three edges are removed. Target: :func:`angle_bins`
    of :func:`dihedral_angle`; head ``MLP(4D, [D] * (num_mlp_layer - 1) + [num_class])`` on ``[h_i, h_j, h_k,
    h_t]`` (torchdrug's order); cross-entropy. Logged: ``loss``, ``accuracy``.
    """

    options: ClassVar[dict[str, Any]] = {
        **PretrainingTask.options, "num_sample": 512, "num_class": 8, "num_mlp_layer": 2,
    }  # fmt: skip
    num_node = 4

    def triplets(self, graph: ResidueGraph, num_sample: int) -> tuple[Tensor, Tensor, Tensor]:
        """``num_sample`` triplets ``(e1, e2, e3)`` per protein (``(S,)`` long edge indices each), graph-major."""
        edge_a, edge_b = adjacent_edge_pairs(graph)
        m, device = graph.num_edges, edge_a.device
        into = torch.sort(edge_b, stable=True).indices  # line edges ending at each middle edge e2
        out_of = torch.sort(edge_a, stable=True).indices  # line edges starting at each e2
        deg_into = torch.bincount(edge_b, minlength=m)
        deg_out = torch.bincount(edge_a, minlength=m)
        size = deg_into * deg_out  # second-order line edges through e2
        order, _ = _graph_order(graph.edge2graph, graph.batch_size)
        size_sorted = size[order]
        total = torch.zeros(graph.batch_size, dtype=torch.long, device=device).index_add(
            0, graph.edge2graph[order], size_sorted
        )
        position = _sample(total, num_sample, device)
        cumulative = torch.cumsum(size_sorted, 0)
        slot = torch.searchsorted(cumulative, position, right=True)
        middle = order[slot]
        local = position - (cumulative[slot] - size_sorted[slot])
        inner = deg_out[middle]
        line1 = into[(torch.cumsum(deg_into, 0) - deg_into)[middle] + torch.div(local, inner, rounding_mode="floor")]
        line2 = out_of[(torch.cumsum(deg_out, 0) - deg_out)[middle] + local % inner]
        return edge_a[line1], middle, edge_b[line2]

    def samples(self, graph: ResidueGraph):
        """``num_sample`` edge triplets per protein: ``(e1, e2, e3 concatenated (3S,), bins (S,), [i, j, k, t])``."""
        node_in, node_out = graph.edge_list[:, 0], graph.edge_list[:, 1]
        e1, e2, e3 = self.triplets(graph, int(self.settings["num_sample"]))
        node_i, node_j, node_t, node_k = node_out[e3], node_in[e3], node_in[e2], node_in[e1]
        pos = graph.node_position
        dihedral = dihedral_angle(pos[node_i], pos[node_j], pos[node_t], pos[node_k])
        target = angle_bins(dihedral, int(self.settings["num_class"]))
        return torch.cat([e1, e2, e3]), target, [node_i, node_j, node_k, node_t]
