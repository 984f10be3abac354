"""Tests of geoplm.models.GearNet (torchdrug 0.2.1 models.GearNet re-implementation) on real
AlphaFold structures read with Biopython."""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shared_data_dir

from geoplm.graph import build_gearnet_graph, residue_one_hot, spatial_line_graph
from geoplm.models import GearNet

_RESIDUE_IDS = {
    name: i
    for i, name in enumerate("GLY ALA SER PRO VAL THR CYS ILE LEU ASN ASP GLN LYS GLU MET HIS PHE ARG TYR TRP".split())
}
P53 = "alphafold/AF-P04637-F1-model_v4.pdb"  # 393 residues
SMALL = "alphafold/AF-P76011-F1-model_v4.pdb"  # 84 residues
MEDIUM = "alphafold/AF-A0A1W2PQ64-F1-model_v4.pdb"  # 194 residues


def _data_dir() -> Path:
    return shared_data_dir()


@cache
def _load(relpath: str):
    from Bio.PDB import PDBParser

    path = _data_dir() / relpath
    if not path.exists():
        pytest.skip(f"{path} missing")
    model = next(iter(PDBParser(QUIET=True).get_structure("s", str(path))))
    residues = [r for r in model.get_residues() if r.id[0] == " " and "CA" in r]
    pos = torch.tensor(np.array([r["CA"].coord for r in residues]), dtype=torch.float32)
    rtype = torch.tensor([_RESIDUE_IDS.get(r.get_resname(), 20) for r in residues])
    return pos, rtype


def _randomise_batch_norm(model: torch.nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)


def _edge_model(**kwargs) -> GearNet:
    args = dict(
        input_dim=21,
        hidden_dims=[32, 32, 32],
        num_relation=7,
        edge_input_dim=59,
        num_angle_bin=8,
        batch_norm=True,
        short_cut=True,
        concat_hidden=True,
    )
    args.update(kwargs)
    return GearNet(**args)


def _paper_param_count(input_dim, hidden, num_relation, batch_norm, edge_input_dim=None, num_angle_bin=None):
    dims = [input_dim] + hidden
    total = 0
    for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
        total += num_relation * d_in * d_out + d_out  # linear (W_1..W_R stacked) + bias
        total += d_in * d_out + d_out  # self_loop
        total += 4 * d_out if batch_norm else 0  # conv BN + model-level BN (weight, bias each)
    if num_angle_bin:
        edge_dims = [edge_input_dim] + dims[:-1]
        for e_in, e_out in zip(edge_dims[:-1], edge_dims[1:], strict=True):
            total += num_angle_bin * e_in * e_out + e_out + e_in * e_out + e_out
            total += 2 * e_out if batch_norm else 0
    return total


def test_paper_config_parameter_count_and_names():
    model = GearNet(21, [512] * 6, 7, batch_norm=True, short_cut=True, concat_hidden=True, readout="sum")
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == _paper_param_count(21, [512] * 6, 7, True) == 10_590_208
    assert model.output_dim == 3072
    plain = GearNet(21, [512] * 6, 7)
    assert sum(p.numel() for p in plain.parameters()) == _paper_param_count(21, [512] * 6, 7, False)
    edge = GearNet(21, [512] * 6, 7, 59, 8, batch_norm=True, short_cut=True, concat_hidden=True)
    assert sum(p.numel() for p in edge.parameters()) == _paper_param_count(21, [512] * 6, 7, True, 59, 8)

    # torchdrug 0.2.1 state_dict names and shapes
    sd = edge.state_dict()
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    expected = set()
    dims, edge_dims = [21] + [512] * 6, [59, 21] + [512] * 5
    for i in range(6):
        for prefix, d_in, d_out, r in (
            (f"layers.{i}", dims[i], dims[i + 1], 7),
            (f"edge_layers.{i}", edge_dims[i], edge_dims[i + 1], 8),
        ):
            expected |= {f"{prefix}.{m}.{p}" for m in ("self_loop", "linear") for p in ("weight", "bias")}
            expected |= {f"{prefix}.batch_norm.{p}" for p in bn}
            assert sd[f"{prefix}.linear.weight"].shape == (d_out, r * d_in)
            assert sd[f"{prefix}.self_loop.weight"].shape == (d_out, d_in)
        expected |= {f"batch_norms.{i}.{p}" for p in bn}
    assert set(sd) == expected


