"""Compiled kernels behind :mod:`geoplm.graph`: cell-list neighbour search, kNN, GearNet edge assembly
and edge features (numba, ``nogil`` so that :func:`geoplm.graph.build_gearnet_graph` can run proteins on
several threads).

Everything here works on CPU numpy arrays of one dtype (float32 or float64 positions, int64 indices) and
on a packed batch described by ``bounds`` (``(B + 1,)`` int64, the first node of every graph and the total
node count). The semantics (what is a neighbour, how ties and the radius cap are resolved, the edge order
and the edge-feature layout) are documented in :mod:`geoplm.graph` and follow torch_cluster's CUDA kernels
and torchdrug 0.2.1's ``GraphConstruction``; this module only makes them fast.

Method
------
Each graph gets its own uniform grid (a cell list, the linked-cell method of molecular simulation: Allen &
Tildesley, *Computer Simulation of Liquids*, ch. 5): cells at least as wide as the search radius, enlarged
when the bounding box would need more than ``64 m + 4096`` cells for ``m`` nodes. A node's neighbours within
the radius lie in the 27 cells around its own. Squared distances are computed exactly as
``dx*dx + dy*dy + dz*dz`` in the positions' dtype (no fused multiply-adds: numba compiles without
fast-math), and every decision (``d2 < r^2``, ranks, ties) is taken on those values. Neighbour lists are
kept in ascending node index, which gives torch_cluster's cap (the lowest indices) and the edge order.

kNN: a node with at least ``k`` nodes within the radius (itself included) takes its ``k`` nearest from
that list. Otherwise the search widens ring by ring (the cells within Chebyshev distance ``m`` of its own,
``m = 1, 2, ...``), which contains every node closer than ``m`` cell widths; it stops once ``k`` gathered
nodes are clearly (``d2 (1 + 1e-5) + 1e-4 < (m w)^2``) inside that sphere, or the whole grid is gathered.
The ``k`` smallest by ``(d2, node index)`` among the gathered nodes are then exact, ties included.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = [
    "csr_transpose",
    "edge_features",
    "gearnet_edges",
    "knn_lists",
    "line_graph_pairs",
    "radius_lists",
    "relation_major_csr",
]

_JIT = dict(cache=True, nogil=True)


@njit(**_JIT)
def _grow(array, size):
    """``array`` if it holds ``size`` entries, else a copy at least twice as long."""
    if size <= array.shape[0]:
        return array
    grown = np.empty(max(size, 2 * array.shape[0]), array.dtype)
    grown[: array.shape[0]] = array
    return grown


@njit(**_JIT)
def _largest_graph(bounds):
    """Node count of the largest graph of ``bounds`` (0 for none)."""
    largest = 0
    for g in range(bounds.shape[0] - 1):
        largest = max(largest, bounds[g + 1] - bounds[g])
    return largest


@njit(**_JIT)
def _grid(xyz, start, end, width):
    """Cell list of nodes ``start .. end - 1``.

    Returns ``(width, dims (3,), cell (m, 3) per-node cell coordinates, cell_start (C + 1,), members (m,))``:
    the nodes of cell ``c`` are ``members[cell_start[c]:cell_start[c + 1]]``, ascending. ``width`` is doubled
    until the grid has at most ``64 m + 4096`` cells.
    """
    m = end - start
    lo = np.full(3, np.inf)
    hi = np.full(3, -np.inf)
    for i in range(start, end):
        for a in range(3):
            v = float(xyz[i, a])
            lo[a] = min(lo[a], v)
            hi[a] = max(hi[a], v)
    while True:  # counted in floating point first: a huge bounding box must not overflow the cell index
        cells = 1.0
        for a in range(3):
            cells *= np.floor((hi[a] - lo[a]) / width) + 1
        if cells <= 64 * m + 4096:
            break
        width *= 2.0
    dims = np.empty(3, np.int64)
    total = 1
    for a in range(3):
        dims[a] = int((hi[a] - lo[a]) / width) + 1
        total *= dims[a]
    cell = np.empty((m, 3), np.int64)
    cell_start = np.zeros(total + 1, np.int64)
    flat = np.empty(m, np.int64)
    for i in range(m):
        c = 0
        for a in range(3):
            k = min(int((float(xyz[start + i, a]) - lo[a]) / width), dims[a] - 1)
            cell[i, a] = k
            c = c * dims[a] + k
        flat[i] = c
        cell_start[c + 1] += 1
    for c in range(total):
        cell_start[c + 1] += cell_start[c]
    fill = cell_start[:-1].copy()
    members = np.empty(m, np.int64)
    for i in range(m):
        members[fill[flat[i]]] = start + i
        fill[flat[i]] += 1
    return width, dims, cell, cell_start, members


@njit(**_JIT)
def _block_count(first, last, dims, cell, cell_start, ring):
    """Number of nodes in the cells within Chebyshev distance ``ring`` of the cells ``cell[first:last]``
    (summed over those rows): an upper bound on what a search over those cells can return."""
    total = 0
    for i in range(first, last):
        cx, cy, cz = cell[i, 0], cell[i, 1], cell[i, 2]
        for ax in range(max(cx - ring, 0), min(cx + ring + 1, dims[0])):
            for ay in range(max(cy - ring, 0), min(cy + ring + 1, dims[1])):
                for az in range(max(cz - ring, 0), min(cz + ring + 1, dims[2])):
                    c = (ax * dims[1] + ay) * dims[2] + az
                    total += cell_start[c + 1] - cell_start[c]
    return total


@njit(**_JIT)
def _sort_by_index(index, d2, start, end):
    """Insertion sort of ``index[start:end]`` (carrying ``d2``) into ascending order."""
    for p in range(start + 1, end):
        j, d = index[p], d2[p]
        q = p - 1
        while q >= start and index[q] > j:
            index[q + 1] = index[q]
            d2[q + 1] = d2[q]
            q -= 1
        index[q + 1] = j
        d2[q + 1] = d
    return index


@njit(**_JIT)
def _select(index, d2, start, end, k, out_index, out_d2, fill):
    """Write the ``k`` smallest of ``(d2, index)[start:end]`` (by ``d2``, then lower index; any input order)
    to ``out_*[fill:]`` in ascending index; returns the new fill."""
    size = 0
    for p in range(start, end):
        d, j = d2[p], index[p]
        if size == k and not (d < out_d2[fill + k - 1] or (d == out_d2[fill + k - 1] and j < out_index[fill + k - 1])):
            continue
        # insert into out[fill : fill + size], kept sorted by (d2, index)
        q = fill + (size - 1 if size < k else k - 2)
        while q >= fill and (out_d2[q] > d or (out_d2[q] == d and out_index[q] > j)):
            out_d2[q + 1] = out_d2[q]
            out_index[q + 1] = out_index[q]
            q -= 1
        out_d2[q + 1] = d
        out_index[q + 1] = j
        if size < k:
            size += 1
    _sort_by_index(out_index, out_d2, fill, fill + size)
    return fill + size


@njit(**_JIT)
def _ring(xyz, i, start, width, dims, cell, cell_start, members, k, ring, buf_index, buf_d2):
    """Gather candidates for the ``k`` nearest of node ``i`` ring by ring (see the module docstring), from
    ring ``ring`` on.

    Returns ``count``: the candidates written to ``buf_index`` / ``buf_d2`` (in no particular order) that
    contain the ``k`` nearest. The buffers must hold the node's whole graph: each node is gathered once."""
    cx, cy, cz = cell[i - start, 0], cell[i - start, 1], cell[i - start, 2]
    reach = max(cx, dims[0] - 1 - cx, cy, dims[1] - 1 - cy, cz, dims[2] - 1 - cz)
    ring = min(ring, max(reach, 1))
    while True:
        count = 0
        inside = 0
        bound = (ring * width) * (ring * width)
        for ax in range(max(cx - ring, 0), min(cx + ring + 1, dims[0])):
            for ay in range(max(cy - ring, 0), min(cy + ring + 1, dims[1])):
                for az in range(max(cz - ring, 0), min(cz + ring + 1, dims[2])):
                    c = (ax * dims[1] + ay) * dims[2] + az
                    for p in range(cell_start[c], cell_start[c + 1]):
                        j = members[p]
                        dx = xyz[j, 0] - xyz[i, 0]
                        dy = xyz[j, 1] - xyz[i, 1]
                        dz = xyz[j, 2] - xyz[i, 2]
                        d = dx * dx + dy * dy + dz * dz
                        buf_index[count] = j
                        buf_d2[count] = d
                        count += 1
                        if float(d) * (1 + 1e-5) + 1e-4 < bound:
                            inside += 1
        if inside >= k or ring >= reach:
            return count
        ring += 1


