"""EquiDock model: SE(3) properties on real DB5.5 complexes, Kabsch, graph and input handling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geoplm.docking import load_complex, random_rigid_transform
from geoplm.errors import GeoplmError
from geoplm.graph import knn_graph
from geoplm.models.equidock import (
    DockingSide,
    EquiDock,
    build_docking_graph,
    kabsch,
    residue_frames,
)

TINY = {"hidden_dim": 16, "residue_emb_dim": 16, "n_layers": 3, "num_att_heads": 8}


@pytest.fixture(scope="module")
def complex_1ay7(shared_data):
    db5 = shared_data / "db5"
    return load_complex(db5 / "1AY7_r_b.pdb", db5 / "1AY7_l_b.pdb")


def _side(pos, backbone, node_input, residue_type=None) -> DockingSide:
    return DockingSide(
        node_input, pos.double(), build_docking_graph(pos), residue_frames(backbone.double()), residue_type
    )


def _sides(ex):
    return (
        _side(ex.receptor_pos, ex.receptor_backbone, ex.receptor_residue_type),
        _side(ex.ligand_true_pos, ex.ligand_backbone, ex.ligand_residue_type),
    )


def _sharp_model(seed=0, **config) -> EquiDock:
    """A tiny float64 EquiDock whose keypoint attention is sharp enough for well-spread keypoints.

    At PyTorch's default initialisation the attention is nearly uniform, every keypoint sits at the
    centroid and the Kabsch SVD is degenerate (the reference then jitters it at random), so the
    equivariance tests scale the attention weights to reach a generic, non-degenerate point.
    """
    torch.manual_seed(seed)
    model = EquiDock(**{**TINY, **config}).double()
    with torch.no_grad():
        model.att_mlp_key_rot.weight.mul_(30.0)
        model.att_mlp_query_rot.weight.mul_(30.0)
    return model.eval()


def _transform(seed, interval=20.0):
    rotation, translation = random_rigid_transform(np.random.default_rng(seed), interval)
    return rotation.double(), translation.double()


def test_load_complex_concatenates_chains(complex_1ay7, shared_data):
    ex = complex_1ay7
    assert ex.id == "1AY7"
    assert ex.receptor_pos.shape == (96, 3) and ex.ligand_true_pos.shape == (89, 3)
    assert ex.receptor_backbone.shape == (96, 3, 3)
    assert torch.equal(ex.receptor_backbone[:, 1], ex.receptor_pos)
    assert ex.receptor_residue_type.max() <= 20 and ex.receptor_residue_type.min() >= 0
    # 1AHW's receptor (antibody heavy + light chains) has two chains
    multi = load_complex(shared_data / "db5" / "1AHW_r_b.pdb", shared_data / "db5" / "1AHW_l_b.pdb")
    assert multi.receptor_pos.shape[0] > 400


def test_residue_frames_orthonormal_right_handed(complex_1ay7):
    frames = residue_frames(complex_1ay7.receptor_backbone.double())
    eye = torch.eye(3, dtype=torch.float64).expand_as(frames)
    assert torch.allclose(frames @ frames.transpose(1, 2), eye, atol=1e-10)
    assert torch.allclose(torch.det(frames), torch.ones(frames.shape[0], dtype=torch.float64), atol=1e-10)
    bad = complex_1ay7.receptor_backbone.clone()
    bad[3, 0] = float("nan")
    with pytest.raises(GeoplmError, match="missing N/CA/C"):
        residue_frames(bad)


def test_docking_graph_is_knn_within_cutoff(complex_1ay7):
    pos = complex_1ay7.receptor_pos
    edges = build_docking_graph(pos, k=10, cutoff=30.0)
    assert torch.equal(edges, knn_graph(pos, 10))  # a 96-residue protein: no 10th neighbour beyond 30 Å
    in_degree = torch.bincount(edges[1], minlength=pos.shape[0])
    assert int(in_degree.max()) == 10
    short = build_docking_graph(pos, k=10, cutoff=6.0)
    assert (pos[short[0]] - pos[short[1]]).norm(dim=-1).max() < 6.0
    assert short.shape[1] < edges.shape[1]


def test_kabsch_recovers_rigid_transform(complex_1ay7):
    source = complex_1ay7.receptor_pos.double()
    rotation, translation = _transform(7, interval=50.0)
    target = source @ rotation.T + translation
    r, t = kabsch(source, target)
    assert torch.allclose(r, rotation, atol=1e-8)
    assert (source @ r.T + t - target).abs().max() < 1e-4
    assert torch.det(r) == pytest.approx(1.0, abs=1e-10)


def test_kabsch_excludes_reflections(complex_1ay7):
    source = complex_1ay7.ligand_true_pos.double()
    mirror = source * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)  # an improper motion
    r, t = kabsch(source, mirror)
    assert torch.det(r) == pytest.approx(1.0, abs=1e-10)
    assert torch.allclose(r @ r.T, torch.eye(3, dtype=torch.float64), atol=1e-10)
    # no proper rotation maps a protein onto its mirror image
    assert (source @ r.T + t - mirror).pow(2).sum(-1).mean().sqrt() > 1.0
    with pytest.raises(GeoplmError, match="two \\(N, 3\\) point sets"):
        kabsch(source, mirror[:-1])


def test_forward_outputs(complex_1ay7):
    model = _sharp_model()
    receptor, ligand = _sides(complex_1ay7)
    out = model(receptor, ligand)
    assert out["rotation"].shape == (3, 3) and out["translation"].shape == (3,)
    assert out["ligand_keypoints"].shape == (8, 3) and out["receptor_keypoints"].shape == (8, 3)
    assert torch.det(out["rotation"]).item() == pytest.approx(1.0, abs=1e-9)
    assert torch.allclose(out["rotation"] @ out["rotation"].T, torch.eye(3, dtype=torch.float64), atol=1e-9)
    expected = ligand.pos @ out["rotation"].T + out["translation"]
    assert torch.allclose(out["ligand_pos"], expected)
    # the docked ligand keypoints are the Kabsch fit onto the receptor keypoints
    fitted = out["ligand_keypoints"] @ out["rotation"].T + out["translation"]
    r, t = kabsch(out["ligand_keypoints"], out["receptor_keypoints"])
    assert torch.allclose(fitted, out["ligand_keypoints"] @ r.T + t, atol=1e-8)


def test_receptor_motion_moves_the_predicted_complex(complex_1ay7):
    model = _sharp_model()
    receptor, ligand = _sides(complex_1ay7)
    out = model(receptor, ligand)
    rotation, translation = _transform(3)
    moved = model(receptor.transformed(rotation, translation), ligand)
    assert (moved["ligand_pos"] - (out["ligand_pos"] @ rotation.T + translation)).abs().max() < 1e-4
    assert (moved["receptor_keypoints"] - (out["receptor_keypoints"] @ rotation.T + translation)).abs().max() < 1e-4
    assert (moved["rotation"] - rotation @ out["rotation"]).abs().max() < 1e-6


def test_ligand_motion_leaves_the_docked_ligand_unchanged(complex_1ay7):
    model = _sharp_model()
    receptor, ligand = _sides(complex_1ay7)
    out = model(receptor, ligand)
    for seed in (4, 5):
        rotation, translation = _transform(seed)
        moved = model(receptor, ligand.transformed(rotation, translation))
        assert (moved["ligand_pos"] - out["ligand_pos"]).abs().max() < 1e-4
        # the ligand keypoints move with the ligand input
        assert (moved["ligand_keypoints"] - (out["ligand_keypoints"] @ rotation.T + translation)).abs().max() < 1e-4
    # ... while the output does depend on the ligand's internal structure
    shuffled = DockingSide(ligand.node_input.flip(0), ligand.pos, ligand.edge_index, ligand.frames)
    assert (model(receptor, shuffled)["ligand_pos"] - out["ligand_pos"]).abs().max() > 1e-3


def test_unshared_layers_and_reference_defaults(complex_1ay7):
    default = EquiDock()
    assert len(default.layers) == 5 and default.layers[1] is default.layers[4]  # DB5.5: shared layers
    assert default.num_heads == 50 and default.hidden_dim == 64
    unshared = EquiDock(**TINY, shared_layers=False)
    assert unshared.layers[1] is not unshared.layers[2]


@pytest.mark.parametrize("mode", ["replace", "concat"])
def test_esm_like_features_forward_backward(complex_1ay7, mode):
    ex = complex_1ay7
    gen = torch.Generator().manual_seed(0)
    esm_r = torch.randn(ex.receptor_pos.shape[0], 16, generator=gen, dtype=torch.float64)
    esm_l = torch.randn(ex.ligand_true_pos.shape[0], 16, generator=gen, dtype=torch.float64)
    model = _sharp_model(input_dim=16, esm_mode=mode)
    receptor = _side(ex.receptor_pos, ex.receptor_backbone, esm_r, ex.receptor_residue_type)
    ligand = _side(ex.ligand_true_pos, ex.ligand_backbone, esm_l, ex.ligand_residue_type)
    out = model(receptor, ligand)
    loss = (out["ligand_pos"] - ex.ligand_true_pos.double()).pow(2).mean()
    loss.backward()
    first = model.layers[0].edge_mlp[0].weight
    assert first.shape[1] == 2 * model.node_dim + 27 + 15
    assert model.node_dim == (16 + 16 + 5 if mode == "concat" else 16 + 5)
    assert first.grad is not None and first.grad.abs().sum() > 0
    assert (model.residue_emb_layer is None) == (mode == "replace")


def test_bad_inputs_raise(complex_1ay7):
    model = EquiDock(**TINY)
    receptor, ligand = _sides(complex_1ay7)
    bad = DockingSide(torch.randn(ligand.pos.shape[0], 4), ligand.pos, ligand.edge_index)
    with pytest.raises(GeoplmError, match="ligand node_input must be \\(N,\\) residue ids"):
        model.double()(receptor, bad)
    with pytest.raises(GeoplmError, match="unknown option"):
        EquiDock(hidden=3)
    with pytest.raises(GeoplmError, match="esm_mode"):
        EquiDock(16, esm_mode="sum")
    wrong_edges = DockingSide(ligand.node_input, ligand.pos, ligand.edge_index + 1000)
    with pytest.raises(GeoplmError, match="outside"):
        model(receptor, wrong_edges)
    with pytest.raises(GeoplmError, match="concat"):
        EquiDock(16, esm_mode="concat", **TINY).double()(
            DockingSide(torch.randn(receptor.pos.shape[0], 16, dtype=torch.float64), receptor.pos, receptor.edge_index),
            DockingSide(torch.randn(ligand.pos.shape[0], 16, dtype=torch.float64), ligand.pos, ligand.edge_index),
        )


def test_equidock_random_transformed_inputs_are_rigid_motions(shared_data):
    folder = shared_data / "db5" / "test_random_transformed"
    ex = load_complex(
        folder / "7CEI_r_b_COMPLEX.pdb", folder / "7CEI_l_b_COMPLEX.pdb", ligand_input_path=folder / "7CEI_l_b.pdb"
    )
    assert ex.ligand_input_pos.shape == ex.ligand_true_pos.shape == (127, 3)
    r, t = kabsch(ex.ligand_true_pos.double(), ex.ligand_input_pos.double())
    residual = (ex.ligand_true_pos.double() @ r.T + t - ex.ligand_input_pos.double()).norm(dim=-1)
    assert residual.max() < 0.01  # PDB coordinates carry 3 decimals
    assert (ex.ligand_input_pos - ex.ligand_true_pos).norm(dim=-1).mean() > 5.0
    with pytest.raises(GeoplmError, match="residues differ"):
        load_complex(
            folder / "7CEI_r_b_COMPLEX.pdb", folder / "7CEI_l_b_COMPLEX.pdb", ligand_input_path=folder / "4POU_l_b.pdb"
        )
