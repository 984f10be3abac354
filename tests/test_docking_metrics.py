"""Docking metrics (C-RMSD, L-RMSD, I-RMSD), EquiDock's losses and the training loop on real DB5.5 complexes."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from geoplm.docking import (
    complex_rmsd,
    docking_metrics,
    interface_pairs,
    interface_rmsd,
    intersection_loss,
    ligand_rmsd,
    load_complex,
    optimal_transport_plan,
    ot_keypoint_loss,
    pocket_points,
    random_rigid_transform,
    summarize,
)
from geoplm.errors import ConfigError, GeoplmError
from geoplm.tasks.docking import RigidDocking
from geoplm.train import TIMING_KEYS, fit

TINY = {"hidden_dim": 16, "residue_emb_dim": 16, "n_layers": 2, "num_att_heads": 8}


def train_docking_run(task, model, examples, seed, metrics_path, checkpoint_path, threads=None):
    """EquiDock on given complexes through the one training loop (the docking task's own examples)."""
    docking = RigidDocking({"kind": "docking", **task}, "docking")
    prepared = docking.prepare_examples(examples)
    input_dim = docking.input_dim(prepared["train"][0]) if prepared["train"] else None
    return fit(docking, model, prepared, seed, metrics_path, checkpoint_path, threads=threads, input_dim=input_dim)


@pytest.fixture(scope="module")
def db5(shared_data):
    return shared_data / "db5"


@pytest.fixture(scope="module")
def complex_7cei(db5):
    folder = db5 / "test_random_transformed"
    return load_complex(folder / "7CEI_r_b_COMPLEX.pdb", folder / "7CEI_l_b_COMPLEX.pdb", folder / "7CEI_l_b.pdb")


def _np_kabsch_rmsd(pred: np.ndarray, true: np.ndarray) -> float:
    """Hand computation: Kabsch superposition of ``pred`` onto ``true`` with numpy, then RMSD."""
    pc, tc = pred.mean(0), true.mean(0)
    h = (pred - pc).T @ (true - tc)
    u, _, vt = np.linalg.svd(h)
    r = vt.T @ u.T
    if np.linalg.det(r) < 0:
        r = vt.T @ np.diag([1.0, 1.0, -1.0]) @ u.T
    aligned = (pred - pc) @ r.T + tc
    return float(np.sqrt(((aligned - true) ** 2).sum(1).mean()))


def test_ground_truth_against_itself_is_zero(complex_7cei):
    ex = complex_7cei
    metrics = docking_metrics(ex.ligand_true_pos, ex.receptor_pos, ex.ligand_true_pos, ex.receptor_pos)
    assert metrics == pytest.approx({"complex_rmsd": 0.0, "ligand_rmsd": 0.0, "interface_rmsd": 0.0}, abs=1e-5)


def test_metrics_equal_hand_computation_on_perturbed_complex(complex_7cei):
    ex = complex_7cei
    lig_true, rec_true = ex.ligand_true_pos.double().numpy(), ex.receptor_pos.double().numpy()
    rng = np.random.default_rng(0)
    # docked ligand: a rigid error about its centroid plus per-residue noise
    centre = lig_true.mean(0)
    lig_pred = (lig_true - centre) @ _small_rotation().T + centre + [2.0, -1.0, 0.5]
    lig_pred = lig_pred + rng.normal(scale=0.3, size=lig_pred.shape)
    rec_pred = rec_true
    lp, rp, lt, rt = (torch.as_tensor(a) for a in (lig_pred, rec_pred, lig_true, rec_true))

    l_rmsd = float(np.sqrt(((lig_pred - lig_true) ** 2).sum(1).mean()))
    c_rmsd = _np_kabsch_rmsd(np.concatenate([lig_pred, rec_pred]), np.concatenate([lig_true, rec_true]))
    il, ir = np.where(cdist(lig_true, rec_true) < 8.0)  # eval_pdb_outputset.py: one entry per pair
    assert len(il) > 10 and len(set(il)) < len(il)  # residues repeat across pairs
    i_rmsd = _np_kabsch_rmsd(np.concatenate([lig_pred[il], rec_pred[ir]]), np.concatenate([lig_true[il], rec_true[ir]]))

    assert ligand_rmsd(lp, lt) == pytest.approx(l_rmsd, rel=1e-9)
    assert complex_rmsd(lp, rp, lt, rt) == pytest.approx(c_rmsd, rel=1e-7)
    assert interface_rmsd(lp, rp, lt, rt) == pytest.approx(i_rmsd, rel=1e-7)
    assert 0.3 < c_rmsd < l_rmsd and 0.3 < i_rmsd
    pairs = interface_pairs(lt, rt)
    assert np.array_equal(pairs[0].numpy(), il) and np.array_equal(pairs[1].numpy(), ir)

    # a rigid motion of the whole predicted complex changes L-RMSD but neither C-RMSD nor I-RMSD
    r2, t2 = (x.double() for x in random_rigid_transform(np.random.default_rng(12), 30.0))
    moved = docking_metrics(lp @ r2.T + t2, rp @ r2.T + t2, lt, rt)
    assert moved["complex_rmsd"] == pytest.approx(c_rmsd, rel=1e-6)
    assert moved["interface_rmsd"] == pytest.approx(i_rmsd, rel=1e-6)
    assert moved["ligand_rmsd"] > l_rmsd + 1.0


def _small_rotation(angle: float = 0.2) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def test_pure_translation_ligand_rmsd(complex_7cei):
    ex = complex_7cei
    shifted = ex.ligand_true_pos.double() + torch.tensor([3.0, 0.0, 4.0], dtype=torch.float64)
    assert ligand_rmsd(shifted, ex.ligand_true_pos) == pytest.approx(5.0, abs=1e-5)


def test_metric_errors(complex_7cei):
    ex = complex_7cei
    far = ex.ligand_true_pos + 1000.0
    with pytest.raises(GeoplmError, match="no ligand-receptor Cα pair within 8.0 Å"):
        interface_rmsd(far, ex.receptor_pos, far, ex.receptor_pos)
    with pytest.raises(GeoplmError, match="shapes differ"):
        ligand_rmsd(ex.ligand_true_pos[:-1], ex.ligand_true_pos)


def test_summarize_median_mean():
    per = {
        "a": {"complex_rmsd": 1.0, "ligand_rmsd": 2.0, "interface_rmsd": 3.0},
        "b": {"complex_rmsd": 3.0, "ligand_rmsd": 4.0, "interface_rmsd": 5.0},
        "c": {"complex_rmsd": 8.0, "ligand_rmsd": 6.0, "interface_rmsd": 7.0},
    }
    out = summarize(per)
    assert out["complexes"] == 3
    assert out["complex_rmsd_median"] == 3.0 and out["complex_rmsd_mean"] == pytest.approx(4.0)
    assert out["ligand_rmsd_std"] == pytest.approx(np.std([2.0, 4.0, 6.0]))


def test_pocket_points_are_interface_midpoints(complex_7cei):
    ex = complex_7cei
    lig, rec = ex.ligand_true_pos.double(), ex.receptor_pos.double()
    pocket = pocket_points(lig, rec)
    il, ir = np.where(cdist(lig.numpy(), rec.numpy()) < 8.0)
    assert pocket.shape == (len(il), 3)
    assert torch.allclose(pocket, 0.5 * (lig[il] + rec[ir]))
    assert pocket_points(lig + 1000.0, rec) is None


def test_ot_loss_matches_assignment_when_sizes_agree():
    gen = np.random.default_rng(3)
    pocket_l, pocket_r = gen.normal(size=(6, 3)) * 5, gen.normal(size=(6, 3)) * 5
    key_l, key_r = gen.normal(size=(6, 3)) * 5, gen.normal(size=(6, 3)) * 5
    cost = cdist(pocket_l, key_l, "sqeuclidean") + cdist(pocket_r, key_r, "sqeuclidean")
    rows, cols = linear_sum_assignment(cost)
    expected = cost[rows, cols].sum() / 6  # uniform marginals 1/6: the EMD is a matching
    tensors = [torch.tensor(a, requires_grad=i >= 2) for i, a in enumerate((pocket_l, pocket_r, key_l, key_r))]
    loss = ot_keypoint_loss(*tensors)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-7)
    loss.backward()
    assert tensors[2].grad is not None and tensors[2].grad.abs().sum() > 0
    # unequal sizes: marginals hold
    plan = optimal_transport_plan(torch.tensor(gen.random((7, 4))))
    assert torch.allclose(plan.sum(1), torch.full((7,), 1 / 7, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(plan.sum(0), torch.full((4,), 1 / 4, dtype=torch.float64), atol=1e-9)


def test_intersection_loss_matches_formula(complex_7cei):
    lig, rec = complex_7cei.ligand_true_pos.double(), complex_7cei.receptor_pos.double()

    def surface(protein, x, sigma=25.0):
        return -sigma * np.log(1e-3 + np.exp(-cdist(x, protein, "sqeuclidean") / sigma).sum(1))

    def hand(a, b):
        return np.clip(10.0 - surface(b, a), 0, None).mean() + np.clip(10.0 - surface(a, b), 0, None).mean()

    bound = float(intersection_loss(lig, rec))
    assert bound == pytest.approx(hand(lig.numpy(), rec.numpy()), rel=1e-9)
    clash = lig - lig.mean(0) + rec.mean(0)  # ligand pushed into the receptor's centre
    assert float(intersection_loss(clash, rec)) == pytest.approx(hand(clash.numpy(), rec.numpy()), rel=1e-9)
    assert float(intersection_loss(clash, rec)) > 10 * bound
    assert float(intersection_loss(lig + 500.0, rec)) == 0.0


@pytest.fixture(scope="module")
def split(db5):
    folder = db5 / "test_random_transformed"
    train = [load_complex(db5 / f"{i}_r_b.pdb", db5 / f"{i}_l_b.pdb") for i in ("3PC8", "1AY7")]
    test = [load_complex(folder / "7CEI_r_b_COMPLEX.pdb", folder / "7CEI_l_b_COMPLEX.pdb", folder / "7CEI_l_b.pdb")]
    return train, test


def test_short_training_run_lowers_loss_and_writes_metrics(split, tmp_path):
    train, test = split
    task = {"epochs": 8, "lr": 3e-3, "batch_size": 1, "patience": 100}
    # the validation split holds the training complexes at fixed poses: its loss is the training loss
    # without the per-epoch random ligand motions and swaps
    metrics = train_docking_run(
        task,
        {"type": "equidock", **TINY},
        {"train": train, "valid": train, "test": test},
        0,
        tmp_path / "metrics.json",
        tmp_path / "model.pt",
        threads=1,
    )
    history = metrics["history"]
    assert len(history) == 8 and metrics["epochs_run"] == 8
    assert history[-1]["valid_loss"] < 0.95 * history[0]["valid_loss"]
    assert history[-1]["train_ot"] < history[0]["train_ot"]
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["test"]["complexes"] == 1 and set(written["test_per_complex"]) == {"7CEI"}
    for name in ("complex_rmsd", "ligand_rmsd", "interface_rmsd"):
        assert written["test"][f"{name}_median"] == pytest.approx(written["test_per_complex"]["7CEI"][name])
        assert written["test"][f"{name}_mean"] > 0
    assert written["node_input"] == "residue_type" and written["num_complexes"] == {"train": 2, "valid": 2, "test": 1}
    assert 0 <= written["best_epoch"] < 8
    checkpoint = torch.load(tmp_path / "model.pt", weights_only=True)
    assert checkpoint["model_config"]["hidden_dim"] == 16
    assert not (tmp_path / "model.pt.resume.pt").exists()


def test_training_is_deterministic_and_uses_esm(split, tmp_path):
    train, test = split
    gen = torch.Generator().manual_seed(0)

    def with_esm(ex):
        return replace(
            ex,
            receptor_esm=torch.randn(ex.receptor_pos.shape[0], 16, generator=gen),
            ligand_esm=torch.randn(ex.ligand_true_pos.shape[0], 16, generator=gen),
        )

    examples = {"train": [with_esm(e) for e in train[:1]], "valid": [with_esm(train[1])], "test": [with_esm(test[0])]}
    runs = []
    for name in ("a", "b"):
        m = train_docking_run(
            {"epochs": 2, "batch_size": 2},
            TINY,
            examples,
            5,
            tmp_path / name / "metrics.json",
            tmp_path / name / "model.pt",
            threads=1,
        )
        runs.append(m)
    assert runs[0]["node_input"] == "esm" and runs[0]["node_input_dim"] == 16
    untimed = [[{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in run["history"]] for run in runs]
    assert untimed[0] == untimed[1]
    assert runs[0]["test"] == runs[1]["test"]

    mixed = {**examples, "test": [test[0]]}
    with pytest.raises(GeoplmError, match="some complexes have ESM features and some not: 7CEI"):
        train_docking_run({"epochs": 1}, TINY, mixed, 0, tmp_path / "m.json", tmp_path / "m.pt")
    with pytest.raises(ConfigError, match="unknown EquiDock option"):
        train_docking_run({"epochs": 1}, {"hidden": 3}, examples, 0, tmp_path / "m.json", tmp_path / "m.pt")
    with pytest.raises(GeoplmError, match="the valid split is empty"):
        train_docking_run({"epochs": 1}, TINY, {**examples, "valid": []}, 0, tmp_path / "m.json", tmp_path / "m.pt")
