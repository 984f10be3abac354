"""Tests of geoplm.models.cdconv (CDConv as DeepGraphLearning/ESM-GearNet ``gearnet/cdconv.py`` runs it) on real
AlphaFold models and PDB chains, with small widths so that the whole file runs in seconds."""

from __future__ import annotations

import logging
import math
from functools import cache

import pytest
import torch
from conftest import shared_data_dir

from geoplm.errors import ConfigError
from geoplm.graph import pack_graphs, record_graph_inputs, record_residue_numbers, residue_one_hot
from geoplm.models.cdconv import CDConv, ContinuousDiscreteConv, _Level, orientation_frames, pool_pairs
from geoplm.models.zoo import build_encoder
from geoplm.structure import parse_structure

#: 84 and 127 residues (AlphaFold, numbered 1..L), 209 (X-ray, numbered from 2), 64 (NMR: 5 numbering gaps and 5
#: insertion codes, so author numbers differ from node indices)
PROTEINS = ("alphafold/AF-P76011-F1-model_v4.pdb", "alphafold/AF-Q9Y5P2-F1-model_v4.pdb", "pdb/2J9H-A.pdb")
GAPPED = "pdb/1orc.pdb"
SMALL = dict(embedding_dim=8, hidden_dims=[16, 32, 32], cutoffs=[8.0, 12.0, 16.0], kernel_dims=[8], dropout=0.2)


@cache
def _record(name: str) -> dict:
    logging.getLogger("geoplm.structure").setLevel(logging.ERROR)
    path = shared_data_dir() / name
    if not path.is_file():
        pytest.skip(f"{path} missing")
    return parse_structure(path)[0]


def _graph(records, transform=None, numbers: bool = True):
    positions, types = zip(*(record_graph_inputs(r) for r in records), strict=True)
    if transform is not None:
        positions = [transform(p) for p in positions]
    empty = [torch.zeros(0, 3, dtype=torch.long)] * len(records)
    residue_numbers = [record_residue_numbers(r) for r in records] if numbers else None
    return pack_graphs(list(positions), list(types), empty, 7, edge_feature=None, residue_numbers=residue_numbers)


def _model(input_dim: int = 21, seed: int = 0, **overrides) -> CDConv:
    torch.manual_seed(seed)
    model = CDConv(input_dim, **{**SMALL, **overrides})
    gen = torch.Generator().manual_seed(seed + 1)
    for module in model.modules():  # batch norms that are not identities in eval mode
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=gen) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
            module.weight.data.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
            module.bias.data.copy_(torch.randn(module.num_features, generator=gen) * 0.1)
    return model.eval()


def _rotation(angle: float = 2.1, axis=(0.4, -0.7, 0.6)) -> torch.Tensor:
    a = torch.tensor(axis, dtype=torch.float64)
    a = a / a.norm()
    skew = torch.tensor([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]], dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + math.sin(angle) * skew + (1 - math.cos(angle)) * skew @ skew


def _forward(model, graph):
    with torch.no_grad():
        return model(graph, residue_one_hot(graph.residue_type))


# --------------------------------------------------------------------------------------------------


def test_shapes_and_node_feature_is_the_broadcast_protein_feature():
    records = [_record(p) for p in PROTEINS]
    graph = _graph(records)
    model = _model()
    out = _forward(model, graph)
    assert graph.num_nodes_per_graph.tolist() == [84, 127, 209]
    assert model.output_dim == 32 and out["graph_feature"].shape == (3, 32)
    assert out["node_feature"].shape == (420, 32)
    assert torch.equal(out["node_feature"], out["graph_feature"][graph.node2graph])
    assert torch.isfinite(out["graph_feature"]).all()
    assert not torch.allclose(out["graph_feature"][0], out["graph_feature"][1], atol=1e-3)
    # reference defaults: 4 levels, 8 blocks, widths of the paper's table
    full = CDConv(21)
    assert full.output_dim == 2048 and len(full.layers) == 8 and full.cutoffs == [8.0, 12.0, 16.0, 20.0]
    assert [b.conv.input_dim for b in full.layers] == [64, 64, 128, 128, 256, 256, 512, 512]
    assert full.layers[0].conv.W.shape == (32 * 64, 64) and full.layers[0].conv.WeightNet.Ws[0].shape == (21, 7, 32)


