"""Tests of geoplm.graph against brute-force numpy re-derivations of torchdrug 0.2.1's graph
construction (SequentialEdge / SpatialEdge / KNNEdge / edge_gearnet / SpatialLineGraph), on real
AlphaFold / PDB structures read with Biopython."""

from __future__ import annotations

import gzip
import math
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shared_data_dir

from geoplm import graph as G

# torchdrug residue ids (Protein.residue2id), 20 = unknown
_RESIDUE_IDS = {
    name: i
    for i, name in enumerate("GLY ALA SER PRO VAL THR CYS ILE LEU ASN ASP GLN LYS GLU MET HIS PHE ARG TYR TRP".split())
}


def _data_dir() -> Path:
    return shared_data_dir()


@cache
def _load(relpath: str, first_model_only: bool = True):
    """(Cα positions float32 (N, 3), residue ids (N,), chain index (N,)) of residues with a Cα."""
    from Bio.PDB import MMCIFParser, PDBParser

    path = _data_dir() / relpath
    if not path.exists():
        pytest.skip(f"{path} missing")
    parser = MMCIFParser(QUIET=True) if ".cif" in path.name else PDBParser(QUIET=True)
    if path.suffix == ".gz":
        with gzip.open(path, "rt") as handle:
            structure = parser.get_structure("s", handle)
    else:
        structure = parser.get_structure("s", str(path))
    model = next(iter(structure))
    pos, rtype, chain = [], [], []
    for c, ch in enumerate(model):
        for res in ch:
            if res.id[0] != " " or "CA" not in res:
                continue
            pos.append(res["CA"].coord)
            rtype.append(_RESIDUE_IDS.get(res.get_resname(), 20))
            chain.append(c)
    return (
        torch.tensor(np.array(pos), dtype=torch.float32),
        torch.tensor(rtype, dtype=torch.long),
        torch.tensor(chain, dtype=torch.long),
    )


P53 = "alphafold/AF-P04637-F1-model_v4.pdb"  # 393 residues
SMALL = "alphafold/AF-P76011-F1-model_v4.pdb"  # 84 residues
MEDIUM = "alphafold/AF-A0A1W2PQ64-F1-model_v4.pdb"  # 194 residues
HUGE = "alphafold/AF-Q9P273-F1-model_v4.pdb"  # 2,699 residues
HEMOGLOBIN = "pdb/4hhb.pdb"  # 4 chains
XRAY_CAPPED = "chains/1EWY_l_u.pdb"  # 98 residues, up to 35 Cα within 10 Å of a Cα (itself included)


# ---------------------------------------------------------------------------------------------
# brute-force references (numpy, O(N^2)), following torch_cluster's CUDA kernels


def _d2(pos: np.ndarray) -> np.ndarray:
    """float32 squared distances summed dx*dx + dy*dy + dz*dz (as the kernels and geoplm do)."""
    diff = pos[None, :, :] - pos[:, None, :]  # [target, source]
    return diff[..., 0] * diff[..., 0] + diff[..., 1] * diff[..., 1] + diff[..., 2] * diff[..., 2]


def _bf_radius(pos: np.ndarray, r: float, cap: int | None = None) -> set[tuple[int, int]]:
    d2 = _d2(pos)
    edges = set()
    for i in range(len(pos)):
        within = np.nonzero(d2[i] < np.float32(r * r))[0]  # ascending index, includes i
        if cap is not None:
            within = within[: cap + 1]
        edges.update((int(j), i) for j in within if j != i)
    return edges


def _bf_knn(pos: np.ndarray, k: int) -> set[tuple[int, int]]:
    d2 = _d2(pos)
    edges = set()
    idx = np.arange(len(pos))
    for i in range(len(pos)):
        order = np.lexsort((idx, d2[i]))[: k + 1]  # by distance, ties -> lower index; includes i
        edges.update((int(j), i) for j in order if j != i)
    return edges


