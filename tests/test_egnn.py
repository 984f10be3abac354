"""Tests of geoplm.models.egnn (EGNN, Satorras et al. 2021) on real AlphaFold Cα coordinates."""

from __future__ import annotations

import pytest
import torch

from geoplm.graph import knn_graph, radius_graph
from geoplm.models.egnn import E_GCL, EGNN
from geoplm.models.gvp import edge_features
from geoplm.structure import parse_structure

SMALL = "alphafold/AF-P76011-F1-model_v4.pdb"  # 84 residues


@pytest.fixture(scope="module")
def ca(shared_data) -> torch.Tensor:
    path = shared_data / SMALL
    if not path.exists():
        pytest.skip(f"{path} missing")
    record = parse_structure(path)[0]
    pos = record["backbone"][:, 1]
    return pos[~torch.isnan(pos).any(-1)].double()


def _rotation(seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _model(**kwargs) -> EGNN:
    torch.manual_seed(0)
    defaults = dict(in_node_nf=21, hidden_nf=16, out_node_nf=8, in_edge_nf=16, n_layers=3)
    model = EGNN(**{**defaults, **kwargs}).double()
    # the reference initialises phi_x's last layer with gain 0.001; enlarge it so that the coordinate
    # update is far from the identity and the equivariance test is not trivial
    std = 0.01 if kwargs.get("coords_agg") == "sum" else 0.1  # a sum over ~10-20 neighbours
    for layer in model.layers:
        torch.nn.init.normal_(layer.coord_mlp[2].weight, std=std)
    return model


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"attention": True, "tanh": True},
        {"normalize": True},
        {"coords_agg": "sum", "residual": False, "hidden_nf": 16},
    ],
)
@pytest.mark.parametrize("graph", ["knn", "radius"])
def test_egnn_invariance_equivariance(ca, options, graph):
    edge_index = knn_graph(ca, 10) if graph == "knn" else radius_graph(ca, 8.0)
    gen = torch.Generator().manual_seed(1)
    h = torch.nn.functional.one_hot(torch.randint(0, 21, (len(ca),), generator=gen), 21).double()
    model = _model(**options).eval()
    rot, shift = _rotation(3), torch.tensor([12.0, -7.5, 30.0], dtype=torch.float64)
    ca_moved = ca @ rot.T + shift

    h1, x1 = model(h, ca, edge_index, edge_features(ca, edge_index)[0])
    h2, x2 = model(h, ca_moved, edge_index, edge_features(ca_moved, edge_index)[0])
    assert h1.shape == (len(ca), 8) and x1.shape == ca.shape
    assert 1e-2 < (x1 - ca).abs().max() < 1e3  # coordinates really move (and stay bounded)
    torch.testing.assert_close(h2, h1, atol=1e-4, rtol=0)
    torch.testing.assert_close(x2, x1 @ rot.T + shift, atol=1e-4, rtol=0)
    if options:
        return
    # float32 (the training dtype), reference options: invariance holds to 1e-4 as well
    model32 = model.float()
    e32 = edge_features(ca.float(), edge_index)[0]
    h3, x3 = model32(h.float(), ca.float(), edge_index, e32)
    h4, x4 = model32(h.float(), ca_moved.float(), edge_index, edge_features(ca_moved.float(), edge_index)[0])
    torch.testing.assert_close(h4, h3, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(x4, x3 @ rot.T.float() + shift.float(), atol=1e-4, rtol=1e-5)


def test_egnn_backward_reaches_all_parameters(ca):
    edge_index = knn_graph(ca.float(), 10)
    pos = ca.float()
    torch.manual_seed(0)
    model = EGNN(1280, 16, 4, in_edge_nf=16, n_layers=2, attention=True)
    plm = torch.randn(len(pos), 1280)
    h, x = model(plm, pos, edge_index, edge_features(pos, edge_index)[0])
    (h.pow(2).sum() + x.pow(2).sum() * 1e-3).backward()
    assert model.embedding_in.weight.shape == (16, 1280)
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_e_gcl_layout_and_reference_formula():
    """One layer against the equations written out by hand (reference ``E_GCL``, mean coords_agg)."""
    torch.manual_seed(0)
    layer = E_GCL(3, 3, 5, edges_in_d=2).double()
    torch.nn.init.normal_(layer.coord_mlp[2].weight)
    h = torch.randn(4, 3, dtype=torch.float64)
    x = torch.randn(4, 3, dtype=torch.float64)
    a = torch.randn(3, 2, dtype=torch.float64)
    edge_index = torch.tensor([[1, 2, 3], [0, 0, 1]])  # 1->0, 2->0, 3->1; nodes 2, 3 receive nothing
    h_new, x_new = layer(h, edge_index, x, a)

    expected_h, expected_x = h.clone(), x.clone()
    for i in range(4):
        incoming = [(e, int(edge_index[0, e])) for e in range(3) if int(edge_index[1, e]) == i]
        m_sum = torch.zeros(5, dtype=torch.float64)
        shift = torch.zeros(3, dtype=torch.float64)
        for e, j in incoming:
            d = x[i] - x[j]
            m = layer.edge_mlp(torch.cat([h[i], h[j], (d * d).sum().view(1), a[e]]))
            m_sum = m_sum + m
            shift = shift + d * layer.coord_mlp(m)
        expected_h[i] = h[i] + layer.node_mlp(torch.cat([h[i], m_sum]))
        expected_x[i] = x[i] + shift / max(len(incoming), 1)
    torch.testing.assert_close(h_new, expected_h)
    torch.testing.assert_close(x_new, expected_x)
    n_params = sum(p.numel() for p in layer.parameters())
    # edge_mlp (2*3+1+2)*5+5 + 5*5+5, node_mlp (5+3)*5+5 + 5*3+3, coord_mlp 5*5+5 + 5
    assert n_params == 50 + 30 + 45 + 18 + 30 + 5


def test_egnn_input_validation():
    model = EGNN(4, 8, 2, in_edge_nf=3)
    with pytest.raises(ValueError):
        model(torch.zeros(5, 4), torch.zeros(5, 3), torch.zeros(2, 0, dtype=torch.long))  # edge_attr missing
    with pytest.raises(ValueError):
        model(torch.zeros(5, 3), torch.zeros(5, 3), torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, 3))
    with pytest.raises(ValueError):
        E_GCL(4, 5, 8)  # residual with different widths


