"""Rigid protein-protein docking with EquiDock: examples, losses, metrics and the training loop.

Follows octavian-ganea/equidock_public (commit ac2c754399bf20b50a27d86dbff4f6669788d47f):

* data (``src/utils/db5_data.py``, ``protein_utils.py``): residues with N, Cα and C atoms; the
  receptor is given in its bound pose; in training the ligand (or, with probability 0.5, the
  receptor: ``if_swap``) is centred, rotated uniformly at random and translated by a random direction
  of length ``U(0, translation_interval = 5 Å)`` -- the model must put it back.
* pocket (``preprocess_unbound_bound``): every ligand-receptor Cα pair closer than 8 Å in the bound
  complex gives the midpoint of the pair (a residue in several pairs appears several times); complexes
  with <= 3 pairs are left out.
* losses (``src/train.py``): ``MSE(docked ligand Cα, bound ligand Cα)`` (``nn.MSELoss``, mean over the
  3 N coordinates) ``+ pocket_ot_loss_weight (1) * OT + intersection_loss_weight (10) * IL``. ``OT``
  (``src/utils/ot_utils.py``): the earth mover's distance between the P pocket points and the K
  keypoints with uniform weights and cost ``|p^l - y^l|^2 + |p^r - y^r|^2`` (ligand pocket points
  moved with the ligand input, receptor ones in the receptor frame); the transport plan is solved
  exactly (the reference: POT ``ot.emd``; here scipy's HiGHS linear program, same optimum) and
  held fixed for the gradient. ``IL``: ``mean_i relu(gamma - G_r(a_i)) + mean_j relu(gamma - G_l(b_j))``
  with ``G(x) = -sigma log(1e-3 + sum_k exp(-|x - c_k|^2 / sigma))``, sigma = 25 Å², gamma = 10.
* metrics (``src/utils/eval.py`` ``Meter_Unbound_Bound.update_rmsd`` and
  ``src/test_all_methods/eval_pdb_outputset.py``), all on Cα in Å: **C-RMSD**: predicted complex
  (ligand then receptor) Kabsch-superimposed onto the ground-truth complex, then RMSD; **L-RMSD**: the
  ligand's RMSD without superposition; **I-RMSD**: C-RMSD restricted to the interface -- the
  ligand-receptor Cα pairs closer than 8 Å in the ground truth, each residue taken once per pair as
  the reference does (``np.where`` over the pair matrix). Summaries: median, mean and std.
* training (``src/train.py``, DB5.5 stage ``-toy``): Adam, lr 1e-4, weight decay 1e-3 (released DB5.5
  checkpoint), gradient-norm clip 100, batch size 10, up to 10,000 epochs, early stopping after
  ``patience = 500`` epochs without a new best; the best epoch is the one whose validation C-RMSD
  median is below 0.98 times the previous best; the test set is evaluated with its weights.

Evaluation inputs: the ligand is moved by a fixed random rigid transform per complex (seeded by the
complex id, the same in every run and epoch; the reference draws a new one per epoch, to which the
model is invariant), or is taken as given in :attr:`ComplexExample.ligand_input_pos` (EquiDock's
``test_random_transformed`` files).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from geoplm.errors import GeoplmError
from geoplm.models.equidock import (
    kabsch,
)

log = logging.getLogger(__name__)

INTERFACE_CUTOFF = 8.0  # Å, eval_pdb_outputset.py


@dataclass
class ComplexExample:
    """One receptor-ligand complex (Cα level; residues with N, Cα and C).

    Attributes:
        id: complex id (e.g. ``1AVX``).
        receptor_pos: (N_r, 3) bound receptor Cα in Å (the model's receptor input, as the reference).
        receptor_residue_type: (N_r,) long residue types 0-20.
        ligand_true_pos: (N_l, 3) bound (ground-truth) ligand Cα in the receptor's frame, Å.
        ligand_residue_type: (N_l,) long residue types 0-20.
        receptor_backbone: (N_r, 3, 3) bound N, Cα, C (local frames for the edge features) or None.
        ligand_backbone: (N_l, 3, 3) bound N, Cα, C or None.
        receptor_esm: (N_r, F) float per-residue features (ESM-2) or None.
        ligand_esm: (N_l, F) or None.
        ligand_input_pos: (N_l, 3) a given ligand input pose (a rigid motion of ``ligand_true_pos``),
            used at evaluation; None draws a fixed random pose.
    """

    id: str
    receptor_pos: Tensor
    receptor_residue_type: Tensor
    ligand_true_pos: Tensor
    ligand_residue_type: Tensor
    receptor_backbone: Tensor | None = None
    ligand_backbone: Tensor | None = None
    receptor_esm: Tensor | None = None
    ligand_esm: Tensor | None = None
    ligand_input_pos: Tensor | None = None


def read_protein(path: str | os.PathLike) -> dict:
    """All protein chains of a PDB file as one record (:func:`geoplm.structure.concatenate_chains`, in file
    order; its ``id`` is the path, so errors about it name the file).

    Raises:
        StructureError: the file cannot be parsed or holds no chain (see
            :func:`geoplm.structure.parse_structure`).
    """
    from geoplm.structure import concatenate_chains, parse_structure

    return concatenate_chains(parse_structure(path), str(path), str(path))


def load_complex(
    receptor_path: str | os.PathLike,
    ligand_path: str | os.PathLike,
    ligand_input_path: str | os.PathLike | None = None,
    complex_id: str | None = None,
    receptor_esm: Tensor | None = None,
    ligand_esm: Tensor | None = None,
) -> ComplexExample:
    """A :class:`ComplexExample` from bound receptor/ligand PDB files (DB5.5 ``{ID}_r_b.pdb``, ``{ID}_l_b.pdb``):
    each file's chains merged into one record (:func:`read_protein`), then :func:`complex_from_records`.

    Args:
        ligand_input_path: optional ligand input pose (e.g. ``test_random_transformed/{ID}_l_b.pdb``);
            its residues must match ``ligand_path``'s.
        complex_id: defaults to the receptor file name before the first ``_``.
        receptor_esm, ligand_esm: (L_all, F) per-residue features over *all* residues of the
            concatenated chains (as embedded from the records' sequences); rows of incomplete residues
            are dropped here.

    Raises:
        GeoplmError: unparsable files, fewer than 2 residues with N, Cα and C, mismatching residue counts
            or ESM rows (the messages name the file).
    """
    ligand_input = None if ligand_input_path is None else read_protein(ligand_input_path)
    return complex_from_records(
        read_protein(receptor_path),
        read_protein(ligand_path),
        ligand_input,
        receptor_esm,
        ligand_esm,
        complex_id or Path(receptor_path).name.split("_")[0],
    )


def complex_from_records(
    receptor: Mapping,
    ligand: Mapping,
    ligand_input: Mapping | None = None,
    receptor_esm: Tensor | None = None,
    ligand_esm: Tensor | None = None,
    complex_id: str | None = None,
) -> ComplexExample:
    """A :class:`ComplexExample` from the workflow's records (one record per partner, chains merged,
    as :mod:`geoplm.datasets.docking` writes them): the same residues as :func:`load_complex` reads
    from the files (N, Cα and C present).

    Args:
        receptor, ligand: ground-truth (bound) partner records.
        ligand_input: optional record of the ligand's input pose (DIPS test pairs); same residues.
        receptor_esm, ligand_esm: (L, F) ESM-2 rows over each record's whole sequence.

    Raises:
        GeoplmError: fewer than 2 complete residues, or mismatching input/ESM rows.
    """
    from geoplm.structure import residue_type_index

    def side(record: Mapping, esm: Tensor | None):
        backbone = record["backbone"][:, :3].float()
        keep = record["residue_mask"] & ~torch.isnan(backbone).flatten(1).any(1)
        if int(keep.sum()) < 2:
            raise GeoplmError(f"{record['id']}: fewer than 2 residues with N, CA and C")
        if esm is not None and esm.shape[0] != keep.shape[0]:
            raise GeoplmError(f"{record['id']}: ESM features have {esm.shape[0]} rows, the record {keep.shape[0]}")
        types = residue_type_index(record["sequence"])
        return backbone[keep], types[keep], None if esm is None else esm[keep].float()

    rec_bb, rec_types, rec_esm = side(receptor, receptor_esm)
    lig_bb, lig_types, lig_esm = side(ligand, ligand_esm)
    ligand_input_pos = None
    if ligand_input is not None:
        in_bb, in_types, _ = side(ligand_input, None)
        if in_bb.shape != lig_bb.shape or not torch.equal(in_types, lig_types):
            raise GeoplmError(f"{ligand_input['id']}: residues differ from {ligand['id']}")
        ligand_input_pos = in_bb[:, 1]
    return ComplexExample(
        id=complex_id or str(receptor.get("group") or receptor["id"]),
        receptor_pos=rec_bb[:, 1],
        receptor_residue_type=rec_types,
        ligand_true_pos=lig_bb[:, 1],
        ligand_residue_type=lig_types,
        receptor_backbone=rec_bb,
        ligand_backbone=lig_bb,
        receptor_esm=rec_esm,
        ligand_esm=lig_esm,
        ligand_input_pos=ligand_input_pos,
    )


# ------------------------------------------------------------------------------------------------
# metrics


def _rmsd(a: Tensor, b: Tensor) -> float:
    return float(torch.sqrt((a - b).pow(2).sum(-1).mean()))


def _as64(*tensors: Tensor) -> list[Tensor]:
    return [torch.as_tensor(t).detach().cpu().double() for t in tensors]


def ligand_rmsd(ligand_pred: Tensor, ligand_true: Tensor) -> float:
    """L-RMSD (Å): ``sqrt(mean_i |x_i - x_i*|^2)`` over ligand Cα, no superposition (``eval.py``).

    Raises:
        GeoplmError: shapes differ.
    """
    if ligand_pred.shape != ligand_true.shape:
        raise GeoplmError(f"ligand_rmsd: shapes differ: {tuple(ligand_pred.shape)} vs {tuple(ligand_true.shape)}")
    return _rmsd(*_as64(ligand_pred, ligand_true))


def complex_rmsd(ligand_pred: Tensor, receptor_pred: Tensor, ligand_true: Tensor, receptor_true: Tensor) -> float:
    """C-RMSD (Å): Kabsch-superimpose the predicted complex (ligand Cα then receptor Cα) onto the true one.

    ``Meter_Unbound_Bound.update_rmsd`` of ``src/utils/eval.py``.

    Raises:
        GeoplmError: shapes differ.
    """
    if ligand_pred.shape != ligand_true.shape or receptor_pred.shape != receptor_true.shape:
        raise GeoplmError("complex_rmsd: predicted and true ligand/receptor shapes differ")
    lp, rp, lt, rt = _as64(ligand_pred, receptor_pred, ligand_true, receptor_true)
    pred, true = torch.cat([lp, rp]), torch.cat([lt, rt])
    rotation, translation = kabsch(pred, true)
    return _rmsd(pred @ rotation.t() + translation, true)


def interface_pairs(
    ligand_true: Tensor, receptor_true: Tensor, cutoff: float = INTERFACE_CUTOFF
) -> tuple[Tensor, Tensor]:
    """Indices (ligand, receptor) of the Cα pairs closer than ``cutoff`` Å, row-major (``np.where`` order)."""
    lt, rt = _as64(ligand_true, receptor_true)
    return torch.nonzero(torch.cdist(lt, rt) < cutoff, as_tuple=True)


def interface_rmsd(
    ligand_pred: Tensor,
    receptor_pred: Tensor,
    ligand_true: Tensor,
    receptor_true: Tensor,
    cutoff: float = INTERFACE_CUTOFF,
) -> float:
    """I-RMSD (Å): C-RMSD over the ground-truth interface pairs (``eval_pdb_outputset.py``).

    Every ligand-receptor Cα pair closer than ``cutoff`` (8 Å) in the ground truth contributes its
    ligand and its receptor residue (a residue in several pairs counts several times, as in the
    reference); the predicted points are Kabsch-superimposed onto the true ones.

    Raises:
        GeoplmError: no pair within the cut-off.
    """
    il, ir = interface_pairs(ligand_true, receptor_true, cutoff)
    if il.numel() == 0:
        raise GeoplmError(f"interface_rmsd: no ligand-receptor Cα pair within {cutoff} Å in the ground truth")
    lp, rp, lt, rt = _as64(ligand_pred, receptor_pred, ligand_true, receptor_true)
    return complex_rmsd(lp[il], rp[ir], lt[il], rt[ir])


def docking_metrics(ligand_pred: Tensor, receptor_pred: Tensor, ligand_true: Tensor, receptor_true: Tensor) -> dict:
    """``{"complex_rmsd", "ligand_rmsd", "interface_rmsd"}`` (Å) of one predicted complex."""
    return {
        "complex_rmsd": complex_rmsd(ligand_pred, receptor_pred, ligand_true, receptor_true),
        "ligand_rmsd": ligand_rmsd(ligand_pred, ligand_true),
        "interface_rmsd": interface_rmsd(ligand_pred, receptor_pred, ligand_true, receptor_true),
    }


def summarize(per_complex: Mapping[str, Mapping[str, float]]) -> dict:
    """Median, mean and (population) std of each metric over complexes, and their count."""
    out: dict = {"complexes": len(per_complex)}
    for name in ("complex_rmsd", "ligand_rmsd", "interface_rmsd"):
        values = np.array([m[name] for m in per_complex.values()], dtype=float)
        out[f"{name}_median"] = float(np.median(values)) if len(values) else float("nan")
        out[f"{name}_mean"] = float(np.mean(values)) if len(values) else float("nan")
        out[f"{name}_std"] = float(np.std(values)) if len(values) else float("nan")
    return out


# ------------------------------------------------------------------------------------------------
# losses


def pocket_points(ligand_true: Tensor, receptor_true: Tensor, cutoff: float = 8.0) -> Tensor | None:
    """Midpoints (P, 3) of the bound ligand-receptor Cα pairs closer than ``cutoff`` Å; None if P <= 3.

    ``preprocess_unbound_bound`` in ``protein_utils.py`` (``pocket_coors``).
    """
    il, ir = torch.nonzero(torch.cdist(ligand_true.double(), receptor_true.double()) < cutoff, as_tuple=True)
    if il.numel() <= 3:
        return None
    return 0.5 * (ligand_true[il] + receptor_true[ir])


def optimal_transport_plan(cost: Tensor) -> Tensor:
    """Exact earth mover's plan (P, K) for uniform marginals 1/P, 1/K and a (P, K) cost (no gradient).

    Solved as a linear program with scipy's HiGHS (the reference: POT ``ot.emd``).

    Raises:
        GeoplmError: the solver fails.
    """
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix, vstack

    c = cost.detach().cpu().double().numpy()
    p, k = c.shape
    idx = np.arange(p * k)
    rows = coo_matrix((np.ones(p * k), (idx // k, idx)), shape=(p, p * k))
    cols = coo_matrix((np.ones(p * k), (idx % k, idx)), shape=(k, p * k))
    a_eq = vstack([rows, cols]).tocsr()
    b_eq = np.concatenate([np.full(p, 1.0 / p), np.full(k, 1.0 / k)])
    result = linprog(c.ravel(), A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs")
    if result.status != 0:
        raise GeoplmError(f"optimal transport: linprog failed ({result.message})")
    return torch.as_tensor(result.x.reshape(p, k), dtype=cost.dtype, device=cost.device)


def ot_keypoint_loss(
    ligand_pocket: Tensor, receptor_pocket: Tensor, ligand_keypoints: Tensor, receptor_keypoints: Tensor
) -> Tensor:
    """EquiDock's keypoint OT loss (``ot_utils.py``): ``sum(T * C)``, ``C = |p^l - y^l|^2 + |p^r - y^r|^2``.

    Args:
        ligand_pocket: (P, 3) pocket points moved like the ligand input (Å).
        receptor_pocket: (P, 3) pocket points in the receptor frame (Å).
        ligand_keypoints, receptor_keypoints: (K, 3) model keypoints (Å).

    Returns:
        scalar (Å²); gradient through the cost only (the plan T is fixed).
    """
    cost = torch.cdist(ligand_pocket, ligand_keypoints).pow(2) + torch.cdist(receptor_pocket, receptor_keypoints).pow(2)
    return (optimal_transport_plan(cost) * cost).sum()


def _surface_fn(protein: Tensor, x: Tensor, sigma: float) -> Tensor:
    e = torch.exp(-torch.cdist(x, protein).pow(2) / sigma)
    return -sigma * torch.log(1e-3 + e.sum(dim=1))


def intersection_loss(ligand: Tensor, receptor: Tensor, sigma: float = 25.0, surface_ct: float = 10.0) -> Tensor:
    """Non-intersection loss of EquiDock (paper Sec. 4.3, ``compute_body_intersection_loss`` in ``src/train.py``).

    ``mean_i relu(gamma - G_r(a_i)) + mean_j relu(gamma - G_l(b_j))``, ``G_p(x) = -sigma log(1e-3 +
    sum_k exp(-|x - p_k|^2 / sigma))``; a (N_l, 3) docked ligand Cα, b (N_r, 3) receptor Cα (Å),
    sigma in Å², gamma = ``surface_ct``.
    """
    return (
        torch.clamp(surface_ct - _surface_fn(receptor, ligand, sigma), min=0).mean()
        + torch.clamp(surface_ct - _surface_fn(ligand, receptor, sigma), min=0).mean()
    )


def random_rigid_transform(rng: np.random.Generator, translation_interval: float = 5.0) -> tuple[Tensor, Tensor]:
    """A uniformly random rotation (3, 3) and a translation (3,) of random direction and length U(0, interval) Å.

    ``UniformRotation_Translation`` of ``protein_utils.py`` with an explicit NumPy generator.
    """
    from scipy.spatial.transform import Rotation

    rotation = Rotation.random(random_state=rng).as_matrix()
    t = rng.standard_normal(3)
    t = t / np.linalg.norm(t) * rng.uniform(0.0, translation_interval)
    return torch.as_tensor(rotation, dtype=torch.float32), torch.as_tensor(t, dtype=torch.float32)