def _gearnet_reference(pos: np.ndarray, cap: int | None = 32) -> set[tuple[int, int, int]]:
    n = len(pos)
    edges = {(i, i + o, o + 2) for o in range(-2, 3) for i in range(n) if 0 <= i + o < n}
    d = np.sqrt(_d2(pos).astype(np.float64))
    for rel, pairs in ((5, _bf_radius(pos, 10.0, cap)), (6, _bf_knn(pos, 10))):
        edges |= {(j, i, rel) for j, i in pairs if abs(i - j) >= 5 and d[i, j] >= 1e-10}
    return edges


def _edge_set(edge_list: torch.Tensor) -> set[tuple[int, ...]]:
    return {tuple(e) for e in edge_list.tolist()}


# ---------------------------------------------------------------------------------------------


def test_gearnet_graph_matches_brute_force_on_p53():
    pos, rtype, _ = _load(P53)
    g = G.build_gearnet_graph(pos, rtype)
    n = len(pos)
    assert g.num_nodes == n and g.batch_size == 1 and g.num_relation == 7
    edges = _edge_set(g.edge_list)
    assert len(edges) == g.num_edges  # no duplicate (node_in, node_out, relation)
    assert edges == _gearnet_reference(pos.numpy())

    # sequential relations: offset o = node_out - node_in in -2..2 -> relation o + 2, incl. self loops
    counts = torch.bincount(g.edge_list[:, 2], minlength=7).tolist()
    assert counts[:5] == [n - 2, n - 1, n, n - 1, n - 2]
    seq = g.edge_list[g.edge_list[:, 2] < 5]
    assert torch.equal(seq[:, 1] - seq[:, 0] + 2, seq[:, 2])
    assert ((seq[:, 2] == 2) == (seq[:, 0] == seq[:, 1])).all()

    # spatial = every pair within 10 Å with |i - j| >= 5, in both directions (cap inactive here)
    d = torch.cdist(pos.double(), pos.double())
    ii, jj = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    expected = {(j, i) for i, j in zip(*np.nonzero(((d < 10) & ((ii - jj).abs() >= 5)).numpy()), strict=True)}
    spatial = {(a, b) for a, b, r in edges if r == 5}
    assert spatial == expected
    assert all((b, a) in spatial for a, b in spatial)
    # no pair so close to the threshold that float32 rounding could flip it
    assert not ((d - 10).abs() < 1e-5).any()

    # kNN: <= 10 in-edges per node, after the |i - j| >= 5 filter; none of them shorter than the
    # 10th neighbour distance
    knn = g.edge_list[g.edge_list[:, 2] == 6]
    assert torch.bincount(knn[:, 1], minlength=n).max() <= 10
    kth = d.masked_fill(torch.eye(n, dtype=torch.bool), math.inf).sort(dim=1).values[:, 9]
    assert (d[knn[:, 1], knn[:, 0]] <= kth[knn[:, 1]] + 1e-6).all()
    assert ((knn[:, 0] - knn[:, 1]).abs() >= 5).all()

    # deterministic order: (graph, relation, node_out, node_in)
    key = (g.edge_list[:, 2] * n + g.edge_list[:, 1]) * n + g.edge_list[:, 0]
    assert (key[1:] > key[:-1]).all()
    g2 = G.build_gearnet_graph(pos.clone(), rtype.clone())
    assert torch.equal(g.edge_list, g2.edge_list) and torch.equal(g.edge_feature, g2.edge_feature)


@pytest.mark.parametrize("relpath", [SMALL, MEDIUM])
def test_gearnet_graph_matches_brute_force_other_proteins(relpath):
    pos, rtype, _ = _load(relpath)
    g = G.build_gearnet_graph(pos, rtype)
    assert _edge_set(g.edge_list) == _gearnet_reference(pos.numpy())
    uncapped = G.build_gearnet_graph(pos, rtype, spatial_max_num_neighbors=None)
    assert _edge_set(uncapped.edge_list) == _gearnet_reference(pos.numpy(), cap=None)


