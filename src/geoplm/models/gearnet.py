"""GearNet / GearNet-Edge (Zhang et al., "Protein Representation Learning by Geometric Structure
Pretraining", ICLR 2023, arXiv 2203.06125, Sec. 3.2), re-implemented in plain torch after
torchdrug 0.2.1 (DeepGraphLearning/torchdrug @ 6066fbd82360abb5f270cba1eca560af01b8cc90):
``torchdrug/models/gearnet.py`` (``GeometryAwareRelationalGraphNeuralNetwork``, registered as
``models.GearNet``), ``torchdrug/layers/conv.py`` (``RelationalGraphConv``,
``GeometricRelationalGraphConv``) and ``torchdrug/layers/readout.py`` (``SumReadout``,
``MeanReadout``). No code is copied; the math and the parameter layout are reproduced so that a
torchdrug checkpoint loads 1:1 (see :class:`GearNet`).

Paper hyper-parameters (DeepGraphLearning/GearNet @ 28bf75f5dfb6cd7b9bf4394d153a87f69bddf1a6,
``config/downstream/EC/gearnet.yaml`` / ``gearnet_edge.yaml``): ``input_dim=21``,
``hidden_dims=[512] * 6``, ``num_relation=7``, ``batch_norm=True``, ``short_cut=True``,
``concat_hidden=True``, ``readout="sum"``; GearNet-Edge adds ``edge_input_dim=59``,
``num_angle_bin=8``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from geoplm import graph_kernels
from geoplm.graph import LineGraph, PairedLineGraph, ResidueGraph, paired_line_graph, readout, spatial_line_graph

__all__ = [
    "GearNet",
    "GeometricRelationalGraphConv",
    "PairedAdjacency",
    "RelationalAdjacency",
    "adjacency_of",
    "grouped_batch_norm",
    "line_graph_adjacency",
    "relational_aggregate",
]


def relational_aggregate(edge_list: Tensor, num_nodes: int, num_relation: int, message: Tensor) -> Tensor:
    """Per-relation sum of edge messages, laid out as torchdrug does.

    ``out[i, r * d:(r + 1) * d] = sum_{e = (j -> i, r)} message[e]``: the target index is flattened
    to ``node_out * num_relation + relation`` and scattered with ``index_add_`` (torchdrug multiplies
    by a sparse ``(N, N * R)`` adjacency instead, same result). ``message``: ``(E, d)``; returns
    ``(num_nodes, R * d)``. The layers use :class:`RelationalAdjacency`, which avoids the ``(E, d)``
    message tensor when messages are plain node features.
    """
    index = edge_list[:, 1] * num_relation + edge_list[:, 2]
    out = message.new_zeros(num_nodes * num_relation, message.shape[-1])
    out.index_add_(0, index, message)
    return out.view(num_nodes, num_relation * message.shape[-1])


def _sort(key: Tensor) -> Tensor:
    """Sorted copy of a 1-d long tensor (numpy's SIMD sort on CPU, ~10x faster than ``torch.sort`` there)."""
    return torch.from_numpy(np.sort(key.numpy())) if key.device.type == "cpu" else torch.sort(key).values


def _index_dtype(index: Tensor, *sizes: int) -> torch.dtype:
    """The CSR index dtype for a matrix of ``index``'s device whose indices and offsets stay below ``max(sizes)``:
    32-bit where built by the compiled CPU kernels and it fits (MKL's sparse products take 32-bit indices; torch
    converts 64-bit ones on every call otherwise), 64-bit otherwise."""
    narrow = _compiled(index) and max(sizes) < torch.iinfo(torch.int32).max
    return torch.int32 if narrow else torch.long


def _csr_tensor(crow: Tensor, col: Tensor, value: Tensor, shape: tuple[int, int], index_dtype: torch.dtype) -> Tensor:
    """``torch.sparse_csr_tensor`` of ``(crow, col, value)`` with indices of ``index_dtype``, unchecked (the callers
    build valid ones), without torch's "Sparse CSR tensor support is in beta state" warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow.to(index_dtype), col.to(index_dtype), value, shape, check_invariants=False)


def _csr(
    row: Tensor, col: Tensor, num_rows: int, num_cols: int, dtype: torch.dtype, value: Tensor | None = None
) -> Tensor:
    """``(num_rows, num_cols)`` CSR matrix with ``A[r, c]`` = number of ``(row, col)`` pairs equal to ``(r, c)``
    (or, with ``value`` given for pairs that are all distinct, ``A[row, col] = value``)."""
    key = row * num_cols + col
    if value is not None:
        order = torch.from_numpy(np.argsort(key.numpy())) if key.device.type == "cpu" else torch.argsort(key)
        key, count = key[order], value[order]
    else:
        key, count = torch.unique_consecutive(_sort(key), return_counts=True)
    row = torch.div(key, num_cols, rounding_mode="floor")
    crow = torch.zeros(num_rows + 1, dtype=torch.long, device=key.device)
    torch.cumsum(torch.bincount(row, minlength=num_rows), 0, out=crow[1:])
    return _csr_tensor(crow, key - row * num_cols, count.to(dtype), (num_rows, num_cols), torch.long)


def _spmm(adjacency: Tensor, input: Tensor) -> Tensor:
    """``adjacency @ input`` for a CSR ``adjacency``, written by ``addmm(out, A, input, beta=0, out=out)`` into an
    uninitialised buffer (``beta=0`` ignores its contents): same values as ``torch.sparse.mm``, which first
    fills a full-size zero buffer and copies it (on GearNet-Edge's line graph about 4x slower on CPU; so is
    ``addmm`` onto a broadcast zero row, which copies the broadcast)."""
    out = input.new_empty(adjacency.shape[0], input.shape[1])
    return torch.addmm(out, adjacency, input, beta=0, out=out)


def _bag_matrix(matrix: Tensor) -> tuple:
    """``matrix`` (CSR) as the arguments of :func:`_bag_spmm`: ``(column, row offsets, values or None where all are 1,
    number of rows)``."""
    value = matrix.values()
    weight = None if bool((value == 1).all()) else value
    return matrix.col_indices(), matrix.crow_indices()[:-1], weight, matrix.shape[0]


def _bag_spmm(bag: tuple, input: Tensor) -> Tensor:
    """``A @ input`` for ``A`` given by :func:`_bag_matrix`: a ``sum`` embedding bag per row of ``A``, summed in
    the order of its entries (as the CSR product does). On CPU 2-3x faster than MKL's CSR product on GearNet-Edge's
    small graphs (no analysis step per call, vectorised rows)."""
    column, offset, weight, num_rows = bag
    if num_rows == 0 or len(column) == 0:
        return input.new_zeros(num_rows, input.shape[1])
    return F.embedding_bag(column, input, offset, mode="sum", per_sample_weights=weight)


class _SparseMatmul(torch.autograd.Function):
    """``adjacency @ input`` with the gradient ``adjacency.T @ grad`` from a prebuilt CSR transpose."""

    @staticmethod
    def forward(ctx, adjacency: Tensor, transpose: Tensor, input: Tensor) -> Tensor:
        ctx.transpose = transpose
        return _spmm(adjacency, input)

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad_input = _spmm(ctx.transpose, grad.contiguous()) if ctx.needs_input_grad[2] else None
        return None, None, grad_input


#: Build :class:`RelationalAdjacency`'s blocks with the compiled counting sorts of :mod:`geoplm.graph_kernels` on CPU
#: (the tests switch it off to compare with the sort-based construction used on other devices).
COMPILED_ADJACENCY = True


def _compiled(index: Tensor) -> bool:
    """Whether the adjacency of ``index`` is built by the compiled CPU kernels."""
    return COMPILED_ADJACENCY and index.device.type == "cpu"


#: Rows per block of the fused aggregate + linear: about this many floats (8 MB) of ``(rows, d)`` aggregate. Below
#: glibc's mmap threshold the buffers are reused between blocks instead of being freshly mapped (page faults).
_CHUNK_ELEMENTS = 1 << 21

#: A relation whose non-empty ``(target, relation)`` rows cover at least this share of the targets is multiplied
#: over all of its rows (see :meth:`RelationalAdjacency.blocks`).
DENSE_COVERAGE = 0.9


#: :meth:`RelationalAdjacency.plan` takes the whole ``A`` in target-major order (one ``(T, R * d) @ (R * d, d_out)``
#: product per direction, torchdrug's layout) where its non-empty rows fill at least this share of it (the residue
#: graphs of multiview-contrast views: 81-91%, their products then 1.3-2x faster than one per relation), and the
#: non-empty rows relation by relation otherwise (their paired line graphs': 44-58%, where the full product is
#: slower; benchmarks/README.md, "Two products fewer per layer").
TARGET_MAJOR_FILL = 0.75

#: Use :class:`_PlannedAggregateLinear` (one sparse product per direction for all relations) where the whole
#: ``(rows, d)`` aggregate takes at most :data:`_PLANNED_CHUNKS` blocks of :data:`_CHUNK_ELEMENTS`: the views of
#: multiview-contrast pretraining (their line graphs: 5,000-25,000 non-empty rows, up to 512 wide), not the line
#: graph of a batch of whole proteins (four AlphaFold models: 167,000 rows), whose blocks keep the transient buffers
#: (the scattered outputs, the gathered gradients) small.
PLANNED = True
_PLANNED_CHUNKS = 8

#: Its sparse products on CPU as embedding bags (:func:`_bag_spmm`) rather than MKL's CSR products.
BAG_PRODUCTS = True


def _planned_row_count(per_relation: Sequence[int], num_target: int) -> int:
    """Rows of a :class:`_Plan` over relations with ``per_relation`` non-empty rows each: all ``num_target`` for a
    relation covering at least :data:`DENSE_COVERAGE` of them, its non-empty rows otherwise."""
    dense = DENSE_COVERAGE * num_target
    return sum(num_target if rows and rows >= dense else rows for rows in per_relation)


def _check_relation_weight(weight: Tensor, num_relation: int, d: int) -> None:
    """Raise ValueError unless ``weight`` is ``(d_out, num_relation * d)``, a relational linear's weight."""
    if weight.dim() != 2 or weight.shape[1] != num_relation * d:
        raise ValueError(f"weight of shape {tuple(weight.shape)} does not take {num_relation} x {d} inputs")


class _AggregateLinear(torch.autograd.Function):
    """``F.linear((A @ input).view(T, R * d), weight, bias)`` computed block by block of ``(target, relation)`` rows
    of ``A`` (:meth:`RelationalAdjacency.blocks`).

    Block ``(r, targets, A_b, A_b^T)`` holds rows of one relation ``r``: its aggregate ``A_b @ input`` ``(t, d)``
    is multiplied by ``W_r = weight[:, r * d:(r + 1) * d]`` and added to the targets' outputs. Rows of ``A``
    without any edge (a quarter of GearNet-Edge's line-graph ``(edge, angle bin)`` pairs, most of them in the
    sparsely covered angle bins) cost nothing unless their relation is multiplied over all of its rows
    (``targets`` a slice), and the ``(T, R * d)`` aggregate is never allocated as one tensor. The block
    aggregates are kept for the weight gradient when the weight needs one (torchdrug's ``F.linear`` keeps its
    whole ``(T, R * d)`` aggregate for it), so the backward pass multiplies by ``A_b^T`` only, and writes each
    block's ``grad @ W_r`` into its aggregate once the weight gradient has read it.
    """

    @staticmethod
    def forward(ctx, blocks, num_target: int, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.blocks = blocks
        ctx.save_for_backward(weight)
        ctx.input_shape = input.shape  # the input itself is not needed (nor kept alive) for the gradients
        ctx.has_bias = bias is not None
        if bias is None:
            output = input.new_zeros(num_target, weight.shape[0])
        else:
            output = bias.expand(num_target, weight.shape[0]).contiguous()
        d = input.shape[1]
        ctx.aggregates = [] if ctx.needs_input_grad[3] else None
        for relation, targets, adjacency, _ in blocks:
            aggregate = _spmm(adjacency, input)
            if ctx.aggregates is not None:
                ctx.aggregates.append(aggregate)
            weight_t = weight[:, relation * d : (relation + 1) * d].t()
            if isinstance(targets, slice):  # all targets of a range: a view, no scatter
                output[targets].addmm_(aggregate, weight_t)
            else:
                output.index_add_(0, targets, aggregate @ weight_t)
        return output

    @staticmethod
    def backward(ctx, grad: Tensor):
        (weight,) = ctx.saved_tensors
        grad = grad.contiguous()
        need_input, need_weight = ctx.needs_input_grad[2], ctx.needs_input_grad[3]
        d = ctx.input_shape[1]
        num_relation = weight.shape[1] // d
        grad_input = grad.new_zeros(ctx.input_shape) if need_input else None
        grad_weight = [weight.new_zeros(weight.shape[0], d) for _ in range(num_relation)] if need_weight else None
        for block, (relation, targets, _, transpose) in enumerate(ctx.blocks):
            grad_block = grad[targets] if isinstance(targets, slice) else grad.index_select(0, targets)
            if need_weight:
                grad_weight[relation].addmm_(grad_block.t(), ctx.aggregates[block])
            if need_input:
                weight_r = weight[:, relation * d : (relation + 1) * d]
                # into the block's aggregate (read for the last time just above) where one is kept
                out = ctx.aggregates[block] if need_weight else None
                grad_input.addmm_(transpose, torch.mm(grad_block, weight_r, out=out))
        ctx.aggregates = None
        if need_weight:
            grad_weight = torch.cat(grad_weight, dim=1)
        grad_bias = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[4] else None
        return None, None, grad_input, grad_weight, grad_bias


class _Plan:
    """:meth:`RelationalAdjacency.plan`: all rows of ``A`` that :meth:`RelationalAdjacency.blocks` multiplies, in one
    CSR matrix ``A'`` (``matrix``, ``transpose`` = ``A'^T``; ``bag``, ``bag_t``: the same as :func:`_bag_matrix`).

    Rows of ``A'`` are relations ``relations[i]``, ``sizes[i]`` rows each, in this order: first the ``num_dense``
    relations taken over all ``num_target`` targets in order, then the others over their non-empty rows only, whose
    targets are ``targets`` (one index tensor per such relation, in order). Relations without edges are left out.

    ``target_major``: ``A'`` is the whole ``A`` instead (``(num_target * R, num_source)``, row ``target * R +
    relation``, empty rows included; ``relations``, ``sizes``, ``targets`` unused), whose product viewed as
    ``(num_target, R * d)`` is multiplied by the whole weight at once (torchdrug's layout)."""

    __slots__ = (
        "matrix", "transpose", "bag", "bag_t", "num_target", "relations", "sizes", "num_dense", "targets",
        "target_major",
    )  # fmt: skip

    def __init__(self, matrix, transpose, num_target, relations, sizes, num_dense, targets, target_major=False):
        self.matrix, self.transpose = matrix, transpose
        self.bag, self.bag_t = _bag_matrix(matrix), _bag_matrix(transpose)
        self.num_target, self.relations, self.sizes = num_target, relations, sizes
        self.num_dense, self.targets = num_dense, targets
        self.target_major = target_major


class _PlannedAggregateLinear(torch.autograd.Function):
    """:class:`_AggregateLinear` over one :class:`_Plan` for graphs small enough to aggregate at once: one sparse
    product ``A' @ input`` ``(rows, d)`` forward and one ``A'^T @ grad_aggregate`` backward (instead of one or two
    per block), one product per relation with its ``W_r`` in each direction (written in place), and for the relations
    taken over their non-empty rows a scatter of their outputs (``index_add_``) and a gather of their gradients, each
    relation's through one reused buffer of the largest relation's rows. The same products as the blocks'; their sums
    differ only in float rounding. The backward writes ``grad_aggregate`` into the aggregate kept from the forward
    pass, each relation's rows once the weight gradient has read them (one backward per forward: the aggregate is
    released after it, as before)."""

    @staticmethod
    def forward(ctx, plan: _Plan, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        num_relation, d = weight.shape[1] // input.shape[1], input.shape[1]
        bag = BAG_PRODUCTS and input.device.type == "cpu"
        aggregate = _bag_spmm(plan.bag, input) if bag else _spmm(plan.matrix, input)
        ctx.plan, ctx.aggregate, ctx.has_bias = plan, aggregate, bias is not None
        ctx.save_for_backward(weight)
        if plan.target_major:  # (T, R * d) @ W^T: one product
            flat = aggregate.view(plan.num_target, num_relation * d)
            return torch.mm(flat, weight.t()) if bias is None else torch.addmm(bias, flat, weight.t())
        weights = weight.unflatten(1, (num_relation, d)).unbind(1)  # W_r, (d_out, d) views
        aggregates = aggregate.split(plan.sizes)
        dense = plan.num_dense
        if dense:  # all targets, in order: no scatter
            r = plan.relations[0]
            if bias is None:
                output = torch.mm(aggregates[0], weights[r].t())
            else:
                output = torch.addmm(bias, aggregates[0], weights[r].t())
            for i in range(1, dense):
                output.addmm_(aggregates[i], weights[plan.relations[i]].t())
        elif bias is None:
            output = input.new_zeros(plan.num_target, weight.shape[0])
        else:
            output = bias.expand(plan.num_target, weight.shape[0]).contiguous()
        if len(plan.relations) > dense:
            # relation by relation through one buffer of the largest relation's rows: scattered while in cache, and
            # paged in once instead of a fresh (sparse rows, d_out) buffer per call
            buffer = input.new_empty(max(plan.sizes[dense:]), weight.shape[0])
            for i, targets in enumerate(plan.targets, dense):
                part = torch.mm(aggregates[i], weights[plan.relations[i]].t(), out=buffer[: plan.sizes[i]])
                output.index_add_(0, targets, part)
        return output

    @staticmethod
    def backward(ctx, grad: Tensor):
        (weight,) = ctx.saved_tensors
        plan = ctx.plan
        aggregate, ctx.aggregate = ctx.aggregate, None
        grad = grad.contiguous()
        need_input, need_weight = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        num_relation, d = weight.shape[1] // aggregate.shape[1], aggregate.shape[1]
        grad_bias = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[3] else None
        bag = BAG_PRODUCTS and grad.device.type == "cpu"
        if plan.target_major:
            grad_weight = torch.mm(grad.t(), aggregate.view(plan.num_target, -1)) if need_weight else None
            grad_input = None
            if need_input:
                # into the aggregate's buffer (read for the last time above): no fresh buffer to page in
                grad_aggregate = torch.mm(grad, weight, out=aggregate.view(plan.num_target, -1)).view(aggregate.shape)
                grad_input = _bag_spmm(plan.bag_t, grad_aggregate) if bag else _spmm(plan.transpose, grad_aggregate)
            return None, grad_input, grad_weight, grad_bias
        dense = plan.num_dense
        buffer = grad.new_empty(max(plan.sizes[dense:]), grad.shape[1]) if plan.targets else None
        aggregates = aggregate.split(plan.sizes)
        grad_weight = grad_input = grad_weights = weights = None
        if need_weight:
            grad_weight = weight.new_empty(weight.shape[0], num_relation, d)
            if len(plan.relations) < num_relation:
                grad_weight.zero_()
            grad_weights = grad_weight.unbind(1)
        if need_input:
            weights = weight.unflatten(1, (num_relation, d)).unbind(1)
        # relation by relation: its output gradient (gathered into one buffer of the largest relation's rows for the
        # relations over their non-empty rows), read by the two products back to back (the second finds it in
        # cache); the second writes the aggregate's gradient over the relation's aggregate rows, which the first
        # has just read for the last time (in cache, and no fresh buffer to page in)
        for i, r in enumerate(plan.relations):
            if i < dense:
                relation_grad = grad
            else:
                relation_grad = torch.index_select(grad, 0, plan.targets[i - dense], out=buffer[: plan.sizes[i]])
            if need_weight:
                torch.mm(relation_grad.t(), aggregates[i], out=grad_weights[r])
            if need_input:
                torch.mm(relation_grad, weights[r], out=aggregates[i])
        if need_weight:
            grad_weight = grad_weight.view(weight.shape)
        if need_input:  # the aggregate now holds its gradient
            grad_input = _bag_spmm(plan.bag_t, aggregate) if bag else _spmm(plan.transpose, aggregate)
        return None, grad_input, grad_weight, grad_bias


class RelationalAdjacency:
    """Sparse relational adjacency ``A`` of shape ``(num_target * R, num_source)``, built once per graph.

    Row ``target * R + relation`` (torchdrug's ``node_out * num_relation + relation`` flattening) counts
    the edges ``(source -> target, relation)``, so ``A @ h`` for ``h`` ``(num_source, d)`` is
    ``[sum_{j in N_r(i)} h_j]_r`` viewed as ``(num_target, R * d)`` -- torchdrug 0.2.1's
    ``GeometricRelationalGraphConv.message_and_aggregate`` (``torch.sparse.mm(adjacency.t(), input)``,
    DeepGraphLearning/torchdrug @ 6066fbd82360abb5f270cba1eca560af01b8cc90, ``torchdrug/layers/conv.py``),
    without materialising an ``(E, d)`` message tensor. ``A`` and ``A^T`` are kept as CSR matrices (one per
    dtype, built on first use) and reused by every layer on the same graph and by the backward pass
    (``grad_h = A^T @ grad_out``); both products are deterministic on CPU.

    Args:
        target: ``(E,)`` long target node of every edge (``node_out``).
        relation: ``(E,)`` long relation of every edge, in ``[0, num_relation)``.
        source: ``(E,)`` long source row of ``h`` (``node_in``, or ``arange(E)`` to sum per-edge values).
        num_target, num_relation, num_source: matrix dimensions.

    Raises:
        ValueError: if the three index tensors differ in length.
    """

    def __init__(
        self, target: Tensor, relation: Tensor, source: Tensor, num_target: int, num_relation: int, num_source: int
    ):
        if not (target.shape == relation.shape == source.shape) or target.dim() != 1:
            raise ValueError(
                f"target, relation and source must be 1-d of equal length, got {tuple(target.shape)}, "
                f"{tuple(relation.shape)}, {tuple(source.shape)}"
            )
        self.row = target.long() * num_relation + relation.long()
        self.col = source.long()
        self.num_target = num_target
        self.num_relation = num_relation
        self.num_source = num_source
        self._matrices: dict[torch.dtype, tuple[Tensor, Tensor]] = {}
        self._blocks: dict[tuple[torch.dtype, int], list[tuple[int, Tensor, Tensor, Tensor]]] = {}
        self._relation_rows: dict[torch.dtype, tuple] = {}
        self._plans: dict[torch.dtype, _Plan] = {}

    @classmethod
    def from_graph(cls, graph: ResidueGraph | LineGraph) -> RelationalAdjacency:
        """Node-to-node adjacency of a graph with ``edge_list`` ``(E, 3)`` ``[node_in, node_out, relation]``:
        shape ``(num_nodes * num_relation, num_nodes)``."""
        node_in, node_out, relation = graph.edge_list.unbind(1)
        return cls(node_out, relation, node_in, graph.num_nodes, graph.num_relation, graph.num_nodes)

    @classmethod
    def edge_to_node(cls, graph: ResidueGraph) -> RelationalAdjacency:
        """Edge-to-node incidence of ``graph``: ``(num_nodes * num_relation, num_edges)``, one entry per
        column; ``A @ m`` is :func:`relational_aggregate` of per-edge values ``m`` ``(E, d)``."""
        node_out, relation = graph.edge_list[:, 1], graph.edge_list[:, 2]
        source = torch.arange(node_out.shape[0], device=node_out.device)
        return cls(node_out, relation, source, graph.num_nodes, graph.num_relation, node_out.shape[0])

    @classmethod
    def stack(cls, first: RelationalAdjacency, second: RelationalAdjacency) -> RelationalAdjacency:
        """The block-diagonal adjacency ``[[A_1, 0], [0, A_2]]``: ``(T_1 + T_2) * R`` rows (``first``'s targets,
        then ``second``'s), ``S_1 + S_2`` sources; ``linear(cat([x_1, x_2]), W, b)`` is ``cat([A_1.linear(x_1, W,
        b), A_2.linear(x_2, W, b)])`` in one product per direction (GearNet-Edge's node layer and its edge update
        share the layer's ``linear``).

        Raises:
            ValueError: if the two have different numbers of relations."""
        if first.num_relation != second.num_relation:
            raise ValueError(f"cannot stack {first.num_relation} and {second.num_relation} relations")
        num_relation = first.num_relation
        row = torch.cat([first.row, second.row + first.num_target * num_relation])
        return cls(
            torch.div(row, num_relation, rounding_mode="floor"), row % num_relation,
            torch.cat([first.col, second.col + first.num_source]),
            first.num_target + second.num_target, num_relation, first.num_source + second.num_source,
        )  # fmt: skip

    def matrices(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """``(A, A^T)`` as CSR tensors of ``dtype``: on CPU reordered from :meth:`_relation_major`'s matrix (its
        compiled counting sorts; 32-bit indices, as MKL takes them), elsewhere by sorting the entries."""
        if dtype not in self._matrices:
            num_rows = self.num_target * self.num_relation
            if _compiled(self.row):
                self._matrices[dtype] = self._target_major(dtype)
            else:
                self._matrices[dtype] = (
                    _csr(self.row, self.col, num_rows, self.num_source, dtype),
                    _csr(self.col, self.row, self.num_source, num_rows, dtype),
                )
        return self._matrices[dtype]

    def _target_major(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """``(A, A^T)`` from the relation-major matrix: its non-empty rows (``relation * num_target + target``)
        moved to rows ``target * num_relation + relation``, empty rows between them."""
        kept, entries, start, col, count, _ = self._relation_major(dtype)
        num_rows = self.num_target * self.num_relation
        row = (kept % self.num_target) * self.num_relation + torch.div(kept, self.num_target, rounding_mode="floor")
        order = torch.argsort(row)
        entries, first = entries[order], start[:-1][order]
        per_row = torch.zeros(num_rows, dtype=torch.long)
        per_row[row[order]] = entries
        crow = torch.zeros(num_rows + 1, dtype=torch.long)
        torch.cumsum(per_row, 0, out=crow[1:])
        offset = torch.zeros(len(entries), dtype=torch.long)
        torch.cumsum(entries[:-1], 0, out=offset[1:])
        position = torch.repeat_interleave(first - offset, entries, output_size=len(col)) + torch.arange(len(col))
        column, value = col[position], count[position]
        index_dtype = _index_dtype(col, len(col), self.num_source, num_rows)
        matrix = _csr_tensor(crow, column, value, (num_rows, self.num_source), index_dtype)
        return matrix, self._transpose(crow, column, value, per_row, dtype, index_dtype)

    def _relation_major(self, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, list[int]]:
        """``A`` with its rows in relation-major order (``relation * num_target + target``) and its empty rows
        dropped, built once per dtype: ``(row, entries, start, col, count, rows per relation)`` -- the kept rows,
        their entry counts and CSR offsets, column indices, edge multiplicities."""
        if dtype not in self._relation_rows:
            if _compiled(self.row):  # counting sorts, no comparison sort
                kept = graph_kernels.relation_major_csr(
                    self.row.contiguous().numpy(),
                    self.col.contiguous().numpy(),
                    self.num_target,
                    self.num_relation,
                    self.num_source,
                )
                row, start, col, count = (torch.from_numpy(array) for array in kept)
                count = count.to(dtype)
                entries = start.diff()
            else:
                relation = self.row % self.num_relation
                target = torch.div(self.row, self.num_relation, rounding_mode="floor")
                num_rows = self.num_relation * self.num_target
                matrix = _csr(relation * self.num_target + target, self.col, num_rows, self.num_source, dtype)
                col, count = matrix.col_indices(), matrix.values()
                entries = matrix.crow_indices().diff()
                row = torch.nonzero(entries).squeeze(1)
                entries = entries[row]
                start = torch.zeros(len(row) + 1, dtype=torch.long, device=row.device)
                torch.cumsum(entries, 0, out=start[1:])
            row_relation = torch.div(row, self.num_target, rounding_mode="floor")
            per_relation = torch.bincount(row_relation, minlength=self.num_relation).tolist()
            self._relation_rows[dtype] = (row, entries, start, col, count, per_relation)
        return self._relation_rows[dtype]

    def blocks(self, dtype: torch.dtype, max_rows: int) -> list[tuple[int, Tensor | slice, Tensor, Tensor]]:
        """The rows of ``A``, relation by relation, in blocks of at most ``max_rows``: ``[(relation, targets, A_b
        (t, num_source), A_b^T)]``, CSR of ``dtype`` holding edge multiplicities.

        A relation whose non-empty rows cover at least :data:`DENSE_COVERAGE` of the targets (the residue graph's,
        most angle bins of the line graph) takes all its rows, empty ones included: ``targets`` is then a
        ``slice`` of consecutive targets, whose outputs and gradients are views (no gather, no scatter; the empty
        rows cost their share of the dense products instead). Other relations take their non-empty rows only,
        ``targets`` ``(t,)`` long. The relation-major matrix behind them is built once per dtype
        (:meth:`_relation_major`), whatever the block size a layer asks for."""
        cache_key = (dtype, max_rows)
        if cache_key not in self._blocks:
            row, entries, start, col, count, per_relation = self._relation_major(dtype)
            index_dtype = _index_dtype(col, len(col), self.num_source, self.num_target)
            index = col.to(index_dtype)
            blocks, first = [], 0

            def add(relation, targets, a, b, crow, entries):
                lo, hi = int(start[a]), int(start[b])
                shape = (len(crow) - 1, self.num_source)
                block = _csr_tensor(crow, index[lo:hi], count[lo:hi], shape, index_dtype)
                transpose = self._transpose(crow, col[lo:hi], count[lo:hi], entries, dtype, index_dtype)
                blocks.append((relation, targets, block, transpose))

            for r, rows in enumerate(per_relation):
                target = row[first : first + rows] - r * self.num_target
                if rows >= DENSE_COVERAGE * self.num_target:
                    for t0 in range(0, self.num_target, max_rows):
                        t1 = min(t0 + max_rows, self.num_target)
                        bounds = torch.searchsorted(target, torch.tensor([t0, t1], device=target.device))
                        a, b = (first + int(i) for i in bounds)
                        full = torch.zeros(t1 - t0, dtype=torch.long, device=row.device)
                        full[target[a - first : b - first] - t0] = entries[a:b]
                        crow = torch.zeros(t1 - t0 + 1, dtype=torch.long, device=row.device)
                        torch.cumsum(full, 0, out=crow[1:])
                        add(r, slice(t0, t1), a, b, crow, full)
                else:
                    for a in range(first, first + rows, max_rows):
                        b = min(a + max_rows, first + rows)
                        add(r, target[a - first : b - first], a, b, start[a : b + 1] - start[a], entries[a:b])
                first += rows
            self._blocks[cache_key] = blocks
        return self._blocks[cache_key]

    def plan(self, dtype: torch.dtype) -> _Plan:
        """All rows of :meth:`blocks` (for a block size covering every relation) in one CSR matrix, for
        :class:`_PlannedAggregateLinear`, built once per dtype from the relation-major matrix of
        :meth:`_relation_major`: each relation whose non-empty rows cover at least :data:`DENSE_COVERAGE` of the
        targets over all targets, the others over their non-empty rows (see :class:`_Plan`)."""
        if dtype not in self._plans:
            row, entries, start, col, count, per_relation = self._relation_major(dtype)
            num_rows = self.num_target * self.num_relation
            if num_rows and sum(per_relation) >= TARGET_MAJOR_FILL * num_rows:
                matrix, transpose = self.matrices(dtype)
                self._plans[dtype] = _Plan(matrix, transpose, self.num_target, None, None, 0, None, target_major=True)
                return self._plans[dtype]
            index_dtype = _index_dtype(col, len(col), self.num_source, self.num_target)
            first = [0]
            for rows in per_relation:
                first.append(first[-1] + rows)
            dense = [r for r, rows in enumerate(per_relation) if rows and rows >= DENSE_COVERAGE * self.num_target]
            sparse = [r for r, rows in enumerate(per_relation) if rows and r not in dense]
            row_entries, segments, targets = [], [], []
            for r in dense + sparse:
                a, b = first[r], first[r + 1]
                target = row[a:b] - r * self.num_target
                if r in dense:
                    full = torch.zeros(self.num_target, dtype=torch.long, device=row.device)
                    full[target] = entries[a:b]
                    row_entries.append(full)
                else:
                    row_entries.append(entries[a:b])
                    targets.append(target)
                segments.append((int(start[a]), int(start[b])))
            per_row = torch.cat(row_entries) if row_entries else entries[:0]
            crow = torch.zeros(len(per_row) + 1, dtype=torch.long, device=row.device)
            torch.cumsum(per_row, 0, out=crow[1:])
            column = torch.cat([col[a:b] for a, b in segments]) if segments else col[:0]
            value = torch.cat([count[a:b] for a, b in segments]) if segments else count[:0]
            matrix = _csr_tensor(crow, column, value, (len(per_row), self.num_source), index_dtype)
            transpose = self._transpose(crow, column, value, per_row, dtype, index_dtype)
            sizes = [len(e) for e in row_entries]
            self._plans[dtype] = _Plan(matrix, transpose, self.num_target, dense + sparse, sizes, len(dense), targets)
        return self._plans[dtype]

    def _transpose(
        self, crow: Tensor, col: Tensor, count: Tensor, entries: Tensor, dtype: torch.dtype, index_dtype: torch.dtype
    ) -> Tensor:
        """CSR ``(num_source, t)`` transpose of the block ``(crow (t + 1,), col, count)`` with ``entries`` ``(t,)``
        per row: a compiled counting sort on CPU (indices of ``index_dtype``), a sort elsewhere."""
        num_rows = crow.shape[0] - 1
        if _compiled(crow):
            tcrow, trow, position = (
                torch.from_numpy(a) for a in graph_kernels.csr_transpose(crow.numpy(), col.numpy(), self.num_source)
            )
            return _csr_tensor(tcrow, trow, count[position], (self.num_source, num_rows), index_dtype)
        local_row = torch.repeat_interleave(torch.arange(num_rows, device=crow.device), entries, output_size=len(col))
        return _csr(col, local_row, self.num_source, num_rows, dtype, count)

    def _planned_rows(self, dtype: torch.dtype) -> int:
        """Rows of :meth:`plan`'s matrix (without building it)."""
        return _planned_row_count(self._relation_major(dtype)[-1], self.num_target)

    def linear(
        self, input: Tensor, weight: Tensor, bias: Tensor | None = None, planned_rows: int | None = None
    ) -> Tensor:
        """``F.linear(self(input), weight, bias)`` without materialising ``self(input)``.

        ``input`` ``(num_source, d)``, ``weight`` ``(d_out, num_relation * d)``, ``bias`` ``(d_out,)`` ->
        ``(num_target, d_out)``: ``bias + sum_r W_r (A_r @ input)`` with ``W_r = weight[:, r * d:(r + 1) * d]``,
        over the non-empty rows of each ``A_r`` only, in blocks of :meth:`blocks` (the unfused form's value up to
        float32 summation order; tested against it in float64, with gradients), or, where the whole aggregate is
        small (:data:`PLANNED`), all at once over :meth:`plan` (fewer, larger calls: the small views of
        multiview-contrast pretraining). ``planned_rows``: the row count that decides it, if not this adjacency's
        (:class:`PairedAdjacency` passes the whole line graph's for its reduced one).

        Raises:
            ValueError: if ``input`` does not have ``num_source`` rows or ``weight`` has not ``num_relation * d``
                columns.
        """
        if input.dim() != 2 or input.shape[0] != self.num_source:
            raise ValueError(f"expected input of shape ({self.num_source}, d), got {tuple(input.shape)}")
        _check_relation_weight(weight, self.num_relation, input.shape[1])
        width = max(input.shape[1], weight.shape[0])
        max_rows = max(64, _CHUNK_ELEMENTS // width)
        if planned_rows is None:
            planned_rows = self._planned_rows(input.dtype)
        if PLANNED and planned_rows * width <= _PLANNED_CHUNKS * _CHUNK_ELEMENTS:
            return _PlannedAggregateLinear.apply(self.plan(input.dtype), input, weight, bias)
        blocks = self.blocks(input.dtype, max_rows)
        return _AggregateLinear.apply(blocks, self.num_target, input, weight, bias)

    def __call__(self, input: Tensor) -> Tensor:
        """``input`` ``(num_source, d)`` -> ``(num_target, num_relation * d)`` per-relation sums.

        Raises:
            ValueError: if ``input`` does not have ``num_source`` rows.
        """
        if input.dim() != 2 or input.shape[0] != self.num_source:
            raise ValueError(f"expected input of shape ({self.num_source}, d), got {tuple(input.shape)}")
        adjacency, transpose = self.matrices(input.dtype)
        if input.requires_grad:
            out = _SparseMatmul.apply(adjacency, transpose, input)
        else:
            out = _spmm(adjacency, input)
        return out.view(self.num_target, self.num_relation * input.shape[1])


#: GearNet-Edge's edge layers aggregate over :func:`~geoplm.graph.paired_line_graph` (:class:`PairedAdjacency`)
#: rather than the full :func:`~geoplm.graph.spatial_line_graph` (the tests switch it off to compare the two).
PAIRED_LINE_GRAPH = True


class PairedAdjacency:
    """The spatial line graph's relational adjacency ``A_r = G A'_r G^T`` (``(E * R, E)``, the same matrix as
    :meth:`RelationalAdjacency.from_graph` of :func:`~geoplm.graph.spatial_line_graph`), applied in factored
    form over :func:`~geoplm.graph.paired_line_graph`'s pairs: ``G^T h`` sums the features of each pair's parallel
    edges (``(E, d) -> (P, d)``), ``A'_r`` aggregates and multiplies over pairs (:meth:`RelationalAdjacency.linear`),
    ``G`` copies each pair's result back to its edges. The dense products (``W_r`` times a ``(rows, d)``
    aggregate) run once per ``(pair, relation)`` row instead of once per ``(edge, relation)`` row.

    :meth:`linear` also uses that the line graph joins every pair into a node ``j`` to every pair out of it, each
    in one angle bin: the bins of a pair ``p = (j -> i)`` sum to the node sum ``x_j = sum_{q = (k -> j)} h_q``,
    so with ``r0`` the bin with the most non-empty rows,
    ``sum_r W_r (A'_r h)_p = W_r0 x_j + sum_{r != r0} (W_r - W_r0) (A'_r h)_p``: bin ``r0``'s rows (in GearNet's
    graphs every pair's, through its reverse pair or the sequential self-loop: angle 0) are replaced by one row
    per node (about a tenth as many).

    Args:
        line_graph: a :class:`~geoplm.graph.PairedLineGraph`.
    """

    #: Use the node-sum identity in :meth:`linear` (the tests switch it off to compare).
    NODE_SUM = True

    def __init__(self, line_graph: PairedLineGraph):
        self.pair_of_edge = line_graph.pair_of_edge
        self.num_pairs = line_graph.num_pairs
        self.num_relation = line_graph.num_relation
        self.num_target = self.num_source = int(line_graph.pair_of_edge.shape[0])
        self.line_graph = line_graph
        pair_in, pair_out, relation = line_graph.edge_list.unbind(1)
        self.pairs = RelationalAdjacency(pair_out, relation, pair_in, self.num_pairs, self.num_relation, self.num_pairs)
        self._node_sum: tuple[int, RelationalAdjacency, int] | None = None
        self._node_sum_decided = False

    def _pool(self, input: Tensor) -> Tensor:
        """``G^T input``: ``(E, d)`` -> ``(P, d)``, each pair's edges summed.

        Raises:
            ValueError: if ``input`` does not have one row per edge.
        """
        if input.dim() != 2 or input.shape[0] != self.num_source:
            raise ValueError(f"expected input of shape ({self.num_source}, d), got {tuple(input.shape)}")
        return input.new_zeros(self.num_pairs, input.shape[1]).index_add_(0, self.pair_of_edge, input)

    def node_sum_plan(self) -> tuple[int, RelationalAdjacency, int] | None:
        """``(r0, A'_{r != r0}, rows)`` for :meth:`linear`'s node-sum form (``rows``: those the whole line graph's
        :meth:`RelationalAdjacency.plan` would have, which choose between its single product and its blocks as
        without the node sums), or None where it saves no rows (bin ``r0`` has no more non-empty rows than the
        residue graph has nodes) or where the line graph is not complete (fewer or more edges than
        ``sum_j indeg(j) * outdeg(j)`` over pairs: not from :func:`~geoplm.graph.paired_line_graph`). Built once."""
        if not self._node_sum_decided:
            self._node_sum_decided = True
            line_graph = self.line_graph
            pair_in, pair_out, relation = line_graph.edge_list.unbind(1)
            if len(relation):
                node_in, node_out = line_graph.pair_node.unbind(1)
                n = max(line_graph.num_nodes, 1)
                degree_in = torch.bincount(node_out, minlength=n)
                degree_out = torch.bincount(node_in, minlength=n)
                complete = int((degree_in * degree_out).sum()) == len(relation)
                occupied = torch.zeros(self.num_pairs * self.num_relation, dtype=torch.bool, device=relation.device)
                occupied[pair_out * self.num_relation + relation] = True
                rows = occupied.view(self.num_pairs, self.num_relation).sum(0)
                r0 = int(rows.argmax())
                if complete and int(rows[r0]) > line_graph.num_nodes:
                    keep = torch.nonzero(relation != r0).squeeze(1)  # index_select: cheaper than a bool mask
                    reduced = RelationalAdjacency(
                        pair_out.index_select(0, keep), relation.index_select(0, keep), pair_in.index_select(0, keep),
                        self.num_pairs, self.num_relation, self.num_pairs,
                    )  # fmt: skip
                    self._node_sum = (r0, reduced, _planned_row_count(rows.tolist(), self.num_pairs))
        return self._node_sum

    def linear(self, input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """:meth:`RelationalAdjacency.linear` of the line graph: ``(E, d)`` -> ``(E, d_out)``, in the node-sum form
        (see the class) where :meth:`node_sum_plan` gives one: the same value up to float rounding, with the
        gradients autograd derives from it (``W_r0``'s: the node rows' product less the other bins').

        Raises:
            ValueError: as :meth:`RelationalAdjacency.linear`.
        """
        pooled = self._pool(input)
        plan = self.node_sum_plan() if self.NODE_SUM else None
        if plan is None:
            return self.pairs.linear(pooled, weight, bias).index_select(0, self.pair_of_edge)
        r0, reduced, full_rows = plan
        _check_relation_weight(weight, self.num_relation, input.shape[1])
        node_in, node_out = self.line_graph.pair_node.unbind(1)
        blocks = weight.unflatten(1, (self.num_relation, input.shape[1]))
        weight_r0 = blocks[:, r0]
        difference = (blocks - weight_r0.unsqueeze(1)).flatten(1)  # W_r - W_r0 (bin r0's block: zero, unused)
        node_sum = pooled.new_zeros(self.line_graph.num_nodes, pooled.shape[1]).index_add_(0, node_out, pooled)
        output = reduced.linear(pooled, difference, bias, planned_rows=full_rows)
        output = output + F.linear(node_sum, weight_r0).index_select(0, node_in)
        return output.index_select(0, self.pair_of_edge)

    def __call__(self, input: Tensor) -> Tensor:
        """``(E, d)`` -> ``(E, num_relation * d)`` per-relation sums (:meth:`RelationalAdjacency.__call__`).

        Raises:
            ValueError: if ``input`` does not have one row per edge.
        """
        return self.pairs(self._pool(input)).index_select(0, self.pair_of_edge)


def adjacency_of(graph: ResidueGraph | LineGraph | PairedLineGraph) -> RelationalAdjacency | PairedAdjacency:
    """The relational adjacency a layer aggregates ``graph`` with: a :class:`PairedAdjacency` for a
    :class:`~geoplm.graph.PairedLineGraph` (rows and columns: the original graph's edges), otherwise
    :meth:`RelationalAdjacency.from_graph`."""
    if isinstance(graph, PairedLineGraph):
        return PairedAdjacency(graph)
    return RelationalAdjacency.from_graph(graph)


def line_graph_adjacency(
    graph: ResidueGraph, num_angle_bin: int, line_graph: LineGraph | None = None
) -> tuple[LineGraph | PairedLineGraph, RelationalAdjacency | PairedAdjacency, Tensor]:
    """GearNet-Edge's edge-layer inputs: ``(line graph, its adjacency, its node feature)``, the node feature being
    ``graph.edge_feature`` ``(E, D_e)``. A given ``line_graph`` (:func:`~geoplm.graph.spatial_line_graph`) is used
    as it is; otherwise :func:`~geoplm.graph.paired_line_graph` with a :class:`PairedAdjacency` (the same sums,
    parallel edges multiplied once; :data:`PAIRED_LINE_GRAPH`)."""
    if line_graph is None and PAIRED_LINE_GRAPH:
        paired = paired_line_graph(graph, num_angle_bin)
        return paired, PairedAdjacency(paired), graph.edge_feature
    if line_graph is None:
        line_graph = spatial_line_graph(graph, num_angle_bin)
    return line_graph, RelationalAdjacency.from_graph(line_graph), line_graph.node_feature


class GeometricRelationalGraphConv(nn.Module):
    """torchdrug ``layers.GeometricRelationalGraphConv`` (sum aggregation, unnormalised):

    ``h_i' = act(BN(linear([sum_{j in N_r(i)} h_j (+ edge_linear(f_ji))]_{r=1..R}) + self_loop(h_i)))``

    Parameters (torchdrug names): ``self_loop`` ``Linear(input_dim, output_dim)``, ``linear``
    ``Linear(num_relation * input_dim, output_dim)`` (one matrix over the relation-concatenated
    aggregates = the paper's ``sum_r W_r``), optional ``edge_linear`` ``Linear(edge_input_dim,
    input_dim)`` and ``batch_norm`` ``BatchNorm1d(output_dim)``. ``graph`` is any object with
    ``num_nodes``, ``num_relation`` and ``edge_list`` (``(E, 3)`` ``[node_in, node_out, relation]``),
    e.g. a :class:`~geoplm.graph.ResidueGraph` or :class:`~geoplm.graph.LineGraph`; ``edge_linear``
    reads ``graph.edge_feature``.

    ``self_loop=False`` drops the ``self_loop`` term (and its parameters): the GearNet repository's
    re-definition of this layer (``gearnet/layer.py``, used by ``GearNetIEConv``; see
    :mod:`geoplm.models.gearnet_ieconv`) has none.
    """

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        num_relation: int,
        edge_input_dim: int | None = None,
        batch_norm: bool = False,
        activation: str | Callable[[Tensor], Tensor] | None = "relu",
        self_loop: bool = True,
    ):
        super().__init__()
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.num_relation = num_relation
        self.edge_input_dim = edge_input_dim
        self.batch_norm = nn.BatchNorm1d(output_dim) if batch_norm else None
        self.activation = getattr(F, activation) if isinstance(activation, str) else activation
        self.self_loop = nn.Linear(input_dim, output_dim) if self_loop else None
        self.linear = nn.Linear(num_relation * input_dim, output_dim)
        self.edge_linear = nn.Linear(edge_input_dim, input_dim) if edge_input_dim else None

    def message_and_aggregate(
        self,
        graph: ResidueGraph | LineGraph,
        input: Tensor,
        adjacency: RelationalAdjacency | PairedAdjacency | None = None,
    ) -> Tensor:
        """``input`` ``(N, input_dim)`` -> ``(N, num_relation * input_dim)`` per-relation sums of the
        neighbours' features (plus ``edge_linear`` of the edge features, summed the same way).
        ``adjacency``: :func:`adjacency_of` ``graph``, to reuse across layers.

        Raises:
            ValueError: if ``graph.num_relation`` differs from the layer's ``num_relation``.
        """
        if graph.num_relation != self.num_relation:
            raise ValueError(f"graph has {graph.num_relation} relations, layer expects {self.num_relation}")
        if isinstance(graph, PairedLineGraph) and self.edge_linear is not None:
            raise ValueError("a PairedLineGraph has no edge features for edge_linear")
        if adjacency is None:
            adjacency = adjacency_of(graph)
        update = adjacency(input)
        if self.edge_linear is not None:  # torchdrug: scatter_add of edge_linear(edge_feature), added after
            edge_update = self.edge_linear(graph.edge_feature.float())
            update = update + relational_aggregate(graph.edge_list, graph.num_nodes, self.num_relation, edge_update)
        return update

    def combine(self, input: Tensor, update: Tensor, norm_groups: Sequence[int] | None = None) -> Tensor:
        return self.finish(input, self.linear(update), norm_groups)

    def _post(self, output: Tensor, norm_groups: Sequence[int] | None = None) -> Tensor:
        if self.batch_norm is not None:
            output = grouped_batch_norm(self.batch_norm, output, norm_groups)
        if self.activation is not None:
            output = self.activation(output)
        return output

    def forward(
        self,
        graph: ResidueGraph | LineGraph | PairedLineGraph,
        input: Tensor,
        adjacency: RelationalAdjacency | PairedAdjacency | None = None,
        norm_groups: Sequence[int] | None = None,
    ) -> Tensor:
        """``input`` ``(N, input_dim)`` -> ``(N, output_dim)``; ``adjacency`` as in :meth:`message_and_aggregate`
        (a :class:`PairedAdjacency` for a :class:`~geoplm.graph.PairedLineGraph`, whose rows are the original
        graph's edges). Without ``edge_linear`` the aggregate and ``linear`` are fused
        (:meth:`RelationalAdjacency.linear`). ``norm_groups``: row counts of independent batches packed one after
        another, batch-normalised each on its own (:func:`grouped_batch_norm`)."""
        if self.edge_linear is not None:
            return self.combine(input, self.message_and_aggregate(graph, input, adjacency), norm_groups)
        if graph.num_relation != self.num_relation:
            raise ValueError(f"graph has {graph.num_relation} relations, layer expects {self.num_relation}")
        if adjacency is None:
            adjacency = adjacency_of(graph)
        return self.finish(input, adjacency.linear(input, self.linear.weight, self.linear.bias), norm_groups)

    def finish(self, input: Tensor, output: Tensor, norm_groups: Sequence[int] | None = None) -> Tensor:
        """The layer's output from ``output`` ``(N, output_dim)`` = ``linear`` of its aggregate of ``input``
        ``(N, input_dim)`` (computed by the caller): plus ``self_loop(input)``, batch norm, activation."""
        if self.self_loop is not None:
            output = output + self.self_loop(input)
        return self._post(output, norm_groups)


def grouped_batch_norm(norm: nn.BatchNorm1d, input: Tensor, groups: Sequence[int] | None) -> Tensor:
    """``norm(input)``; with ``groups`` (the row counts of independent batches packed one after another, summing to
    ``N``) ``norm`` applied to each group's rows on its own, in order: the statistics, outputs and running-average
    updates of one call per batch (multiview contrast's two views encoded in one pass normalise as torchdrug's
    two encoder calls do).

    Shapes: ``(N, C) -> (N, C)``.

    Raises:
        RuntimeError: ``groups`` do not sum to ``N`` (``Tensor.split``); in training, a group of one row (as a
            separate call would).
    """
    if groups is None:
        return norm(input)
    return torch.cat([norm(part) for part in input.split(list(groups))])


class GearNet(nn.Module):
    """Geometry-Aware Relational Graph Neural Network (torchdrug 0.2.1 ``models.GearNet``).

    Layer ``l`` (``h^(0) = input``), exactly in torchdrug's order::

        u      = act(BN_l^conv(linear_l([sum_{j in N_r(i)} h_j]_r) + self_loop_l(h_i)))   # conv
        u      = dropout(u)                                 # extension, identity for dropout=0
        u      = u + h            if short_cut and shapes match
        u      = u + act(linear_l([sum_{e=(j->i, r)} m_e^(l)]_r))    # GearNet-Edge only
        h^(l)  = BN_l(u)          if batch_norm

    with ``m^(l) = edge_layers[l](line_graph, m^(l-1))``, ``m^(0) = graph.edge_feature`` (the line
    graph's node feature; the edge layers' sums are computed over :func:`~geoplm.graph.paired_line_graph`, the
    same sums with parallel edges multiplied once and the widest-covering angle bin from node sums, see
    :class:`PairedAdjacency`). The paper's Eq. 1
    ``h_i^(l) = h_i^(l-1) + σ(BN(Σ_r W_r Σ_{j∈N_r(i)} h_j^(l-1)))`` is the ``short_cut`` form; torchdrug
    additionally has the ``self_loop`` linear, biases, and (with ``batch_norm``) a second, model-level
    BatchNorm after the residual.
    The edge update re-uses the node layer's ``linear`` (its weights are shared, as in torchdrug),
    hence ``edge_layers[l]`` outputs ``dims[l]`` (= the node layer's *input* width):
    ``edge_dims = [edge_input_dim] + dims[:-1]``. Both of ``linear_l``'s products are computed as one, over
    :meth:`RelationalAdjacency.stack` of the residue graph and its edge-to-node map (``[h; m^(l)]`` in, the two
    pre-activation outputs stacked out).

    Output: ``node_feature`` ``(N, D)`` (concatenation of all layers' ``h`` if ``concat_hidden``,
    else the last), ``graph_feature`` ``(B, D)`` (sum or mean over each graph's nodes).

    Torchdrug details kept on purpose:

    * the per-layer convs are built with ``edge_input_dim=None`` -- in torchdrug 0.2.1 GearNet the
      edge features only enter through the line graph. ``edge_input_dim`` is therefore ignored unless
      ``num_angle_bin`` is given (GearNet-Edge); GearNet-Edge requires both.
    * ``GeometricRelationalGraphConv`` sums messages per relation (no degree normalisation).
    * ``dropout`` is not in torchdrug's GearNet (the GearNet repo's ``GearNetIEConv`` applies it to
      the conv output before the short-cut; we do the same). ``nn.Dropout`` has no parameters, so the
      state dict is unaffected.

    state_dict mapping to torchdrug (identical names; inside a torchdrug task the keys carry the
    task's prefix, e.g. ``model.``, to strip):

    ==========================================  ==============================================
    here                                        torchdrug ``models.GearNet``
    ==========================================  ==============================================
    ``layers.{l}.self_loop.{weight,bias}``      same, ``(dims[l+1], dims[l])``
    ``layers.{l}.linear.{weight,bias}``         same, ``(dims[l+1], num_relation * dims[l])``
    ``layers.{l}.batch_norm.*``                 same (``batch_norm=True``; incl. running stats)
    ``batch_norms.{l}.*``                       same (``batch_norm=True``)
    ``edge_layers.{l}.self_loop.*``             same, ``(edge_dims[l+1], edge_dims[l])``
    ``edge_layers.{l}.linear.*``                same, ``(edge_dims[l+1], num_angle_bin * edge_dims[l])``
    ``edge_layers.{l}.batch_norm.*``            same (``batch_norm=True``)
    ==========================================  ==============================================

    Within ``layers.{l}.linear.weight`` the input columns are relation-major:
    ``[:, r * dims[l]:(r + 1) * dims[l]]`` is ``W_r`` (``node_out * num_relation + relation``
    flattening), matching torchdrug's layout. ``spatial_line_graph`` and the readout hold no
    parameters.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dims: int | Sequence[int],
        num_relation: int = 7,
        edge_input_dim: int | None = None,
        num_angle_bin: int | None = None,
        short_cut: bool = False,
        batch_norm: bool = False,
        activation: str | Callable[[Tensor], Tensor] = "relu",
        concat_hidden: bool = False,
        readout: str = "sum",
        dropout: float = 0.0,
    ):
        super().__init__()
        if not isinstance(hidden_dims, Sequence):
            hidden_dims = [hidden_dims]
        if num_angle_bin and not edge_input_dim:
            raise ValueError("GearNet-Edge (num_angle_bin) needs edge_input_dim (59 for edge_feature='gearnet')")
        if readout not in ("sum", "mean"):
            raise ValueError(f"Unknown readout {readout!r} (expected 'sum' or 'mean')")
        self.input_dim = input_dim
        self.output_dim = sum(hidden_dims) if concat_hidden else hidden_dims[-1]
        self.dims = [input_dim] + list(hidden_dims)
        self.edge_dims = [edge_input_dim] + self.dims[:-1]
        self.num_relation = num_relation
        self.num_angle_bin = num_angle_bin
        self.short_cut = short_cut
        self.concat_hidden = concat_hidden
        self.batch_norm = batch_norm
        self.readout = readout

        self.layers = nn.ModuleList(
            GeometricRelationalGraphConv(self.dims[i], self.dims[i + 1], num_relation, None, batch_norm, activation)
            for i in range(len(self.dims) - 1)
        )
        if num_angle_bin:
            self.edge_layers = nn.ModuleList(
                GeometricRelationalGraphConv(
                    self.edge_dims[i], self.edge_dims[i + 1], num_angle_bin, None, batch_norm, activation
                )
                for i in range(len(self.edge_dims) - 1)
            )
        if batch_norm:
            self.batch_norms = nn.ModuleList(nn.BatchNorm1d(d) for d in self.dims[1:])
        self.dropout = nn.Dropout(dropout)

    #: :meth:`forward` takes ``norm_groups`` (several independent batches encoded in one pass)
    accepts_norm_groups = True

    def forward(
        self,
        graph: ResidueGraph,
        input: Tensor,
        line_graph: LineGraph | None = None,
        norm_groups: Sequence[int] | None = None,
    ) -> dict[str, Tensor]:
        """``graph``: a :class:`~geoplm.graph.ResidueGraph` with ``num_relation`` relations (and, for
        GearNet-Edge, ``edge_feature`` of width ``edge_input_dim``); ``input``: ``(N, input_dim)``
        node features (21-d residue one-hot, :func:`geoplm.graph.residue_one_hot`). ``line_graph``
        may be passed to reuse a precomputed :func:`~geoplm.graph.spatial_line_graph`; without it the edge layers
        run over :func:`~geoplm.graph.paired_line_graph` (:class:`PairedAdjacency`: the same sums, parallel edges
        multiplied once).

        ``norm_groups``: the node counts of independent packed batches concatenated in ``graph`` (nodes, graphs and
        edges of each after those of the previous, :func:`geoplm.graph.cat_graphs`): every batch norm (node and
        edge layers, and after each layer) normalises each batch's nodes, or edges, on its own
        (:func:`grouped_batch_norm`), so the outputs are those of one call per batch, up to float rounding (the
        dense products run over all rows at once).

        Raises:
            ValueError: the graph's relations differ from the model's; ``norm_groups`` do not add up to the nodes,
                or the edges are not grouped with their target nodes' batch."""
        if graph.num_relation != self.num_relation:
            raise ValueError(f"graph has {graph.num_relation} relations, model expects {self.num_relation}")
        edge_groups = None
        if norm_groups is not None:
            norm_groups = [int(g) for g in norm_groups]
            if sum(norm_groups) != graph.num_nodes:
                raise ValueError(f"norm_groups {norm_groups} do not add up to the graph's {graph.num_nodes} nodes")
            group = torch.repeat_interleave(torch.arange(len(norm_groups)), torch.tensor(norm_groups))
            edge_group = group[graph.edge_list[:, 1].cpu()]
            if len(edge_group) > 1 and bool((edge_group.diff() < 0).any()):
                raise ValueError("the edges of norm_groups' batches must follow one another, as their nodes do")
            edge_groups = torch.bincount(edge_group, minlength=len(norm_groups)).tolist()
        hiddens = []
        layer_input = input
        # sparse adjacencies built once per call and shared by all layers (and their backward passes)
        adjacency = RelationalAdjacency.from_graph(graph)
        if self.num_angle_bin:
            line_graph, line_adjacency, edge_input = line_graph_adjacency(graph, self.num_angle_bin, line_graph)
            edge_input = edge_input.to(input.dtype if input.is_floating_point() else torch.float32)
            # the node layer's aggregate and the edge update share the layer's linear: one stacked product
            both = RelationalAdjacency.stack(adjacency, RelationalAdjacency.edge_to_node(graph))

        for i, layer in enumerate(self.layers):
            if self.num_angle_bin:
                edge_hidden = self.edge_layers[i](line_graph, edge_input, line_adjacency, edge_groups)
                outputs = both.linear(torch.cat([layer_input, edge_hidden]), layer.linear.weight, layer.linear.bias)
                hidden = self.dropout(layer.finish(layer_input, outputs[: graph.num_nodes], norm_groups))
                update = outputs[graph.num_nodes :]
            else:
                hidden = self.dropout(layer(graph, layer_input, adjacency, norm_groups))
            if self.short_cut and hidden.shape == layer_input.shape:
                hidden = hidden + layer_input
            if self.num_angle_bin:
                if layer.activation is not None:
                    update = layer.activation(update)
                hidden = hidden + update
                edge_input = edge_hidden
            if self.batch_norm:
                hidden = grouped_batch_norm(self.batch_norms[i], hidden, norm_groups)
            hiddens.append(hidden)
            layer_input = hidden

        node_feature = torch.cat(hiddens, dim=-1) if self.concat_hidden else hiddens[-1]
        graph_feature = readout(node_feature, graph.node2graph, graph.batch_size, self.readout)
        return {"graph_feature": graph_feature, "node_feature": node_feature}
