"""Residue-level protein graphs: GearNet's multi-relational residue graph and reusable kNN / radius graphs.

:func:`build_gearnet_graph` reproduces the graph that torchdrug 0.2.1 builds with ::

    GraphConstruction(node_layers=[AlphaCarbonNode()],
                      edge_layers=[SequentialEdge(max_distance=2),
                                   SpatialEdge(radius=10.0, min_distance=5),
                                   KNNEdge(k=10, min_distance=5)],
                      edge_feature="gearnet")

i.e. the configuration of the GearNet paper (Zhang et al., "Protein Representation Learning by
Geometric Structure Pretraining", ICLR 2023, arXiv 2203.06125, Sec. 3.1) and of every GearNet config in
DeepGraphLearning/GearNet (e.g. ``config/downstream/EC/gearnet_edge.yaml``). The behaviour was read
from (commits pinned):

* DeepGraphLearning/torchdrug @ 6066fbd82360abb5f270cba1eca560af01b8cc90 (tag v0.2.1):
  ``torchdrug/layers/geometry/graph.py`` (``GraphConstruction``, ``SpatialLineGraph``),
  ``torchdrug/layers/geometry/function.py`` (``SequentialEdge``, ``SpatialEdge``, ``KNNEdge``,
  ``AlphaCarbonNode``), ``torchdrug/data/protein.py`` (``residue2id``), ``torchdrug/data/graph.py``
  (``PackedGraph.line_graph``).
* rusty1s/pytorch_cluster, tags 1.6.0-1.6.3 (the releases torchdrug 0.2.1 ran against):
  ``torch_cluster/knn.py``, ``torch_cluster/radius.py``, ``csrc/cuda/knn_cuda.cu``,
  ``csrc/cuda/radius_cuda.cu``.

Nothing is copied from those projects; the functions below re-implement the behaviour on the CPU
with the compiled cell-list kernels of :mod:`geoplm.graph_kernels` (numba; results moved to the
input's device), every decision taken exactly on squared distances in the input dtype; memory is
``O(N + E)``. :func:`build_gearnet_graph` takes the spatial and the kNN relation from one neighbour
search and builds runs of whole proteins on ``torch.get_num_threads()`` threads; four AlphaFold
models (1,896 residues) take 2-4 ms on 2 CPU cores, 3.9x-5.2x faster than torchdrug
(``benchmarks/bench_gearnet.py``).

Conventions
-----------
* Nodes are residues that have a Cα (the caller drops the others, as ``AlphaCarbonNode`` does). The
  "residue index" torchdrug uses everywhere (sequential edges, ``min_distance`` filters, the
  sequential-distance edge feature) is the position of the residue in this node list, **not** the PDB
  residue number.
* ``edge_list[:, 0]`` is ``node_in`` (message source), ``edge_list[:, 1]`` is ``node_out`` (message
  target), ``edge_list[:, 2]`` the relation; messages flow ``node_in -> node_out`` (torchdrug).
* ``node2graph`` must be non-decreasing (proteins packed contiguously, as in a torchdrug
  ``PackedProtein``).

Relations (``num_relation = 2 * sequential_max_distance + 3 = 7``)
------------------------------------------------------------------
* ``0..4`` sequential: edge ``i -> j`` with ``j - i = o`` for ``o in -2..2`` gets relation ``o + 2``.
  Offset 0 is included, so **every residue has a self-loop edge of relation 2**. Residues i and i+1
  are joined whenever they are consecutive in the node list of the same protein and carry the same
  chain id; torchdrug knows no other kind of chain break: a gap in the residue numbering (missing
  residues, residues dropped for lacking a Cα) does *not* cut sequential edges.
* Chain breaks: ``SequentialEdge`` keeps an edge only if ``graph.chain_id`` of its two residues is equal,
  so in a complex no sequential edge joins the last residues of one chain to the first of the next (six
  edges per junction: offsets ±1 and ±2). :func:`build_gearnet_graph` removes them when given
  ``chain_id``; on the workflow's paths the chains come from the records: a record merged from several
  chains (:func:`geoplm.structure.concatenate_chains`: docking partners, PDBbind and ATOM3D LBA pockets,
  CASP models and natives) carries ``chain_index`` (L,), :func:`record_chain_index` turns it into the
  nodes' chains, and both the cached graphs (:func:`build_record_graphs`, rule ``build_graphs``) and the
  graphs built per batch (:func:`geoplm.inputs.make_graph` -> :func:`build_batch_graph`, which also
  reads the chains of proteins concatenated by :func:`geoplm.inputs.concatenate_proteins`) pass them on.
  Without ``chain_id`` each protein is one chain. Of the shared data's 45 multi-chain experimental PDB
  files, 36 are read by torchdrug (RDKit) and keep the same residues in both parsers; with all
  chains of a file as one protein, geoplm's edge sets equal torchdrug 0.2.1's on 31 of them and differ on
  the other 5 only in spatial edges of residues where the neighbour cap below binds (1-32 edges of
  6,000-17,000); ``tests/test_multichain.py`` checks five of them against
  ``tests/fixtures/torchdrug_multichain_graphs.pt``.
* ``5`` spatial (radius): ``j -> i`` for ``|x_i - x_j| < radius`` (strict), ``|i - j| >= min_distance``,
  directed, each unordered pair appearing in both directions (unless the neighbour cap below cuts
  one direction).
* ``6`` kNN: ``j -> i`` for the ``k`` nearest neighbours ``j`` of every centre ``i`` (excluding ``i``),
  *then* filtered by ``|i - j| >= min_distance``; so a residue keeps at most ``k`` (typically far
  fewer, since its sequence neighbours are usually among its nearest) kNN in-edges. kNN edges are
  directed and not symmetrised.
* The ``min_distance`` filter uses the node-index difference regardless of chains (``SpatialEdge`` and
  ``KNNEdge`` compare ``graph.atom2residue``, never ``chain_id``): in a complex the last residues of one
  chain and the first of the next (index difference < 5) get no spatial / kNN edge, as in torchdrug.
* Spatial and kNN edges with a (near-)zero length (< 1e-10 Å, duplicated coordinates) are dropped.
* Edges are not deduplicated across relations: a pair can be both a spatial and a kNN edge (two
  edges, relations 5 and 6), and both are kept, as in torchdrug.

The radius-graph neighbour cap (torchdrug / torch_cluster subtlety)
-------------------------------------------------------------------
``SpatialEdge`` calls ``torch_cluster.radius_graph(..., max_num_neighbors=32)`` (its default) and
torch_cluster <= 1.6.3 implements ``loop=False`` by asking ``radius`` for ``max_num_neighbors + 1``
neighbours *including the centre itself* and then dropping the self pair. On the GPU (where GearNet
was trained) ``radius`` scans candidates in ascending node index and keeps the first ones with
``d^2 < r^2`` (``csrc/cuda/radius_cuda.cu``). So for each centre ``i`` only the lowest-indexed 33
residues within ``radius`` (self included, self then removed: 32 edges, or 33 if ``i`` itself is not
among them) survive, and only *afterwards* are the ``|i - j| < 5`` pairs removed. torch_cluster's CPU
kernel (``csrc/cpu/radius_cpu.cpp``) keeps the first 33 matches of a nanoflann k-d tree search with
``sorted = false`` instead: a tree-dependent subset, not reproducible without that tree.
**geoplm follows the CUDA kernel** (the papers' GPU runs), by default (``spatial_max_num_neighbors=32``);
pass ``None`` for the uncapped set of all pairs within ``radius`` (the definition written in the paper).

The cap does bind on real Cα coordinates: a residue in a well-packed core has up to ~40 Cα within 10 Å.
Counted on the shared data's 424 experimental structure files (``chains/`` 258, ``db5/`` 61, ``pdb/`` 37,
``pdbbind/`` 36, ``dips/`` 32; all chains of a file as one protein, geoplm's parser), some Cα has more than
33 Cα (itself included) within 10 Å in 55 files (13%; 54 with every chain its own protein), at 232 of
81,388 residues (0.3%, at most 41 Cα), and the capped GearNet edge set differs from the uncapped one in 53
files (493 spatial edges in all); in AlphaFold models it binds in 3 of 44 files (at most 35 Cα), in the
CASP server models in 3 of 69 (at most 46). Where it binds, the edges kept depend on the node order (a
residue keeps its lowest-indexed neighbours), and torchdrug run on the CPU keeps other ones (nanoflann's),
so graphs that torchdrug builds on the CPU differ from geoplm's in those residues' spatial edges only.

kNN ties follow torch_cluster's CUDA kernel as well: ``knn_graph(loop=False)`` takes the ``k + 1``
nearest points including the centre, ranked by squared float distance with ties broken towards the
lower node index, and removes the centre. Squared distances are computed in the input dtype as
``dx*dx + dy*dy + dz*dz`` like the CUDA kernels (which may fuse multiply-adds, so pairs within ~1e-6 Å
of a threshold or tie can differ between backends).

Edge order
----------
Edges are sorted by ``(graph, relation, node_out, node_in)``. torchdrug concatenates the edges of
the three layers (relation-major) and then argsorts by graph (``torch.argsort``, not guaranteed
stable), so its order within a relation is implementation-defined; ours is a deterministic
refinement of it. GearNet's sums do not depend on the order.

Edge feature (``edge_feature="gearnet"``, 59-d)
-------------------------------------------------
``[one_hot(residue_type[node_in], 20), one_hot(residue_type[node_out], 20), one_hot(relation, 7),
one_hot(min(|node_in - node_out|, 10), 11), |x_in - x_out|]`` = 20 + 20 + 7 + 11 + 1 = 59
(``GraphConstruction.edge_gearnet``; ``max_seq_dist = 10``). The residue one-hots are 20 wide because
``len(torchdrug.data.Protein.residue2id) == 20``: torchdrug has no "unknown" residue type, its parser
turns unknown residues into glycine (id 0). Our ``residue_type`` may hold 20 (= unknown, the 21st
slot of GearNet's 21-d node *input* feature, :func:`residue_one_hot`); in the edge feature it is
therefore encoded as glycine, exactly like torchdrug. The sequential distance is the node-index
difference, also for spatial/kNN edges and also across chains. ``edge_feature="residue_type"`` gives
the first 40 columns only; ``None`` an ``(E, 0)`` tensor.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, replace
from functools import partial

import numpy as np
import torch
from torch import Tensor

from geoplm import graph_kernels
from geoplm.structure import NUM_RESIDUE_TYPES, NUM_STANDARD_RESIDUE_TYPES

__all__ = [
    "NUM_RESIDUE_TYPE",
    "NUM_RESIDUE_FEATURE",
    "MAX_SEQ_DIST",
    "ResidueGraph",
    "LineGraph",
    "build_gearnet_graph",
    "cat_graphs",
    "gearnet_edge_feature_dim",
    "knn_graph",
    "radius_graph",
    "readout",
    "residue_one_hot",
    "spatial_line_graph",
    "PairedLineGraph",
    "paired_line_graph",
    "remove_edges",
    "subgraph",
]

#: ``len(torchdrug.data.Protein.residue2id)``; residue ids follow torchdrug's order
#: G A S P V T C I L N D Q K E M H F R Y W (0-19) (:data:`geoplm.structure.NUM_STANDARD_RESIDUE_TYPES`).
NUM_RESIDUE_TYPE = NUM_STANDARD_RESIDUE_TYPES
#: Width of GearNet's node input feature (residue one-hot with an "unknown" slot, id 20;
#: :data:`geoplm.structure.NUM_RESIDUE_TYPES`).
NUM_RESIDUE_FEATURE = NUM_RESIDUE_TYPES
#: ``GraphConstruction.max_seq_dist`` in torchdrug.
MAX_SEQ_DIST = 10
#: Spatial / kNN edges shorter than this are dropped (``SpatialEdge.eps``, ``KNNEdge.eps``).
_EPS = 1e-10
#: Batches with fewer residues are built on one thread.
_PARALLEL_MIN_NODES = 1000


def _to_device(graph, device):
    """A copy of a graph dataclass with every tensor field moved to ``device``."""
    return replace(
        graph,
        **{
            f.name: getattr(graph, f.name).to(device)
            for f in fields(graph)
            if isinstance(getattr(graph, f.name), Tensor)
        },
    )


@dataclass
class ResidueGraph:
    """A packed batch of residue graphs (one node per residue with a Cα)."""

    num_nodes: int
    batch_size: int
    node_position: Tensor  # (N, 3) Cα coordinates in Å
    residue_type: Tensor  # (N,) long, torchdrug residue ids 0-19, 20 = unknown
    node2graph: Tensor  # (N,) long, non-decreasing
    edge_list: Tensor  # (E, 3) long: [node_in, node_out, relation]
    edge_feature: Tensor  # (E, D_e) float
    num_relation: int
    #: (N,) long author residue numbers (records' ``residue_number`` of the nodes), or None. Optional: only
    #: CDConv reads it (its discrete kernels index sequence offsets by residue number, as torchdrug's
    #: ``residue_number``); without it CDConv uses each node's index in its protein.
    residue_number: Tensor | None = None

    @property
    def num_edges(self) -> int:
        return int(self.edge_list.shape[0])

    @property
    def num_nodes_per_graph(self) -> Tensor:
        return torch.bincount(self.node2graph, minlength=self.batch_size)

    @property
    def edge2graph(self) -> Tensor:
        return self.node2graph[self.edge_list[:, 1]]

    def to(self, device) -> ResidueGraph:
        return _to_device(self, device)


@dataclass
class LineGraph:
    """Spatial line graph (GearNet-Edge): one node per edge of a :class:`ResidueGraph`.

    ``edge_list[:, 0]`` / ``[:, 1]`` index edges of the original graph (``edge_in -> edge_out``,
    where ``edge_in = (k -> j)`` and ``edge_out = (j -> i)``), ``edge_list[:, 2]`` the angle bin.
    """

    num_nodes: int
    batch_size: int
    node2graph: Tensor  # (E,) graph of every original edge
    edge_list: Tensor  # (E', 3) long: [edge_in, edge_out, angle_bin]
    node_feature: Tensor  # (E, D_e) = edge features of the original graph
    num_relation: int

    @property
    def num_edges(self) -> int:
        return int(self.edge_list.shape[0])

    def to(self, device) -> LineGraph:
        return _to_device(self, device)


def gearnet_edge_feature_dim(num_relation: int = 7) -> int:
    """Dimension of torchdrug's ``edge_feature="gearnet"``: 2 * 20 + num_relation + 11 + 1 (59 for 7)."""
    return 2 * NUM_RESIDUE_TYPE + num_relation + (MAX_SEQ_DIST + 1) + 1