def test_edge_feature_layout():
    pos, rtype, _ = _load(P53)
    rtype = rtype.clone()
    rtype[::37] = 20  # unknown residues: torchdrug parses them as glycine (0)
    g = G.build_gearnet_graph(pos, rtype)
    assert G.gearnet_edge_feature_dim() == 59 == g.edge_feature.shape[1]
    f = g.edge_feature
    node_in, node_out, rel = g.edge_list.unbind(1)
    blocks = [(0, 20), (20, 40), (40, 47), (47, 58)]
    for a, b in blocks:  # exact one-hot blocks
        assert torch.equal(f[:, a:b].sum(1), torch.ones(len(f)))
        assert set(f[:, a:b].unique().tolist()) == {0.0, 1.0}
    expected_type = torch.where(rtype == 20, 0, rtype)
    assert torch.equal(f[:, 0:20].argmax(1), expected_type[node_in])
    assert torch.equal(f[:, 20:40].argmax(1), expected_type[node_out])
    assert torch.equal(f[:, 40:47].argmax(1), rel)
    assert torch.equal(f[:, 47:58].argmax(1), (node_in - node_out).abs().clamp(max=10))
    dist = (pos[node_in].double() - pos[node_out].double()).norm(dim=1)
    torch.testing.assert_close(f[:, 58].double(), dist, atol=1e-5, rtol=0)
    assert (f[rel == 2, 58] == 0).all()

    assert G.build_gearnet_graph(pos, rtype, edge_feature="residue_type").edge_feature.shape[1] == 40
    assert G.build_gearnet_graph(pos, rtype, edge_feature=None).edge_feature.shape[1] == 0
    with pytest.raises(ValueError):
        G.build_gearnet_graph(pos, rtype, edge_feature="bogus")


def test_packed_batch_equals_individual_graphs():
    parts = [_load(p) for p in (SMALL, P53, MEDIUM)]
    pos = torch.cat([p for p, _, _ in parts])
    rtype = torch.cat([r for _, r, _ in parts])
    node2graph = torch.cat([torch.full((len(p),), i) for i, (p, _, _) in enumerate(parts)])
    batch = G.build_gearnet_graph(pos, rtype, node2graph)
    assert batch.batch_size == 3 and batch.num_nodes == len(pos)
    # no edge crosses proteins
    assert torch.equal(node2graph[batch.edge_list[:, 0]], node2graph[batch.edge_list[:, 1]])
    offset, edge_lists, feats = 0, [], []
    for p, r, _ in parts:
        single = G.build_gearnet_graph(p, r)
        shifted = single.edge_list.clone()
        shifted[:, :2] += offset
        edge_lists.append(shifted)
        feats.append(single.edge_feature)
        offset += len(p)
    assert torch.equal(batch.edge_list, torch.cat(edge_lists))  # same edges, same order
    torch.testing.assert_close(batch.edge_feature, torch.cat(feats))
    assert torch.equal(torch.bincount(batch.edge2graph), torch.tensor([len(e) for e in edge_lists]))


def test_chain_breaks_only_via_chain_id():
    pos, rtype, chain = _load(HEMOGLOBIN)
    n = len(pos)
    assert chain.unique().numel() == 4
    without = G.build_gearnet_graph(pos, rtype)
    with_chain = G.build_gearnet_graph(pos, rtype, chain_id=chain)
    seq = with_chain.edge_list[with_chain.edge_list[:, 2] < 5]
    assert torch.equal(chain[seq[:, 0]], chain[seq[:, 1]])
    sizes = torch.bincount(chain).tolist()
    expected = [sum(max(s - abs(o), 0) for s in sizes) for o in range(-2, 3)]
    assert torch.bincount(seq[:, 2], minlength=5).tolist() == expected
    # without chain ids consecutive nodes are always linked (torchdrug ignores numbering gaps)
    assert torch.bincount(without.edge_list[:, 2], minlength=7)[:5].tolist() == [n - 2, n - 1, n, n - 1, n - 2]
    # spatial / kNN edges do not depend on chains; min_distance uses the node-index difference
    geo = lambda g: g.edge_list[g.edge_list[:, 2] >= 5]  # noqa: E731
    assert torch.equal(geo(without), geo(with_chain))


