"""Tests of geoplm.models.molformer (Molformer as Wu et al. 2023 use it: tr_cpe encoder on residue Cα)
on real PDB / AlphaFold Cα coordinates."""

from __future__ import annotations

import math

import pytest
import torch

from geoplm.models.molformer import (
    DistanceAttention,
    LayerNorm,
    Molformer,
    molformer_num_parameters,
    pad_by_graph,
)
from geoplm.structure import parse_structure, residue_type_index

CHAINS = ["alphafold/AF-P76011-F1-model_v4.pdb", "pdb/1A8O.pdb", "pdb/1l2y.pdb"]  # 84, 70, 20 residues
SHIFT = torch.tensor([-20.0, 5.5, 13.0], dtype=torch.float64)


@pytest.fixture(scope="module")
def proteins(shared_data) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(Cα (L, 3) float64 Å, residue types (L,))`` of the real chains."""
    out = []
    for name in CHAINS:
        path = shared_data / name
        if not path.exists():
            pytest.skip(f"{path} missing")
        record = parse_structure(path)[0]
        pos = record["backbone"][:, 1]
        keep = ~torch.isnan(pos).any(-1)
        out.append((pos[keep].double(), residue_type_index(record["sequence"])[keep]))
    return out


def _rotation(seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    assert torch.allclose(q @ q.T, torch.eye(3, dtype=torch.float64)) and torch.det(q) > 0
    return q


def _pack(proteins, plm_dim=None, seed=0):
    pos = torch.cat([p for p, _ in proteins])
    if plm_dim:
        gen = torch.Generator().manual_seed(seed)
        node_input = torch.randn(len(pos), plm_dim, generator=gen, dtype=torch.float64)
    else:
        node_input = torch.cat([t for _, t in proteins])
    node2graph = torch.cat([torch.full((len(p),), i) for i, (p, _) in enumerate(proteins)])
    return node_input, pos, node2graph


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"plm_dim": 48}, {"distance_scales": (6.0, 10.0)}, {"embed_dim": 16, "num_layers": 3, "num_heads": 2}],
)
def test_invariance_per_protein_rigid_motion(proteins, kwargs):
    """Each protein moved by its own rotation + translation: residue features unchanged."""
    torch.manual_seed(0)
    model = Molformer(**kwargs).double().eval()
    node_input, pos, node2graph = _pack(proteins, kwargs.get("plm_dim"))
    moved = pos.clone()
    for g in range(len(proteins)):
        sel = node2graph == g
        moved[sel] = pos[sel] @ _rotation(g + 3).T + SHIFT * (g + 1)
    out = model(node_input, pos, node2graph=node2graph)
    out_moved = model(node_input, moved, node2graph=node2graph)
    assert out.shape == (len(pos), model.output_dim)
    assert model.output_dim == kwargs.get("plm_dim", kwargs.get("embed_dim", 32))
    assert out.std() > 0.1
    torch.testing.assert_close(out_moved, out, atol=1e-9, rtol=0)
    # float32: single-chain call, no node2graph
    model = model.float()
    ni = node_input[: len(proteins[0][0])]
    ni = ni.float() if ni.is_floating_point() else ni
    p0 = pos[: len(ni)]
    out32 = model(ni, p0.float())
    out32_moved = model(ni, (p0 @ _rotation(11).T + SHIFT).float())
    torch.testing.assert_close(out32_moved, out32, atol=1e-4, rtol=0)


def test_geometry_matters(proteins):
    """A non-rigid change of the Cα coordinates changes the output (distances enter the attention)."""
    torch.manual_seed(0)
    model = Molformer().double().eval()
    pos, types = proteins[0]
    out = model(types, pos)
    out_scaled = model(types, pos * 1.5)
    assert (out_scaled - out).abs().max() > 1e-2


@pytest.mark.parametrize("kwargs", [{}, {"plm_dim": 40}, {"distance_scales": (8.0,)}])
def test_batch_equals_each_protein_alone(proteins, kwargs):
    """Packed proteins (also in shuffled order) give the same residue features as separate calls."""
    torch.manual_seed(1)
    model = Molformer(**kwargs).double().eval()
    node_input, pos, node2graph = _pack(proteins, kwargs.get("plm_dim"))
    batched = model(node_input, pos, node2graph=node2graph)
    start = 0
    for p, _ in proteins:
        alone = model(node_input[start : start + len(p)], p)
        torch.testing.assert_close(batched[start : start + len(p)], alone, atol=1e-10, rtol=0)
        start += len(p)
    perm = torch.randperm(len(pos), generator=torch.Generator().manual_seed(2))
    shuffled = model(node_input[perm], pos[perm], node2graph=node2graph[perm])
    # order within each protein changes, but attention is permutation-equivariant inside a protein
    torch.testing.assert_close(shuffled, batched[perm], atol=1e-10, rtol=0)
    # moving another protein far away or changing its residues does not affect the first one
    other = node2graph != 0
    pos2 = pos.clone()
    pos2[other] += 3.0 * torch.randn(int(other.sum()), 3, dtype=torch.float64)
    changed = model(node_input, pos2, node2graph=node2graph)
    torch.testing.assert_close(changed[~other], batched[~other], atol=1e-10, rtol=0)
    assert (changed[other] - batched[other]).abs().max() > 1e-3


def _hand_written(model: Molformer, h: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Wu et al.'s tr_cpe / tr_msa encoder, written out for one protein (eval mode)."""

    def norm(ln: LayerNorm, x):
        return ln.a_2 * (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + 1e-6) + ln.b_2

    dist = ((pos[:, None] - pos[None]) ** 2).sum(-1).sqrt()
    x = h
    for layer in model.layers:
        attn = layer.self_attn
        y = norm(layer.norm[0], x)
        c1, c2 = attn.cnn[0], attn.cnn[2]
        conv = torch.relu(dist[..., None] * c1.weight.view(-1) + c1.bias) @ c2.weight.view(attn.h, attn.h).T + c2.bias
        heads_by_scale = {s: [] for s in (attn.distance_scales or []) + [math.inf]}
        for head in range(attn.h):
            cols = slice(head * attn.d_k, (head + 1) * attn.d_k)
            q, k, v = (lin(y)[:, cols] for lin in attn.linears[:3])
            scores = q @ k.T / math.sqrt(attn.d_k) * conv[..., head]
            for s, outs in heads_by_scale.items():
                outs.append(torch.softmax(scores.masked_fill(dist >= s, -1e10), -1) @ v)
        branches = [attn.linears[3](torch.cat(outs, -1)) for outs in heads_by_scale.values()]
        a = branches[0] if attn.scale_linear is None else attn.scale_linear(torch.cat(branches, -1))
        x = x + a
        x = x + layer.w_2(torch.relu(layer.w_1(norm(layer.norm[1], x))))
    return norm(model.norm, x)