@njit(**_JIT)
def radius_lists(xyz, bounds, r2, width, k, query):
    """Neighbours within the radius, and (for ``k > 0``) the ``k`` nearest, of every queried node.

    Args:
        xyz: ``(n, 3)`` positions (Å), float32 or float64.
        bounds: ``(B + 1,)`` int64 first node of each graph, then ``n``.
        r2: squared radius in ``xyz``'s dtype; pairs with ``d2 < r2`` count (the node itself included).
        width: cell width (Å), at least the radius (slightly enlarged, see :mod:`geoplm.graph`).
        k: nearest nodes per node, itself included (0: none).
        query: ``(n,)`` bool, the nodes whose lists are searched (among all nodes of their graph); the others get
            empty lists.

    Returns:
        ``(indptr, index, d2, knn_indptr, knn_index, knn_d2)``: CSR lists per node (target) of its
        sources, each in ascending node index, with their squared distances.
    """
    n = xyz.shape[0]
    indptr = np.zeros(n + 1, np.int64)
    index = np.empty(32 * n + 16, np.int64)
    d2 = np.empty(32 * n + 16, xyz.dtype)
    knn_indptr = np.zeros(n + 1, np.int64)
    knn_index = np.empty(max(k, 0) * n, np.int64)
    knn_d2 = np.empty(max(k, 0) * n, xyz.dtype)
    # ring-search buffers: one slot per node of the largest graph
    largest = _largest_graph(bounds)
    buf_index = np.empty(largest, np.int64)
    buf_d2 = np.empty(largest, xyz.dtype)
    fill = 0
    knn_fill = 0
    for g in range(bounds.shape[0] - 1):
        start, end = bounds[g], bounds[g + 1]
        if end <= start:
            continue
        w, dims, cell, cell_start, members = _grid(xyz, start, end, width)
        needed = fill + _block_count(0, end - start, dims, cell, cell_start, 1)
        if needed > index.shape[0]:  # grown once per graph, never inside the distance loop
            index = _grow(index, needed)
            d2 = _grow(d2, needed)
        for i in range(start, end):
            row = fill
            if not query[i]:
                indptr[i + 1] = fill
                knn_indptr[i + 1] = knn_fill
                continue
            x, y, z = xyz[i, 0], xyz[i, 1], xyz[i, 2]
            cx, cy, cz = cell[i - start, 0], cell[i - start, 1], cell[i - start, 2]
            for ax in range(max(cx - 1, 0), min(cx + 2, dims[0])):
                for ay in range(max(cy - 1, 0), min(cy + 2, dims[1])):
                    for az in range(max(cz - 1, 0), min(cz + 2, dims[2])):
                        c = (ax * dims[1] + ay) * dims[2] + az
                        for p in range(cell_start[c], cell_start[c + 1]):
                            j = members[p]
                            dx = xyz[j, 0] - x
                            dy = xyz[j, 1] - y
                            dz = xyz[j, 2] - z
                            d = dx * dx + dy * dy + dz * dz
                            # written unconditionally, kept by advancing: no branch to mispredict
                            index[fill] = j
                            d2[fill] = d
                            fill += d < r2
            _sort_by_index(index, d2, row, fill)
            indptr[i + 1] = fill
            if k <= 0:
                continue
            if fill - row >= k:
                knn_fill = _select(index, d2, row, fill, k, knn_index, knn_d2, knn_fill)
            else:
                count = _ring(xyz, i, start, w, dims, cell, cell_start, members, k, 2, buf_index, buf_d2)
                knn_fill = _select(buf_index, buf_d2, 0, count, k, knn_index, knn_d2, knn_fill)
            knn_indptr[i + 1] = knn_fill
    return indptr, index[:fill], d2[:fill], knn_indptr, knn_index[:knn_fill], knn_d2[:knn_fill]


