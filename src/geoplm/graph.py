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

Nothing is copied from those projects; the functions below re-implement the behaviour with plain
torch and a scipy ``cKDTree`` (candidate generation on CPU, proteins of a batch separated along a 4th
coordinate), with exact re-ranking / filtering in torch; memory is ``O(E)`` (a bounded dense block
is only formed for the rare kNN rows whose candidate list might miss a near-tie). A 2,700-residue
protein takes a few tens of milliseconds.

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
  residues, residues dropped for lacking a Cα) does *not* cut sequential edges. Edges that cross
  chains are removed only when a ``chain_id`` is given (torchdrug compares ``graph.chain_id``).
* ``5`` spatial (radius): ``j -> i`` for ``|x_i - x_j| < radius`` (strict), ``|i - j| >= min_distance``,
  directed, each unordered pair appearing in both directions (unless the neighbour cap below cuts
  one direction).
* ``6`` kNN: ``j -> i`` for the ``k`` nearest neighbours ``j`` of every centre ``i`` (excluding ``i``),
  *then* filtered by ``|i - j| >= min_distance``; so a residue keeps at most ``k`` (typically far
  fewer, since its sequence neighbours are usually among its nearest) kNN in-edges. kNN edges are
  directed and not symmetrised.
* The ``min_distance`` filter uses the node-index difference regardless of chains: in a complex the
  last residues of one chain and the first of the next (index difference < 5) get no spatial / kNN
  edge, as in torchdrug.
* Spatial and kNN edges with a (near-)zero length (< 1e-10 Å, duplicated coordinates) are dropped.
* Edges are not deduplicated across relations: a pair can be both a spatial and a kNN edge (two
  edges, relations 5 and 6), and both are kept, as in torchdrug.

The radius-graph neighbour cap (torchdrug / torch_cluster subtlety)
-------------------------------------------------------------------
``SpatialEdge`` calls ``torch_cluster.radius_graph(..., max_num_neighbors=32)`` (its default) and
torch_cluster <= 1.6.3 implements ``loop=False`` by asking ``radius`` for ``max_num_neighbors + 1``
neighbours *including the centre itself* and then dropping the self pair. On the GPU (where GearNet
was trained) ``radius`` scans candidates in ascending node index and keeps the first ones with
``d^2 < r^2``. So for each centre ``i`` only the lowest-indexed 33 residues within ``radius`` (self
included, self then removed: 32 edges, or 33 if ``i`` itself is not among them) survive, and only
*afterwards* are the ``|i - j| < 5`` pairs removed. With real Cα coordinates and ``r = 10 Å`` the cap
practically never binds (at most 31 Cα within 10 Å of a Cα in the AlphaFold models of the tests), but
it does for denser inputs. ``build_gearnet_graph`` reproduces it by default
(``spatial_max_num_neighbors=32``); pass ``None`` for the uncapped set of all pairs within
``radius`` (the definition written in the paper). torch_cluster's CPU kernel keeps the first 33
matches in nanoflann's (unsorted, tree-dependent) order instead, which is not reproducible here.

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
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor

__all__ = [
    "NUM_RESIDUE_TYPE",
    "NUM_RESIDUE_FEATURE",
    "MAX_SEQ_DIST",
    "ResidueGraph",
    "LineGraph",
    "build_gearnet_graph",
    "gearnet_edge_feature_dim",
    "knn_graph",
    "radius_graph",
    "residue_one_hot",
    "spatial_line_graph",
]

#: ``len(torchdrug.data.Protein.residue2id)``; residue ids follow torchdrug's order
#: G A S P V T C I L N D Q K E M H F R Y W (0-19).
NUM_RESIDUE_TYPE = 20
#: Width of GearNet's node input feature (residue one-hot with an "unknown" slot, id 20).
NUM_RESIDUE_FEATURE = 21
#: ``GraphConstruction.max_seq_dist`` in torchdrug.
MAX_SEQ_DIST = 10
#: Spatial / kNN edges shorter than this are dropped (``SpatialEdge.eps``, ``KNNEdge.eps``).
_EPS = 1e-10
#: Number of pairwise-distance entries formed at once (per block of rows) in the dense fallback.
_BLOCK_ELEMENTS = 1 << 22
#: Extra kNN candidates requested from the KD-tree beyond k + 1.
_KNN_SPARE = 6
#: Offset (Å) along a 4th KD-tree coordinate between consecutive proteins of a batch.
_GRAPH_SEPARATION = 1e6


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
# batching helpers