@pytest.mark.parametrize("distance_scales", [None, (5.0, 9.0)])
def test_matches_hand_written_encoder(proteins, distance_scales):
    torch.manual_seed(3)
    model = Molformer(num_residue_types=22, distance_scales=distance_scales).double().eval()
    pos, types = proteins[2]
    expected = _hand_written(model, model.embed(types) * math.sqrt(32), pos)
    torch.testing.assert_close(model(types, pos), expected, atol=1e-10, rtol=0)


def test_layer_norm_uses_unbiased_std():
    ln = LayerNorm(4).double()
    x = torch.tensor([[1.0, 2.0, 3.0, 6.0]], dtype=torch.float64)
    std = math.sqrt(((x - 3.0) ** 2).sum().item() / 3)  # unbiased: n - 1 = 3
    torch.testing.assert_close(ln(x), (x - 3.0) / (std + 1e-6))


def test_pad_by_graph_unsorted():
    values = torch.arange(6.0).unsqueeze(-1)
    node2graph = torch.tensor([1, 0, 1, 2, 0, 1])
    padded, mask, slot = pad_by_graph(values, node2graph)
    assert padded.shape == (3, 3, 1)
    assert slot.tolist() == [0, 0, 1, 0, 1, 2]
    assert mask.tolist() == [[True, True, False], [True, True, True], [True, False, False]]
    assert padded[..., 0].tolist() == [[1.0, 4.0, 0.0], [0.0, 2.0, 5.0], [3.0, 0.0, 0.0]]