def _dense_reference(model: GearNet, graph, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """torchdrug GearNet math with dense per-relation adjacency matrices (eval-mode batch norm)."""
    n, rel = graph.num_nodes, model.num_relation
    node_in, node_out, r = graph.edge_list.unbind(1)
    adj = torch.zeros(rel, n, n, dtype=torch.float64)
    adj.index_put_((r, node_out, node_in), torch.ones(len(r), dtype=torch.float64), accumulate=True)
    # edge e -> (node_out, relation) incidence, for the GearNet-Edge update
    inc = torch.zeros(rel, n, graph.num_edges, dtype=torch.float64)
    inc[r, node_out, torch.arange(graph.num_edges)] = 1.0
    if model.num_angle_bin:
        lg = spatial_line_graph(graph, model.num_angle_bin)
        a, b, k = lg.edge_list.unbind(1)
        ladj = torch.zeros(model.num_angle_bin, graph.num_edges, graph.num_edges, dtype=torch.float64)
        ladj.index_put_((k, b, a), torch.ones(len(k), dtype=torch.float64), accumulate=True)

    def bn(module, u):
        return (u - module.running_mean.double()) / torch.sqrt(
            module.running_var.double() + module.eps
        ) * module.weight.double() + module.bias.double()

    def conv(layer, a, h):
        w = layer.linear.weight.double()
        d = h.shape[1]
        out = sum(a[q] @ h @ w[:, q * d : (q + 1) * d].T for q in range(a.shape[0]))
        out = out + layer.linear.bias.double() + h @ layer.self_loop.weight.double().T
        out = out + layer.self_loop.bias.double()
        return torch.relu(bn(layer.batch_norm, out) if layer.batch_norm is not None else out)

    h = x.double()
    m = graph.edge_feature.double()
    hiddens = []
    for i, layer in enumerate(model.layers):
        u = conv(layer, adj, h)
        if model.short_cut and u.shape == h.shape:
            u = u + h
        if model.num_angle_bin:
            m = conv(model.edge_layers[i], ladj, m)
            d = m.shape[1]
            w = layer.linear.weight.double()
            upd = sum(inc[q] @ m @ w[:, q * d : (q + 1) * d].T for q in range(rel)) + layer.linear.bias.double()
            u = u + torch.relu(upd)
        if model.batch_norm:
            u = bn(model.batch_norms[i], u)
        hiddens.append(u)
        h = u
    node = torch.cat(hiddens, 1) if model.concat_hidden else hiddens[-1]
    graph_feature = torch.zeros(graph.batch_size, node.shape[1], dtype=torch.float64)
    graph_feature.index_add_(0, graph.node2graph, node)
    return {"node_feature": node, "graph_feature": graph_feature}


@pytest.mark.parametrize("edge", [False, True])
def test_matches_dense_reference(edge):
    torch.manual_seed(0)
    pos, rtype = _load(SMALL)
    graph = build_gearnet_graph(pos, rtype)
    model = _edge_model() if edge else _edge_model(edge_input_dim=None, num_angle_bin=None)
    _randomise_batch_norm(model)
    model.eval()
    x = residue_one_hot(rtype)
    with torch.no_grad():
        out = model(graph, x)
    ref = _dense_reference(model, graph, x)
    for key in ("node_feature", "graph_feature"):
        torch.testing.assert_close(out[key].double(), ref[key], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("concat_hidden", [False, True])
@pytest.mark.parametrize("readout", ["sum", "mean"])
def test_output_shapes(concat_hidden, readout):
    pos, rtype = _load(P53)
    graph = build_gearnet_graph(pos, rtype)
    model = GearNet(21, [64, 48, 32], 7, concat_hidden=concat_hidden, readout=readout, batch_norm=True)
    model.eval()
    out = model(graph, residue_one_hot(rtype))
    d = 144 if concat_hidden else 32
    assert out["node_feature"].shape == (len(pos), d)
    assert out["graph_feature"].shape == (1, d)
    expected = out["node_feature"].sum(0) if readout == "sum" else out["node_feature"].mean(0)
    torch.testing.assert_close(out["graph_feature"][0], expected, rtol=1e-5, atol=1e-4)


def _random_rigid(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q, torch.randn(3, generator=gen, dtype=torch.float64) * 20


def test_invariance_under_rigid_motion():
    torch.manual_seed(0)
    pos, rtype = _load(SMALL)
    rot, shift = _random_rigid(1)
    moved = (pos.double() @ rot.T + shift).float()
    graph, graph_moved = build_gearnet_graph(pos, rtype), build_gearnet_graph(moved, rtype)
    assert torch.equal(graph.edge_list, graph_moved.edge_list)
    torch.testing.assert_close(graph.edge_feature, graph_moved.edge_feature, rtol=0, atol=1e-4)
    assert torch.equal(spatial_line_graph(graph).edge_list, spatial_line_graph(graph_moved).edge_list)
    model = _edge_model()
    _randomise_batch_norm(model)
    model.eval()
    x = residue_one_hot(rtype)
    with torch.no_grad():
        a, b = model(graph, x), model(graph_moved, x)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-3)

    # paper-size GearNet on p53
    pos, rtype = _load(P53)
    moved = (pos.double() @ rot.T + shift).float()
    graph, graph_moved = build_gearnet_graph(pos, rtype), build_gearnet_graph(moved, rtype)
    assert torch.equal(graph.edge_list, graph_moved.edge_list)
    model = GearNet(21, [512] * 6, 7, batch_norm=True, short_cut=True, concat_hidden=True).eval()
    x = residue_one_hot(rtype)
    with torch.no_grad():
        a, b = model(graph, x), model(graph_moved, x)
    torch.testing.assert_close(a["graph_feature"], b["graph_feature"], rtol=1e-4, atol=1e-2)


def test_batch_of_two_equals_each_alone():
    torch.manual_seed(0)
    (p1, r1), (p2, r2) = _load(SMALL), _load(MEDIUM)
    model = _edge_model()
    _randomise_batch_norm(model)
    model.eval()
    batch = build_gearnet_graph(
        torch.cat([p1, p2]), torch.cat([r1, r2]), torch.cat([torch.zeros(len(p1)), torch.ones(len(p2))]).long()
    )
    with torch.no_grad():
        out = model(batch, residue_one_hot(torch.cat([r1, r2])))
        alone = [model(build_gearnet_graph(p, r), residue_one_hot(r)) for p, r in ((p1, r1), (p2, r2))]
    torch.testing.assert_close(out["node_feature"], torch.cat([a["node_feature"] for a in alone]), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(
        out["graph_feature"], torch.cat([a["graph_feature"] for a in alone]), rtol=1e-5, atol=1e-3
    )


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    pos, rtype = _load(SMALL)
    graph = build_gearnet_graph(pos, rtype)
    model = _edge_model(dropout=0.1)
    model.train()
    out = model(graph, residue_one_hot(rtype))
    (out["graph_feature"].square().mean() + out["node_feature"].mean()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_dropout_and_argument_checks():
    pos, rtype = _load(SMALL)
    graph = build_gearnet_graph(pos, rtype)
    x = residue_one_hot(rtype)
    torch.manual_seed(0)
    a = GearNet(21, [16, 16], 7, dropout=0.5)
    torch.manual_seed(0)
    b = GearNet(21, [16, 16], 7)
    a.eval(), b.eval()
    torch.testing.assert_close(a(graph, x)["node_feature"], b(graph, x)["node_feature"])
    a.train()
    assert not torch.allclose(a(graph, x)["node_feature"], b(graph, x)["node_feature"])
    with pytest.raises(ValueError):
        GearNet(21, [16], 7, num_angle_bin=8)
    with pytest.raises(ValueError):
        GearNet(21, [16], 5)(graph, x)
    with pytest.raises(ValueError):
        GearNet(21, [16], 7, readout="max")
    assert math.isclose(GearNet(21, 16, 7).output_dim, 16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    torch.manual_seed(0)
    pos, rtype = _load(SMALL)
    graph = build_gearnet_graph(pos, rtype)
    graph_cuda = build_gearnet_graph(pos.cuda(), rtype.cuda())
    assert torch.equal(graph.edge_list, graph_cuda.edge_list.cpu())
    model = _edge_model().eval()
    with torch.no_grad():
        ref = model(graph, residue_one_hot(rtype))
        out = model.cuda()(graph.to("cuda"), residue_one_hot(rtype).cuda())
    torch.testing.assert_close(out["graph_feature"].cpu(), ref["graph_feature"], rtol=1e-4, atol=1e-2)


def _adjacency_of(kind: str):
    """A real protein's relational adjacency of ``kind`` (its residue graph, line graph or edge-to-node map), the
    ``(E, 3)`` ``[source, target, relation]`` entries it sums over, and its number of sources."""
    from geoplm.models.gearnet import RelationalAdjacency

    pos, rtype = _load(SMALL)
    graph = build_gearnet_graph(pos, rtype)
    if kind == "line_graph":
        graph = spatial_line_graph(graph, 8)
        return RelationalAdjacency.from_graph(graph), graph.edge_list, graph.num_nodes
    if kind == "edge_to_node":
        num_source = graph.num_edges
        edges = torch.stack([torch.arange(num_source), graph.edge_list[:, 1], graph.edge_list[:, 2]], dim=1)
        return RelationalAdjacency.edge_to_node(graph), edges, num_source
    return RelationalAdjacency.from_graph(graph), graph.edge_list, graph.num_nodes


def _assert_same_linear(functions, num_source: int, num_relation: int, num_target: int, seed: int):
    """Call each of ``functions`` (``(x, weight, bias) -> (num_target, 6)``, a relational linear) on the same random
    float64 ``x`` ``(num_source, 8)``, weight ``(6, num_relation * 8)`` and bias, and assert that their values and
    their input / weight / bias gradients (for the same random output gradient) agree to 1e-12. Returns the inputs
    and each function's ``(value, *gradients)``."""
    torch.manual_seed(seed)
    d, d_out = 8, 6
    inputs = [
        torch.randn(num_source, d, dtype=torch.float64, requires_grad=True),
        torch.randn(d_out, num_relation * d, dtype=torch.float64, requires_grad=True),
        torch.randn(d_out, dtype=torch.float64, requires_grad=True),
    ]
    grad_out = torch.randn(num_target, d_out, dtype=torch.float64)
    results = []
    for fn in functions:
        out = fn(*inputs)
        results.append((out, *torch.autograd.grad(out, inputs, grad_out)))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    return inputs, results


@pytest.mark.parametrize("dense", [2.0, 0.9, 0.0], ids=["sparse_rows", "mixed", "all_rows"])
@pytest.mark.parametrize("compiled", [True, False], ids=["counting_sort", "torch_sort"])
@pytest.mark.parametrize("kind", ["line_graph", "edge_to_node", "residue_graph"])
def test_fused_aggregate_linear_matches_unfused_autograd(kind, compiled, dense, monkeypatch):
    """RelationalAdjacency.linear (block-sparse over non-empty (target, relation) rows, in several small
    blocks here) gives the values and the input / weight / bias gradients of F.linear over the dense
    per-relation aggregate, in float64, on a real protein's graphs (including empty rows and, in the line
    graph, repeated (source, target, relation) entries), with the blocks built by the compiled counting sorts
    (CPU) and by the sort-based construction used on other devices."""
    from torch.nn import functional as F

    from geoplm.models import gearnet as gearnet_module
    from geoplm.models.gearnet import relational_aggregate

    monkeypatch.setattr(gearnet_module, "_CHUNK_ELEMENTS", 64 * 8)  # blocks of 64 rows
    monkeypatch.setattr(gearnet_module, "COMPILED_ADJACENCY", compiled)
    monkeypatch.setattr(gearnet_module, "DENSE_COVERAGE", dense)  # relations multiplied over all their rows
    adjacency, edges, num_source = _adjacency_of(kind)
    num_target, num_relation = adjacency.num_target, adjacency.num_relation
    occupied = torch.unique(edges[:, 1] * num_relation + edges[:, 2])
    assert len(occupied) < num_target * num_relation  # some (target, relation) rows are empty
    blocks = adjacency.blocks(torch.float64, 64)
    sliced = [b for b in blocks if isinstance(b[1], slice)]
    assert len(blocks) > num_relation
    if dense > 1:  # the non-empty rows only
        assert not sliced and sum(len(b[1]) for b in blocks) == len(occupied)
    elif dense == 0:  # every relation over all targets, in slices of 64
        assert len(sliced) == len(blocks) and sum(b[1].stop - b[1].start for b in blocks) == num_target * num_relation
    else:
        assert len(sliced) > 0 or kind == "line_graph"

    def reference(x, w, b):
        return F.linear(relational_aggregate(edges, num_target, num_relation, x[edges[:, 0]]), w, b)

    inputs, results = _assert_same_linear((adjacency.linear, reference), num_source, num_relation, num_target, 0)
    without_bias = adjacency.linear(inputs[0], inputs[1])
    torch.testing.assert_close(without_bias, results[1][0] - inputs[2], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("path", ["blocks", "planned", "target_major"])
def test_relational_linear_one_gradient_at_a_time(path, monkeypatch):
    """With only the input or only the weight requiring a gradient (a frozen layer, a first layer over fixed
    features), RelationalAdjacency.linear's backward gives the same gradient as when both do, in float64, on a real
    protein's line graph, through the blocks, the relation-by-relation plan and the target-major plan: the backward
    writes the input's aggregate gradient into the forward's aggregate buffer, which must not corrupt the weight's."""
    from geoplm.models import gearnet as gearnet_module

    monkeypatch.setattr(gearnet_module, "PLANNED", path != "blocks")
    monkeypatch.setattr(gearnet_module, "_CHUNK_ELEMENTS", 64 * 8 if path == "blocks" else 1 << 21)
    monkeypatch.setattr(gearnet_module, "TARGET_MAJOR_FILL", 0.0 if path == "target_major" else 2.0)
    adjacency, _, num_source = _adjacency_of("line_graph")
    torch.manual_seed(4)
    x = torch.randn(num_source, 8, dtype=torch.float64)
    weight = torch.randn(6, adjacency.num_relation * 8, dtype=torch.float64)
    grad_out = torch.randn(adjacency.num_target, 6, dtype=torch.float64)

    def gradients(input_grad: bool, weight_grad: bool) -> list:
        leaves = [x.clone().requires_grad_(input_grad), weight.clone().requires_grad_(weight_grad)]
        out = adjacency.linear(leaves[0], leaves[1])
        return torch.autograd.grad(out, [t for t in leaves if t.requires_grad], grad_out)

    both = gradients(True, True)
    assert both[0].abs().sum() > 0 and both[1].abs().sum() > 0
    torch.testing.assert_close(gradients(True, False)[0], both[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gradients(False, True)[0], both[1], rtol=1e-12, atol=1e-12)
    if path == "target_major":
        assert adjacency.plan(torch.float64).target_major


@pytest.mark.parametrize("dense", [2.0, 0.5, 0.0], ids=["sparse_rows", "mixed", "all_rows"])
def test_compiled_adjacency_blocks_equal_sorted_construction(dense, monkeypatch):
    """The counting-sort construction of RelationalAdjacency's blocks and of its whole matrix (CPU) gives exactly
    the blocks and matrix of the sort-based one (targets, CSR rows / columns / multiplicities and their transposes),
    on a real line graph with repeated entries and on random multigraphs with many duplicates and empty rows, at
    several block sizes."""
    from geoplm.models import gearnet as gearnet_module
    from geoplm.models.gearnet import RelationalAdjacency

    monkeypatch.setattr(gearnet_module, "DENSE_COVERAGE", dense)
    pos, rtype = _load(SMALL)
    line_graph = spatial_line_graph(build_gearnet_graph(pos, rtype), 8)
    generator = torch.Generator().manual_seed(0)
    cases = [
        (
            line_graph.edge_list[:, 1],
            line_graph.edge_list[:, 2],
            line_graph.edge_list[:, 0],
            line_graph.num_nodes,
            8,
            line_graph.num_nodes,
        )
    ]
    for num_target, num_relation, num_source, num_edges in [(30, 3, 40, 500), (7, 5, 3, 200), (50, 2, 60, 10)]:
        cases.append((
            torch.randint(num_target, (num_edges,), generator=generator),
            torch.randint(num_relation, (num_edges,), generator=generator),
            torch.randint(num_source, (num_edges,), generator=generator),
            num_target, num_relation, num_source,
        ))  # fmt: skip
    for target, relation, source, num_target, num_relation, num_source in cases:
        built = {}
        for compiled in (True, False):
            monkeypatch.setattr(gearnet_module, "COMPILED_ADJACENCY", compiled)
            adjacency = RelationalAdjacency(target, relation, source, num_target, num_relation, num_source)
            built[compiled] = [adjacency.blocks(torch.float32, rows) for rows in (5, 64, 1 << 20)]
            built[compiled].append([(0, slice(0, 0), *adjacency.matrices(torch.float32))])  # the whole A, A^T
        for ours, theirs in zip(built[True], built[False], strict=True):
            assert len(ours) == len(theirs)
            for (r1, t1, a1, at1), (r2, t2, a2, at2) in zip(ours, theirs, strict=True):
                assert r1 == r2 and (t1 == t2 if isinstance(t1, slice) else torch.equal(t1, t2))
                for m1, m2 in ((a1, a2), (at1, at2)):
                    assert m1.shape == m2.shape
                    assert m1.crow_indices().dtype == torch.int32  # what MKL takes without a conversion
                    assert torch.equal(m1.crow_indices().long(), m2.crow_indices())
                    assert torch.equal(m1.col_indices().long(), m2.col_indices())
                    assert torch.equal(m1.values(), m2.values())


@pytest.mark.parametrize("fill", [2.0, 0.0], ids=["relation_major", "target_major"])
@pytest.mark.parametrize("bags", [True, False], ids=["embedding_bags", "sparse_mm"])
@pytest.mark.parametrize("compiled", [True, False], ids=["counting_sort", "torch_sort"])
@pytest.mark.parametrize("kind", ["line_graph", "edge_to_node", "residue_graph"])
def test_planned_aggregate_linear_matches_unfused_autograd(kind, compiled, bags, fill, monkeypatch):
    """The all-relations-at-once path of RelationalAdjacency.linear (one sparse product per direction: the small
    views of multiview-contrast pretraining), with its sparse products as embedding bags or torch's CSR products,
    over the non-empty rows relation by relation or over the whole matrix in target-major order, gives the values
    and the input / weight / bias gradients of F.linear over the dense per-relation aggregate, in float64, on a real
    protein's graphs (empty rows, repeated line-graph entries)."""
    from torch.nn import functional as F

    from geoplm.models import gearnet as gearnet_module
    from geoplm.models.gearnet import relational_aggregate

    monkeypatch.setattr(gearnet_module, "PLANNED", True)
    monkeypatch.setattr(gearnet_module, "_PLANNED_CHUNKS", 1 << 20)  # always planned
    monkeypatch.setattr(gearnet_module, "BAG_PRODUCTS", bags)
    monkeypatch.setattr(gearnet_module, "COMPILED_ADJACENCY", compiled)
    monkeypatch.setattr(gearnet_module, "TARGET_MAJOR_FILL", fill)
    adjacency, edges, num_source = _adjacency_of(kind)
    num_target, num_relation = adjacency.num_target, adjacency.num_relation
    assert adjacency.plan(torch.float64).target_major == (fill == 0.0)
    calls = []
    original = gearnet_module._PlannedAggregateLinear.apply
    monkeypatch.setattr(gearnet_module._PlannedAggregateLinear, "apply", lambda *a: calls.append(1) or original(*a))
    functions = (
        adjacency.linear,
        lambda x, w, b: F.linear(relational_aggregate(edges, num_target, num_relation, x[edges[:, 0]]), w, b),
    )
    _assert_same_linear(functions, num_source, num_relation, num_target, 1)
    assert calls  # the planned path ran


@pytest.mark.parametrize("planned", [True, False], ids=["planned", "blocks"])
def test_stacked_adjacency_is_both_products(planned, monkeypatch):
    """RelationalAdjacency.stack of a real protein's residue graph and edge-to-node map (what GearNet-Edge's layers
    multiply by the same linear) gives, for the inputs concatenated, the values and input / weight / bias gradients
    of the two linears concatenated, in float64, through the all-at-once path and through the blocks; adjacencies
    with different relation counts are refused."""
    from geoplm.models import gearnet as gearnet_module
    from geoplm.models.gearnet import RelationalAdjacency

    monkeypatch.setattr(gearnet_module, "PLANNED", planned)
    monkeypatch.setattr(gearnet_module, "_CHUNK_ELEMENTS", 1 << 21 if planned else 64 * 8)
    pos, rtype = _load(SMALL)
    graph = build_gearnet_graph(pos, rtype)
    nodes, edges = RelationalAdjacency.from_graph(graph), RelationalAdjacency.edge_to_node(graph)
    both = RelationalAdjacency.stack(nodes, edges)
    n, r = graph.num_nodes, graph.num_relation
    assert (both.num_target, both.num_source, both.num_relation) == (2 * n, n + graph.num_edges, r)

    def separate(x, w, b):
        return torch.cat([nodes.linear(x[:n], w, b), edges.linear(x[n:], w, b)])

    _assert_same_linear((both.linear, separate), n + graph.num_edges, r, 2 * n, 3)
    other = RelationalAdjacency(torch.tensor([0]), torch.tensor([0]), torch.tensor([0]), 1, r + 1, 1)
    with pytest.raises(ValueError, match="cannot stack 7 and 8 relations"):
        RelationalAdjacency.stack(nodes, other)


@pytest.mark.parametrize("planned", [True, False], ids=["planned", "blocks"])
def test_paired_adjacency_matches_line_graph_autograd(planned, monkeypatch):
    """PairedAdjacency (the line graph's sums computed over paired_line_graph's node pairs, parallel edges
    multiplied once) gives the values and the input / weight / bias gradients of the line graph's
    RelationalAdjacency (linear and the plain per-relation sums), in float64, on a real protein's graph, through
    the all-relations-at-once path and through the blocks."""
    from geoplm.graph import paired_line_graph
    from geoplm.models import gearnet as gearnet_module
    from geoplm.models.gearnet import GeometricRelationalGraphConv, PairedAdjacency, RelationalAdjacency

    monkeypatch.setattr(gearnet_module, "PLANNED", planned)
    monkeypatch.setattr(gearnet_module, "_CHUNK_ELEMENTS", 1 << 21 if planned else 64 * 8)
    pos, rtype = _load(SMALL)
    graph = build_gearnet_graph(pos, rtype)
    paired = PairedAdjacency(paired_line_graph(graph, 8))
    full = RelationalAdjacency.from_graph(spatial_line_graph(graph, 8))
    assert paired.num_pairs < 0.9 * graph.num_edges
    assert (paired.num_target, paired.num_source, paired.num_relation) == (full.num_target, full.num_source, 8)
    inputs, _ = _assert_same_linear((paired.linear, full.linear), graph.num_edges, 8, graph.num_edges, 2)
    sums = [adjacency(inputs[0]) for adjacency in (paired, full)]
    assert sums[0].shape == (graph.num_edges, 8 * 8)
    torch.testing.assert_close(sums[0], sums[1], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"expected input of shape \(1388, d\)"):
        paired.linear(inputs[0][:-1], inputs[1])
    # a layer given the paired line graph alone builds its PairedAdjacency (adjacency_of)
    layer = GeometricRelationalGraphConv(8, 6, 8).double()
    by_graph = [layer(g, inputs[0]) for g in (paired_line_graph(graph, 8), spatial_line_graph(graph, 8))]
    torch.testing.assert_close(by_graph[0], by_graph[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("planned", [True, False], ids=["planned", "blocks"])
def test_paired_adjacency_node_sum_form(planned, monkeypatch):
    """PairedAdjacency.linear's node-sum form (the bin with the most rows replaced by one row per node: its sums
    are the node sums less the other bins') gives the plain pair form's values and input / weight / bias gradients
    in float64 on real proteins' line graphs, and multiplies fewer rows: the replaced bin covers every pair (angle
    0 to its reverse pair or to the sequential self-loop). A line graph that does not join every pair into a node
    to every pair out of it (one edge dropped) is not complete and takes the plain form."""
    import dataclasses

    from geoplm.graph import paired_line_graph
    from geoplm.models import gearnet as gearnet_module
    from geoplm.models.gearnet import PairedAdjacency, RelationalAdjacency

    monkeypatch.setattr(gearnet_module, "PLANNED", planned)
    monkeypatch.setattr(gearnet_module, "_CHUNK_ELEMENTS", 1 << 21 if planned else 64 * 8)
    pos_a, type_a = _load(SMALL)
    pos_b, type_b = _load(MEDIUM)
    node2graph = torch.cat([torch.zeros(len(pos_a), dtype=torch.long), torch.ones(len(pos_b), dtype=torch.long)])
    graph = build_gearnet_graph(torch.cat([pos_a, pos_b]), torch.cat([type_a, type_b]), node2graph)
    line_graph = paired_line_graph(graph, 8)
    adjacency = PairedAdjacency(line_graph)
    r0, reduced, full_rows = adjacency.node_sum_plan()
    assert r0 == 0 and not (reduced.row % 8 == r0).any()
    rows = adjacency.pairs._relation_major(torch.float64)[-1]
    assert rows[r0] == line_graph.num_pairs  # every pair has a row in bin 0
    assert full_rows == adjacency.pairs._planned_rows(torch.float64)
    assert sum(reduced._relation_major(torch.float64)[-1]) + graph.num_nodes < 0.85 * sum(rows)

    def plain(x, w, b):
        return adjacency.pairs.linear(adjacency._pool(x), w, b).index_select(0, adjacency.pair_of_edge)

    _assert_same_linear((adjacency.linear, plain), graph.num_edges, 8, graph.num_edges, 4)
    monkeypatch.setattr(PairedAdjacency, "NODE_SUM", False)
    _assert_same_linear((adjacency.linear, plain), graph.num_edges, 8, graph.num_edges, 4)

    dropped = PairedAdjacency(dataclasses.replace(line_graph, edge_list=line_graph.edge_list[1:]))
    assert dropped.node_sum_plan() is None
    pair_in, pair_out, relation = line_graph.edge_list[1:].unbind(1)
    full = RelationalAdjacency(pair_out, relation, pair_in, line_graph.num_pairs, 8, line_graph.num_pairs)
    monkeypatch.setattr(PairedAdjacency, "NODE_SUM", True)
    _assert_same_linear(
        (dropped.linear, lambda x, w, b: full.linear(dropped._pool(x), w, b).index_select(0, dropped.pair_of_edge)),
        graph.num_edges, 8, graph.num_edges, 5,
    )  # fmt: skip


@pytest.mark.parametrize("model_kind", ["gearnet_edge", "gearnet_edge_ieconv"])
def test_paired_line_graph_model_equals_full_line_graph(model_kind, monkeypatch):
    """GearNet-Edge and GearNet-Edge-IEConv over the paired line graph (the default) give the outputs and
    parameter gradients of the same models over the full spatial line graph, in float64 (training mode: batch
    statistics), on a batch of two real proteins."""
    from geoplm.models import GearNetIEConv
    from geoplm.models import gearnet as gearnet_module

    pos_a, type_a = _load(SMALL)
    pos_b, type_b = _load(MEDIUM)
    node2graph = torch.cat([torch.zeros(len(pos_a), dtype=torch.long), torch.ones(len(pos_b), dtype=torch.long)])
    graph = build_gearnet_graph(torch.cat([pos_a, pos_b]), torch.cat([type_a, type_b]), node2graph)
    graph.edge_feature = graph.edge_feature.double()
    x = residue_one_hot(torch.cat([type_a, type_b])).double()
    torch.manual_seed(3)
    if model_kind == "gearnet_edge":
        model = _edge_model().double().train()
    else:
        model = GearNetIEConv(21, 16, [16, 16], 7, 59, 8, batch_norm=True, concat_hidden=True, layer_norm=True)
        model = model.double().train()
    results = []
    for paired in (True, False):
        monkeypatch.setattr(gearnet_module, "PAIRED_LINE_GRAPH", paired)
        model.zero_grad()
        out = model(graph, x)
        (out["graph_feature"].square().mean() + out["node_feature"].mean()).backward()
        results.append([out["node_feature"], out["graph_feature"]] + [p.grad.clone() for p in model.parameters()])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("num_residues", [0, 1, 3], ids=["no_edges", "one_residue", "three_residues"])
def test_paired_line_graph_on_degenerate_graphs(num_residues, monkeypatch):
    """GearNet-Edge over the paired line graph equals the full line graph's on the smallest graphs: one residue
    (its sequential self-loop only), three residues, and twelve residues with every edge removed (no pairs)."""
    import dataclasses

    from geoplm.models import gearnet as gearnet_module

    pos, rtype = _load(SMALL)
    n = num_residues or 12
    graph = build_gearnet_graph(pos[:n], rtype[:n])
    if num_residues == 0:
        graph = dataclasses.replace(graph, edge_list=graph.edge_list[:0], edge_feature=graph.edge_feature[:0])
    outputs = []
    for paired in (True, False):
        monkeypatch.setattr(gearnet_module, "PAIRED_LINE_GRAPH", paired)
        torch.manual_seed(0)
        model = _edge_model().eval()
        out = model(graph, residue_one_hot(rtype[:n]))
        out["graph_feature"].sum().backward()
        outputs.append((out["node_feature"].detach(), model.edge_layers[1].linear.weight.grad))
    assert outputs[0][0].shape == (n, 96)
    for a, b in zip(*outputs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