def test_zoo_egnn_is_ggnn_meets_plm_egnn(ca):
    """The zoo's ``egnn`` is GGNN_Meets_PLM's EGNN (``egnn/egnn_clean.py``): an ``nn.Embedding`` of the residue
    type (or the PLM vector itself) into the E_GCL layers, no input / output linear, and messages aggregated at
    ``edge_index[0]`` of torch_cluster's kNN graph ``[neighbour, centre]``. A residue far from the protein is no
    residue's neighbour, so it receives no message there: its coordinates stay put while the centres move (with
    the aggregation at the centre it would move, its ten neighbours sending to it)."""
    from types import SimpleNamespace

    from geoplm.models.zoo import build_encoder

    pos = torch.cat([ca, ca[:1] + 100.0]).float()  # one residue 100 Å away
    n = len(pos)
    edge_index = knn_graph(pos, 10)
    graph = SimpleNamespace(
        edge_list=torch.stack([edge_index[0], edge_index[1], torch.zeros_like(edge_index[0])], dim=1),
        node_position=pos,
        residue_type=torch.arange(n) % 20,
        node2graph=torch.zeros(n, dtype=torch.long),
        batch_size=1,
    )
    assert (edge_index[1] == n - 1).sum() == 10 and not (edge_index[0] == n - 1).any()
    for plm_width in (None, 12):
        torch.manual_seed(0)
        spec = {"type": "egnn", "hidden_dim": 16, "num_layers": 2}
        encoder, width = build_encoder(spec, plm_width or 21, plm=plm_width is not None, name="egnn")
        assert width == (plm_width or 16)
        assert not any("embedding_in" in k or "embedding_out" in k for k in encoder.state_dict())
        assert ("embed.weight" in encoder.state_dict()) == (plm_width is None)
        for layer in encoder.net.layers:  # a visible coordinate update (the reference's gain is 0.001)
            torch.nn.init.normal_(layer.coord_mlp[2].weight, std=0.1)
        node_feature = torch.randn(n, plm_width) if plm_width else torch.zeros(n, 21)
        out = encoder(graph, node_feature)
        assert out["node_feature"].shape == (n, width)
        assert torch.equal(out["position"][-1], pos[-1])
        assert (out["position"][:-1] - pos[:-1]).abs().max() > 1e-3
