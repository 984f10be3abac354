"""Tests of geoplm.models.fusion (ESM-GearNet fusion, DeepGraphLearning/ESM-GearNet ``FusionNetwork``) on real
PDB chains, with a tiny randomly initialised ESM-2 written in fair-esm's checkpoint format (real ESM-2
weights are not available)."""

from __future__ import annotations

import logging
import math
from functools import cache

import pytest
import torch
from conftest import shared_data_dir

from geoplm.errors import ConfigError, EmbeddingError
from geoplm.esm import embed_sequences, load_esm2, write_random_esm2_checkpoint
from geoplm.graph import build_gearnet_graph, pack_graphs, record_graph_inputs
from geoplm.models import GearNet
from geoplm.models.fusion import ESMGearNet, param_groups, record_esm_inputs
from geoplm.structure import parse_structure

ESM_LAYERS, ESM_DIM, ESM_HEADS = 2, 32, 4
HIDDEN = [16, 16]
CROSS_DIM = 16
# (file in chains/, chain): 1FC2 chain C (44 residues, the last without a Cα), 1AJJ chain A (37), 1BC8 chain C (93)
CHAINS = [("1FC2_r_b.pdb", "C"), ("1AJJ.pdb", "A"), ("1BC8.pdb", "C")]


@cache
def _record(name: str, chain: str) -> dict:
    logging.getLogger("geoplm.structure").setLevel(logging.ERROR)
    path = shared_data_dir() / "chains" / name
    if not path.is_file():
        pytest.skip(f"{path} missing")
    return parse_structure(path, chains=[chain])[0]


def _graph(records: list[dict], rotation: torch.Tensor | None = None):
    positions, types, edges = [], [], []
    for record in records:
        pos, rtype = record_graph_inputs(record)
        if rotation is not None:
            pos = (pos.double() @ rotation.T + torch.tensor([12.5, -3.0, 40.0], dtype=torch.float64)).float()
        single = build_gearnet_graph(pos, rtype)
        positions.append(pos)
        types.append(rtype)
        edges.append(single.edge_list)
    return pack_graphs(positions, types, edges, num_relation=7)


@pytest.fixture(scope="module")
def tiny_esm(tmp_path_factory):
    path, _ = write_random_esm2_checkpoint(
        tmp_path_factory.mktemp("esm") / "esm2_t2_tiny_random.pt",
        num_layers=ESM_LAYERS,
        embed_dim=ESM_DIM,
        attention_heads=ESM_HEADS,
        seed=3,
    )
    return load_esm2(path)


def _gearnet(input_dim: int, seed: int = 0) -> GearNet:
    torch.manual_seed(seed)
    model = GearNet(input_dim, HIDDEN, num_relation=7, batch_norm=True, short_cut=True, concat_hidden=True)
    gen = torch.Generator().manual_seed(seed + 1)
    for module in model.modules():  # non-trivial running statistics for eval mode
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=gen) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
    return model


def _model(tiny_esm, fusion: str, freeze: bool = True, in_model: bool = True, seed: int = 0) -> ESMGearNet:
    esm_model, alphabet = tiny_esm
    gearnet = _gearnet(ESM_DIM if fusion in ("serial", "series") else 21, seed)
    torch.manual_seed(seed + 7)
    if in_model:
        model = ESMGearNet(gearnet, esm_model, alphabet, fusion=fusion, freeze_esm=freeze, cross_dim=CROSS_DIM)
    else:
        model = ESMGearNet(gearnet, esm_dim=ESM_DIM, fusion=fusion, cross_dim=CROSS_DIM)
    return model.eval()


def _inputs(records):
    sequences, masks = zip(*(record_esm_inputs(r) for r in records), strict=True)
    return list(sequences), list(masks)


def _stored_features(tiny_esm, records) -> torch.Tensor:
    """The embedding-store path: geoplm.esm.embed_sequences on full sequences, rows of residues with a Cα."""
    esm_model, alphabet = tiny_esm
    sequences, masks = _inputs(records)
    reps = embed_sequences(esm_model, alphabet, {str(i): s for i, s in enumerate(sequences)}, repr_layer=-1)
    return torch.cat([reps[str(i)][m] for i, m in enumerate(masks)])


# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fusion, width",
    [("serial", ESM_DIM + 2 * 16), ("series", ESM_DIM + 2 * 16), ("parallel", ESM_DIM + 2 * 16), ("cross", 32)],
)
def test_output_widths_per_fusion(tiny_esm, fusion, width):
    records = [_record(*CHAINS[0]), _record(*CHAINS[1])]
    graph = _graph(records)
    model = _model(tiny_esm, fusion)
    assert model.output_dim == width
    sequences, masks = _inputs(records)
    with torch.no_grad():
        out = model(graph, sequences=sequences, residue_mask=masks)
    assert out["node_feature"].shape == (graph.num_nodes, width)
    assert out["graph_feature"].shape == (2, width)
    assert graph.num_nodes == 43 + 37  # 1FC2 C: last residue has no Cα and is not a node
    assert torch.isfinite(out["node_feature"]).all()