@njit(**_JIT)
def _knn_width(xyz, start, end, k):
    """A cell width (Å) at which the 27 cells around most nodes of ``start .. end - 1`` hold their ``k``
    nearest: the radius of a sphere holding ``k`` nodes at the density of the occupied cells (estimated
    twice, starting from the bounding box filled evenly)."""
    m = end - start
    volume = 1.0
    for a in range(3):
        lo, hi = np.inf, -np.inf
        for i in range(start, end):
            lo = min(lo, float(xyz[i, a]))
            hi = max(hi, float(xyz[i, a]))
        volume *= max(hi - lo, 1e-3)
    width = (volume * k / m) ** (1 / 3)
    for _ in range(2):
        width, dims, cell, cell_start, members = _grid(xyz, start, end, width)
        occupied = 0
        for c in range(cell_start.shape[0] - 1):
            occupied += cell_start[c + 1] > cell_start[c]
        density = m / (occupied * width**3)
        width = (k / (4 / 3 * np.pi * density)) ** (1 / 3)
    return width


@njit(**_JIT)
def knn_lists(xyz, bounds, k, width=0.0):
    """The ``k`` nearest nodes of every node (itself included) by ``(d2, node index)``, within its graph.

    Args:
        xyz: ``(n, 3)`` positions (Å), float32 or float64.
        bounds: ``(B + 1,)`` int64 first node of each graph, then ``n``.
        k: neighbours per node (> 0); graphs with at most ``k`` nodes give all their nodes.
        width: cell width (Å); ``0``: chosen per graph (:func:`_knn_width`). Any width gives the same
            (exact) result; it only changes the speed.

    Returns:
        ``(indptr, index, d2)``: per node (target) its ``k`` sources in ascending node index.
    """
    n = xyz.shape[0]
    indptr = np.zeros(n + 1, np.int64)
    index = np.empty(k * n, np.int64)
    d2 = np.empty(k * n, xyz.dtype)
    largest = _largest_graph(bounds)
    buf_index = np.empty(largest, np.int64)
    buf_d2 = np.empty(largest, xyz.dtype)
    fill = 0
    for g in range(bounds.shape[0] - 1):
        start, end = bounds[g], bounds[g + 1]
        m = end - start
        if m <= 0:
            continue
        w = width if width > 0 else _knn_width(xyz, start, end, k)
        w, dims, cell, cell_start, members = _grid(xyz, start, end, w)
        for i in range(start, end):
            count = _ring(xyz, i, start, w, dims, cell, cell_start, members, k, 1, buf_index, buf_d2)
            fill = _select(buf_index, buf_d2, 0, count, k, index, d2, fill)
            indptr[i + 1] = fill
    return indptr, index[:fill], d2[:fill]