def test_pooling_halves_each_protein_and_averages_pairs():
    position = torch.arange(3 * 8, dtype=torch.float32).view(8, 3)
    node2graph = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1])  # 5 + 3 nodes -> 3 + 2
    level = _Level(
        position=position,
        orientation=orientation_frames(position + torch.rand(8, 3), node2graph, 2),
        residue_number=torch.tensor([7, 8, 9, 11, 12, 3, 4, 5]),
        node2graph=node2graph,
        batch_size=2,
    )
    feature = torch.randn(8, 4)
    pooled, out = pool_pairs(level, feature)
    assert pooled.node2graph.tolist() == [0, 0, 0, 1, 1]
    torch.testing.assert_close(out[0], feature[:2].mean(0))
    torch.testing.assert_close(out[2], feature[4])  # odd protein: the last node stays alone
    torch.testing.assert_close(out[3], feature[5:7].mean(0))
    torch.testing.assert_close(pooled.position[4], position[7])
    assert pooled.residue_number.tolist() == [3, 4, 6, 1, 2]  # floor(s_{2m} / 2)
    norms = pooled.orientation.norm(dim=-1)
    torch.testing.assert_close(norms[norms > 0], torch.ones_like(norms[norms > 0]))


def test_orientation_frames_are_orthonormal_and_rotate_with_the_structure():
    records = [_record(PROTEINS[0]), _record(PROTEINS[1])]
    graph = _graph(records)
    frames = orientation_frames(graph.node_position, graph.node2graph, 2)
    eye = torch.eye(3).expand(len(frames), 3, 3)
    torch.testing.assert_close(frames @ frames.transpose(1, 2), eye, atol=1e-5, rtol=0)
    assert torch.allclose(torch.linalg.det(frames), torch.ones(len(frames)), atol=1e-5)  # right-handed
    # node 1 by hand: b bisects the two Cα-Cα bonds, n is their normal; ends copy their neighbour's frame
    x = graph.node_position
    back, ahead = (x[1] - x[0]) / (x[1] - x[0]).norm(), (x[2] - x[1]) / (x[2] - x[1]).norm()
    torch.testing.assert_close(frames[1, 0], (back - ahead) / (back - ahead).norm())
    normal = torch.linalg.cross(back, ahead)
    torch.testing.assert_close(frames[1, 1], normal / normal.norm())
    assert torch.equal(frames[0], frames[1]) and torch.equal(frames[83], frames[82])
    assert torch.equal(frames[84], frames[85])
    assert not torch.allclose(frames[83], frames[84])  # no frame crosses proteins
    rotation = _rotation().float()
    moved = orientation_frames(x @ rotation.T + torch.tensor([5.0, -30.0, 12.0]), graph.node2graph, 2)
    torch.testing.assert_close(moved, frames @ rotation.T, atol=1e-5, rtol=0)
    # fewer than 3 nodes: zero frames (the reference raises IndexError); the 3-node protein gets real ones
    tiny = orientation_frames(x[:6], torch.tensor([0, 0, 1, 2, 2, 2]), 3)
    assert torch.equal(tiny[:3], torch.zeros(3, 3, 3))
    torch.testing.assert_close(tiny[3:] @ tiny[3:].transpose(1, 2), eye[:3], atol=1e-5, rtol=0)


def test_graph_feature_is_invariant_to_rotation_and_translation_but_not_to_reflection():
    records = [_record(PROTEINS[0]), _record(PROTEINS[2])]
    rotation = _rotation()
    shift = torch.tensor([-40.0, 17.5, 123.0], dtype=torch.float64)
    base = _graph(records)
    moved = _graph(records, lambda p: (p.double() @ rotation.T + shift).float())
    mirrored = _graph(records, lambda p: p * torch.tensor([-1.0, 1.0, 1.0]))
    assert not torch.allclose(base.node_position, moved.node_position)
    model = _model()
    a, b, c = (_forward(model, g)["graph_feature"] for g in (base, moved, mirrored))
    torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-4)
    # a mirror image flips n = u_- x u_+, hence the n-component of every edge direction: CDConv is chiral
    assert (c - a).abs().max() > 100 * (b - a).abs().max()


def test_a_protein_gives_the_same_output_alone_and_in_a_batch():
    records = [_record(p) for p in PROTEINS]
    model = _model()
    batch = _forward(model, _graph(records))["graph_feature"]
    for i, record in enumerate(records):
        alone = _forward(model, _graph([record]))["graph_feature"]
        torch.testing.assert_close(batch[i : i + 1], alone, atol=1e-5, rtol=1e-5)
    reordered = _forward(model, _graph(records[::-1]))["graph_feature"]
    torch.testing.assert_close(reordered, batch.flip(0), atol=1e-5, rtol=1e-5)


