"""Tests of geoplm.models.gvp (GVP-GNN, Jing et al. 2021; Wu et al. 2023's residue-level BaseModel) on
real AlphaFold Cα coordinates."""

from __future__ import annotations

import math

import pytest
import torch

from geoplm.graph import knn_graph, radius_graph
from geoplm.models.gvp import (
    GVP,
    GVPGNN,
    Dropout,
    GVPConv,
    GVPConvLayer,
    LayerNorm,
    edge_features,
    gvp_gnn_num_parameters,
    rbf,
)
from geoplm.structure import parse_structure, residue_type_index

SMALL = "alphafold/AF-P76011-F1-model_v4.pdb"  # 84 residues


@pytest.fixture(scope="module")
def protein(shared_data) -> tuple[torch.Tensor, torch.Tensor]:
    path = shared_data / SMALL
    if not path.exists():
        pytest.skip(f"{path} missing")
    record = parse_structure(path)[0]
    pos = record["backbone"][:, 1]
    keep = ~torch.isnan(pos).any(-1)
    return pos[keep].double(), residue_type_index(record["sequence"])[keep]


def _rotation(seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    assert torch.allclose(q @ q.T, torch.eye(3, dtype=torch.float64)) and torch.det(q) > 0
    return q


SHIFT = torch.tensor([-20.0, 5.5, 13.0], dtype=torch.float64)


@pytest.mark.parametrize("graph", ["knn", "radius"])
@pytest.mark.parametrize("plm", [False, True])
def test_gvp_gnn_invariance(protein, graph, plm):
    pos, residue_type = protein
    edge_index = knn_graph(pos, 10) if graph == "knn" else radius_graph(pos, 8.0)
    torch.manual_seed(0)
    if plm:
        model = GVPGNN(plm_dim=48, node_dims=(16, 4), edge_dims=(8, 1), num_layers=2).double().eval()
        node_input = torch.randn(len(pos), 48, dtype=torch.float64)
    else:
        model = GVPGNN(embed_dim=8, node_dims=(16, 4), edge_dims=(8, 1), num_layers=2).double().eval()
        node_input = residue_type
    rot = _rotation(5)
    out = model(node_input, pos, edge_index)
    out_moved = model(node_input, pos @ rot.T + SHIFT, edge_index)
    assert out.shape == (len(pos), 16)
    assert out.std() > 1e-3
    torch.testing.assert_close(out_moved, out, atol=1e-4, rtol=0)
    # float32
    model = model.float()
    out32 = model(node_input.float() if plm else node_input, pos.float(), edge_index)
    out32_moved = model(node_input.float() if plm else node_input, (pos @ rot.T + SHIFT).float(), edge_index)
    torch.testing.assert_close(out32_moved, out32, atol=1e-4, rtol=0)


def test_gvp_gnn_wu_configuration_invariance(protein):
    """Full-size reference configuration (100, 16) / (32, 1), 5 layers, r = 8 Å ball."""
    pos, residue_type = protein
    edge_index = radius_graph(pos.float(), 8.0)
    torch.manual_seed(0)
    model = GVPGNN().eval()
    rot = _rotation(7).float()
    out = model(residue_type, pos.float(), edge_index)
    out_moved = model(residue_type, pos.float() @ rot.T + SHIFT.float(), edge_index)
    assert out.shape == (len(pos), 100)
    torch.testing.assert_close(out_moved, out, atol=1e-4, rtol=0)


def test_gvp_layers_vector_equivariance():
    torch.manual_seed(0)
    rot = _rotation(1)
    s = torch.randn(30, 6, dtype=torch.float64)
    v = torch.randn(30, 5, 3, dtype=torch.float64)
    for module in [
        GVP((6, 5), (7, 3), vector_gate=True, activations=(torch.relu, None)),
        GVP((6, 5), (7, 3)),
        LayerNorm((6, 5)),
    ]:
        module = module.double()
        s1, v1 = module((s, v))
        s2, v2 = module((s, v @ rot.T))
        torch.testing.assert_close(s2, s1)
        torch.testing.assert_close(v2, v1 @ rot.T)
    # LayerNorm: the vector channels have unit mean squared norm afterwards
    _, vn = LayerNorm((6, 5)).double()((s, v))
    torch.testing.assert_close((vn * vn).sum(-1).mean(-1), torch.ones(30, dtype=torch.float64))


def test_gvp_conv_matches_hand_written_messages():
    torch.manual_seed(0)
    conv = GVPConv((3, 2), (4, 2), (2, 1), n_layers=2, vector_gate=True).double()
    s = torch.randn(4, 3, dtype=torch.float64)
    v = torch.randn(4, 2, 3, dtype=torch.float64)
    edge_index = torch.tensor([[1, 2, 3], [0, 0, 1]])  # 1->0, 2->0, 3->1
    es = torch.randn(3, 2, dtype=torch.float64)
    ev = torch.randn(3, 1, 3, dtype=torch.float64)
    out_s, out_v = conv((s, v), edge_index, (es, ev))
    for i, incoming in [(0, [0, 1]), (1, [2])]:
        ms, mv = [], []
        for e in incoming:
            j = int(edge_index[0, e])
            m = conv.message_func((torch.cat([s[j], es[e], s[i]])[None], torch.cat([v[j], ev[e], v[i]])[None]))
            ms.append(m[0][0])
            mv.append(m[1][0])
        torch.testing.assert_close(out_s[i], torch.stack(ms).mean(0))
        torch.testing.assert_close(out_v[i], torch.stack(mv).mean(0))
    for i in (2, 3):  # no incoming edges
        assert out_s[i].abs().sum() == 0 and out_v[i].abs().sum() == 0


def test_gvp_gnn_backward_reaches_all_parameters(protein):
    pos, residue_type = protein
    pos = pos.float()
    edge_index = knn_graph(pos, 10)
    for plm_dim in (None, 1280):
        torch.manual_seed(0)
        model = GVPGNN(plm_dim=plm_dim, embed_dim=8, node_dims=(12, 4), edge_dims=(6, 1), num_layers=2).train()
        node_input = residue_type if plm_dim is None else torch.randn(len(pos), plm_dim)
        out = model(node_input, pos, edge_index)
        out.pow(2).mean().backward()
        names = [name for name, _ in model.named_parameters()]
        assert ("embed.weight" in names) == (plm_dim is None)
        for name, param in model.named_parameters():
            assert param.grad is not None, name
            assert torch.isfinite(param.grad).all(), name
            assert param.grad.abs().sum() > 0, name


def test_plm_input_replaces_embedding():
    residue = GVPGNN()
    plm = GVPGNN(plm_dim=1280)
    assert residue.embed.weight.shape == (21, 32)
    assert plm.embed is None
    assert residue.W_v[0].scalar_norm.weight.shape == (32,)
    assert residue.W_v[1].ws.weight.shape == (100, 32)
    assert plm.W_v[0].scalar_norm.weight.shape == (1280,)
    assert plm.W_v[1].ws.weight.shape == (100, 1280)  # not 1280 + 32: replaced, not concatenated
    # everything after W_v is identical
    shapes = {n: p.shape for n, p in residue.named_parameters() if not n.startswith(("embed", "W_v"))}
    assert shapes == {n: p.shape for n, p in plm.named_parameters() if not n.startswith("W_v")}
    pos = torch.randn(5, 3)
    edge_index = knn_graph(pos, 2)
    with pytest.raises(ValueError):
        plm(torch.zeros(5, dtype=torch.long), pos, edge_index)
    with pytest.raises(ValueError):
        residue(torch.randn(5, 1280), pos, edge_index)
    assert plm(torch.randn(5, 1280), pos, edge_index).shape == (5, 100)


def test_wu_et_al_parameter_count():
    """GGNN_Meets_PLM gvp/atom3d.py BaseModel: 22 residue types x 32, _DEFAULT_V_DIM=(100, 16),
    _DEFAULT_E_DIM=(32, 1), 16 RBFs, 5 GVPConvLayers, all GVPs vector-gated."""

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    # one vector-gated GVP: wh (vi x h) + ws ((h + si) x so + so) + wv (h x vo) + wsv (so x vo + vo)
    def gvp(si, vi, so, vo):
        h = max(vi, vo)
        return vi * h + (h + si) * so + so + h * vo + so * vo + vo

    message = gvp(232, 33, 100, 16) + 2 * gvp(100, 16, 100, 16)
    feedforward = gvp(100, 16, 400, 32) + gvp(400, 32, 100, 16)
    layer = message + feedforward + 2 * 2 * 100
    assert (message, feedforward, layer) == (57_489, 114_020, 171_909)
    assert count(GVPConvLayer((100, 16), (32, 1), vector_gate=True)) == layer
    embed = 22 * 32
    w_e = 2 * 16 + gvp(16, 1, 32, 1)
    w_v = 2 * 32 + 32 * 100 + 100
    w_out = 2 * 100 + 16 * 16 + (16 + 100) * 100 + 100
    total = embed + w_e + w_v + 5 * layer + w_out
    assert total == 876_412
    assert count(GVPGNN(num_residue_types=22)) == total == gvp_gnn_num_parameters()
    # with the reference's dense head Linear(100, 200) + ReLU + Dropout + Linear(200, 1): BaseModel
    assert gvp_gnn_num_parameters(dense_head=True) == total + 20_401 == 896_813
    # ESM-2 650M input (1280-d) replacing the embedding
    plm_total = total - embed - w_v + 2 * 1280 + 1280 * 100 + 100
    assert count(GVPGNN(plm_dim=1280)) == plm_total == gvp_gnn_num_parameters(1280, None) == 1_003_004
    # the formula also holds for other widths
    small = GVPGNN(num_residue_types=21, embed_dim=8, node_dims=(12, 4), edge_dims=(6, 2), num_rbf=10, num_layers=3)
    assert count(small) == gvp_gnn_num_parameters(8, 21, (12, 4), (6, 2), 10, 3)


def test_edge_features_and_rbf():
    pos = torch.tensor([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0], [3.0, 4.0, 0.0]])
    edge_index = torch.tensor([[1, 0, 2], [0, 1, 1]])
    edge_s, edge_v = edge_features(pos, edge_index, d_max=8.0, num_rbf=16)
    assert edge_s.shape == (3, 16) and edge_v.shape == (3, 1, 3)
    torch.testing.assert_close(edge_v[0, 0], torch.tensor([0.6, 0.8, 0.0]))  # pos[source] - pos[target]
    torch.testing.assert_close(edge_v[1, 0], torch.tensor([-0.6, -0.8, 0.0]))
    assert edge_v[2].abs().sum() == 0  # zero-length edge: no NaN
    mu = torch.linspace(0, 8, 16)
    torch.testing.assert_close(edge_s[0], torch.exp(-(((5.0 - mu) / 0.5) ** 2)))
    assert rbf(torch.tensor(0.0)).argmax() == 0 and rbf(torch.tensor(20.0)).argmax() == 15
    # the centre nearest to 5 Å is mu_9 = 9 * 8 / 15 = 4.8 Å, sigma = 8 / 16
    peak = float(rbf(torch.tensor(5.0), d_max=8.0, count=16).max())
    assert math.isclose(peak, math.exp(-(((5 - 4.8) / 0.5) ** 2)), rel_tol=1e-5)


def test_dropout_drops_whole_vector_channels():
    torch.manual_seed(0)
    drop = Dropout(0.5).train()
    s, v = drop((torch.ones(200, 4), torch.ones(200, 8, 3)))
    zero = v.abs().sum(-1) == 0
    assert 0.3 < zero.float().mean() < 0.7
    assert torch.all((v == 0).all(-1) | (v == 2.0).all(-1))  # all 3 components together, rescaled
    drop.eval()
    s, v = drop((torch.ones(3, 4), torch.ones(3, 2, 3)))
    assert torch.equal(v, torch.ones(3, 2, 3))
