"""SiamDiff pretraining (ESM-GearNet ``gearnet/siamdiff.py``) and residue masking of protein inputs, on real
AlphaFold DB models: a small plain GearNet (no edge features, as ESM-GearNet's) on the residue one-hot, and
ESM-GearNet with a tiny random ESM-2 frozen inside the model (``esm_in_model``)."""

from __future__ import annotations

import logging
from functools import cache

import numpy as np
import pytest
import torch
from conftest import shared_data_dir

from geoplm.errors import ConfigError, GeoplmError
from geoplm.esm import load_esm2, write_random_esm2_checkpoint
from geoplm.graph import build_batch_graph
from geoplm.inputs import InputLoader
from geoplm.models.fusion import ESM_MASK_CHAR, param_groups
from geoplm.pretraining import get_pretraining_task
from geoplm.pretraining.masking import MASK_TOKEN, mask_residues
from geoplm.pretraining.siamdiff import SiamDiff, eq_transform, noise_schedule
from geoplm.structure import RESIDUE_VOCAB, parse_structure
from geoplm.tasks.base import Example

# 84, 194, 393 and 576 residues; every residue has a Cα
FILES = (
    "AF-P76011-F1-model_v4.pdb",
    "AF-A0A1W2PQ64-F1-model_v4.pdb",
    "AF-P04637-F1-model_v4.pdb",
    "A0A523VPS0.pdb",
)
GEARNET = {"type": "gearnet", "hidden_dims": [32, 32], "short_cut": True, "batch_norm": True, "concat_hidden": True}
NO_EDGE_FEATURES = {"kind": "gearnet", "edge_feature": None}  # ESM-GearNet's pretraining graph
ESM_DIM, ESM_LAYERS = 16, 2


@cache
def _record(name: str) -> dict:
    logging.getLogger("geoplm.structure").setLevel(logging.ERROR)
    path = shared_data_dir() / "alphafold" / name
    if not path.is_file():
        pytest.skip(f"{path} missing")
    return parse_structure(path)[0]


def _examples(count: int, esm_inputs: bool = False) -> list[Example]:
    loader = InputLoader(esm_inputs=esm_inputs)
    return [Example(r["id"], (loader(r),), torch.zeros(0)) for r in (_record(f) for f in FILES[:count])]


def _task(graph=NO_EDGE_FEATURES, seed: int = 0, **settings) -> SiamDiff:
    spec = {"kind": "siamdiff", "dataset": "afdb", "epochs": 1, "batch_size": 4, "lr": 1e-3, **settings}
    task = get_pretraining_task(spec, "siamdiff")
    task.bind("cpu", graph, seed=seed)
    return task


def _reference_alphas() -> np.ndarray:
    """ESM-GearNet ``SiamDiff.__init__`` in float64: sigmoid(linspace(-6, 6, 100)) (0.1 - 1e-3) + 1e-3."""
    betas = 1.0 / (1.0 + np.exp(-np.linspace(-6.0, 6.0, 100))) * (0.1 - 1e-3) + 1e-3
    return np.cumprod(1.0 - betas)