def test_plm_input_replaces_embedding(proteins):
    pos, types = proteins[2]
    model = Molformer(plm_dim=64).double().eval()
    assert model.embed is None
    assert not any(isinstance(m, torch.nn.Embedding) for m in model.modules())
    assert model.output_dim == 64
    plm = torch.randn(len(pos), 64, dtype=torch.float64)
    assert model(plm, pos).shape == (len(pos), 64)
    # the PLM vector is the layer input itself: a 0-layer model is just the final LayerNorm of it
    bare = Molformer(plm_dim=64, num_layers=0).double()
    torch.testing.assert_close(bare(plm, pos), bare.norm(plm))
    with pytest.raises(ValueError, match=r"PLM node input must be float \(N, 64\), got \(20, 32\)"):
        model(torch.randn(len(pos), 32, dtype=torch.float64), pos)
    with pytest.raises(ValueError, match="PLM node input"):
        model(types, pos)
    embedded = Molformer().double()
    assert isinstance(embedded.embed, torch.nn.Embedding) and embedded.embed.weight.shape == (21, 32)
    with pytest.raises(ValueError, match="long residue-type ids"):
        embedded(plm, pos)
    with pytest.raises(ValueError, match=r"pos must be \(20, 3\)"):
        embedded(types, pos[:-1])
    with pytest.raises(ValueError, match="node2graph must be"):
        embedded(types, pos, node2graph=torch.zeros(len(pos) + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="not divisible by num_heads=4"):
        Molformer(plm_dim=42)
    with pytest.raises(ValueError, match="distance_scales must be positive"):
        Molformer(distance_scales=(0.0, 4.0))


@pytest.mark.parametrize("kwargs", [{}, {"distance_scales": (6.0,)}])
def test_backward_reaches_all_parameters(proteins, kwargs):
    torch.manual_seed(0)
    model = Molformer(**kwargs).double().train()
    node_input, pos, node2graph = _pack(proteins[1:])
    pos = pos.clone().requires_grad_(True)
    out = model(node_input, pos, node2graph=node2graph)
    (out * torch.randn_like(out)).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if name == "embed.weight":
            used = torch.unique(node_input)
            assert (p.grad[used].abs().sum(-1) > 0).all()
            unused = torch.ones(21, dtype=torch.bool)
            unused[used] = False
            assert (p.grad[unused] == 0).all()
        else:
            assert p.grad.abs().sum() > 0, name
    # coordinates receive finite gradients (zero self-distances included)
    assert torch.isfinite(pos.grad).all() and pos.grad.abs().sum() > 0


def test_dropout_only_in_training(proteins):
    pos, types = proteins[2]
    torch.manual_seed(0)
    model = Molformer().double()
    model.eval()
    torch.testing.assert_close(model(types, pos), model(types, pos), atol=0, rtol=0)
    model.train()
    assert (model(types, pos) - model(types, pos)).abs().max() > 1e-6


def test_wu_et_al_parameter_count():
    """tr_cpe ``PSRModel``: N=2, embed_dim=32, head=4, FFN width 32 (counts checked against the
    reference classes of smiles724/GGNN_Meets_PLM @ bb4524b)."""
    assert molformer_num_parameters() == 13_752
    assert molformer_num_parameters(head=True) == 14_841
    assert molformer_num_parameters(1280, None) == 19_689_016
    assert molformer_num_parameters(1280, None, head=True) == 21_329_977

    def count(model):
        return sum(p.numel() for p in model.parameters())

    assert count(Molformer(num_residue_types=22)) == 13_752
    assert count(Molformer()) == 13_752 - 32  # geoplm's 21 residue types
    assert count(Molformer(plm_dim=1280)) == 19_689_016
    assert count(Molformer(num_residue_types=22, distance_scales=(4.0, 8.0))) == molformer_num_parameters(num_scales=2)
    assert (
        count(Molformer(embed_dim=16, num_layers=3, num_heads=2, ffn_dim=24))
        == molformer_num_parameters(16, 22, num_layers=3, num_heads=2, ffn_dim=24) - 16
    )
    # Xavier-uniform initialisation of the matrices (bound sqrt(6 / (fan_in + fan_out)))
    model = Molformer()
    w = model.layers[0].self_attn.linears[0].weight
    assert w.abs().max() <= math.sqrt(6 / 64) and w.std() > 0.5 * math.sqrt(2 / 64)


def test_distance_attention_scale_is_local():
    """With one tiny scale (0.5 Å < any Cα-Cα distance), that branch attends to the residue itself only."""
    torch.manual_seed(0)
    attn = DistanceAttention(2, 8, dropout=0.0, distance_scales=(0.5,)).double().eval()
    x = torch.randn(1, 5, 8, dtype=torch.float64)
    pos = torch.arange(5, dtype=torch.float64)[:, None] * torch.tensor([3.8, 0.0, 0.0], dtype=torch.float64)
    dist = torch.cdist(pos, pos)[None]
    mask = torch.ones(1, 5, dtype=torch.bool)
    captured = {}
    attn.scale_linear.register_forward_hook(lambda m, i, o: captured.__setitem__("x", i[0]))
    attn(x, dist, mask)
    local = captured["x"][..., :8]
    torch.testing.assert_close(local, attn.linears[3](attn.linears[2](x)))