def residue_one_hot(residue_type: Tensor, num_classes: int = NUM_RESIDUE_FEATURE) -> Tensor:
    """GearNet's 21-d node input feature (torchdrug ``residue_default`` / ``residue_symbol``: one-hot
    over the 20 residue ids plus an "unknown" slot at index 20)."""
    return torch.nn.functional.one_hot(residue_type.long(), num_classes).float()


# ----------------------------------------------------------------------------------------------
# neighbour search (compiled kernels on the CPU; results are moved to the input's device)


def _layout(num_nodes: int, node2graph: Tensor | None, device) -> tuple[Tensor, int]:
    """Validated ``(node2graph, batch_size)``; ``None`` means one graph."""
    if node2graph is None:
        node2graph = torch.zeros(num_nodes, dtype=torch.long, device=device)
        return node2graph, 1 if num_nodes > 0 else 0
    node2graph = node2graph.to(device=device, dtype=torch.long)
    if node2graph.shape != (num_nodes,):
        raise ValueError(f"node2graph must have shape ({num_nodes},), got {tuple(node2graph.shape)}")
    if num_nodes == 0:
        return node2graph, 0
    if (node2graph[1:] < node2graph[:-1]).any() or node2graph[0] < 0:
        raise ValueError("node2graph must be non-negative and non-decreasing (packed proteins)")
    return node2graph, int(node2graph[-1]) + 1