def test_radius_cap_binds_on_a_real_xray_chain():
    """The 32-neighbour cap binds on experimental structures (in 15% of the mirror's X-ray files, see the
    geoplm.graph docstring); geoplm keeps every centre's lowest-indexed neighbours (torch_cluster's CUDA kernel)."""
    pos, rtype, _ = _load(XRAY_CAPPED)
    within = (torch.cdist(pos.double(), pos.double()) < 10).sum(1)
    assert int(within.max()) > 33  # the centre itself and 32 neighbours are kept
    capped = _edge_set(G.build_gearnet_graph(pos, rtype).edge_list)
    assert capped == _gearnet_reference(pos.numpy())
    uncapped = _edge_set(G.build_gearnet_graph(pos, rtype, spatial_max_num_neighbors=None).edge_list)
    assert uncapped == _gearnet_reference(pos.numpy(), cap=None)
    assert capped < uncapped and {e[2] for e in uncapped - capped} == {5}


def test_radius_cap_reproduces_torch_cluster_when_active():
    # compress the p53 DNA-binding domain (x0.6) to make torch_cluster's max_num_neighbors cap bite at many
    # residues (an AlphaFold model: at most 31 Cα within 10 Å of a Cα)
    pos, rtype, _ = _load(P53)
    pos, rtype = pos[100:300] * 0.6, rtype[100:300]
    cnt = (torch.cdist(pos, pos) < 10).sum(1)
    assert (cnt > 33).sum() > 20
    capped = G.radius_graph(pos, 10.0, max_num_neighbors=32)
    assert set(map(tuple, capped.t().tolist())) == _bf_radius(pos.numpy(), 10.0, cap=32)
    assert torch.bincount(capped[1]).max() <= 33
    full = G.radius_graph(pos, 10.0)
    assert set(map(tuple, full.t().tolist())) == _bf_radius(pos.numpy(), 10.0)
    g = G.build_gearnet_graph(pos, rtype)
    assert _edge_set(g.edge_list) == _gearnet_reference(pos.numpy(), cap=32)


def test_knn_and_radius_helpers_on_a_batch():
    parts = [_load(p)[0] for p in (SMALL, MEDIUM)]
    pos = torch.cat(parts)
    node2graph = torch.cat([torch.full((len(p),), i) for i, p in enumerate(parts)])
    for edge_index, bf in (
        (G.knn_graph(pos, 10, node2graph), lambda p: _bf_knn(p, 10)),
        (G.radius_graph(pos, 8.0, node2graph), lambda p: _bf_radius(p, 8.0)),
    ):
        assert edge_index.shape[0] == 2 and edge_index.dtype == torch.long
        assert (edge_index[0] != edge_index[1]).all()
        assert torch.equal(node2graph[edge_index[0]], node2graph[edge_index[1]])
        key = edge_index[1] * len(pos) + edge_index[0]
        assert (key[1:] > key[:-1]).all()
        expected, offset = set(), 0
        for p in parts:
            expected |= {(a + offset, b + offset) for a, b in bf(p.numpy())}
            offset += len(p)
        assert set(map(tuple, edge_index.t().tolist())) == expected
    assert torch.equal(torch.bincount(G.knn_graph(pos, 10, node2graph)[1]), torch.full((len(pos),), 10))
    looped = G.knn_graph(pos, 10, node2graph, loop=True)
    assert (looped[0] == looped[1]).sum() == len(pos)
    assert (
        G.radius_graph(pos, 8.0, node2graph, loop=True)[0] == G.radius_graph(pos, 8.0, node2graph, loop=True)[1]
    ).sum() == len(pos)


def test_knn_ties_prefer_lower_index_at_every_cell_width():
    """Integer lattice: many exactly tied distances. The kNN search widens ring by ring over a cell grid;
    tiny cells (many rings), cells of one lattice step and one cell for everything all give the brute
    force, ties to the lower index included."""
    from geoplm import graph_kernels

    grid = torch.stack(torch.meshgrid(*[torch.arange(5.0)] * 3, indexing="ij"), -1).reshape(-1, 3)
    perm = torch.randperm(len(grid), generator=torch.Generator().manual_seed(0))
    grid = grid[perm] * 3.8
    expected = _bf_knn(grid.numpy(), 10)
    assert set(map(tuple, G.knn_graph(grid, 10).t().tolist())) == expected
    xyz, bounds = G._cpu_arrays(grid, torch.zeros(len(grid), dtype=torch.long))
    for width in (0.5, 3.8, 1000.0):
        indptr, index, _ = graph_kernels.knn_lists(xyz, bounds, 11, width)
        source, target = G._pairs(indptr, index)
        assert {(int(a), int(b)) for a, b in zip(source, target, strict=True) if a != b} == expected, width