def _layout(num_nodes: int, node2graph: Tensor | None, device) -> tuple[Tensor, int, Tensor, Tensor]:
    """Return (node2graph, batch_size, graph start offsets, graph sizes)."""
    if node2graph is None:
        node2graph = torch.zeros(num_nodes, dtype=torch.long, device=device)
        batch_size = 1 if num_nodes > 0 else 0
    else:
        node2graph = node2graph.to(device=device, dtype=torch.long)
        if node2graph.shape != (num_nodes,):
            raise ValueError(f"node2graph must have shape ({num_nodes},), got {tuple(node2graph.shape)}")
        if num_nodes > 0:
            if (node2graph[1:] < node2graph[:-1]).any() or node2graph[0] < 0:
                raise ValueError("node2graph must be non-negative and non-decreasing (packed proteins)")
            batch_size = int(node2graph[-1]) + 1
        else:
            batch_size = 0
    sizes = torch.bincount(node2graph, minlength=batch_size)
    starts = torch.cumsum(sizes, 0) - sizes
    return node2graph, batch_size, starts, sizes


def _squared_distance(pos: Tensor, source: Tensor, target: Tensor) -> Tensor:
    """``dx*dx + dy*dy + dz*dz`` in ``pos.dtype``, summed left to right like torch_cluster's kernels."""
    diff = pos[source] - pos[target]
    return diff[..., 0] * diff[..., 0] + diff[..., 1] * diff[..., 1] + diff[..., 2] * diff[..., 2]


def _kdtree_points(pos: Tensor, node2graph: Tensor) -> np.ndarray:
    """Points (x, y, z, graph * separation) in float64: proteins of a batch never come within reach."""
    xyz = pos.detach().to("cpu", torch.float64).numpy()
    graph = node2graph.detach().cpu().numpy().astype(np.float64) * _GRAPH_SEPARATION
    return np.concatenate([xyz, graph[:, None]], axis=1)


def _sort_edges(edge_index: Tensor, num_nodes: int) -> Tensor:
    """Sort a (2, E) [source, target] index by (target, source)."""
    key = edge_index[1] * max(num_nodes, 1) + edge_index[0]
    return edge_index[:, torch.argsort(key)]