@pytest.fixture
def one_thread():
    """The edge MLPs are small: one thread is fastest on a shared machine (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_esm(tmp_path_factory):
    path, _ = write_random_esm2_checkpoint(
        tmp_path_factory.mktemp("esm") / "esm2_t2_siamdiff.pt", ESM_LAYERS, ESM_DIM, 2, seed=5
    )
    return load_esm2(path)


# --------------------------------------------------------------------------------------------------
# settings, schedule, masks


def test_settings_and_heads_are_the_reference_ones():
    task = _task()
    s = task.settings
    assert (s["sigma_begin"], s["sigma_end"], s["num_noise_level"], s["gamma"]) == (1e-3, 0.1, 100, 0.5)
    assert (s["min_mask_ratio"], s["max_mask_ratio"], s["num_mlp_layer"], s["siamese_sigma"]) == (0.15, 1.0, 3, 0.3)
    assert s["use_MI"] is True and s["truncate"] == 150 and s["truncate_random"] is True
    head = task.head(64)
    widths = {name: [(l.in_features, l.out_features) for l in mlp.layers] for name, mlp in head.items()}
    assert widths == {
        "struct_mlp": [(128, 64), (64, 64), (64, 1)],
        "dist_mlp": [(1, 64), (64, 64), (64, 64)],
        "seq_mlp": [(64, 64), (64, 64), (64, 20)],
    }
    with pytest.raises(ConfigError, match="pretraining.siamdiff.mask_rate"):
        _task(mask_rate=0.15)
    with pytest.raises(ConfigError, match="pretraining.siamdiff.gamma"):
        _task(gamma=1.5)
    with pytest.raises(ConfigError, match="esm_mask_token"):
        _task(esm_mask_token="<unk>")


def test_noise_schedule_is_the_reference_formula():
    alphas = noise_schedule(1e-3, 0.1, 100)
    np.testing.assert_allclose(alphas.double().numpy(), _reference_alphas(), rtol=1e-5, atol=1e-6)
    assert torch.equal(_task().alphas, alphas)
    assert alphas.shape == (100,) and bool((alphas[1:] < alphas[:-1]).all())
    assert 0.0 < float(alphas[-1]) < 0.02 and abs(float(alphas[0]) - (1 - 1e-3 - 0.099 / (1 + np.exp(6)))) < 1e-6


def test_masked_fraction_grows_linearly_with_the_level():
    task = _task()
    sizes = torch.tensor([84, 194, 393, 576])
    levels = torch.arange(100)
    counts = torch.stack([torch.bincount(_owner(task.sample_masks(sizes, torch.full((4,), int(t))), sizes), minlength=4)
                          for t in levels])  # fmt: skip
    rate = 0.85 * (levels.double() + 1) / 100 + 0.15  # 0.1585 at level 0, 1.0 at level 99
    expected = (sizes.double() * rate.unsqueeze(1)).floor()
    assert (counts.double() - expected).abs().max() <= 1  # floor in float32 vs float64
    assert torch.equal(counts[-1], sizes) and bool((counts[1:] >= counts[:-1]).all())
    slope = np.polyfit(levels.numpy(), (counts / sizes).numpy()[:, 3], 1)[0]
    assert slope == pytest.approx(0.0085, rel=0.01)


def _owner(node_index: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    return torch.searchsorted(torch.cumsum(sizes, 0), node_index, right=True)


# --------------------------------------------------------------------------------------------------
# the views


def test_views_share_noise_level_and_masked_positions():
    task = _task(truncate=None)
    proteins = task.batch_inputs(_examples(2))
    torch.manual_seed(3)
    sample = task.corrupt(proteins)
    view1, view2 = sample.views
    sizes = torch.tensor([p.num_nodes for p in proteins])
    masked = torch.zeros(int(sizes.sum()), dtype=torch.bool)
    masked[sample.node_index] = True
    assert sample.noise_level.shape == (2,) and sample.node_index.numel() >= 2
    assert torch.equal(_owner(sample.node_index, sizes).bincount(minlength=2) >= 1, torch.ones(2, dtype=torch.bool))

    original = torch.cat([p.residue_type for p in proteins])
    for view in (view1, view2):  # same masked positions: type 0, one-hot zeroed; the rest untouched
        assert torch.equal(view.graph.residue_type[masked], torch.zeros(int(masked.sum()), dtype=torch.long))
        assert torch.equal(view.graph.residue_type[~masked], original[~masked])
        assert view.batch.node_feature[masked].abs().sum() == 0
        assert torch.equal(view.batch.node_feature[~masked].argmax(1), original[~masked])
    assert torch.equal(sample.seq_target, original[sample.node_index])

    # view 1 is the protein, view 2 its siamese conformer (0.3 A Gaussian noise on every coordinate)
    ca = torch.cat([torch.as_tensor(_record(f)["backbone"][:, 1]) for f in FILES[:2]]).float()
    assert torch.equal(view1.position, ca)
    siamese = view2.position - ca
    assert float(siamese.std()) == pytest.approx(0.3, rel=0.1) and abs(float(siamese.mean())) < 0.05

    # one level per protein, shared: each view's structure noise has scale sqrt((1 - a) / a) of that level
    alphas = torch.as_tensor(_reference_alphas())[sample.noise_level]
    scale = ((1 - alphas) / alphas).sqrt()[view1.graph.node2graph].unsqueeze(-1)
    for view in (view1, view2):
        eps = (view.graph.node_position.double() - view.position.double()) / scale
        for b in range(2):
            assert float(eps[view.graph.node2graph == b].std()) == pytest.approx(1.0, abs=0.2)

    # edges are built on each view's coordinates before the structure noise, and not rebuilt after it
    for view in (view1, view2):
        built = build_batch_graph(view.position, view.graph.residue_type, view.graph.node2graph, NO_EDGE_FEATURES)
        assert torch.equal(view.graph.edge_list, built.edge_list)


def test_denoising_target_on_real_coordinates():
    """s = (d - d~) sqrt(a) / sqrt(1 - a) per edge, from the records' Cα (float64) and the reference schedule;
    with GearNet's 59-d edge features their last column (the Cα distance) becomes d~."""
    task = _task(graph={"kind": "gearnet"}, truncate=None)
    proteins = task.batch_inputs(_examples(2))
    torch.manual_seed(7)
    sample = task.corrupt(proteins)
    ca = torch.cat([torch.as_tensor(_record(f)["backbone"][:, 1]) for f in FILES[:2]]).double()
    alphas = torch.as_tensor(_reference_alphas())[sample.noise_level]
    for view, before in zip(sample.views, (ca, None), strict=True):
        graph = view.graph
        before = view.position.double() if before is None else before
        i, j = graph.edge_list[:, 0], graph.edge_list[:, 1]
        d = (before[i] - before[j]).norm(dim=-1)
        d_tilde = (graph.node_position.double()[i] - graph.node_position.double()[j]).norm(dim=-1)
        a = alphas[graph.node2graph[j]]
        expected = (d - d_tilde) * a.sqrt() / (1 - a).sqrt()
        torch.testing.assert_close(view.struct_target.double(), expected, rtol=1e-4, atol=2e-4)
        torch.testing.assert_close(view.perturbed_dist.double(), d_tilde, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(graph.edge_feature[:, -1].double(), d_tilde, rtol=1e-5, atol=1e-5)
        assert graph.edge_feature.shape[1] == 59
    unperturbed = build_batch_graph(ca.float(), sample.views[0].graph.residue_type, sample.views[0].graph.node2graph)
    i, j = unperturbed.edge_list[:, 0], unperturbed.edge_list[:, 1]
    # the column replaced is the distance one
    torch.testing.assert_close(
        unperturbed.edge_feature[:, -1].double(), (ca[i] - ca[j]).norm(dim=-1), rtol=1e-5, atol=1e-5
    )


def test_eq_transform_averages_edge_directions_per_node():
    task = _task(truncate=None)
    graph = task.corrupt(task.batch_inputs(_examples(1))).views[0].graph
    score = torch.randn(graph.num_edges, generator=torch.Generator().manual_seed(0))
    pos = graph.node_position.double().numpy()
    edges = graph.edge_list.numpy()
    unit = pos[edges[:, 0]] - pos[edges[:, 1]]
    unit /= np.linalg.norm(unit, axis=1, keepdims=True) + 1e-10
    out = np.zeros_like(pos)
    for node in range(graph.num_nodes):  # mean over edges leaving the node + mean of the flipped arriving ones
        leaving, arriving = edges[:, 0] == node, edges[:, 1] == node
        if leaving.any():
            out[node] += (unit[leaving] * score.numpy()[leaving, None]).mean(0)
        if arriving.any():
            out[node] -= (unit[arriving] * score.numpy()[arriving, None]).mean(0)
    np.testing.assert_allclose(eq_transform(score, graph).double().numpy(), out, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# the loss


def test_loss_is_the_cross_prediction_of_both_views(one_thread):
    """0.5 (L_struct(h2 -> view 1) + L_struct(h1 -> view 2)) + 0.5 (L_seq(h2) + L_seq(h1)), recomputed from the
    same noise; the same views each denoising themselves give another number."""
    task = _task(truncate=100)
    model = task.build_model(GEARNET, 21, False)
    batch = _examples(3)
    task.bind("cpu", NO_EDGE_FEATURES, seed=1)
    torch.manual_seed(11)
    loss, parts, weight = task.training_loss(model, batch, 0)
    task.bind("cpu", NO_EDGE_FEATURES, seed=1)
    torch.manual_seed(11)
    sample = task.corrupt(task.batch_inputs(batch))
    h1, h2 = (model.encoder(v.graph, v.batch.node_feature)["node_feature"] for v in sample.views)
    v1, v2 = sample.views

    def struct(h, view):  # numpy-free restatement of the reference's per-graph mean of 0.5 |.|^2
        i, j = view.graph.edge_list[:, 0], view.graph.edge_list[:, 1]
        pred = model.head["struct_mlp"](
            torch.cat([h[i] * h[j], model.head["dist_mlp"](view.perturbed_dist[:, None])], 1)
        )
        node = 0.5 * ((eq_transform(pred[:, 0], view.graph) - eq_transform(view.struct_target, view.graph)) ** 2).sum(1)
        return torch.stack([node[view.graph.node2graph == b].mean() for b in range(3)]).mean()

    def seq(h, view):
        ce = torch.nn.functional.cross_entropy(
            model.head["seq_mlp"](h[sample.node_index]), sample.seq_target, reduction="none"
        )
        owner = view.graph.node2graph[sample.node_index]
        return torch.stack([0.5 * ce[owner == b].mean() for b in range(3)]).mean()

    with torch.no_grad():
        cross = 0.5 * (struct(h2, v1) + struct(h1, v2)) + 0.5 * (seq(h2, v1) + seq(h1, v2))
        own = 0.5 * (struct(h1, v1) + struct(h2, v2)) + 0.5 * (seq(h1, v1) + seq(h2, v2))
    assert float(loss.detach()) == pytest.approx(float(cross), rel=1e-5)
    assert abs(float(own) - float(cross)) > 1e-4
    assert weight == 1.0 and set(parts) == {"loss", "struct_loss", "seq_loss", "seq_accuracy"}
    assert parts["loss"] == pytest.approx(0.5 * parts["struct_loss"] + 0.5 * parts["seq_loss"], rel=1e-5)
    with torch.no_grad():
        assert parts["seq_loss"] == pytest.approx(float(seq(h2, v1) + seq(h1, v2)), rel=1e-5)


def test_loss_falls_over_adam_steps_and_same_seed_gives_same_loss(one_thread):
    """40 Adam steps (lr 1e-3) on 4 proteins (windows of 100 residues): the loss on the same noise (5 fixed seeds)
    falls; the same seed gives the same loss, another seed another one."""
    task = _task(truncate=100)
    batch = _examples(4)
    torch.manual_seed(0)
    model = task.build_model(GEARNET, 21, False)

    def fixed_noise_loss(seed: int) -> np.ndarray:
        """(loss, struct_loss, seq_loss) on the noise of ``seed``."""
        task.bind("cpu", NO_EDGE_FEATURES, seed=seed)
        torch.manual_seed(seed)
        parts = task.training_loss(model, batch, 0)[1]
        return np.array([parts["loss"], parts["struct_loss"], parts["seq_loss"]])

    assert np.array_equal(fixed_noise_loss(5), fixed_noise_loss(5))
    assert not np.array_equal(fixed_noise_loss(5), fixed_noise_loss(6))
    before = np.mean([fixed_noise_loss(seed) for seed in range(5)], axis=0)
    task.bind("cpu", NO_EDGE_FEATURES, seed=100)
    optimizer = torch.optim.Adam(param_groups(model, 1e-3), lr=1e-3)
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        loss, parts, _ = task.training_loss(model, batch, 0)
        loss.backward()
        optimizer.step()
        losses.append(parts["loss"])
    after = np.mean([fixed_noise_loss(seed) for seed in range(5)], axis=0)
    assert np.isfinite(losses).all() and np.isfinite(after).all()
    # measured: total 0.72x, structure 0.48x, sequence 0.93x
    assert after[0] < 0.8 * before[0] and after[1] < 0.65 * before[1] and after[2] < before[2], (before, after)


def test_diffpret_and_one_sided_losses(one_thread):
    """use_MI false: one view, its loss counted twice (the reference's loss2 = loss1); gamma 1: structure only."""
    batch = _examples(2)
    task = _task(use_MI=False, truncate=60)
    model = task.build_model(GEARNET, 21, False)
    torch.manual_seed(0)
    assert len(task.corrupt(task.batch_inputs(batch)).views) == 1
    loss, parts, _ = task.training_loss(model, batch, 0)
    assert float(loss.detach()) == pytest.approx(0.5 * parts["struct_loss"] + 0.5 * parts["seq_loss"], rel=1e-5)
    structure_only = _task(gamma=1.0, truncate=None)
    sample = structure_only.corrupt(structure_only.batch_inputs(batch))
    unmasked = torch.cat([e.proteins[0].residue_type for e in batch])
    assert sample.node_index.numel() == 0 and torch.equal(sample.views[0].graph.residue_type, unmasked)
    assert set(structure_only.training_loss(model, batch, 0)[1]) == {"loss", "struct_loss"}


# --------------------------------------------------------------------------------------------------
# masking and the frozen ESM-2 inside the model


def test_mask_residues_masks_type_feature_and_esm_sequence():
    logging.getLogger("geoplm.structure").setLevel(logging.ERROR)
    path = shared_data_dir() / "chains" / "1FC2_r_b.pdb"
    if not path.is_file():
        pytest.skip(f"{path} missing")
    record = parse_structure(path, chains=["C"])[0]  # 44 residues, the last one without a Cα
    protein = InputLoader(esm_inputs=True)(record)
    assert protein.num_nodes == 43 and protein.length == 44
    nodes = torch.tensor([0, 5, 5, 42])
    original = protein.residue_type.clone()
    masked = mask_residues(protein, nodes)
    assert masked.residue_type[nodes].tolist() == [0, 0, 0, 0] and masked.node_feature[nodes].abs().sum() == 0
    keep = torch.ones(43, dtype=torch.bool)
    keep[nodes] = False
    assert torch.equal(masked.residue_type[keep], protein.residue_type[keep])
    assert torch.equal(masked.node_feature[keep], protein.node_feature[keep])
    sequence = masked.esm_input[0]
    assert len(sequence) == 44 and [i for i, c in enumerate(sequence) if c == ESM_MASK_CHAR] == [0, 5, 42]
    assert sequence[43] == record["sequence"][43]  # the residue without a Cα is no node and is never masked
    assert [sequence[i] for i in range(44) if i not in (0, 5, 42)] == [
        c for i, c in enumerate(record["sequence"]) if i not in (0, 5, 42)
    ]
    assert "".join(RESIDUE_VOCAB[t] for t in protein.residue_type.tolist()) == "".join(
        record["sequence"][i] for i in protein.residue_index.tolist()
    )
    glycine = mask_residues(protein, nodes, "G").esm_input[0]
    assert [glycine[i] for i in (0, 5, 42)] == ["G", "G", "G"]
    assert protein.esm_input[0] == record["sequence"]  # the original is untouched
    assert torch.equal(protein.node_feature.sum(1), torch.ones(43)) and torch.equal(protein.residue_type, original)
    with pytest.raises(GeoplmError, match="outside 0..42"):
        mask_residues(protein, torch.tensor([43]))
    with pytest.raises(GeoplmError, match="mask token"):
        mask_residues(protein, nodes, "<unk>")


def test_esm_mask_character_reads_as_the_esm_mask_token(tiny_esm):
    from geoplm.models.fusion import ESMModule

    model, alphabet = tiny_esm
    module = ESMModule(model, alphabet, freeze_esm=True)
    sequence = "MKTAYIAK" + ESM_MASK_CHAR + "QRQISFVK" + ESM_MASK_CHAR
    (features,) = module.embed([sequence])
    tokens = torch.tensor(
        [
            [
                alphabet.cls_idx,
                *(alphabet.mask_idx if c == ESM_MASK_CHAR else alphabet.get_idx(c) for c in sequence),
                alphabet.eos_idx,
            ]
        ]
    )
    with torch.no_grad():
        direct = model(tokens, repr_layers=[ESM_LAYERS])["representations"][ESM_LAYERS][0, 1:-1]
    torch.testing.assert_close(features, direct)
    (glycine,) = module.embed([sequence.replace(ESM_MASK_CHAR, "G")])
    assert not torch.allclose(features, glycine)


def test_frozen_in_model_esm_gets_no_gradient_while_the_structure_model_trains(tiny_esm, one_thread):
    esm_model, alphabet = tiny_esm
    spec = {**GEARNET, "type": "esm_gearnet", "hidden_dims": [16, 16], "esm_in_model": True}
    task = _task(truncate=60, esm_mask_token=MASK_TOKEN)
    with pytest.raises(ConfigError, match="esm_in_model: true runs ESM-2 inside the model"):
        task.build_model(spec, 21, True)
    model = task.build_model(spec, 21, True, esm=(esm_model, alphabet, {"repr_layer": -1}))
    net = model.encoder.net
    assert net.sequence_model is not None and net.freeze_esm
    assert all(not p.requires_grad for p in net.sequence_model.parameters())
    esm_ids = {id(p) for p in esm_model.parameters()}
    groups = param_groups(model, 1e-4)
    assert [g["name"] for g in groups] == ["other"] and not esm_ids & {id(p) for p in groups[0]["params"]}
    keys = model.encoder.state_dict().keys()
    assert any(k.startswith("net.sequence_model.model.layers.0.") for k in keys)
    assert any(k.startswith("net.structure_model.layers.") for k in keys)

    batch = _examples(3, esm_inputs=True)
    torch.manual_seed(2)
    sample = task.corrupt(task.batch_inputs(batch))
    for view in sample.views:  # the masked residues reach ESM-2 as <mask>, the same ones in both views
        sequences = view.batch.encoder_inputs["sequences"]
        assert sum(s.count(ESM_MASK_CHAR) for s in sequences) == len(set(sample.node_index.tolist()))
    assert sample.views[0].batch.encoder_inputs["sequences"] == sample.views[1].batch.encoder_inputs["sequences"]

    esm_before = {k: v.clone() for k, v in esm_model.state_dict().items()}
    gearnet_before = {k: v.clone() for k, v in net.structure_model.state_dict().items()}
    optimizer = torch.optim.Adam(groups, lr=1e-3)
    model.train()
    assert not net.sequence_model.training and net.structure_model.training
    for _ in range(3):
        optimizer.zero_grad()
        loss, _, _ = task.training_loss(model, batch, 0)
        loss.backward()
        assert all(p.grad is None for p in esm_model.parameters())
        optimizer.step()
    assert all(torch.equal(esm_before[k], v) for k, v in esm_model.state_dict().items())
    changed = [k for k, v in net.structure_model.state_dict().items() if not torch.equal(gearnet_before[k], v)]
    assert any(".weight" in k for k in changed)
