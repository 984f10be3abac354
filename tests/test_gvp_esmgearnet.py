"""ESM-GearNet's GVP-GNN (geoplm.models.gvp_esmgearnet, zoo type ``gvp_esmgearnet``) against the reference.

The reference numbers come from ``tests/fixtures/esm_gearnet_gvp_reference.pt``, written once by
``benchmarks/esm_gearnet_gvp_reference.py`` with DeepGraphLearning/ESM-GearNet @ bc90557 ``gearnet/gvp.py`` /
``gearnet/gvp_layer.py`` on torchdrug 0.2.1 (graph: ``GraphConstruction([AlphaCarbonNode()],
[SpatialEdge(radius=10.0, min_distance=0)])``). No torchdrug is needed here.

Tolerances: edge sets must be identical; node and graph features agree to ``atol = rtol = 1e-5`` (float32;
the reference aggregates with torch_geometric's scatter, we with ``index_add_``, so sums differ in the last
bits) and parameter gradients to ``1e-5 + 1e-4 |g|``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from geoplm import inputs
from geoplm.errors import ConfigError
from geoplm.graph import ResidueGraph, build_batch_graph, radius_graph
from geoplm.models.gvp_esmgearnet import ESMGearNetGVPGNN, convert_reference_state_dict
from geoplm.models.zoo import ENCODERS, build_encoder
from geoplm.structure import parse_structure

FIXTURE = Path(__file__).parent / "fixtures" / "esm_gearnet_gvp_reference.pt"
SCHEMA = Path(__file__).resolve().parents[1] / "config" / "schema.yaml"
#: ESM-GearNet's graph as a geoplm ``graphs`` entry (torchdrug SpatialEdge(radius=10.0, min_distance=0))
GRAPH = {"kind": "radius", "radius": 10.0, "max_num_neighbors": 32}
ATOL = RTOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these small models are dominated by thread hand-offs on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(FIXTURE, weights_only=True)


def _loss(out: dict) -> torch.Tensor:
    """The reference script's ``loss_of``."""
    return out["node_feature"].square().mean() + out["graph_feature"].sum()


def _graph(proteins: list[dict], dtype=torch.float32) -> ResidueGraph:
    """The fixture's torchdrug graph, packed."""
    sizes = [p["num_residues"] for p in proteins]
    offsets = torch.tensor([0] + sizes[:-1]).cumsum(0).tolist()
    edges = torch.cat([p["edge_list"].long() + o for p, o in zip(proteins, offsets, strict=True)])
    edge_list = torch.cat([edges, torch.zeros(len(edges), 1, dtype=torch.long)], dim=1)
    return ResidueGraph(
        num_nodes=sum(sizes),
        batch_size=len(proteins),
        node_position=torch.cat([p["node_position"] for p in proteins]).to(dtype),
        residue_type=torch.cat([p["residue_type"] for p in proteins]),
        node2graph=torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)),
        edge_list=edge_list,
        edge_feature=torch.zeros(len(edges), 0),
        num_relation=1,
    )


def _input(reference: dict, name: str) -> torch.Tensor:
    proteins = reference["proteins"]
    if name == "dense":
        return torch.cat([p["dense_input"] for p in proteins])
    return torch.nn.functional.one_hot(torch.cat([p["node_feature_index"] for p in proteins]), 21).float()


def _model(reference: dict, name: str) -> ESMGearNetGVPGNN:
    model = ESMGearNetGVPGNN(**reference["config"][name])
    model.load_reference_state_dict(reference[f"{name}_state_dict"])
    return model.eval()