def test_gearnet_graph_ties_and_float64_match_brute_force():
    """Both kNN paths of build_gearnet_graph (ranked among the pairs within the radius, or queried for
    residues with fewer than k + 1 of them) break exact distance ties towards the lower index."""
    grid = torch.stack(torch.meshgrid(*[torch.arange(5.0)] * 3, indexing="ij"), -1).reshape(-1, 3)
    perm = torch.randperm(len(grid), generator=torch.Generator().manual_seed(1))
    # an extended strand appended to the lattice: its residues have fewer than 11 Cα within 10 Å
    strand = torch.stack([torch.arange(12.0) * 3.8 + 40, torch.zeros(12), torch.zeros(12)], dim=1)
    pos = torch.cat([grid[perm] * 3.8, strand])
    rtype = torch.zeros(len(pos), dtype=torch.long)
    for dtype in (torch.float32, torch.float64):
        g = G.build_gearnet_graph(pos.to(dtype), rtype)
        assert _edge_set(g.edge_list) == _gearnet_reference(pos.to(dtype).numpy())
        assert g.edge_feature.dtype == dtype
    # p53 (disordered termini: both kNN paths) in float64 against the float64 brute force
    p53, p53_type, _ = _load(P53)
    g = G.build_gearnet_graph(p53.double(), p53_type)
    assert _edge_set(g.edge_list) == _gearnet_reference(p53.double().numpy())


def test_batch_threads_give_the_same_graph():
    """Proteins of a batch built on several threads give the graph a single thread gives, and each
    protein's part equals that protein built alone."""
    parts = [_load(p) for p in (P53, SMALL, MEDIUM, HEMOGLOBIN)]
    pos = torch.cat([p[0] for p in parts])
    rtype = torch.cat([p[1] for p in parts])
    node2graph = torch.cat([torch.full((len(p[0]),), i) for i, p in enumerate(parts)])
    bounds = G._cpu_arrays(pos, node2graph)[1]
    assert len(pos) >= G._PARALLEL_MIN_NODES and len(G._balanced_chunks(bounds, 2)) == 2
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = G.build_gearnet_graph(pos, rtype, node2graph)
        torch.set_num_threads(2)
        parallel = G.build_gearnet_graph(pos, rtype, node2graph)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(single.edge_list, parallel.edge_list)
    assert torch.equal(single.edge_feature, parallel.edge_feature)
    offset = 0
    for (p, t, _), graph in zip(parts, single.edge_list.split(torch.bincount(single.edge2graph).tolist()), strict=True):
        assert torch.equal(graph - torch.tensor([offset, offset, 0]), G.build_gearnet_graph(p, t).edge_list)
        offset += len(p)


def test_sparse_bounding_box_and_empty_graphs_in_a_batch():
    """Two copies of p53 7e6 Å apart in one graph (a bounding box far too large for a grid of 10 Å cells,
    so the cells are widened) still give the brute-force graph; an empty graph between two proteins
    is skipped without shifting the others."""
    p53, rtype, _ = _load(P53)
    far = torch.cat([p53, p53 + torch.tensor([5e6, 0.0, 5e6])])
    g = G.build_gearnet_graph(far, torch.cat([rtype, rtype]))
    assert _edge_set(g.edge_list) == _gearnet_reference(far.numpy())
    small, small_type, _ = _load(SMALL)
    node2graph = torch.cat([torch.zeros(len(small), dtype=torch.long), torch.full((len(p53),), 2)])
    batch = G.build_gearnet_graph(torch.cat([small, p53]), torch.cat([small_type, rtype]), node2graph)
    assert batch.batch_size == 3
    alone = G.build_gearnet_graph(p53, rtype).edge_list
    assert torch.equal(
        batch.edge_list[batch.edge_list[:, 1] >= len(small)] - torch.tensor([len(small)] * 2 + [0]), alone
    )