def _dense_rows(
    pos: Tensor, rows: Tensor, node2graph: Tensor, starts: Tensor, sizes: Tensor
) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Yield ``(rows, cols, valid, d2)`` blocks pairing ``rows`` with every node of their graph.

    ``cols`` (m, w) lists the nodes of each row's graph in ascending index (padded, ``valid`` marks
    real entries) and ``d2`` the squared distances (``+inf`` on padding); at most ``_BLOCK_ELEMENTS``
    entries per block.
    """
    graph_size = sizes[node2graph[rows]]
    i = 0
    while i < rows.shape[0]:
        w = int(graph_size[i])
        end = min(rows.shape[0], i + max(1, _BLOCK_ELEMENTS // max(w, 1)))
        w = int(graph_size[i:end].max())
        end = min(end, i + max(1, _BLOCK_ELEMENTS // max(w, 1)))
        w = int(graph_size[i:end].max())
        block = rows[i:end]
        g = node2graph[block]
        ar = torch.arange(w, device=pos.device)
        valid = ar.unsqueeze(0) < sizes[g].unsqueeze(1)
        cols = torch.where(valid, starts[g].unsqueeze(1) + ar.unsqueeze(0), block.unsqueeze(1))
        d2 = _squared_distance(pos, cols, block.unsqueeze(1)).masked_fill(~valid, math.inf)
        yield block, cols, valid, d2
        i = end


def _select_k_smallest(d2: Tensor, cols: Tensor, valid: Tensor, k: int) -> Tensor:
    """Mask of the ``k`` smallest valid entries per row ranked by (d2, column index).

    ``cols`` must be ascending along each row (so a running count of ties prefers lower indices).
    """
    kb = min(k, d2.shape[1])
    if kb == 0:
        return torch.zeros_like(valid)
    threshold = torch.topk(d2, kb, dim=1, largest=False).values[:, -1:]
    below = (d2 < threshold) & valid
    tie = (d2 == threshold) & valid
    need = kb - below.sum(dim=1, keepdim=True)
    return below | (tie & (torch.cumsum(tie.long(), dim=1) <= need))


def knn_graph(
    node_position: Tensor,
    k: int,
    node2graph: Tensor | None = None,
    *,
    loop: bool = False,
) -> Tensor:
    """k-nearest-neighbour graph within each graph of a packed batch.

    Returns a ``(2, E)`` long tensor of **global** (packed) node indices ``[source, target]``: for every
    target (centre) ``i`` its nearest neighbours ``j`` in the same graph, i.e. the messages flow
    ``j -> i`` (torch_cluster's ``flow="source_to_target"``, torchdrug's ``node_in -> node_out``).
    Edges are sorted by (target, source). No self loops unless ``loop``; no cross-graph edges.

    Semantics of torch_cluster <= 1.6.3 ``knn_graph`` on CUDA: select the ``k + 1`` (``k`` if
    ``loop``) nearest nodes *including the centre*, ranked by squared distance (in the input dtype)
    with ties broken towards the lower node index, then drop the centre. Graphs with ``<= k`` nodes
    give every other node.

    Candidates come from a scipy ``cKDTree`` (on CPU) with a few spare neighbours; the ranking is then
    redone exactly in torch, and rows whose candidate list could be incomplete (near-ties at the
    cut-off) are recomputed densely against their whole graph, so the result is exact with
    ``O(N (k + spare))`` memory.
    """
    pos = node_position
    n = pos.shape[0]
    node2graph, _, starts, sizes = _layout(n, node2graph, pos.device)
    kk = k if loop else k + 1
    if kk <= 0 or n == 0:
        return torch.zeros(2, 0, dtype=torch.long, device=pos.device)
    num_query = min(kk + _KNN_SPARE, n)
    points = _kdtree_points(pos, node2graph)
    tree_dist, tree_idx = cKDTree(points).query(points, k=num_query)
    tree_dist = np.asarray(tree_dist, dtype=np.float64).reshape(n, num_query)
    cols = torch.as_tensor(np.asarray(tree_idx).reshape(n, num_query), dtype=torch.long, device=pos.device)
    rows = torch.arange(n, device=pos.device)
    valid = node2graph[cols] == node2graph.unsqueeze(1)
    cols = torch.where(valid, cols, rows.unsqueeze(1))
    cols, order = torch.sort(cols, dim=1)  # ascending index for the tie rule
    valid = torch.gather(valid, 1, order)
    d2 = _squared_distance(pos, cols, rows.unsqueeze(1)).masked_fill(~valid, math.inf)
    selected = _select_k_smallest(d2, cols, valid, kk)

    # a row is exact if its candidates cover its whole graph, or if the first excluded candidate is
    # clearly farther than the k-th selected one
    threshold = torch.where(selected, d2, torch.zeros_like(d2)).amax(dim=1).double().cpu().numpy()
    margin = np.sqrt(threshold) * (1 + 1e-5) + 1e-4
    complete = valid.sum(dim=1).cpu().numpy() >= sizes[node2graph].cpu().numpy()
    redo = np.nonzero(~complete & ~(tree_dist[:, -1] > margin))[0]

    if not loop:
        selected &= cols != rows.unsqueeze(1)
    out = [torch.stack([cols[selected], rows.unsqueeze(1).expand_as(cols)[selected]])]
    if redo.size:
        redo_rows = torch.as_tensor(redo, dtype=torch.long, device=pos.device)
        keep = torch.ones(n, dtype=torch.bool, device=pos.device)
        keep[redo_rows] = False
        out[0] = out[0][:, keep[out[0][1]]]
        for block, bcols, bvalid, bd2 in _dense_rows(pos, redo_rows, node2graph, starts, sizes):
            sel = _select_k_smallest(bd2, bcols, bvalid, kk)
            if not loop:
                sel &= bcols != block.unsqueeze(1)
            out.append(torch.stack([bcols[sel], block.unsqueeze(1).expand_as(bcols)[sel]]))
    return _sort_edges(torch.cat(out, dim=1), n)


def radius_graph(
    node_position: Tensor,
    r: float,
    node2graph: Tensor | None = None,
    *,
    loop: bool = False,
    max_num_neighbors: int | None = None,
) -> Tensor:
    """All pairs closer than ``r`` (strict ``d^2 < r^2`` in the input dtype) within each graph.

    Returns ``(2, E)`` global indices ``[source, target]`` sorted by (target, source); every unordered
    pair appears in both directions. No self loops unless ``loop``; no cross-graph edges.

    ``max_num_neighbors=None`` (default) keeps all pairs. An integer reproduces the cap of
    torch_cluster <= 1.6.3 ``radius_graph`` on CUDA: for each target the candidates within ``r`` are
    scanned in ascending node index, the first ``max_num_neighbors + 1`` (``max_num_neighbors`` if
    ``loop``) are kept *counting the target itself*, then the self pair is removed.

    Candidate pairs come from a scipy ``cKDTree`` with a slightly enlarged radius and are filtered
    exactly in torch; memory ``O(E)``.
    """
    pos = node_position
    n = pos.shape[0]
    node2graph, _, _, _ = _layout(n, node2graph, pos.device)
    if n == 0:
        return torch.zeros(2, 0, dtype=torch.long, device=pos.device)
    pairs = cKDTree(_kdtree_points(pos, node2graph)).query_pairs(float(r) * (1 + 1e-5) + 1e-4, output_type="ndarray")
    pairs = torch.as_tensor(np.asarray(pairs, dtype=np.int64).reshape(-1, 2), device=pos.device).t()
    node = torch.arange(n, device=pos.device)
    edge_index = torch.cat([pairs, pairs.flip(0), torch.stack([node, node])], dim=1)
    r2 = torch.tensor(float(r) * float(r), dtype=pos.dtype, device=pos.device)
    edge_index = edge_index[:, _squared_distance(pos, edge_index[0], edge_index[1]) < r2]
    edge_index = _sort_edges(edge_index, n)
    if max_num_neighbors is not None:
        cap = max_num_neighbors if loop else max_num_neighbors + 1
        target = edge_index[1]
        count = torch.bincount(target, minlength=n)
        rank = torch.arange(target.shape[0], device=pos.device) - (torch.cumsum(count, 0) - count)[target]
        edge_index = edge_index[:, rank < cap]
    if not loop:
        edge_index = edge_index[:, edge_index[0] != edge_index[1]]
    return edge_index


# ----------------------------------------------------------------------------------------------
# GearNet graph


def _sequential_edges(node2graph: Tensor, chain_id: Tensor | None, max_distance: int) -> Tensor:
    n = node2graph.shape[0]
    device = node2graph.device
    node = torch.arange(n, device=device)
    edges = []
    for offset in range(-max_distance, max_distance + 1):
        node_in = node[max(0, -offset) : n - max(0, offset)]
        node_out = node_in + offset
        keep = node2graph[node_in] == node2graph[node_out]
        if chain_id is not None:
            keep &= chain_id[node_in] == chain_id[node_out]
        node_in, node_out = node_in[keep], node_out[keep]
        relation = torch.full_like(node_in, offset + max_distance)
        edges.append(torch.stack([node_in, node_out, relation], dim=1))
    return torch.cat(edges) if edges else torch.zeros(0, 3, dtype=torch.long, device=device)


def _filter_geometric(edge_index: Tensor, pos: Tensor, min_distance: int, relation: int) -> Tensor:
    node_in, node_out = edge_index
    keep = torch.ones_like(node_in, dtype=torch.bool)
    if min_distance > 0:
        keep &= (node_in - node_out).abs() >= min_distance
    keep &= ~((pos[node_in] - pos[node_out]).norm(dim=-1) < _EPS)
    node_in, node_out = node_in[keep], node_out[keep]
    return torch.stack([node_in, node_out, torch.full_like(node_in, relation)], dim=1)


def _lexsort(*keys: Tensor) -> Tensor:
    """Permutation sorting by ``keys[0]`` first, then ``keys[1]``, ... (stable)."""
    order = torch.arange(keys[0].shape[0], device=keys[0].device)
    for key in reversed(keys):
        order = order[torch.sort(key[order], stable=True).indices]
    return order


def _edge_feature(
    kind: str | None,
    edge_list: Tensor,
    pos: Tensor,
    residue_type: Tensor,
    num_relation: int,
) -> Tensor:
    node_in, node_out, relation = edge_list.unbind(1)
    if kind is None:
        return torch.zeros(edge_list.shape[0], 0, dtype=pos.dtype, device=pos.device)
    if kind not in ("gearnet", "residue_type"):
        raise ValueError(f"Unknown edge feature {kind!r} (expected 'gearnet', 'residue_type' or None)")
    # torchdrug has 20 residue ids; unknown residues are parsed as glycine (0)
    rtype = torch.where(residue_type >= NUM_RESIDUE_TYPE, torch.zeros_like(residue_type), residue_type)
    one_hot = torch.nn.functional.one_hot
    parts = [
        one_hot(rtype[node_in], NUM_RESIDUE_TYPE).to(pos.dtype),
        one_hot(rtype[node_out], NUM_RESIDUE_TYPE).to(pos.dtype),
    ]
    if kind == "gearnet":
        seq_dist = (node_in - node_out).abs().clamp(max=MAX_SEQ_DIST)
        parts += [
            one_hot(relation, num_relation).to(pos.dtype),
            one_hot(seq_dist, MAX_SEQ_DIST + 1).to(pos.dtype),
            (pos[node_in] - pos[node_out]).norm(dim=-1, keepdim=True),
        ]
    return torch.cat(parts, dim=1)


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
        chain_id: optional ``(N,)`` integer chain ids; sequential edges between different chains are
            removed (torchdrug ``SequentialEdge``). ``None``: each protein is one chain.
        spatial_max_num_neighbors: torch_cluster's ``max_num_neighbors`` used by torchdrug's
            ``SpatialEdge`` (32); ``None`` disables the cap.

    Returns:
        A :class:`ResidueGraph` with ``num_relation = 2 * sequential_max_distance + 3`` and edges sorted
        by ``(graph, relation, node_out, node_in)``.
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
    node2graph, batch_size, _, _ = _layout(n, node2graph, device)
    if chain_id is not None:
        chain_id = chain_id.to(device)
        if chain_id.shape != (n,):
            raise ValueError(f"chain_id must have shape ({n},), got {tuple(chain_id.shape)}")

    num_seq_relation = 2 * sequential_max_distance + 1
    num_relation = num_seq_relation + 2
    seq = _sequential_edges(node2graph, chain_id, sequential_max_distance)
    spatial = radius_graph(pos, radius, node2graph, max_num_neighbors=spatial_max_num_neighbors)
    spatial = _filter_geometric(spatial, pos, min_distance, num_seq_relation)
    knn = knn_graph(pos, knn_k, node2graph)
    knn = _filter_geometric(knn, pos, min_distance, num_seq_relation + 1)
    edge_list = torch.cat([seq, spatial, knn])
    order = _lexsort(node2graph[edge_list[:, 1]], edge_list[:, 2], edge_list[:, 1], edge_list[:, 0])
    edge_list = edge_list[order]

    return ResidueGraph(
        num_nodes=n,
        batch_size=batch_size,
        node_position=pos,
        residue_type=residue_type,
        node2graph=node2graph,
        edge_list=edge_list,
        edge_feature=_edge_feature(edge_feature, edge_list, pos, residue_type, num_relation),
        num_relation=num_relation,
    )


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
    """
    node_in, node_out = graph.edge_list[:, 0], graph.edge_list[:, 1]
    device = graph.edge_list.device
    n = graph.num_nodes
    num_edges = node_in.shape[0]
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

    pos = graph.node_position
    node_i = node_out[edge_b]
    node_j = node_in[edge_b]
    node_k = node_in[edge_a]
    v1 = pos[node_i] - pos[node_j]
    v2 = pos[node_k] - pos[node_j]
    angle = torch.atan2(torch.linalg.cross(v1, v2).norm(dim=-1), (v1 * v2).sum(dim=-1))
    relation = (angle / math.pi * num_angle_bin).long().clamp(max=num_angle_bin - 1)

    return LineGraph(
        num_nodes=num_edges,
        batch_size=graph.batch_size,
        node2graph=graph.node2graph[node_out] if num_edges else node_out.new_zeros(0),
        edge_list=torch.stack([edge_a, edge_b, relation], dim=1),
        node_feature=graph.edge_feature,
        num_relation=num_angle_bin,
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


def build_record_graphs(records: list[dict], **settings) -> dict[str, dict]:
    """GearNet graphs of every record, stored compactly for the ``build_graphs`` rule.

    Args:
        records: residue records (:mod:`geoplm.structure`).
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
        graph = build_gearnet_graph(position, residue_type, edge_feature=None, **settings)
        graphs[record["id"]] = {"num_nodes": graph.num_nodes, "edge_list": graph.edge_list.to(torch.int32)}
    return graphs


def pack_graphs(
    positions: list[Tensor],
    residue_types: list[Tensor],
    edge_lists: list[Tensor],
    num_relation: int,
    edge_feature: str | None = "gearnet",
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

    Raises:
        ValueError: an edge refers to a node outside its protein.
    """
    sizes = [len(p) for p in positions]
    offsets = torch.tensor([0] + sizes[:-1]).cumsum(0)
    packed_edges = []
    for i, (edges, size, offset) in enumerate(zip(edge_lists, sizes, offsets.tolist(), strict=True)):
        edges = edges.long()
        if len(edges) and int(edges[:, :2].max()) >= size:
            raise ValueError(f"graph {i}: edge to node {int(edges[:, :2].max())} of a {size}-node protein")
        packed_edges.append(edges + torch.tensor([offset, offset, 0]))
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
    )