@njit(**_JIT)
def gearnet_edges(
    bounds,
    chain,
    max_distance,
    indptr,
    index,
    d2,
    limit,
    knn_indptr,
    knn_index,
    knn_d2,
    min_distance,
    eps2,
    keep,
):
    """GearNet's edges ``(node_in, node_out, relation)`` sorted by ``(graph, relation, node_out, node_in)``.

    Relations ``0 .. 2 d`` are ``SequentialEdge(d)`` (``node_out = node_in + relation - d``, same graph and
    ``chain``), ``2 d + 1`` the radius lists (the first ``limit`` of each list, counting the node itself;
    ``limit < 0``: all) and ``2 d + 2`` the kNN lists; both geometric relations drop the node itself, pairs
    with ``|node_in - node_out| < min_distance`` and pairs with ``d2 < eps2``. Only edges between two nodes of
    ``keep`` ``(n,)`` bool are given (the lists of the other nodes may be left empty: :func:`radius_lists`'
    ``query``), in the order they have in the whole graph.
    """
    n = indptr.shape[0] - 1
    size = (2 * max_distance + 1) * n + indptr[n] + knn_indptr[n]
    node_in = np.empty(size, np.int64)
    node_out = np.empty(size, np.int64)
    relation = np.empty(size, np.int64)
    fill = 0
    for g in range(bounds.shape[0] - 1):
        start, end = bounds[g], bounds[g + 1]
        for offset in range(-max_distance, max_distance + 1):
            for i in range(max(start, start + offset), min(end, end + offset)):
                j = i - offset
                if chain[i] == chain[j] and keep[i] and keep[j]:
                    node_in[fill] = j
                    node_out[fill] = i
                    relation[fill] = offset + max_distance
                    fill += 1
        for kind in range(2):
            ptr, nbr, dist = (indptr, index, d2) if kind == 0 else (knn_indptr, knn_index, knn_d2)
            for i in range(start, end):
                if not keep[i]:
                    continue
                stop = ptr[i + 1] if kind == 1 or limit < 0 else min(ptr[i + 1], ptr[i] + limit)
                for p in range(ptr[i], stop):
                    j = nbr[p]
                    if j != i and keep[j] and abs(i - j) >= min_distance and not dist[p] < eps2:
                        node_in[fill] = j
                        node_out[fill] = i
                        relation[fill] = 2 * max_distance + 1 + kind
                        fill += 1
    return node_in[:fill], node_out[:fill], relation[:fill]