def test_author_residue_numbers_index_the_discrete_kernels():
    record = _record(GAPPED)
    numbers = record_residue_numbers(record)
    assert (numbers[1:] - numbers[:-1] != 1).any()  # numbering gaps / insertion codes
    model = _model()
    with_numbers = _forward(model, _graph([record]))["graph_feature"]
    shifted = _graph([record])
    shifted.residue_number = shifted.residue_number + 1000  # only differences (and pair parity) matter
    fallback = _graph([record], numbers=False)  # node index: differs from the author numbering here
    contiguous = _graph([record])
    contiguous.residue_number = torch.arange(contiguous.num_nodes) + 2  # even shift: same floor(s/2) pairs
    torch.testing.assert_close(_forward(model, shifted)["graph_feature"], with_numbers)
    torch.testing.assert_close(_forward(model, fallback)["graph_feature"], _forward(model, contiguous)["graph_feature"])
    assert not torch.allclose(_forward(model, fallback)["graph_feature"], with_numbers, atol=1e-4)


def test_convolution_matches_an_edge_by_edge_evaluation():
    """The padded batched aggregation against the formula written out per edge (outer products flattened
    kernel-major, summed over incoming edges of the radius graph plus self loops, then ``@ W``)."""
    record = _record(PROTEINS[0])
    graph = _graph([record])
    level = CDConv.level(graph)
    torch.manual_seed(5)
    conv = ContinuousDiscreteConv(6, 5, [4, 3], seq_cutoff=9, spatial_cutoff=10.0)
    for bias in conv.WeightNet.bs:
        bias.data.normal_()
    feature = torch.randn(graph.num_nodes, 6)
    edge_index = level.edges(10.0)
    with torch.no_grad():
        out = conv(level, edge_index, feature)
    x, frames, s = level.position.double(), level.orientation.double(), level.residue_number
    expected = torch.zeros(graph.num_nodes, 3 * 6, dtype=torch.float64)
    distance = torch.cdist(x, x)
    count = 0
    for i in range(graph.num_nodes):
        for j in torch.nonzero(distance[i] < 10.0).flatten().tolist():
            count += 1
            d = distance[i, j]
            t = frames[i] @ ((x[j] - x[i]) / (d + 1e-9))
            q = (frames[i] * frames[j]).sum(-1)
            k = int(max(-4, min(4, int(s[j] - s[i]))))
            h = torch.cat([t, q, d.view(1)])
            for weight, bias in zip(conv.WeightNet.Ws, conv.WeightNet.bs, strict=True):
                h = torch.nn.functional.leaky_relu(h @ weight[k + 4].double() + bias[k + 4].double(), 0.2)
            smooth = 0.5 - 0.5 * math.tanh(16 * (float(d) / 10.0) * (abs(k) / 4) - 14)
            expected[i] += torch.outer(h * smooth, feature[j].double()).flatten()
    assert count == edge_index.shape[1]  # every pair within 10 Å, self loops included
    torch.testing.assert_close(out, (expected @ conv.W.double()).float(), atol=1e-5, rtol=1e-4)


def test_gradients_reach_every_parameter():
    records = [_record(PROTEINS[0]), _record(PROTEINS[1])]
    graph = _graph(records)
    model = _model().train()
    out = model(graph, residue_one_hot(graph.residue_type))
    (out["graph_feature"] * torch.linspace(-1, 1, 32)).sum().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing
    # every discrete offset -10..10 has edges at 8 Å, so every per-offset kernel slice learns
    grad = model.layers[0].conv.WeightNet.Ws[0].grad
    assert (grad.abs().sum(dim=(1, 2)) > 0).all()


def test_zoo_entry_and_errors():
    encoder, width = build_encoder({"type": "cdconv", **SMALL}, 21, name="cd")
    assert isinstance(encoder, CDConv) and width == 32 and encoder.layers[0].conv.seq_cutoff == 21
    default, width = build_encoder({"type": "cdconv"}, 1280)
    assert width == 2048 and default.embedding.weight.shape == (16, 1280) and default.layers[0].input.module[2].p == 0.2
    with pytest.raises(ConfigError, match=r"keys \['num_rbf'\] do not apply"):
        build_encoder({"type": "cdconv", "num_rbf": 3}, 21, name="cd")
    with pytest.raises(ConfigError, match="freeze_esm applies to types"):
        build_encoder({"type": "cdconv", "freeze_esm": False}, 21)
    with pytest.raises(ConfigError, match="odd"):
        CDConv(21, seq_cutoff=20)
    with pytest.raises(ConfigError, match="2 cutoffs for 3 levels"):
        CDConv(21, hidden_dims=[8, 8, 8], cutoffs=[8.0, 12.0])
    graph = _graph([_record(PROTEINS[0])])
    with pytest.raises(ValueError, match=r"input has shape \(84, 20\)"):
        _model()(graph, torch.zeros(84, 20))
    graph.residue_number = graph.residue_number[:10]
    with pytest.raises(ValueError, match=r"residue_number has shape \(10,\)"):
        _model()(graph, torch.zeros(84, 21))
