"""GearNet-IEConv / GearNet-Edge-IEConv (:mod:`geoplm.models.gearnet_ieconv`): parity with the GearNet repository's
``GearNetIEConv`` on real proteins, invariance, gradients, the zoo entry and the config schema.

The reference numbers come from ``tests/fixtures/torchdrug_gearnet_ieconv.pt``, written once by
``benchmarks/gearnet_ieconv_reference.py`` (torchdrug 0.2.1 + DeepGraphLearning/GearNet ``gearnet/``); no torchdrug
is needed here. The graphs are rebuilt from the Cα coordinates torchdrug used (their edge lists must equal
torchdrug's), the reference state dicts are loaded strictly, and outputs are compared in eval mode.

Tolerances for float32 features: ``|a - b| <= atol + 1e-5 |b|`` with ``atol = max(1e-5, 1e-6 * max|b|)`` (about 8
float32 ulps of the tensor's largest value): the reference sums with ``scatter_add`` over a packed ``(E, d)`` message
tensor and applies ``linear`` once to ``node + edge`` sums; we use CSR products and two fused linears, so float32
sums differ in the last bits. Measured against a float64 run of our model, both sides err by the same amount (e.g.
the model without layer norm, values up to ~900: ours 3.5e-4, the reference 2.4e-4; the others < 3e-6).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

from geoplm import config as geoplm_config
from geoplm.errors import ConfigError, GeoplmError
from geoplm.graph import build_gearnet_graph, residue_one_hot
from geoplm.models.gearnet_ieconv import GearNetIEConv, ieconv_edge_feature, ieconv_local_frames
from geoplm.models.zoo import build_encoder
from geoplm.pretraining.published import map_published

FIXTURE = Path(__file__).parent / "fixtures" / "torchdrug_gearnet_ieconv.pt"
CONFIG = Path(__file__).resolve().parents[1] / "config"
ATOL = RTOL = 1e-5
MODELS = ["gearnet_ieconv", "gearnet_edge_ieconv", "gearnet_edge", "gearnet_ieconv_plain"]


def load_reference_state_dict(model: GearNetIEConv, state: dict) -> None:
    """The reference's state dict loaded as a published checkpoint is (strictly, through ``map_published``)."""
    model.load_state_dict(map_published(state, model), strict=True)


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(FIXTURE, weights_only=True)


@pytest.fixture(scope="module")
def packed(reference):
    """The packed batch torchdrug ran on: (graph, 21-d input) with edges in torchdrug's per-protein sorted order."""
    proteins = reference["proteins"]
    pos = torch.cat([p["node_position"] for p in proteins])
    rtype = torch.cat([p["residue_type"] for p in proteins])
    node2graph = torch.cat([torch.full((p["num_residues"],), b) for b, p in enumerate(proteins)])
    graph = build_gearnet_graph(pos, rtype, node2graph)
    offset, expected = 0, []
    for p in proteins:
        expected.append(p["edge_list"].long() + torch.tensor([offset, offset, 0]))
        offset += p["num_residues"]
    assert torch.equal(graph.edge_list, torch.cat(expected))  # the reference's graph, edge for edge
    index = torch.cat([p["node_feature_index"] for p in proteins])
    return graph, residue_one_hot(index)


def _reference_model(reference: dict, name: str, frames: str = "reference") -> GearNetIEConv:
    model = GearNetIEConv(**reference["config"][name], frames=frames)
    load_reference_state_dict(model, reference["state_dict"][name])
    return model.eval()