def test_non_finite_positions_are_named():
    pos, rtype, _ = _load(SMALL)
    pos = pos.clone()
    pos[7, 1] = float("nan")
    for build in (
        lambda: G.build_gearnet_graph(pos, rtype),
        lambda: G.knn_graph(pos, 10),
        lambda: G.radius_graph(pos, 8.0),
    ):
        with pytest.raises(ValueError, match="node 7"):
            build()


def test_small_and_empty_graphs():
    pos = torch.tensor([[0.0, 0, 0], [3.8, 0, 0], [7.6, 0, 0]])
    g = G.build_gearnet_graph(pos, torch.tensor([0, 1, 20]))
    assert torch.bincount(g.edge_list[:, 2], minlength=7).tolist() == [1, 2, 3, 2, 1, 0, 0]
    assert G.knn_graph(pos, 10).shape == (2, 6)
    empty = G.build_gearnet_graph(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    assert empty.num_edges == 0 and empty.edge_feature.shape == (0, 59) and empty.batch_size == 0
    with pytest.raises(ValueError):
        G.build_gearnet_graph(pos, torch.tensor([0, 1, 2]), torch.tensor([1, 0, 0]))


def test_large_protein():
    """The 2,699-residue AlphaFold model (speed is measured in benchmarks/, not here)."""
    pos, rtype, _ = _load(HUGE)
    assert len(pos) == 2699
    g = G.build_gearnet_graph(pos, rtype)
    assert g.num_edges > 15 * len(pos)
    assert torch.bincount(g.edge_list[:, 2], minlength=7)[2] == len(pos)


@pytest.mark.parametrize("compiled", [True, False], ids=["kernel", "torch"])
def test_spatial_line_graph_brute_force(compiled, monkeypatch):
    """Both constructions of the line graph (the compiled pair enumeration on CPU, the torch one used on other
    devices) against a brute-force enumeration and float64 angles."""
    monkeypatch.setattr(G, "COMPILED_LINE_GRAPH", compiled)
    pos, rtype, _ = _load(SMALL)
    g = G.build_gearnet_graph(pos, rtype)
    lg = G.spatial_line_graph(g, num_angle_bin=8)
    assert lg.num_nodes == g.num_edges and lg.num_relation == 8
    assert lg.node_feature is g.edge_feature
    el = g.edge_list.numpy()
    expected = {(a, b) for a in range(len(el)) for b in np.nonzero(el[:, 0] == el[a, 1])[0].tolist()}
    got = lg.edge_list.numpy()
    assert {(int(a), int(b)) for a, b, _ in got} == expected and len(got) == len(expected)
    # ordered by (shared node j, edge_in, edge_out)
    j = el[got[:, 1], 0]
    key = (j.astype(np.int64) * len(el) + got[:, 0]) * len(el) + got[:, 1]
    assert (np.diff(key) > 0).all()
    # relation = angle bin at j between j->i and j->k, computed independently in float64
    p = pos.double().numpy()
    vi = p[el[got[:, 1], 1]] - p[el[got[:, 1], 0]]
    vk = p[el[got[:, 0], 0]] - p[el[got[:, 0], 1]]
    cos = (vi * vk).sum(1) / np.maximum(np.linalg.norm(vi, axis=1) * np.linalg.norm(vk, axis=1), 1e-300)
    angle = np.arccos(np.clip(cos, -1, 1))
    angle[(np.linalg.norm(vi, axis=1) == 0) | (np.linalg.norm(vk, axis=1) == 0)] = 0.0
    bins = np.minimum(np.floor(angle / np.pi * 8), 7).astype(np.int64)
    near_edge = np.abs(angle / np.pi * 8 - np.round(angle / np.pi * 8)) < 1e-4
    assert (bins[~near_edge] == got[~near_edge, 2]).all()
    assert (got[:, 2] >= 0).all() and (got[:, 2] < 8).all()
    # self-loop edge paired with itself -> angle 0 -> bin 0
    self_loops = np.nonzero(el[:, 0] == el[:, 1])[0]
    pairs = {(int(a), int(b)): int(r) for a, b, r in got}
    assert all(pairs[(e, e)] == 0 for e in self_loops)


def test_spatial_line_graph_kernel_equals_torch_construction(monkeypatch):
    """On a batch of two real proteins (one with a self-loop-free graph, sequential_max_distance 0) the compiled
    pair enumeration gives exactly the torch construction's line graph: edges, order and angle bins."""
    pos, rtype, _ = _load(SMALL)
    batch = torch.cat([pos, pos[:40] + 1000.0]), torch.cat([rtype, rtype[:40]])
    node2graph = torch.cat([torch.zeros(len(pos), dtype=torch.long), torch.ones(40, dtype=torch.long)])
    for distance in (2, 0):
        g = G.build_gearnet_graph(*batch, node2graph, sequential_max_distance=distance)
        lines = {}
        for compiled in (True, False):
            monkeypatch.setattr(G, "COMPILED_LINE_GRAPH", compiled)
            lines[compiled] = G.spatial_line_graph(g, 8)
        assert torch.equal(lines[True].edge_list, lines[False].edge_list)
        assert torch.equal(lines[True].node2graph, lines[False].node2graph)
        assert lines[True].edge_list.shape[0] > 10 * g.num_edges


def test_graph_to_device_roundtrip():
    pos, rtype, _ = _load(SMALL)
    g = G.build_gearnet_graph(pos, rtype).to("cpu")
    assert isinstance(g, G.ResidueGraph) and g.edge_list.device.type == "cpu"


def test_edge_features_refuse_residue_types_out_of_range():
    """A residue type outside 0..20 would index another column of the 59-d feature: refused, with the range."""
    pos, rtype, _ = _load(SMALL)
    g = G.build_gearnet_graph(pos, rtype)
    bad = rtype.clone()
    bad[3] = -1
    with pytest.raises(ValueError, match="0..20"):
        G.pack_graphs([pos], [bad], [g.edge_list], 7)
    assert torch.equal(G.pack_graphs([pos], [rtype], [g.edge_list], 7).edge_feature, g.edge_feature)


@pytest.mark.parametrize("compiled", [True, False], ids=["kernel", "torch"])
def test_paired_line_graph_factors_the_line_graph(compiled, monkeypatch):
    """paired_line_graph's pairs are the distinct directed node pairs of the residue graph (parallel edges of
    different relations share one), and expanding every pair-to-pair edge to all edges of the two pairs gives
    exactly the line graph of spatial_line_graph ((edge_in, edge_out, angle bin) with multiplicities): the
    factorisation A_r = G A'_r G^T, on a batch of two real proteins, with both constructions."""
    monkeypatch.setattr(G, "COMPILED_LINE_GRAPH", compiled)
    pos, rtype, _ = _load(SMALL)
    batch = torch.cat([pos, pos[:40] + 1000.0]), torch.cat([rtype, rtype[:40]])
    node2graph = torch.cat([torch.zeros(len(pos), dtype=torch.long), torch.ones(40, dtype=torch.long)])
    g = G.build_gearnet_graph(*batch, node2graph)
    paired = G.paired_line_graph(g, 8)
    node_in, node_out = g.edge_list[:, 0], g.edge_list[:, 1]
    key = node_in * g.num_nodes + node_out
    assert paired.num_pairs == len(torch.unique(key)) < 0.95 * g.num_edges  # parallel edges exist and merge
    first = torch.full((paired.num_pairs,), -1).scatter_reduce(0, paired.pair_of_edge, key, "amax")
    assert torch.equal(first[paired.pair_of_edge], key)  # one node pair per pair
    assert (torch.diff(first) > 0).all()  # numbered by ascending node_in * N + node_out
    members = [[] for _ in range(paired.num_pairs)]
    for edge, pair in enumerate(paired.pair_of_edge.tolist()):
        members[pair].append(edge)
    expanded = sorted(
        (a, b, r) for pa, pb, r in paired.edge_list.tolist() for a in members[pa] for b in members[pb]
    )  # fmt: skip
    full = sorted(map(tuple, G.spatial_line_graph(g, 8).edge_list.tolist()))
    assert expanded == full
    assert paired.num_edges < 0.8 * len(full)