@njit(**_JIT)
def edge_features(node_in, node_out, relation, xyz, residue_type, num_relation, num_type, max_seq_dist, gearnet, out):
    """Fill ``out`` (E, D) with torchdrug's ``edge_residue_type`` (``gearnet`` false: D = 2 * num_type) or
    ``edge_gearnet`` feature (D = 2 * num_type + num_relation + max_seq_dist + 2; see :mod:`geoplm.graph`).
    Residue types ``>= num_type`` are encoded as type 0, as torchdrug does."""
    width = out.shape[1]
    for e in range(node_in.shape[0]):
        for c in range(width):
            out[e, c] = 0
        a, b = residue_type[node_in[e]], residue_type[node_out[e]]
        out[e, a if a < num_type else 0] = 1
        out[e, num_type + (b if b < num_type else 0)] = 1
        if gearnet:
            out[e, 2 * num_type + relation[e]] = 1
            out[e, 2 * num_type + num_relation + min(abs(node_in[e] - node_out[e]), max_seq_dist)] = 1
            dx = xyz[node_in[e], 0] - xyz[node_out[e], 0]
            dy = xyz[node_in[e], 1] - xyz[node_out[e], 1]
            dz = xyz[node_in[e], 2] - xyz[node_out[e], 2]
            out[e, width - 1] = np.sqrt(dx * dx + dy * dy + dz * dz)
    return out


# --- sparse relational adjacencies (geoplm.models.gearnet.RelationalAdjacency) ---------------------------


@njit(**_JIT)
def relation_major_csr(row, col, num_target, num_relation, num_source):
    """The non-empty rows of a relational adjacency in relation-major order, as CSR with edge multiplicities.

    ``row`` ``(E,)`` int64 ``target * num_relation + relation`` (torchdrug's flattening), ``col`` ``(E,)`` int64
    source in ``[0, num_source)``. Row ``relation * num_target + target`` of the relation-major matrix counts the
    pairs ``(row, col)``. Two stable counting sorts (by ``col``, then by relation-major row), ``O(E + num_target *
    num_relation + num_source)``; the same matrix as sorting the keys ``row' * num_source + col`` and counting
    equal keys (what :func:`geoplm.models.gearnet._csr` does with ``np.sort``), without the sort.

    Returns ``(kept, start, column, count)``: ``kept`` ``(K,)`` the relation-major indices of the non-empty rows,
    ascending; ``start`` ``(K + 1,)`` their CSR offsets; ``column`` ``(M,)`` ascending within each row; ``count``
    ``(M,)`` int64 multiplicities (``M <= E``).
    """
    num_edges = row.shape[0]
    num_rows = num_target * num_relation
    col_start = np.zeros(num_source + 1, np.int64)
    for e in range(num_edges):
        col_start[col[e] + 1] += 1
    for c in range(num_source):
        col_start[c + 1] += col_start[c]
    by_col = np.empty(num_edges, np.int64)
    for e in range(num_edges):
        by_col[col_start[col[e]]] = e
        col_start[col[e]] += 1
    key = np.empty(num_edges, np.int64)
    row_start = np.zeros(num_rows + 1, np.int64)
    for e in range(num_edges):
        k = (row[e] % num_relation) * num_target + row[e] // num_relation
        key[e] = k
        row_start[k + 1] += 1
    for r in range(num_rows):
        row_start[r + 1] += row_start[r]
    order = np.empty(num_edges, np.int64)
    fill = row_start[:-1].copy()
    for i in range(num_edges):
        e = by_col[i]
        order[fill[key[e]]] = e
        fill[key[e]] += 1
    kept = np.empty(num_rows, np.int64)
    start = np.empty(num_rows + 1, np.int64)
    column = np.empty(num_edges, np.int64)
    count = np.empty(num_edges, np.int64)
    num_kept = 0
    m = 0
    for r in range(num_rows):
        a, b = row_start[r], row_start[r + 1]
        if a == b:
            continue
        kept[num_kept] = r
        start[num_kept] = m
        num_kept += 1
        previous = -1
        for i in range(a, b):
            c = col[order[i]]
            if c == previous:
                count[m - 1] += 1
            else:
                column[m] = c
                count[m] = 1
                m += 1
                previous = c
    start[num_kept] = m
    return kept[:num_kept], start[: num_kept + 1], column[:m], count[:m]