def _random_rigid(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q, torch.randn(3, generator=gen, dtype=torch.float64) * 20


def test_fixture_layout(reference):
    assert reference["meta"]["torchdrug"] == "0.2.1"
    assert reference["meta"]["gearnet_commit"] == "28bf75f5dfb6cd7b9bf4394d153a87f69bddf1a6"
    assert FIXTURE.stat().st_size < 2_000_000
    assert sorted(reference["config"]) == sorted(MODELS) == sorted(reference["state_dict"])
    assert len(reference["proteins"]) == 3
    for p in reference["proteins"]:
        n, e = p["num_residues"], p["edge_list"].shape[0]
        assert p["node_position"].shape == (n, 3) and p["ieconv_feature"].shape == (e, 7)
        for name in MODELS:
            assert p[name]["node_feature"].shape[0] == n


def test_state_dict_names_are_the_reference_names_and_load_strictly(reference):
    for name in MODELS:
        state = reference["state_dict"][name]
        model = GearNetIEConv(**reference["config"][name])
        assert set(model.state_dict()) == set(state), name
        load_reference_state_dict(model, state)
        for key, value in model.state_dict().items():
            assert torch.equal(value, state[key]), key

    name = "gearnet_edge_ieconv"
    state = reference["state_dict"][name]
    model = GearNetIEConv(**reference["config"][name])
    key = "ieconvs.1.kernel.layers.1.weight"
    with pytest.raises(GeoplmError, match=key.replace(".", r"\.")):
        load_reference_state_dict(model, {k: v for k, v in state.items() if k != key})
    with pytest.raises(GeoplmError, match="edge_layers.0.self_loop.weight"):
        load_reference_state_dict(model, {**state, "edge_layers.0.self_loop.weight": torch.zeros(32, 59)})
    with pytest.raises(GeoplmError, match="layer_norms.0.weight"):
        load_reference_state_dict(model, {**state, "layer_norms.0.weight": torch.zeros(31)})
    # a torchdrug task checkpoint: keys under "model.", plus the task's head (ignored)
    task_state = {f"model.{k}": v + 1 if v.is_floating_point() else v for k, v in state.items()}
    load_reference_state_dict(model, {**task_state, "mlp.layers.0.weight": torch.zeros(3, 3)})
    assert torch.equal(model.linear.weight, state["linear.weight"] + 1)


def test_ieconv_edge_feature_matches_reference(reference, packed):
    graph, _ = packed
    expected = torch.cat([p["ieconv_feature"] for p in reference["proteins"]])
    feature = ieconv_edge_feature(graph, "reference")
    assert feature.shape == (graph.num_edges, 14)
    torch.testing.assert_close(feature[:, :7], expected, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(feature[:, 7:], 1 - 2 * feature[:, :7].abs())

    # per_graph frames: identical wherever both residues are interior; the end residues differ
    ours = ieconv_edge_feature(graph, "per_graph")
    g = graph.node2graph
    interior = torch.zeros(graph.num_nodes, dtype=torch.bool)
    interior[1:-1] = (g[:-2] == g[1:-1]) & (g[1:-1] == g[2:])
    both = interior[graph.edge_list[:, 0]] & interior[graph.edge_list[:, 1]]
    assert 0.9 < float(both.float().mean()) < 1.0
    assert torch.equal(ours[both], feature[both])
    assert not torch.allclose(ours[~both], feature[~both], atol=1e-3)


@pytest.mark.parametrize("name", MODELS)
def test_outputs_match_reference(reference, packed, name):
    graph, x = packed
    model = _reference_model(reference, name)
    with torch.no_grad():
        out = model(graph, x)
    node = torch.cat([p[name]["node_feature"] for p in reference["proteins"]])
    graph_feature = torch.stack([p[name]["graph_feature"] for p in reference["proteins"]])
    assert out["node_feature"].shape == node.shape and out["graph_feature"].shape == graph_feature.shape
    assert out["node_feature"].shape[1] == model.output_dim
    for ours, theirs in ((out["node_feature"], node), (out["graph_feature"], graph_feature)):
        atol = max(ATOL, 1e-6 * float(theirs.abs().max()))
        torch.testing.assert_close(ours, theirs, atol=atol, rtol=RTOL)


def _double_graphs(reference, rotation=None, shift=None):
    proteins = reference["proteins"]
    pos = torch.cat([p["node_position"] for p in proteins]).double()
    if rotation is not None:
        pos = pos @ rotation.T + shift
    rtype = torch.cat([p["residue_type"] for p in proteins])
    node2graph = torch.cat([torch.full((p["num_residues"],), b) for b, p in enumerate(proteins)])
    return build_gearnet_graph(pos, rtype, node2graph)


def test_invariant_under_rotation_and_translation(reference):
    """float64, GearNet-Edge-IEConv: per_graph frames give the same output for a rigidly moved batch (to 1e-9);
    the reference's packed-batch frames do not (the deviation is real)."""
    rotation, shift = _random_rigid(3)
    graph, moved = _double_graphs(reference), _double_graphs(reference, rotation, shift)
    assert torch.equal(graph.edge_list, moved.edge_list)
    index = torch.cat([p["node_feature_index"] for p in reference["proteins"]])
    x = residue_one_hot(index).double()
    frame, frame_moved = (ieconv_local_frames(g.node_position, g.node2graph) for g in (graph, moved))
    torch.testing.assert_close(frame_moved, rotation @ frame, atol=1e-10, rtol=0)  # equivariant frames
    for frames, invariant in (("per_graph", True), ("reference", False)):
        model = _reference_model(reference, "gearnet_edge_ieconv", frames).double()
        with torch.no_grad():
            a, b = model(graph, x), model(moved, x)
        for key in a:
            scale = float(a[key].abs().max())
            if invariant:
                torch.testing.assert_close(b[key], a[key], atol=1e-9 * scale, rtol=0)
            else:
                assert float((b[key] - a[key]).abs().max()) > 1e-4 * scale, key


def test_per_graph_frames_make_proteins_independent_of_the_batch(reference):
    """float64, GearNet-IEConv: each protein's output is the same alone and in the batch (reference frames: not)."""
    model = _reference_model(reference, "gearnet_ieconv", "per_graph")
    proteins = reference["proteins"]
    index = torch.cat([p["node_feature_index"] for p in proteins])
    batch = _double_graphs(reference)
    with torch.no_grad():
        together = model.double()(batch, residue_one_hot(index).double())
        for b, p in enumerate(proteins):
            graph = build_gearnet_graph(p["node_position"].double(), p["residue_type"])
            alone = model(graph, residue_one_hot(p["node_feature_index"]).double())
            mask = batch.node2graph == b
            torch.testing.assert_close(together["node_feature"][mask], alone["node_feature"], atol=1e-9, rtol=1e-9)
            torch.testing.assert_close(together["graph_feature"][b], alone["graph_feature"][0], atol=1e-8, rtol=1e-9)
        # the reference's frames of protein 1's end residues use the Cα of proteins 0 and 2
        packed_frames = _reference_model(reference, "gearnet_ieconv", "reference").double()
        together = packed_frames(batch, residue_one_hot(index).double())["graph_feature"][1]
        p = proteins[1]
        graph = build_gearnet_graph(p["node_position"].double(), p["residue_type"])
        alone = packed_frames(graph, residue_one_hot(p["node_feature_index"]).double())["graph_feature"][0]
        assert float((together - alone).abs().max()) > 1e-4 * float(alone.abs().max())


def test_local_frames_end_residues_and_short_proteins():
    gen = torch.Generator().manual_seed(0)
    pos = torch.randn(9, 3, generator=gen, dtype=torch.float64) * 3
    node2graph = torch.tensor([0, 0, 0, 0, 1, 1, 2, 3, 3])  # sizes 4, 2, 1, 2
    frames = ieconv_local_frames(pos, node2graph)
    reference = ieconv_local_frames(pos, node2graph, "reference")
    torch.testing.assert_close(frames[1], reference[1], rtol=0, atol=0)  # interior
    torch.testing.assert_close(frames[0], reference[1], rtol=0, atol=0)  # first: copies the second
    torch.testing.assert_close(frames[3], reference[2], rtol=0, atol=0)  # last: copies the second-to-last
    assert torch.equal(frames[4:], torch.zeros(5, 3, 3, dtype=torch.float64))  # proteins of < 3 residues
    eye = torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(frames[1].T @ frames[1], eye)  # orthonormal
    assert float(torch.det(frames[1])) == pytest.approx(1.0)
    assert ieconv_local_frames(pos[:0]).shape == (0, 3, 3)
    with pytest.raises(ValueError, match="frames"):
        ieconv_local_frames(pos, frames="packed")


def test_gradients_reach_every_parameter(reference):
    protein = reference["proteins"][0]
    graph = build_gearnet_graph(protein["node_position"], protein["residue_type"])
    x = residue_one_hot(protein["node_feature_index"])
    torch.manual_seed(0)
    model = GearNetIEConv(
        21, 16, [16, 16], 7, 59, 8, batch_norm=True, concat_hidden=True, layer_norm=True, dropout=0.2, use_ieconv=True
    ).train()
    out = model(graph, x)
    (out["graph_feature"].square().mean() + out["node_feature"].mean()).backward()
    names = [name for name, _ in model.named_parameters()]
    assert any(n.startswith("ieconvs.1.kernel") for n in names) and any(n.startswith("edge_layers.1") for n in names)
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_argument_checks(packed):
    graph, x = packed
    with pytest.raises(ValueError, match="edge_input_dim"):
        GearNetIEConv(21, 32, [32], num_angle_bin=8)
    with pytest.raises(ValueError, match="readout"):
        GearNetIEConv(21, 32, [32], readout="max")
    with pytest.raises(ValueError, match="frames"):
        GearNetIEConv(21, 32, [32], frames="packed")
    with pytest.raises(ValueError, match="width >= 4"):
        GearNetIEConv(3, 0, [32], use_ieconv=True)
    with pytest.raises(ValueError, match="relations"):
        GearNetIEConv(21, 8, [8], num_relation=5)(graph, x)
    with pytest.raises(ValueError, match="input must be"):
        GearNetIEConv(20, 8, [8])(graph, x)
    model = GearNetIEConv(21, 8, [8, 4], dropout=0.5).eval()
    with torch.no_grad():
        assert torch.equal(model(graph, x)["node_feature"], model(graph, x)["node_feature"])  # eval: no dropout
        model.train()
        assert not torch.equal(model(graph, x)["node_feature"], model(graph, x)["node_feature"])


def test_zoo_entry_defaults_are_the_fold3d_configs(packed):
    encoder, dim = build_encoder({"type": "gearnet_ieconv"}, 21)
    assert isinstance(encoder, GearNetIEConv) and dim == encoder.output_dim == 3072
    assert encoder.dims == [512] * 7 and encoder.embedding_dim == 512 and encoder.num_angle_bin is None
    assert encoder.use_ieconv and encoder.layer_norm and encoder.short_cut and encoder.concat_hidden
    assert encoder.layers[0].batch_norm is not None and encoder.dropout.p == 0.2 and encoder.readout == "sum"
    assert encoder.frames == "per_graph" and len(encoder.ieconvs) == 6 and encoder.ieconvs[0].hidden_dim == 128
    edge, _ = build_encoder({"type": "gearnet_ieconv", "num_angle_bin": 8, "hidden_dims": [16]}, 21)
    assert edge.edge_dims == [59, 512] and edge.edge_layers[0].num_relation == 8
    graph, x = packed
    small = {"type": "gearnet_ieconv", "embedding_dim": 16, "hidden_dims": [16, 8], "use_ieconv": False}
    encoder, dim = build_encoder(small, 21)
    out = encoder.eval()(graph, x)
    assert out["node_feature"].shape == (graph.num_nodes, dim) == (graph.num_nodes, 24)
    assert out["graph_feature"].shape == (graph.batch_size, dim)
    assert len(encoder.ieconvs) == 0
    with pytest.raises(ConfigError, match="fusion"):
        build_encoder({"type": "gearnet_ieconv", "fusion": "serial"}, 21)
    with pytest.raises(ConfigError, match="models.x: .*frames"):
        build_encoder({"type": "gearnet_ieconv", "ieconv_frames": "packed"}, 21, name="x")


def test_schema_accepts_gearnet_ieconv_keys():
    config = geoplm_config.load_config(CONFIG / "config.yaml")
    config = copy.deepcopy(config)
    config["models"]["gearnet_edge_ieconv"] = {
        "type": "gearnet_ieconv",
        "embedding_dim": 512,
        "num_angle_bin": 8,
        "layer_norm": True,
        "use_ieconv": True,
        "ieconv_frames": "reference",
        "dropout": 0.2,
    }
    geoplm_config.validate_schema(config)
    config["models"]["gearnet_edge_ieconv"]["ieconv_frames"] = "packed"
    with pytest.raises(ConfigError, match="models.gearnet_edge_ieconv.ieconv_frames"):
        geoplm_config.validate_schema(config)
    schema = yaml.safe_load((CONFIG / "schema.yaml").read_text())
    assert "gearnet_ieconv" in schema["properties"]["models"]["additionalProperties"]["properties"]["type"]["enum"]