def _expected(reference: dict, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    proteins = reference["proteins"]
    node = torch.cat([p[name]["node_feature"] for p in proteins])
    return node, torch.stack([p[name]["graph_feature"] for p in proteins])


def _rotation(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def test_fixture_layout(reference):
    assert FIXTURE.stat().st_size < 1_000_000
    assert reference["meta"]["torchdrug"] == "0.2.1" and "bc90557" in reference["meta"]["reference"]
    assert len(reference["proteins"]) == 3
    for p in reference["proteins"]:
        n = p["num_residues"]
        assert p["node_position"].shape == (n, 3) and p["edge_list"].shape[1] == 2
        assert p["onehot"]["node_feature"].shape == (n, 16) and p["dense"]["graph_feature"].shape == (16,)
    assert any(k.endswith("vdropout.dummy_param") for k in reference["onehot_state_dict"])
    assert "residue_embdding.weight" in reference["onehot_state_dict"]


def test_radius_graph_equals_torchdrug_spatial_edge(reference):
    """SpatialEdge(radius=10, min_distance=0) = radius_graph(r=10, max_num_neighbors=32): no self loops, both
    directions, sequence neighbours kept; the cap of 32 does not bind on these proteins."""
    assert reference["max_in_degree"] < 32
    for p in reference["proteins"]:
        n = p["num_residues"]
        ours = radius_graph(p["node_position"], 10.0, max_num_neighbors=32).t()
        ours = ours[torch.argsort(ours[:, 1] * n + ours[:, 0])]
        assert torch.equal(ours, p["edge_list"].long()), p["file"]
        assert radius_graph(p["node_position"], 10.0).shape[1] == len(ours)  # the cap does not bind
        assert not bool((ours[:, 0] == ours[:, 1]).any())
    graph = build_batch_graph(*_packed_nodes(reference), GRAPH)
    assert torch.equal(graph.edge_list[:, :2], _graph(reference["proteins"]).edge_list[:, :2])


def _packed_nodes(reference):
    g = _graph(reference["proteins"])
    return g.node_position, g.residue_type, g.node2graph


@pytest.mark.parametrize("name", ["onehot", "dense"])
def test_outputs_match_reference(reference, name):
    model = _model(reference, name)
    with torch.no_grad():
        out = model(_graph(reference["proteins"]), _input(reference, name))
    node, graph = _expected(reference, name)
    torch.testing.assert_close(out["node_feature"], node, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(out["graph_feature"], graph, atol=ATOL, rtol=RTOL)


def test_gradients_match_reference(reference):
    model = _model(reference, "onehot")
    _loss(model(_graph(reference["proteins"]), _input(reference, "onehot"))).backward()
    expected = convert_reference_state_dict(reference["onehot_grad"])
    params = dict(model.named_parameters())
    assert expected.keys() == params.keys()
    for key, grad in expected.items():
        torch.testing.assert_close(params[key].grad, grad, atol=1e-5, rtol=1e-4, msg=key)


def test_zoo_encoder_on_parsed_structures_matches_reference(reference, shared_data):
    """End to end: geoplm's parser, input loader (21-d one-hot), graph registry (radius 10 Å, cap 32) and the
    zoo's ``gvp_esmgearnet`` with the reference weights give the reference's features."""
    records = []
    for p in reference["proteins"]:
        path = shared_data / p["file"]
        if not path.is_file():
            pytest.skip(f"{path} not found")
        records += parse_structure(path)
    spec = {"type": "gvp_esmgearnet", "node_dims": [16, 4], "edge_dims": [8, 1], "num_layers": 2}
    encoder, dim = build_encoder(spec, 21, plm=False)
    assert dim == 16
    encoder.load_reference_state_dict(reference["onehot_state_dict"])
    proteins = [inputs.InputLoader()(r) for r in records]
    batch = inputs.pack(proteins, settings=GRAPH)
    with torch.no_grad():
        out = encoder.eval()(batch.graph, batch.node_feature)
    node, graph = _expected(reference, "onehot")
    torch.testing.assert_close(out["node_feature"], node, atol=1e-4, rtol=1e-4)  # PDB coordinates, 3 decimals
    torch.testing.assert_close(out["graph_feature"], graph, atol=1e-4, rtol=1e-4)


def test_rotation_translation_invariance(reference):
    """Scalar outputs are invariant under rotations, reflections and translations (float64, the configs'
    full-size model, a real structure)."""
    p = reference["proteins"][0]
    graph = _graph([p], torch.float64)
    torch.manual_seed(0)
    encoder, _ = build_encoder({"type": "gvp_esmgearnet"}, 21)
    encoder = encoder.double().eval()
    feature = torch.nn.functional.one_hot(p["node_feature_index"], 21).double()
    mirror = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    with torch.no_grad():
        a = encoder(graph, feature)
        assert a["node_feature"].shape == (p["num_residues"], 256) and a["node_feature"].abs().sum() > 0
        for transform in (_rotation(), _rotation(1) @ mirror):  # also invariant under reflections (O(3))
            moved = ResidueGraph(**{**graph.__dict__, "node_position": graph.node_position @ transform.T + 7.5})
            b = encoder(moved, feature)
            for key in ("node_feature", "graph_feature"):
                torch.testing.assert_close(b[key], a[key], atol=1e-9, rtol=1e-9)


def test_gradients_reach_every_parameter(reference):
    graph = _graph(reference["proteins"][:2])
    torch.manual_seed(1)
    encoder, _ = build_encoder({"type": "gvp_esmgearnet", "node_dims": [16, 4], "num_layers": 2}, 8, plm=True)
    encoder.train()
    feature = torch.randn(graph.num_nodes, 8)
    _loss(encoder(graph, feature)).backward()
    for key, param in encoder.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), key
        assert param.grad.abs().sum() > 0, key


def test_registry_and_schema():
    assert "gvp_esmgearnet" in ENCODERS
    schema = yaml.safe_load(SCHEMA.read_text())
    models = schema["properties"]["models"]["additionalProperties"]
    assert "gvp_esmgearnet" in models["properties"]["type"]["enum"]
    for key in ("node_dims", "edge_dims", "num_rbf", "num_layers", "dropout", "readout", "vector_gate"):
        assert key in models["properties"], key
    encoder, dim = build_encoder({"type": "gvp_esmgearnet"}, 1280, plm=True)
    assert dim == 256 and encoder.residue_embedding.weight.shape == (1280, 1280)
    assert encoder.node_in_dim == (1280, 0) and encoder.edge_h_dim == (64, 1) and len(encoder.layers) == 5
    assert encoder.readout == "mean" and encoder.layers[0].dropout[0].drop_rate == 0.1
    with pytest.raises(ConfigError, match="embed_dim"):
        build_encoder({"type": "gvp_esmgearnet", "embed_dim": 32}, 21)
    with pytest.raises(ConfigError, match="models.m: readout"):
        build_encoder({"type": "gvp_esmgearnet", "readout": "max"}, 21, name="m")


def test_state_dict_errors_name_the_key(reference):
    state = reference["onehot_state_dict"]
    model = ESMGearNetGVPGNN(**reference["config"]["onehot"])
    with pytest.raises(KeyError, match=r"W_out\.1\.ws\.bias"):
        model.load_reference_state_dict({k: v for k, v in state.items() if k != "W_out.1.ws.bias"})
    with pytest.raises(KeyError, match="extra.weight"):
        model.load_reference_state_dict({**state, "extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="residue_embdding.weight has shape"):
        model.load_reference_state_dict({**state, "residue_embdding.weight": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match="dummy_param"):
        key = next(k for k in state if k.endswith("dummy_param"))
        model.load_reference_state_dict({**state, key: torch.zeros(2)})


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="node_in_dim"):
        ESMGearNetGVPGNN((21, 3))
    with pytest.raises(ValueError, match="edge_in_dim"):
        ESMGearNetGVPGNN((21, 0), edge_in_dim=(16, 2))
    with pytest.raises(ValueError, match="readout"):
        ESMGearNetGVPGNN((21, 0), readout="max")
    with pytest.raises(ValueError, match="node_h_dim"):
        ESMGearNetGVPGNN((21, 0), node_h_dim=(16,))
    model = ESMGearNetGVPGNN((21, 0), node_h_dim=(8, 2), edge_h_dim=(4, 1), num_layers=1)
    pos = torch.randn(5, 3)
    graph = build_batch_graph(pos, torch.zeros(5, dtype=torch.long), torch.zeros(5, dtype=torch.long), GRAPH)
    with pytest.raises(ValueError, match="node_feature"):
        model(graph, torch.zeros(5, 20))
    with pytest.raises(ValueError, match="node_feature"):
        model(graph, torch.zeros(5, 21, dtype=torch.long))