def _cpu_arrays(pos: Tensor, node2graph: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``(N, 3)`` as a C-contiguous CPU numpy array (float32, or float64 if given) and the graph
    bounds ``(B + 1,)`` int64 (first node of every graph, then ``N``).

    Raises:
        ValueError: a coordinate is NaN or infinite.
    """
    xyz = pos.detach().cpu()
    if xyz.dtype not in (torch.float32, torch.float64):
        xyz = xyz.float()
    xyz = np.ascontiguousarray(xyz.numpy())
    if not np.isfinite(xyz).all():
        bad = int(np.nonzero(~np.isfinite(xyz).all(axis=1))[0][0])
        raise ValueError(f"node_position has a non-finite coordinate (node {bad}: {xyz[bad].tolist()})")
    graph = node2graph.detach().cpu().numpy().astype(np.int64)
    sizes = np.bincount(graph, minlength=int(graph[-1]) + 1 if len(graph) else 0)
    return xyz, np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def _radius_search(xyz: np.ndarray, bounds: np.ndarray, r: float, k: int = 0, query: np.ndarray | None = None):
    """:func:`geoplm.graph_kernels.radius_lists` for radius ``r`` (Å): ``d2 < r^2`` in the positions' dtype;
    cells are made slightly wider than ``r`` so that rounding never hides a pair. ``query``: ``(n,)`` bool, the
    nodes whose lists are searched (default all)."""
    r2 = xyz.dtype.type(float(r) * float(r))
    width = max(float(r), 0.0) * (1 + 1e-5) + 1e-4
    if query is None:
        query = np.ones(len(xyz), dtype=np.bool_)
    return graph_kernels.radius_lists(xyz, bounds, r2, width, k, query)


def _pairs(indptr: np.ndarray, index: np.ndarray, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(source, target)`` of CSR neighbour lists (sorted by target, then source), keeping only the first
    ``limit`` entries of every list when given."""
    count = np.diff(indptr)
    target = np.repeat(np.arange(len(count), dtype=np.int64), count)
    if limit is None:
        return index, target
    keep = np.arange(len(index)) - indptr[target] < limit
    return index[keep], target[keep]


def _edge_index(source: np.ndarray, target: np.ndarray, device) -> Tensor:
    return torch.as_tensor(np.stack([source, target]), dtype=torch.long, device=device)


def knn_graph(
    node_position: Tensor,
    k: int,
    node2graph: Tensor | None = None,
    *,
    loop: bool = False,
) -> Tensor:
    """k-nearest-neighbour graph within each graph of a packed batch.

    Args:
        node_position: ``(N, 3)`` coordinates (Å).
        k: neighbours per node.
        node2graph: ``(N,)`` non-decreasing graph index; ``None`` = one graph.
        loop: count the node itself among its ``k`` (and keep the self loop).

    Returns:
        ``(2, E)`` long tensor of **global** (packed) node indices ``[source, target]``, on
        ``node_position.device``: for every target (centre) ``i`` its nearest neighbours ``j`` in the
        same graph, i.e. the messages flow ``j -> i`` (torch_cluster's ``flow="source_to_target"``,
        torchdrug's ``node_in -> node_out``). Edges are sorted by (target, source). No self loops unless
        ``loop``; no cross-graph edges.

    Semantics of torch_cluster <= 1.6.3 ``knn_graph`` on CUDA: select the ``k + 1`` (``k`` if
    ``loop``) nearest nodes *including the centre*, ranked by squared distance (in the input dtype)
    with ties broken towards the lower node index, then drop the centre. Graphs with ``<= k`` nodes
    give every other node.

    The search widens ring by ring over a cell grid (:func:`geoplm.graph_kernels.knn_lists`) until the
    ``k`` nearest are certain, so the result is exact, ties included, with ``O(N k)`` memory.

    Raises:
        ValueError: ``node2graph`` has the wrong shape or is not non-decreasing, or a coordinate is not
            finite.
    """
    pos = node_position
    n = pos.shape[0]
    node2graph, _ = _layout(n, node2graph, pos.device)
    kk = k if loop else k + 1
    if kk <= 0 or n == 0:
        return torch.zeros(2, 0, dtype=torch.long, device=pos.device)
    xyz, bounds = _cpu_arrays(pos, node2graph)
    source, target = _pairs(*graph_kernels.knn_lists(xyz, bounds, kk)[:2])
    if not loop:
        keep = source != target
        source, target = source[keep], target[keep]
    return _edge_index(source, target, pos.device)


def radius_graph(
    node_position: Tensor,
    r: float,
    node2graph: Tensor | None = None,
    *,
    loop: bool = False,
    max_num_neighbors: int | None = None,
) -> Tensor:
    """All pairs closer than ``r`` (strict ``d^2 < r^2`` in the input dtype) within each graph.

    Args:
        node_position: ``(N, 3)`` coordinates (Å).
        r: radius (Å).
        node2graph: ``(N,)`` non-decreasing graph index; ``None`` = one graph.
        loop: keep self loops.
        max_num_neighbors: ``None`` (default) keeps all pairs. An integer reproduces the cap of
            torch_cluster <= 1.6.3 ``radius_graph`` on CUDA: for each target the candidates within
            ``r`` are scanned in ascending node index, the first ``max_num_neighbors + 1``
            (``max_num_neighbors`` if ``loop``) are kept *counting the target itself*, then the self
            pair is removed.

    Returns:
        ``(2, E)`` global indices ``[source, target]`` on ``node_position.device``, sorted by
        (target, source); every unordered pair appears in both directions (unless the cap cuts one).
        No self loops unless ``loop``; no cross-graph edges.

    Candidate pairs come from a cell grid with cells slightly wider than ``r``
    (:func:`geoplm.graph_kernels.radius_lists`) and are filtered exactly; memory ``O(N + E)``.

    Raises:
        ValueError: ``node2graph`` has the wrong shape or is not non-decreasing, or a coordinate is not
            finite.
    """
    pos = node_position
    n = pos.shape[0]
    node2graph, _ = _layout(n, node2graph, pos.device)
    if n == 0:
        return torch.zeros(2, 0, dtype=torch.long, device=pos.device)
    xyz, bounds = _cpu_arrays(pos, node2graph)
    source, target = _pairs(*_radius_search(xyz, bounds, r)[:2], _cap_limit(max_num_neighbors, loop))
    if not loop:
        keep = source != target
        source, target = source[keep], target[keep]
    return _edge_index(source, target, pos.device)


def _cap_limit(max_num_neighbors: int | None, loop: bool) -> int | None:
    """How many pairs per target torch_cluster's ``radius_graph(max_num_neighbors)`` keeps, counting
    the target itself (``loop=False`` asks ``radius`` for one more and drops the self pair)."""
    return None if max_num_neighbors is None else max_num_neighbors + (0 if loop else 1)


# ----------------------------------------------------------------------------------------------
# GearNet graph


def _edge_feature_width(kind: str | None, num_relation: int) -> int:
    if kind not in (None, "gearnet", "residue_type"):
        raise ValueError(f"Unknown edge feature {kind!r} (expected 'gearnet', 'residue_type' or None)")
    return {None: 0, "residue_type": 2 * NUM_RESIDUE_TYPE}.get(kind, gearnet_edge_feature_dim(num_relation))


def _edge_feature_array(
    kind: str | None,
    node_in: np.ndarray,
    node_out: np.ndarray,
    relation: np.ndarray,
    xyz: np.ndarray,
    residue_type: np.ndarray,
    num_relation: int,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """torchdrug's ``GraphConstruction.edge_gearnet`` / ``edge_residue_type`` feature, ``(E, D)`` numpy in
    ``xyz``'s dtype, written into ``out`` (``(E, D)``) when given.

    Raises:
        ValueError: unknown ``kind``, or a residue type outside 0..20.
    """
    width = _edge_feature_width(kind, num_relation)
    feature = np.empty((len(node_in), width), dtype=xyz.dtype) if out is None else out
    if kind is None:
        return feature
    if len(residue_type) and not 0 <= int(residue_type.min()) <= int(residue_type.max()) <= NUM_RESIDUE_TYPE:
        raise ValueError(
            f"residue types must be in 0..{NUM_RESIDUE_TYPE}, got {int(residue_type.min())}..{int(residue_type.max())}"
        )
    return graph_kernels.edge_features(
        *(np.ascontiguousarray(a, dtype=np.int64) for a in (node_in, node_out, relation)),
        xyz,
        np.ascontiguousarray(residue_type, dtype=np.int64),
        num_relation,
        NUM_RESIDUE_TYPE,
        MAX_SEQ_DIST,
        kind == "gearnet",
        feature,
    )


def _edge_feature(
    kind: str | None,
    edge_list: Tensor,
    pos: Tensor,
    residue_type: Tensor,
    num_relation: int,
) -> Tensor:
    """torchdrug's ``GraphConstruction.edge_gearnet`` / ``edge_residue_type`` feature, ``(E, D)`` in
    ``pos.dtype`` on ``pos.device`` (computed on the CPU)."""
    edges = edge_list.detach().cpu().numpy()
    xyz = np.ascontiguousarray(pos.detach().cpu().numpy())
    feature = _edge_feature_array(
        kind, edges[:, 0], edges[:, 1], edges[:, 2], xyz, residue_type.cpu().numpy(), num_relation
    )
    return torch.from_numpy(feature).to(pos.device)


def build_gearnet_graph(
    node_position: Tensor,
    residue_type: Tensor,
    node2graph: Tensor | None = None,
    *,
    sequential_max_distance: int = 2,
    radius: float = 10.0,
    knn_k: int = 10,
    min_distance: int = 5,
    edge_feature: str | None = "gearnet",
    chain_id: Tensor | None = None,
    spatial_max_num_neighbors: int | None = 32,
    node_mask: Tensor | None = None,
) -> ResidueGraph:
    """Build GearNet's multi-relational residue graph (see the module docstring for every detail).

    Args:
        node_position: ``(N, 3)`` Cα coordinates (Å) of the residues that have a Cα, proteins packed
            one after another.
        residue_type: ``(N,)`` torchdrug residue ids (0-19; 20 = unknown, encoded as glycine in the
            edge feature as torchdrug does).
        node2graph: ``(N,)`` non-decreasing protein index; ``None`` = a single protein.
        sequential_max_distance: ``SequentialEdge(max_distance)``; relations ``0 .. 2*d``.
        radius: ``SpatialEdge(radius)`` in Å (relation ``2*d + 1``).
        knn_k: ``KNNEdge(k)`` (relation ``2*d + 2``).
        min_distance: ``min_distance`` of both ``SpatialEdge`` and ``KNNEdge``, in node-index units.
        edge_feature: ``"gearnet"`` (59-d for the defaults), ``"residue_type"`` (40-d) or ``None``.
        chain_id: optional ``(N,)`` integer chain ids (e.g. :func:`record_chain_index`); sequential edges
            between different chains are removed (torchdrug ``SequentialEdge`` compares ``graph.chain_id``);
            spatial and kNN edges do not depend on it. ``None``: each protein is one chain.
        spatial_max_num_neighbors: torch_cluster's ``max_num_neighbors`` used by torchdrug's
            ``SpatialEdge`` (32); ``None`` disables the cap.
        node_mask: optional ``(N,)`` bool: build only the subgraph induced by these nodes, exactly the graph
            that cropping the whole graph to them gives (torchdrug ``node_mask(compact=True)``, as multiview
            contrast crops its views after building the graph on whole proteins): the kept nodes in order,
            renumbered ``0 .. N' - 1`` (``batch_size`` unchanged), the edges between two of them, in their
            order, with their features (sequence distances counted in the whole protein). The neighbour
            searches run from the kept nodes only, among all nodes (the kNN and the radius cap depend on the
            others), so the cost follows the kept nodes, not the proteins.

    Returns:
        A :class:`ResidueGraph` on ``node_position.device`` with
        ``num_relation = 2 * sequential_max_distance + 3`` and edges sorted by
        ``(graph, relation, node_out, node_in)``.

    Raises:
        ValueError: a tensor has the wrong shape, ``residue_type`` is outside 0..20, ``node2graph`` is
            not non-decreasing, a coordinate is not finite, ``edge_feature`` is unknown, or ``node_mask`` is not
            ``(N,)`` bool.

    One neighbour search serves both geometric relations: the pairs within ``radius`` give the spatial
    edges, and the kNN of every residue with at least ``knn_k + 1`` of them (itself included); only the
    other residues (typically in extended, low-pLDDT stretches) search farther
    (:func:`geoplm.graph_kernels.radius_lists`). Edges come out in their final order, no sort needed.
    """
    pos = node_position
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"node_position must be (N, 3), got {tuple(pos.shape)}")
    if not pos.is_floating_point():
        pos = pos.float()
    n = pos.shape[0]
    device = pos.device
    residue_type = residue_type.to(device=device, dtype=torch.long)
    if residue_type.shape != (n,):
        raise ValueError(f"residue_type must have shape ({n},), got {tuple(residue_type.shape)}")
    if n and (residue_type.min() < 0 or residue_type.max() > NUM_RESIDUE_TYPE):
        raise ValueError("residue_type must be in 0..20")
    node2graph, batch_size = _layout(n, node2graph, device)
    if chain_id is not None:
        if chain_id.shape != (n,):
            raise ValueError(f"chain_id must have shape ({n},), got {tuple(chain_id.shape)}")
        chain_id = chain_id.detach().cpu().numpy()

    num_relation = 2 * sequential_max_distance + 3
    width = _edge_feature_width(edge_feature, num_relation)
    xyz, bounds = _cpu_arrays(pos, node2graph)
    rtype = residue_type.cpu().numpy()
    settings = dict(
        sequential_max_distance=sequential_max_distance,
        radius=radius,
        knn_k=knn_k,
        min_distance=min_distance,
        spatial_max_num_neighbors=spatial_max_num_neighbors,
    )
    # whole proteins are independent: runs of them go to torch.get_num_threads() threads
    if node_mask is None:
        keep = np.ones(n, dtype=np.bool_)
    else:
        if node_mask.shape != (n,) or node_mask.dtype != torch.bool:
            raise ValueError(f"node_mask must be ({n},) bool, got {tuple(node_mask.shape)} {node_mask.dtype}")
        keep = np.ascontiguousarray(node_mask.detach().cpu().numpy())
    work = n if node_mask is None else int(keep.sum())  # the searches run from the kept nodes only
    chunks = _balanced_chunks(bounds, torch.get_num_threads() if work >= _PARALLEL_MIN_NODES else 1)
    nodes = [(int(bounds[first]), int(bounds[last])) for first, last in chunks]

    def build(i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        (first, last), (a, b) = chunks[i], nodes[i]
        chain = None if chain_id is None else chain_id[a:b]
        return _gearnet_edges(xyz[a:b], bounds[first : last + 1] - a, chain, keep[a:b], **settings)

    edges = _thread_map(build, range(len(chunks)))
    edge_start = np.cumsum([0] + [len(e[0]) for e in edges])
    feature = np.empty((int(edge_start[-1]), width), dtype=xyz.dtype)
    edge_list = np.empty((int(edge_start[-1]), 3), dtype=np.int64)

    def fill(i: int) -> None:
        (a, b), (node_in, node_out, relation) = nodes[i], edges[i]
        rows = slice(edge_start[i], edge_start[i + 1])
        edge_list[rows, 0], edge_list[rows, 1], edge_list[rows, 2] = node_in + a, node_out + a, relation
        _edge_feature_array(
            edge_feature, node_in, node_out, relation, xyz[a:b], rtype[a:b], num_relation, feature[rows]
        )

    _thread_map(fill, range(len(chunks)))
    graph = ResidueGraph(
        num_nodes=n,
        batch_size=batch_size,
        node_position=pos,
        residue_type=residue_type,
        node2graph=node2graph,
        edge_list=torch.from_numpy(edge_list).to(device),
        edge_feature=torch.from_numpy(feature).to(device),
        num_relation=num_relation,
    )
    # all edges join kept nodes: subgraph numbers those 0 .. n' - 1, in order
    return graph if node_mask is None else subgraph(graph, node_mask)[0]


def _balanced_chunks(bounds: np.ndarray, parts: int) -> list[tuple[int, int]]:
    """At most ``parts`` runs ``[first, last)`` of whole consecutive graphs (indices into ``bounds``, the
    ``(B + 1,)`` graph bounds), about equal in node count (a run of empty graphs gives no edges)."""
    n, batch_size = int(bounds[-1]), len(bounds) - 1
    if parts <= 1 or batch_size <= 1:
        return [(0, batch_size)]
    wanted = n * np.arange(1, parts) / parts
    inner = bounds[1:-1]  # first node of every graph but the first
    nearest = np.abs(inner[None, :] - wanted[:, None]).argmin(axis=1) + 1
    cuts = [0, *sorted({int(i) for i in nearest}), batch_size]
    return list(zip(cuts[:-1], cuts[1:], strict=True))


_POOL: tuple[int, int, ThreadPoolExecutor] | None = None


def _thread_map(fn, items) -> list:
    """``[fn(item) for item in items]``, run on a thread pool when there is more than one item (the
    compiled kernels release the GIL). The pool is recreated after a fork (DataLoader workers)."""
    global _POOL
    items = list(items)
    if len(items) <= 1:
        return [fn(item) for item in items]
    if _POOL is None or _POOL[0] != os.getpid() or _POOL[1] < len(items):
        _POOL = (os.getpid(), len(items), ThreadPoolExecutor(len(items), thread_name_prefix="geoplm-graph"))
    return list(_POOL[2].map(fn, items))


def _gearnet_edges(
    xyz: np.ndarray,
    bounds: np.ndarray,
    chain_id: np.ndarray | None,
    keep: np.ndarray,
    *,
    sequential_max_distance: int,
    radius: float,
    knn_k: int,
    min_distance: int,
    spatial_max_num_neighbors: int | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(node_in, node_out, relation)`` of the GearNet graph of a packed batch with graph ``bounds``
    (``(B + 1,)``, from 0 to ``len(xyz)``; see :func:`build_gearnet_graph`), sorted by
    ``(graph, relation, node_out, node_in)``; only the edges between two nodes of ``keep`` ``(n,)`` bool, whose
    neighbours alone are searched (among all nodes)."""
    chain = np.zeros(len(xyz), np.int64) if chain_id is None else np.ascontiguousarray(chain_id, dtype=np.int64)
    lists = _radius_search(xyz, bounds, radius, knn_k + 1, keep)
    limit = _cap_limit(spatial_max_num_neighbors, loop=False)
    return graph_kernels.gearnet_edges(
        bounds,
        chain,
        sequential_max_distance,
        *lists[:3],
        -1 if limit is None else limit,
        *lists[3:],
        min_distance,
        xyz.dtype.type(_EPS * _EPS),
        keep,
    )


#: Enumerate :func:`spatial_line_graph`'s edge pairs with the compiled kernel on CPU (the tests switch it off to
#: compare with the torch construction used on other devices).
COMPILED_LINE_GRAPH = True


def _line_graph_edges(
    node_in: Tensor, node_out: Tensor, pos: Tensor, n: int, num_angle_bin: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The edges ``(edge_a, edge_b, angle bin)`` of the spatial line graph of the directed edges ``node_in ->
    node_out`` (``(E,)`` long each) over nodes at ``pos`` ``(n, 3)`` (Å); see :func:`spatial_line_graph`."""
    device = node_in.device
    if COMPILED_LINE_GRAPH and device.type == "cpu":
        pairs = graph_kernels.line_graph_pairs(node_in.contiguous().numpy(), node_out.contiguous().numpy(), n)
        edge_a, edge_b, node_i, node_j, node_k = (torch.from_numpy(array) for array in pairs)
    else:
        incoming = torch.sort(node_out, stable=True).indices  # edges grouped by their target j
        outgoing = torch.sort(node_in, stable=True).indices  # edges grouped by their source j
        deg_incoming = torch.bincount(node_out, minlength=n)
        deg_outgoing = torch.bincount(node_in, minlength=n)
        size = deg_incoming * deg_outgoing
        total = int(size.sum())
        centre = torch.repeat_interleave(torch.arange(n, device=device), size)
        local = torch.arange(total, device=device) - (torch.cumsum(size, 0) - size)[centre]
        inner = deg_outgoing[centre]
        start_incoming = (torch.cumsum(deg_incoming, 0) - deg_incoming)[centre]
        start_outgoing = (torch.cumsum(deg_outgoing, 0) - deg_outgoing)[centre]
        edge_a = incoming[start_incoming + torch.div(local, inner, rounding_mode="floor")]
        edge_b = outgoing[start_outgoing + local % inner]
        node_i = node_out[edge_b]
        node_j = node_in[edge_b]
        node_k = node_in[edge_a]

    # index_select: the gathers of advanced indexing, at a fraction of its cost on CPU
    pos_j = pos.index_select(0, node_j)
    v1 = pos.index_select(0, node_i) - pos_j
    v2 = pos.index_select(0, node_k) - pos_j
    angle = torch.atan2(torch.linalg.cross(v1, v2).norm(dim=-1), (v1 * v2).sum(dim=-1))
    relation = (angle / math.pi * num_angle_bin).long().clamp(max=num_angle_bin - 1)
    return edge_a, edge_b, relation


def spatial_line_graph(graph: ResidueGraph, num_angle_bin: int = 8) -> LineGraph:
    """GearNet-Edge's spatial line graph (torchdrug ``SpatialLineGraph`` + ``PackedGraph.line_graph``).

    Every edge of ``graph`` becomes a node. For every node ``j`` and every pair of an incoming edge
    ``a = (k -> j)`` and an outgoing edge ``b = (j -> i)`` there is a line-graph edge ``a -> b``; as in
    torchdrug no pair is excluded: ``a == b`` for the sequential self-loops ``(j -> j)`` and the
    back-and-forth pairs ``(i -> j), (j -> i)`` are included. The relation is the angle ``∠ i j k``
    between ``x_i - x_j`` and ``x_k - x_j`` (``atan2(|v1 x v2|, v1 . v2)`` in ``[0, π]``) discretised
    into ``num_angle_bin`` equal bins, ``min(floor(angle / π * num_angle_bin), num_angle_bin - 1)``;
    zero-length vectors (self-loops) give angle 0, bin 0.

    Line-graph edges are ordered by (j, a, b), with ``a`` and ``b`` ascending edge indices. The node
    feature of the line graph is ``graph.edge_feature``. Memory is ``O(sum_j indeg(j) * outdeg(j))``.
    On CPU the pairs come from a compiled kernel (:func:`geoplm.graph_kernels.line_graph_pairs`; the
    angles are computed by the same torch operations on every device).
    """
    node_in, node_out = graph.edge_list[:, 0], graph.edge_list[:, 1]
    num_edges = node_in.shape[0]
    edge_a, edge_b, relation = _line_graph_edges(node_in, node_out, graph.node_position, graph.num_nodes, num_angle_bin)

    return LineGraph(
        num_nodes=num_edges,
        batch_size=graph.batch_size,
        node2graph=graph.node2graph[node_out] if num_edges else node_out.new_zeros(0),
        edge_list=torch.stack([edge_a, edge_b, relation], dim=1),
        node_feature=graph.edge_feature,
        num_relation=num_angle_bin,
    )


@dataclass
class PairedLineGraph:
    """:func:`spatial_line_graph` with the parallel edges of ``graph`` merged (:func:`paired_line_graph`).

    ``pair_of_edge`` ``(E,)`` long: the pair (``0 .. num_pairs - 1``) of every edge of the residue graph (its
    directed node pair ``(node_in, node_out)``; edges of different relations between the same two nodes share
    one); ``edge_list`` ``(E'', 3)`` long ``[pair_in, pair_out, angle_bin]``: the spatial line graph of the
    pairs; ``pair_node`` ``(P, 2)`` long: each pair's residue-graph nodes ``[node_in, node_out]`` (of
    ``num_nodes``). Every pair ``(k -> j)`` into a node ``j`` and every pair ``(j -> i)`` out of it are joined by
    exactly one edge of ``edge_list``, in one angle bin."""

    num_pairs: int
    pair_of_edge: Tensor  # (E,) long
    edge_list: Tensor  # (E'', 3) long: [pair_in, pair_out, angle_bin]
    num_relation: int
    pair_node: Tensor  # (P, 2) long: [node_in, node_out]
    num_nodes: int

    @property
    def num_edges(self) -> int:
        return int(self.edge_list.shape[0])

    def to(self, device) -> PairedLineGraph:
        return _to_device(self, device)


def paired_line_graph(graph: ResidueGraph, num_angle_bin: int = 8) -> PairedLineGraph:
    """The spatial line graph of ``graph``'s distinct directed node pairs.

    A line-graph edge ``a = (k -> j, r_a) -> b = (j -> i, r_b)`` of :func:`spatial_line_graph` has the angle bin
    of ``∠ i j k``, which depends on the three nodes only, not on the relations ``r_a``, ``r_b``. So with ``G``
    the ``(E, P)`` 0/1 matrix of edges to their pairs and ``A'_r`` the adjacency of this graph (pair ``(k, j)``
    -> pair ``(j, i)`` in bin ``r``, one edge per such two pairs), the line graph's adjacency is
    ``A_r = G A'_r G^T``: ``A_r @ h = G (A'_r (G^T h))``, the per-relation sums of GearNet-Edge's edge layers
    computed over pairs (a residue pair joined by a spatial and a kNN edge is multiplied once). Same sums as
    :func:`spatial_line_graph`'s up to float summation order; fewer rows wherever the residue graph has parallel
    edges (on AlphaFold DB models 15-18% of the edges).

    Pairs are numbered by ascending ``node_in * N + node_out``; the line-graph edges over them are ordered as in
    :func:`spatial_line_graph`.
    """
    node_in, node_out = graph.edge_list[:, 0], graph.edge_list[:, 1]
    n = max(graph.num_nodes, 1)
    pairs, pair_of_edge = torch.unique(node_in * n + node_out, sorted=True, return_inverse=True)
    pair_in = torch.div(pairs, n, rounding_mode="floor")
    pair_out = pairs - pair_in * n
    edge_a, edge_b, relation = _line_graph_edges(pair_in, pair_out, graph.node_position, graph.num_nodes, num_angle_bin)
    return PairedLineGraph(
        num_pairs=int(pairs.shape[0]),
        pair_of_edge=pair_of_edge,
        edge_list=torch.stack([edge_a, edge_b, relation], dim=1),
        num_relation=num_angle_bin,
        pair_node=torch.stack([pair_in, pair_out], dim=1),
        num_nodes=graph.num_nodes,
    )


def record_graph_inputs(record: dict) -> tuple[Tensor, Tensor]:
    """Cα positions ``(n, 3)`` (Å) and residue types ``(n,)`` of a record's residues that have a Cα.

    Residues without a Cα are not nodes (torchdrug ``AlphaCarbonNode``); every graph, cached or
    built on the fly, is over exactly these residues, in sequence order.
    """
    from geoplm.structure import residue_type_index

    ca = record["backbone"][:, 1]
    keep = ~torch.isnan(ca).any(dim=-1)
    return ca[keep].float(), residue_type_index(record["sequence"])[keep]


def record_chain_index(record: Mapping) -> Tensor | None:
    """The chain of every node of a record, ``(n,)`` long (the nodes of :func:`record_graph_inputs`, in the same
    order), for GearNet's sequential relation (``build_gearnet_graph(chain_id=...)``), or None for one chain.

    A record merged from several chains (:func:`geoplm.structure.concatenate_chains`, called by the docking,
    PDBbind, ATOM3D LBA and CASP readers) carries ``chain_index`` (L,), the position of each residue's chain
    among the merged ones; residues without a Cα are dropped as in :func:`record_graph_inputs`. A record
    without ``chain_index``, or whose nodes all lie in one chain, gives None: its graph is the same without
    chain ids, and building it stays on the single-chain path.

    Raises:
        ValueError: ``chain_index`` does not have one entry per residue.
    """
    chain = record.get("chain_index")
    if chain is None:
        return None
    keep = ~torch.isnan(record["backbone"][:, 1]).any(dim=-1)
    chain = torch.as_tensor(chain)
    if chain.shape != keep.shape:
        raise ValueError(f"{record.get('id', '?')}: chain_index has shape {tuple(chain.shape)}, not ({len(keep)},)")
    chain = chain[keep].long()
    if len(chain) == 0 or bool((chain == chain[0]).all()):
        return None
    return chain


def record_residue_numbers(record: dict) -> Tensor:
    """Author residue numbers ``(n,)`` long of a record's residues that have a Cα (the nodes of
    :func:`record_graph_inputs`, in the same order), for ``pack_graphs(residue_numbers=...)``."""
    keep = ~torch.isnan(record["backbone"][:, 1]).any(dim=-1)
    return record["residue_number"][keep].long()


def build_record_graphs(records: list[dict], **settings) -> dict[str, dict]:
    """GearNet graphs of every record, stored compactly for the ``build_graphs`` rule.

    Args:
        records: residue records (:mod:`geoplm.structure`); a record merged from several chains
            (``chain_index``, :func:`record_chain_index`) gets no sequential edge between its chains.
        **settings: keyword arguments of :func:`build_gearnet_graph` (edge features are not
            stored: they are recomputed from positions when graphs are packed).

    Returns:
        record id -> ``{"num_nodes": n, "edge_list": (E, 3) int32 [node_in, node_out, relation]}``.
    """
    graphs = {}
    for record in records:
        position, residue_type = record_graph_inputs(record)
        if len(position) == 0:
            continue
        chain_id = record_chain_index(record)
        graph = build_gearnet_graph(position, residue_type, edge_feature=None, chain_id=chain_id, **settings)
        graphs[record["id"]] = {"num_nodes": graph.num_nodes, "edge_list": graph.edge_list.to(torch.int32)}
    return graphs


def pack_graphs(
    positions: list[Tensor],
    residue_types: list[Tensor],
    edge_lists: list[Tensor],
    num_relation: int,
    edge_feature: str | None = "gearnet",
    residue_numbers: list[Tensor] | None = None,
) -> ResidueGraph:
    """Pack per-protein graphs into one :class:`ResidueGraph`, as if built on the packed batch.

    Per-protein edge lists are sorted by ``(relation, node_out, node_in)``, so concatenating them
    with node offsets gives exactly the edge order :func:`build_gearnet_graph` produces on the
    batch (graph first). Edge features are computed here, from the packed positions.

    Args:
        positions: per protein ``(n_i, 3)`` Cα coordinates in Å.
        residue_types: per protein ``(n_i,)`` residue types.
        edge_lists: per protein ``(E_i, 3)`` local ``[node_in, node_out, relation]``.
        num_relation: number of relations of the graphs (7 for GearNet).
        residue_numbers: optional per protein ``(n_i,)`` author residue numbers of the nodes
            (:func:`record_residue_numbers`), stored as ``residue_number`` (read by CDConv).

    Raises:
        ValueError: an edge refers to a node outside its protein, or a ``residue_numbers`` entry does not
            have one number per node.
    """
    sizes = [len(p) for p in positions]
    offsets = torch.tensor([0] + sizes[:-1]).cumsum(0)
    packed_edges = []
    for i, (edges, size, offset) in enumerate(zip(edge_lists, sizes, offsets.tolist(), strict=True)):
        edges = edges.long()
        if len(edges) and int(edges[:, :2].max()) >= size:
            raise ValueError(f"graph {i}: edge to node {int(edges[:, :2].max())} of a {size}-node protein")
        packed_edges.append(edges + torch.tensor([offset, offset, 0]))
    residue_number = None
    if residue_numbers is not None:
        if len(residue_numbers) != len(sizes) or any(
            n.shape != (size,) for n, size in zip(residue_numbers, sizes, strict=True)
        ):
            raise ValueError(f"residue_numbers: one (n_i,) tensor per protein expected, node counts {sizes}")
        residue_number = torch.cat([n.long() for n in residue_numbers])
    pos = torch.cat(positions).float()
    residue_type = torch.cat(residue_types).long()
    edge_list = torch.cat(packed_edges) if packed_edges else torch.zeros(0, 3, dtype=torch.long)
    node2graph = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return ResidueGraph(
        num_nodes=int(pos.shape[0]),
        batch_size=len(sizes),
        node_position=pos,
        residue_type=residue_type,
        node2graph=node2graph,
        edge_list=edge_list,
        edge_feature=_edge_feature(edge_feature, edge_list, pos, residue_type, num_relation),
        num_relation=num_relation,
        residue_number=residue_number,
    )


# --- readout -----------------------------------------------------------------------------------------------


def readout(node_feature: Tensor, node2graph: Tensor, batch_size: int, kind: str = "sum") -> Tensor:
    """Per-protein readout of node features: the sum (torchdrug ``layers.SumReadout``, ``scatter_add``) or the
    mean (``layers.MeanReadout``, ``scatter_mean``: a protein without nodes reads 0) over each protein's nodes,
    or ``"padded_mean"``: the sum divided by the largest protein's node count in the batch, the mean over the
    padded ``(B, L_max)`` positions that Wu et al.'s Molformer head takes (GGNN_Meets_PLM
    ``molformer/tr_spe.py`` ``Generator3D``: ``mean(x * mask, dim=1)``).

    Args:
        node_feature: ``(N, D)``.
        node2graph: ``(N,)`` long protein index of every node.
        batch_size: B, the number of proteins.
        kind: ``"sum"``, ``"mean"`` or ``"padded_mean"``.

    Returns:
        ``(B, D)``.

    Raises:
        ValueError: an unknown ``kind``.
    """
    if kind not in ("sum", "mean", "padded_mean"):
        raise ValueError(f"readout must be 'sum', 'mean' or 'padded_mean', got {kind!r}")
    out = node_feature.new_zeros(int(batch_size), node_feature.shape[-1]).index_add(0, node2graph, node_feature)
    if kind == "mean":
        count = torch.bincount(node2graph, minlength=int(batch_size)).clamp(min=1)
        out = out / count.unsqueeze(-1).to(out.dtype)
    elif kind == "padded_mean":
        out = out / torch.bincount(node2graph, minlength=int(batch_size)).max().clamp(min=1).to(out.dtype)
    return out


# --- graph kinds: the registry every batch is built through -------------------------------------


def build_ca_graph(
    node_position: Tensor,
    residue_type: Tensor,
    node2graph: Tensor,
    *,
    kind: str = "radius",
    radius: float = 8.0,
    k: int = 10,
    max_num_neighbors: int | None = None,
) -> ResidueGraph:
    """Wu et al.'s one-relation residue graph on Cα: r-ball (``kind="radius"``, ``radius`` Å, 8 by default)
    or kNN (``kind="knn"``, ``k``, 10 by default), as GGNN_Meets_PLM (smiles724, ``gvp/atom3d.py``) builds it
    with torch_cluster's ``radius_graph`` / ``knn_graph``.

    Args:
        node_position: ``(N, 3)`` Cα coordinates in Å, proteins packed one after another.
        residue_type: ``(N,)`` residue ids 0-20.
        node2graph: ``(N,)`` non-decreasing protein index.

    Returns:
        A :class:`ResidueGraph` with ``num_relation = 1`` and no edge features (``(E, 0)``).

    Raises:
        ValueError: ``kind`` is neither ``radius`` nor ``knn``.
    """
    if kind == "knn":
        edge_index = knn_graph(node_position, int(k), node2graph)
    elif kind == "radius":
        edge_index = radius_graph(node_position, float(radius), node2graph, max_num_neighbors=max_num_neighbors)
    else:
        raise ValueError(f"Cα graph kind must be 'radius' or 'knn', got {kind!r}")
    return _one_relation_graph(node_position, residue_type, node2graph, edge_index)


def _one_relation_graph(node_position: Tensor, residue_type: Tensor, node2graph: Tensor, edge_index: Tensor):
    """A :class:`ResidueGraph` of ``(2, E)`` edges of one relation, without edge features."""
    zeros = torch.zeros(edge_index.shape[1], 1, dtype=torch.long, device=edge_index.device)
    edge_list = torch.cat([edge_index.t().long(), zeros], dim=1)
    return ResidueGraph(
        num_nodes=int(node_position.shape[0]),
        batch_size=int(node2graph.max()) + 1 if len(node2graph) else 0,
        node_position=node_position,
        residue_type=residue_type,
        node2graph=node2graph,
        edge_list=edge_list,
        edge_feature=torch.zeros(edge_list.shape[0], 0, device=node_position.device),
        num_relation=1,
    )


def build_node_graph(node_position: Tensor, residue_type: Tensor, node2graph: Tensor) -> ResidueGraph:
    """The nodes of a packed batch without edges (``kind: none``), for encoders that build their own
    neighbourhoods (CDConv) and need no residue graph.

    Returns:
        A :class:`ResidueGraph` with ``(0, 3)`` edges, ``(0, 0)`` edge features and one relation.
    """
    no_edges = torch.zeros(2, 0, dtype=torch.long, device=node_position.device)
    return _one_relation_graph(node_position, residue_type, node2graph, no_edges)


#: The graph registry: a ``graphs`` entry's ``kind`` -> (builder on a packed batch, default settings). The
#: builder is called as ``builder(node_position (N, 3), residue_type (N,), node2graph (N,), **settings)``.
#: ``gearnet``'s graphs can also be cached per record (``build_graphs`` rule) and packed
#: (:func:`pack_graphs`); the Cα graphs are cheap and built per batch.
GRAPH_KINDS: dict[str, tuple] = {
    "gearnet": (
        build_gearnet_graph,
        {
            "sequential_max_distance": 2,
            "radius": 10.0,
            "knn_k": 10,
            "min_distance": 5,
            "spatial_max_num_neighbors": 32,
        },
    ),
    "radius": (partial(build_ca_graph, kind="radius"), {"radius": 8.0, "max_num_neighbors": None}),
    "knn": (partial(build_ca_graph, kind="knn"), {"k": 10}),
    "none": (build_node_graph, {}),
}


def _as_mask(index: Tensor, size: int) -> Tensor:
    """A ``(size,)`` bool mask from a bool mask (returned as is) or long indices (duplicates allowed)."""
    if index.dtype == torch.bool:
        if index.shape != (size,):
            raise ValueError(f"mask of shape {tuple(index.shape)}, expected ({size},)")
        return index
    mask = torch.zeros(size, dtype=torch.bool, device=index.device)
    mask[index.long()] = True
    return mask


def subgraph(graph: ResidueGraph, node_mask: Tensor) -> tuple[ResidueGraph, Tensor]:
    """The subgraph induced by some nodes: the kept nodes (in their order) and the edges whose two ends are both
    kept, with their edge features unchanged (torchdrug ``PackedGraph.node_mask(index, compact=True)`` /
    ``Protein.subresidue``, as ``SubsequenceNode`` and ``SubspaceNode`` crop).

    Args:
        graph: a packed batch, ``N`` nodes, ``E`` edges.
        node_mask: ``(N,)`` bool (True = kept), or long node indices.

    Returns:
        ``(subgraph, kept)``: the subgraph (same ``batch_size``, ``node2graph`` of the kept nodes, edges renumbered;
        a graph left without nodes keeps its slot; where every edge stays, its ``edge_feature`` is ``graph``'s own
        tensor, not a copy) and ``kept``, the ``(N',)`` long indices of the kept nodes in
        ``graph`` (to select their node input rows).

    Raises:
        ValueError: a mask of the wrong shape.
    """
    mask = _as_mask(node_mask.to(graph.node_position.device), graph.num_nodes)
    kept = torch.nonzero(mask).flatten()
    mapping = torch.full((graph.num_nodes,), -1, dtype=torch.long, device=kept.device)
    mapping[kept] = torch.arange(len(kept), device=kept.device)
    # index_select throughout: the gathers of advanced indexing, at a fraction of its cost on CPU
    ends = mapping.index_select(0, graph.edge_list[:, :2].reshape(-1)).view(-1, 2)
    keep_edge = (ends >= 0).all(dim=-1)
    edge_list, edge_feature = torch.cat([ends, graph.edge_list[:, 2:]], dim=-1), graph.edge_feature
    if not bool(keep_edge.all()):  # (a graph built for the kept nodes alone has no other edges)
        kept_edges = torch.nonzero(keep_edge).flatten()
        edge_list, edge_feature = edge_list.index_select(0, kept_edges), edge_feature.index_select(0, kept_edges)
    return (
        replace(
            graph,
            num_nodes=int(len(kept)),
            node_position=graph.node_position.index_select(0, kept),
            residue_type=graph.residue_type.index_select(0, kept),
            node2graph=graph.node2graph.index_select(0, kept),
            edge_list=edge_list,
            edge_feature=edge_feature,
            residue_number=None if graph.residue_number is None else graph.residue_number.index_select(0, kept),
        ),
        kept,
    )


def remove_edges(graph: ResidueGraph, edges: Tensor) -> ResidueGraph:
    """The graph without some edges; nodes untouched (torchdrug ``PackedGraph.edge_mask`` with the complement).

    Args:
        graph: a packed batch of ``E`` edges.
        edges: ``(E,)`` bool (True = removed) or long indices of removed edges (duplicates allowed, as the
            with-replacement samples of ``RandomEdgeMask`` and the prediction tasks).

    Returns:
        The graph with the remaining edges in their order, with their features.

    Raises:
        ValueError: a mask of the wrong shape.
    """
    keep = torch.nonzero(~_as_mask(edges.to(graph.edge_list.device), graph.num_edges)).flatten()
    return replace(
        graph, edge_list=graph.edge_list.index_select(0, keep), edge_feature=graph.edge_feature.index_select(0, keep)
    )


def cat_graphs(graphs: Sequence[ResidueGraph]) -> ResidueGraph:
    """Packed batches one after another as one batch: the nodes, graphs and edges of each after those of the
    previous (``node2graph`` shifted by the earlier batch sizes, ``edge_list`` by their node counts), as if every
    protein had been packed once (multiview contrast encodes its two views in one pass, :meth:`GearNet.forward
    <geoplm.models.gearnet.GearNet.forward>`'s ``norm_groups``).

    Raises:
        ValueError: no graph, or graphs of different relations or edge-feature widths.
    """
    if not graphs:
        raise ValueError("cat_graphs needs at least one graph")
    first = graphs[0]
    if any(g.num_relation != first.num_relation for g in graphs):
        raise ValueError(f"graphs of different relations: {[g.num_relation for g in graphs]}")
    if any(g.edge_feature.shape[1:] != first.edge_feature.shape[1:] for g in graphs):
        raise ValueError(f"edge features of different widths: {[tuple(g.edge_feature.shape) for g in graphs]}")
    node_offset = np.cumsum([0] + [g.num_nodes for g in graphs])
    graph_offset = np.cumsum([0] + [g.batch_size for g in graphs])
    edge_list = [
        g.edge_list + torch.tensor([int(o), int(o), 0], device=g.edge_list.device)
        for g, o in zip(graphs, node_offset, strict=False)
    ]
    numbers = [g.residue_number for g in graphs]
    return ResidueGraph(
        num_nodes=int(node_offset[-1]),
        batch_size=int(graph_offset[-1]),
        node_position=torch.cat([g.node_position for g in graphs]),
        residue_type=torch.cat([g.residue_type for g in graphs]),
        node2graph=torch.cat([g.node2graph + int(o) for g, o in zip(graphs, graph_offset, strict=False)]),
        edge_list=torch.cat(edge_list),
        edge_feature=torch.cat([g.edge_feature for g in graphs]),
        num_relation=first.num_relation,
        residue_number=None if any(n is None for n in numbers) else torch.cat(numbers),
    )


def graph_kind(settings: dict | None) -> tuple[str, dict]:
    """Split a graph's settings (:func:`geoplm.config.graph_settings`) into its kind (``gearnet`` when absent)
    and the builder's keyword arguments.

    Raises:
        ValueError: a kind not in :data:`GRAPH_KINDS`.
    """
    settings = dict(settings or {})
    kind = settings.pop("kind", "gearnet")
    if kind not in GRAPH_KINDS:
        raise ValueError(f"unknown graph kind {kind!r} (known: {', '.join(GRAPH_KINDS)})")
    return kind, settings


#: The kinds whose builder takes ``chain_id`` (a sequential relation that stops at chain breaks). The Cα graphs
#: of Wu et al. (torch_cluster ``radius_graph`` / ``knn_graph``) do not look at chains.
CHAIN_KINDS = frozenset({"gearnet"})

#: The kinds whose builder takes ``node_mask`` (builds the subgraph induced by some nodes without the rest); the
#: others are built whole and cropped (:func:`subgraph`).
MASK_KINDS = frozenset({"gearnet"})


def build_batch_graph(
    node_position: Tensor,
    residue_type: Tensor,
    node2graph: Tensor,
    settings: dict | None = None,
    chain_id: Tensor | None = None,
    node_mask: Tensor | None = None,
) -> ResidueGraph:
    """The graph of ``settings`` (kind looked up in :data:`GRAPH_KINDS`) built on a packed batch.

    Args:
        node_position: ``(N, 3)`` Cα coordinates in Å, proteins packed one after another.
        residue_type: ``(N,)`` residue ids 0-20.
        node2graph: ``(N,)`` non-decreasing protein index.
        settings: the graph's settings (:func:`graph_kind`).
        chain_id: optional ``(N,)`` integer chain of every node: GearNet's sequential edges do not join nodes of
            different chains (torchdrug ``SequentialEdge``); ignored by kinds without a sequential relation
            (not in :data:`CHAIN_KINDS`). ``None``: each protein is one chain.
        node_mask: optional ``(N,)`` bool: only the subgraph induced by these nodes, ``subgraph(graph,
            node_mask)[0]`` of the whole graph; kinds in :data:`MASK_KINDS` build it without the rest.

    Raises:
        ValueError: as the kind's builder; a ``node_mask`` of the wrong shape.
    """
    kind, options = graph_kind(settings)
    if chain_id is not None and kind in CHAIN_KINDS:
        options["chain_id"] = chain_id
    if node_mask is not None and kind in MASK_KINDS:
        return GRAPH_KINDS[kind][0](node_position, residue_type, node2graph, node_mask=node_mask, **options)
    graph = GRAPH_KINDS[kind][0](node_position, residue_type, node2graph, **options)
    return graph if node_mask is None else subgraph(graph, node_mask)[0]