def test_serial_and_parallel_concatenate_esm_and_gearnet(tiny_esm):
    """node = [ESM, GearNet(ESM) | GearNet(one-hot)]; graph = [mean ESM, sum GearNet] (torchdrug ESM readout)."""
    records = [_record(*CHAINS[0]), _record(*CHAINS[2])]
    graph = _graph(records)
    feature = _stored_features(tiny_esm, records)
    with torch.no_grad():
        serial = _model(tiny_esm, "serial", in_model=False)
        out = serial(graph, esm_feature=feature)
        gear = serial.structure_model(graph, feature)
        torch.testing.assert_close(out["node_feature"], torch.cat([feature, gear["node_feature"]], -1))
        sizes = graph.num_nodes_per_graph
        mean = torch.stack([feature[:43].mean(0), feature[43:].mean(0)])
        assert sizes.tolist() == [43, 93]
        torch.testing.assert_close(out["graph_feature"], torch.cat([mean, gear["graph_feature"]], -1))

        parallel = _model(tiny_esm, "parallel", in_model=False)
        one_hot = torch.nn.functional.one_hot(graph.residue_type, 21).float()
        out = parallel(graph, esm_feature=feature)
        gear = parallel.structure_model(graph, one_hot)
        torch.testing.assert_close(out["node_feature"], torch.cat([feature, gear["node_feature"]], -1))
        torch.testing.assert_close(out["graph_feature"][:, ESM_DIM:], gear["graph_feature"])
        # an explicit node_input replaces the one-hot
        other = parallel(graph, node_input=torch.zeros(graph.num_nodes, 21), esm_feature=feature)
        assert not torch.allclose(other["node_feature"][:, ESM_DIM:], out["node_feature"][:, ESM_DIM:])