@njit(**_JIT)
def csr_transpose(start, column, num_columns):
    """Transpose of the ``(R, num_columns)`` CSR pattern ``(start (R + 1,), column (M,))``: ``(crow
    (num_columns + 1,), row (M,), position (M,))`` with ``row`` ascending within each column and ``position`` the
    index of each entry in the input (to carry its value). A stable counting sort by column, ``O(M + R +
    num_columns)``."""
    num_rows = start.shape[0] - 1
    m = column.shape[0]
    crow = np.zeros(num_columns + 1, np.int64)
    for i in range(m):
        crow[column[i] + 1] += 1
    for c in range(num_columns):
        crow[c + 1] += crow[c]
    fill = crow[:-1].copy()
    row = np.empty(m, np.int64)
    position = np.empty(m, np.int64)
    for r in range(num_rows):
        for i in range(start[r], start[r + 1]):
            p = fill[column[i]]
            row[p] = r
            position[p] = i
            fill[column[i]] += 1
    return crow, row, position


@njit(**_JIT)
def line_graph_pairs(node_in, node_out, num_nodes):
    """The edge pairs of GearNet-Edge's spatial line graph (:func:`geoplm.graph.spatial_line_graph`).

    For every node ``j`` (ascending), every incoming edge ``a = (k -> j)`` (ascending index) and every outgoing
    edge ``b = (j -> i)`` (ascending index): ``(a, b)`` with its nodes ``i, j, k``. Two counting sorts and one
    pass, ``O(N + E + pairs)``. Returns ``(edge_a, edge_b, node_i, node_j, node_k)``, int64 of length
    ``sum_j indeg(j) outdeg(j)``.
    """
    num_edges = node_in.shape[0]
    in_start = np.zeros(num_nodes + 1, np.int64)
    out_start = np.zeros(num_nodes + 1, np.int64)
    for e in range(num_edges):
        in_start[node_out[e] + 1] += 1
        out_start[node_in[e] + 1] += 1
    total = 0
    for j in range(num_nodes):
        total += in_start[j + 1] * out_start[j + 1]
        in_start[j + 1] += in_start[j]
        out_start[j + 1] += out_start[j]
    incoming = np.empty(num_edges, np.int64)
    outgoing = np.empty(num_edges, np.int64)
    in_fill = in_start[:-1].copy()
    out_fill = out_start[:-1].copy()
    for e in range(num_edges):
        incoming[in_fill[node_out[e]]] = e
        in_fill[node_out[e]] += 1
        outgoing[out_fill[node_in[e]]] = e
        out_fill[node_in[e]] += 1
    edge_a = np.empty(total, np.int64)
    edge_b = np.empty(total, np.int64)
    node_i = np.empty(total, np.int64)
    node_j = np.empty(total, np.int64)
    node_k = np.empty(total, np.int64)
    fill = 0
    for j in range(num_nodes):
        for p in range(in_start[j], in_start[j + 1]):
            a = incoming[p]
            for q in range(out_start[j], out_start[j + 1]):
                b = outgoing[q]
                edge_a[fill] = a
                edge_b[fill] = b
                node_i[fill] = node_out[b]
                node_j[fill] = j
                node_k[fill] = node_in[a]
                fill += 1
    return edge_a, edge_b, node_i, node_j, node_k