def test_serial_precomputed_equals_in_model_frozen_esm(tiny_esm):
    records = [_record(*c) for c in CHAINS]
    graph = _graph(records)
    sequences, masks = _inputs(records)
    model = _model(tiny_esm, "serial")
    with torch.no_grad():
        in_model = model(graph, sequences=sequences, residue_mask=masks)
        stored = model(graph, esm_feature=_stored_features(tiny_esm, records))
    # stored rows come from geoplm.esm's own forward (fused attention, one-pass GELU): float32 rounding apart
    torch.testing.assert_close(in_model["node_feature"], stored["node_feature"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(in_model["graph_feature"], stored["graph_feature"], rtol=1e-5, atol=1e-5)


def test_sequences_default_to_the_node_sequence(tiny_esm):
    """Without sequences the ESM reads the graph's residue types (torchdrug models.ESM); for chains whose
    residues all have a Cα that is the chain sequence."""
    records = [_record(*CHAINS[1]), _record(*CHAINS[2])]
    graph = _graph(records)
    model = _model(tiny_esm, "serial")
    with torch.no_grad():
        implicit = model(graph)
        explicit = model(graph, sequences=[r["sequence"] for r in records])
    torch.testing.assert_close(implicit["node_feature"], explicit["node_feature"], rtol=1e-5, atol=1e-5)


def test_cross_attention_does_not_mix_proteins(tiny_esm):
    records = [_record(*CHAINS[0]), _record(*CHAINS[2])]
    model = _model(tiny_esm, "cross")
    sequences, masks = _inputs(records)
    with torch.no_grad():
        batch = model(_graph(records), sequences=sequences, residue_mask=masks)
        alone = [
            model(_graph([r]), sequences=[s], residue_mask=[m])
            for r, s, m in zip(records, sequences, masks, strict=True)
        ]
    torch.testing.assert_close(
        batch["node_feature"], torch.cat([a["node_feature"] for a in alone]), rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(
        batch["graph_feature"], torch.cat([a["graph_feature"] for a in alone]), rtol=1e-5, atol=1e-4
    )
    # the graph feature is the sum of the node features; both halves are attention outputs
    torch.testing.assert_close(batch["graph_feature"][0], batch["node_feature"][:43].sum(0), rtol=1e-5, atol=1e-4)
    # attention really couples the tokens of one protein: changing the ESM input of residue 0 changes others
    feature = _stored_features(tiny_esm, records[:1])
    with torch.no_grad():
        base = model(_graph(records[:1]), esm_feature=feature)["node_feature"]
        feature[0] += 1.0
        moved = model(_graph(records[:1]), esm_feature=feature)["node_feature"]
    assert not torch.allclose(base[20], moved[20])


def test_cross_matches_torchdrug_self_attention_layout(tiny_esm):
    """Hand-built reference for one protein: tokens [seq'; struct'] through query/key/value linears and
    nn.MultiheadAttention (torchdrug SelfAttentionBlock), split back into the two halves."""
    record = _record(*CHAINS[1])
    graph = _graph([record])
    model = _model(tiny_esm, "cross", in_model=False)
    feature = _stored_features(tiny_esm, [record])
    with torch.no_grad():
        out = model(graph, esm_feature=feature)["node_feature"]
        struct = model.structure_model(graph, torch.nn.functional.one_hot(graph.residue_type, 21).float())
        tokens = torch.cat([model.seq_linear(feature), model.struct_linear(struct["node_feature"])])
        block = model.attn
        mha = block.attn  # nn.MultiheadAttention written out: in-projections, 8 heads, softmax, out_proj
        w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
        b_q, b_k, b_v = mha.in_proj_bias.chunk(3)
        heads, width = 8, CROSS_DIM // 8
        q = (block.query(tokens) @ w_q.T + b_q).view(-1, heads, width).transpose(0, 1)
        k = (block.key(tokens) @ w_k.T + b_k).view(-1, heads, width).transpose(0, 1)
        v = (block.value(tokens) @ w_v.T + b_v).view(-1, heads, width).transpose(0, 1)
        weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(width), dim=-1)
        reference = mha.out_proj((weights @ v).transpose(0, 1).reshape(-1, CROSS_DIM))
    n = graph.num_nodes
    torch.testing.assert_close(out, torch.cat([reference[:n], reference[n:]], -1), rtol=1e-5, atol=1e-5)
    assert block.attn.num_heads == 8 and block.attn.dropout == 0.1


def test_param_groups_esm_lr_ratio(tiny_esm):
    lr = 1e-4
    tuned = _model(tiny_esm, "serial", freeze=False)
    head = torch.nn.Linear(tuned.output_dim, 3)
    task = torch.nn.ModuleDict({"encoder": tuned, "mlp": head})
    groups = {g["name"]: g for g in param_groups(task, lr)}
    esm_params = list(tuned.sequence_model.parameters())
    assert groups["esm"]["lr"] == pytest.approx(lr * 0.1)
    assert {id(p) for p in groups["esm"]["params"]} == {id(p) for p in esm_params}
    assert groups["other"]["lr"] == lr
    others = {id(p) for p in groups["other"]["params"]}
    assert others == {id(p) for p in tuned.structure_model.parameters()} | {id(p) for p in head.parameters()}
    optimizer = torch.optim.Adam(param_groups(task, lr, esm_lr_ratio=0.5), lr=lr)
    assert [g["lr"] for g in optimizer.param_groups] == [pytest.approx(5e-5), lr]

    cross = _model(tiny_esm, "cross", freeze=False)  # the fusion layers train at the full rate
    other = {id(p) for p in {g["name"]: g for g in param_groups(cross, lr)}["other"]["params"]}
    assert {id(p) for p in cross.attn.parameters()} <= other

    frozen = _model(tiny_esm, "serial", freeze=True)
    groups = param_groups(frozen, lr)
    assert [g["name"] for g in groups] == ["other"]
    assert not any(p.requires_grad for p in frozen.sequence_model.parameters())
    with pytest.raises(ConfigError, match="esm_lr_ratio"):
        param_groups(frozen, lr, esm_lr_ratio=-1)


@pytest.mark.parametrize("fusion", ["serial", "cross"])
def test_gradients_reach_esm_only_when_fine_tuned(tiny_esm, fusion):
    records = [_record(*CHAINS[0]), _record(*CHAINS[1])]
    graph = _graph(records)
    sequences, masks = _inputs(records)
    for freeze in (True, False):
        model = _model(tiny_esm, fusion, freeze=freeze).train()
        assert model.sequence_model.training is False if freeze else model.sequence_model.training
        model.zero_grad(set_to_none=True)
        out = model(graph, sequences=sequences, residue_mask=masks)
        out["graph_feature"].pow(2).sum().backward()
        esm_grads = [p.grad for p in model.sequence_model.parameters()]
        if freeze:
            assert all(g is None for g in esm_grads)
        else:
            used = model.sequence_model.model.layers[0].self_attn.q_proj.weight.grad
            assert used is not None and used.abs().sum() > 0
        gear = model.structure_model.layers[0].linear.weight.grad
        assert gear is not None and gear.abs().sum() > 0
    for p in tiny_esm[0].parameters():  # the ESM is the shared fixture's module
        p.grad = None


def test_long_sequences_are_windowed(tiny_esm):
    """Longer than 1,022 residues: overlapping windows averaged, as geoplm.esm.embed_sequences (no error)."""
    esm_model, alphabet = tiny_esm
    path = shared_data_dir() / "alphafold" / "AF-Q9P273-F1-model_v4.pdb"
    if not path.is_file():
        pytest.skip(f"{path} missing")
    record = parse_structure(path)[0]
    sequence = record["sequence"][:1300]
    model = _model(tiny_esm, "serial")
    with torch.no_grad():
        ours = model.embed([sequence, record["sequence"][:50]])
    reference = embed_sequences(esm_model, alphabet, {"a": sequence, "b": record["sequence"][:50]}, repr_layer=-1)
    assert ours[0].shape == (1300, ESM_DIM)
    torch.testing.assert_close(ours[0], reference["a"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours[1], reference["b"], rtol=1e-5, atol=1e-5)
    # two windows (0..1021, 278..1299): the overlap differs from a single 1,300-token forward
    with torch.no_grad():
        _, _, tokens = alphabet.get_batch_converter()([("a", sequence)])
        whole = esm_model(tokens, repr_layers=[ESM_LAYERS])["representations"][ESM_LAYERS][0, 1:-1]
    assert not torch.allclose(ours[0][300:1000], whole[300:1000], atol=1e-4)
    torch.testing.assert_close(ours[0][1100:], reference["a"][1100:])


def test_rotation_leaves_outputs_unchanged(tiny_esm):
    records = [_record(*CHAINS[0]), _record(*CHAINS[2])]
    sequences, masks = _inputs(records)
    angle = 1.1
    axis = torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64)
    axis = axis / axis.norm()
    skew = torch.tensor([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]], dtype=torch.float64)
    rotation = torch.eye(3, dtype=torch.float64) + math.sin(angle) * skew + (1 - math.cos(angle)) * skew @ skew
    base, moved = _graph(records), _graph(records, rotation)
    assert torch.equal(base.edge_list, moved.edge_list)
    assert not torch.allclose(base.node_position, moved.node_position)
    for fusion in ("serial", "parallel", "cross"):
        model = _model(tiny_esm, fusion)
        with torch.no_grad():
            a = model(base, sequences=sequences, residue_mask=masks)
            b = model(moved, sequences=sequences, residue_mask=masks)
        torch.testing.assert_close(a["node_feature"], b["node_feature"], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(a["graph_feature"], b["graph_feature"], rtol=1e-4, atol=1e-3)


def test_errors_name_the_problem(tiny_esm):
    esm_model, alphabet = tiny_esm
    records = [_record(*CHAINS[0]), _record(*CHAINS[1])]
    graph = _graph(records)
    sequences, masks = _inputs(records)
    model = _model(tiny_esm, "serial")
    with pytest.raises(EmbeddingError, match="protein 0 of the batch: 44 residues for 43 graph nodes"):
        model(graph, sequences=sequences)  # 1FC2 C needs its Cα mask
    with pytest.raises(EmbeddingError, match="1 sequences for a batch of 2"):
        model(graph, sequences=sequences[:1], residue_mask=masks[:1])
    with pytest.raises(EmbeddingError, match=r"protein 1 of the batch: characters outside the ESM alphabet \['#'\]"):
        model(graph, sequences=[sequences[0], "#" + sequences[1][1:]], residue_mask=masks)
    with pytest.raises(EmbeddingError, match=r"esm_feature has shape \(80, 5\)"):
        model(graph, esm_feature=torch.zeros(80, 5))
    with pytest.raises(EmbeddingError, match="no ESM features"):
        _model(tiny_esm, "serial", in_model=False)(graph)
    with pytest.raises(ConfigError, match="serial fusion: GearNet input_dim 21 must equal the ESM width 32"):
        ESMGearNet(_gearnet(21), esm_model, alphabet, fusion="serial")
    with pytest.raises(ConfigError, match="unknown scheme 'late'"):
        ESMGearNet(_gearnet(21), esm_dim=32, fusion="late")
    with pytest.raises(ConfigError, match="not a multiple of the number of attention heads 8"):
        ESMGearNet(_gearnet(21), esm_dim=32, fusion="cross", cross_dim=12)
    with pytest.raises(EmbeddingError, match="repr_layer 5 is out of range"):
        ESMGearNet(_gearnet(32), esm_model, alphabet, repr_layer=5)
    with pytest.raises(ValueError, match=r"node_input has shape \(80, 20\)"):
        _model(tiny_esm, "parallel")(graph, node_input=torch.zeros(80, 20), sequences=sequences, residue_mask=masks)
