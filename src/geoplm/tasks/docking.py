"""Rigid protein-protein docking with EquiDock as a task of the one training loop (Ganea et al., ICLR 2022;
with ESM-2 input features: Wu et al., Communications Biology 2023, Table 3).

Follows octavian-ganea/equidock_public (commit ac2c754399bf20b50a27d86dbff4f6669788d47f); the data, losses
and metrics are in :mod:`geoplm.docking`:

* examples: one per complex (a receptor and a ligand record, :func:`docking_examples`); the receptor is given
  in its bound pose; in training the ligand (or, with probability 0.5, the receptor: ``if_swap``) is centred,
  rotated uniformly at random and translated by a random direction of length ``U(0, translation_interval =
  5 Å)`` -- the model must put it back. The pose of complex ``i`` in epoch ``e`` is drawn from a generator
  seeded by ``(seed, e, i)``.
* loss (``src/train.py``): ``MSE(docked ligand Cα, bound ligand Cα) + pocket_ot_loss_weight (1) * OT +
  intersection_loss_weight (10) * IL``, averaged over the complexes of a batch.
* training (``src/train.py``, DB5.5 stage ``-toy``): Adam, lr 1e-4, weight decay 1e-3 (released DB5.5
  checkpoint), gradient-norm clip 100, batch size 10, up to 10,000 epochs, early stopping after
  ``patience = 500`` epochs without a new best; the best epoch is the one whose validation C-RMSD median is
  below 0.98 times the previous best (``selection``: ``complex_rmsd_median``, ``min``,
  ``relative_improvement`` 0.02); the test set is evaluated with its weights.
* evaluation: the ligand is moved by a fixed random rigid transform per complex (seeded by the complex id, the
  same in every run and epoch; the reference draws a new one per epoch, to which the model is invariant), or
  is taken as given in :attr:`~geoplm.docking.ComplexExample.ligand_input_pos` (EquiDock's
  ``test_random_transformed`` files); C-, L- and I-RMSD per complex, summarised by median, mean and std.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from geoplm.docking import (
    ComplexExample,
    complex_from_records,
    docking_metrics,
    intersection_loss,
    ot_keypoint_loss,
    pocket_points,
    random_rigid_transform,
    summarize,
)
from geoplm.errors import ConfigError, GeoplmError
from geoplm.inputs import InputLoader
from geoplm.models.equidock import DEFAULT_CONFIG, DockingSide, EquiDock, build_docking_graph, kabsch, residue_frames
from geoplm.structure import NUM_RESIDUE_TYPES
from geoplm.tasks.base import Task

#: docking roles of the ground-truth partners and of a given ligand input pose (geoplm.datasets.docking)
RECEPTOR_ROLES = ("receptor_bound", "receptor_complex")
LIGAND_ROLES = ("ligand_bound", "ligand_complex")

#: The loop settings of the reference's DB5.5 stage (see the module docstring).
EQUIDOCK_LOOP: dict[str, Any] = {
    "lr": 1e-4,
    "weight_decay": 1e-3,
    "epochs": 10000,
    "patience": 500,
    "patience_resets": True,
    "batch_size": 10,
    "clip": 100.0,
    "selection": {"metric": "complex_rmsd_median", "mode": "min", "relative_improvement": 0.02},
}
#: EquiDock's loss, pose and graph settings.
EQUIDOCK_OPTIONS: dict[str, Any] = {
    "pocket_cutoff": 8.0,
    "pocket_ot_loss_weight": 1.0,
    "intersection_loss_weight": 10.0,
    "intersection_sigma": 25.0,
    "intersection_surface_ct": 10.0,
    "translation_interval": 5.0,
    "swap": True,
    "graph_k": 10,
    "graph_cutoff": 30.0,
}


@dataclass
class _Prepared:
    """A complex with what every pose of it shares: residue graphs, local frames, pocket points."""

    index: int
    example: ComplexExample
    rec_edges: Tensor
    lig_edges: Tensor
    rec_frames: Tensor | None
    lig_frames: Tensor | None
    pocket: Tensor | None

    @property
    def id(self) -> str:
        return self.example.id

    @property
    def group(self) -> str:
        return self.example.id


def _prepare(index: int, example: ComplexExample, k: int, cutoff: float, pocket_cutoff: float) -> _Prepared:
    e = example
    for name, pos, types in (
        ("receptor", e.receptor_pos, e.receptor_residue_type),
        ("ligand", e.ligand_true_pos, e.ligand_residue_type),
    ):
        if pos.dim() != 2 or pos.shape[1] != 3 or pos.shape[0] < 2 or types.shape[0] != pos.shape[0]:
            raise GeoplmError(
                f"complex {e.id}: {name} positions {tuple(pos.shape)} / residue types {tuple(types.shape)} malformed"
            )
    frames = [None if bb is None else residue_frames(bb.float()) for bb in (e.receptor_backbone, e.ligand_backbone)]
    return _Prepared(
        index,
        e,
        build_docking_graph(e.receptor_pos.float(), k, cutoff),
        build_docking_graph(e.ligand_true_pos.float(), k, cutoff),
        frames[0],
        frames[1],
        pocket_points(e.ligand_true_pos.float(), e.receptor_pos.float(), pocket_cutoff),
    )


def _side(node_input, types, pos, edges, frames) -> DockingSide:
    return DockingSide(node_input, pos, edges, frames, types)


def _pose(prep: _Prepared, swap: bool, transform: tuple[Tensor, Tensor] | None, use_esm: bool):
    """(receptor side, ligand side, true docked ligand, receptor pos, ligand pocket, receptor pocket)."""
    e = prep.example
    rec = (
        e.receptor_esm if use_esm else e.receptor_residue_type,
        e.receptor_residue_type,
        e.receptor_pos.float(),
        prep.rec_edges,
        prep.rec_frames,
    )
    lig = (
        e.ligand_esm if use_esm else e.ligand_residue_type,
        e.ligand_residue_type,
        e.ligand_true_pos.float(),
        prep.lig_edges,
        prep.lig_frames,
    )
    if swap:
        rec, lig = lig, rec
    true_lig = lig[2]
    if transform is None:  # given input pose (not swapped)
        rotation, translation = kabsch(true_lig.double(), e.ligand_input_pos.double())
        rotation, translation = rotation.float(), translation.float()
        center = torch.zeros(1, 3)
    else:
        rotation, translation = transform
        center = true_lig.mean(dim=0, keepdim=True)
    in_pos = (true_lig - center) @ rotation.t() + translation
    if transform is None:
        in_pos = e.ligand_input_pos.float()
    in_frames = None if lig[4] is None else lig[4] @ rotation.t()
    lig_pocket = None if prep.pocket is None else (prep.pocket.float() - center) @ rotation.t() + translation
    return (
        _side(rec[0], rec[1], rec[2], rec[3], rec[4]),
        _side(lig[0], lig[1], in_pos, lig[3], in_frames),
        true_lig,
        rec[2],
        lig_pocket,
        prep.pocket,
    )


def _eval_transform(complex_id: str, interval: float) -> tuple[Tensor, Tensor]:
    return random_rigid_transform(np.random.default_rng(zlib.crc32(complex_id.encode())), interval)


def docking_examples(
    records: Sequence[Mapping], split_of: Mapping[str, str], loader: InputLoader | None = None
) -> dict[str, list[ComplexExample]]:
    """EquiDock examples per split from docking records (DB5.5 / DIPS readers), one per complex.

    The receptor and ligand are the ground-truth partners (roles :data:`RECEPTOR_ROLES`,
    :data:`LIGAND_ROLES`); a DIPS ``ligand`` record is the given input pose. A complex's split is its
    receptor's. With a loader that reads ESM-2 embeddings, each partner gets its ``(L, D)`` rows.

    Raises:
        GeoplmError: a complex without both partners, or a record without an ESM embedding when the loader
            reads embeddings.
    """
    groups: dict[str, dict[str, Mapping]] = {}
    for record in records:
        groups.setdefault(record.get("group") or record["id"], {})[record.get("role", "")] = record
    out: dict[str, list] = {"train": [], "valid": [], "test": []}
    for group, members in sorted(groups.items()):
        receptor = next((members[r] for r in RECEPTOR_ROLES if r in members), None)
        ligand = next((members[r] for r in LIGAND_ROLES if r in members), None)
        if receptor is None or ligand is None:
            raise GeoplmError(f"complex {group}: needs a receptor and a ligand record, has roles {sorted(members)}")
        split = split_of.get(receptor["id"], "")
        if split not in out:
            continue
        rows = (loader.embedding(receptor), loader.embedding(ligand)) if loader is not None else (None, None)
        out[split].append(complex_from_records(receptor, ligand, members.get("ligand"), *rows, group))
    return out


class RigidDocking(Task):
    """``kind: docking`` -- EquiDock (see the module docstring). Settings: :data:`EQUIDOCK_OPTIONS` and the
    loop's (:data:`EQUIDOCK_LOOP` defaults). The model entry is an EquiDock configuration
    (:data:`geoplm.models.equidock.DEFAULT_CONFIG` keys, ``type: equidock``).

    ESM-2 features are used when every complex carries them (``receptor_esm`` / ``ligand_esm``).
    """

    loop_defaults = EQUIDOCK_LOOP
    options = EQUIDOCK_OPTIONS
    default_selection = EQUIDOCK_LOOP["selection"]

    def __init__(self, spec: Mapping, name: str = "task"):
        super().__init__(spec, name)
        self.use_esm = False

    # --- data

    def build_examples(
        self, records: Sequence[Mapping], split_of: Mapping[str, str], loader: InputLoader
    ) -> dict[str, list]:
        return self.prepare_examples(docking_examples(records, split_of, loader if loader.uses_embeddings else None))

    def prepare_examples(self, examples: Mapping[str, Sequence[ComplexExample]]) -> dict[str, list[_Prepared]]:
        """Graphs, local frames and pockets of every complex (``{split: [ComplexExample]}``).

        Raises:
            GeoplmError: malformed examples, a training complex without a pocket, mixed ESM / no-ESM examples.
        """
        all_examples = [e for name in self.splits for e in examples.get(name, [])]
        has_esm = [e.receptor_esm is not None and e.ligand_esm is not None for e in all_examples]
        if any(has_esm) and not all(has_esm):
            raise GeoplmError(
                "docking run: some complexes have ESM features and some not: "
                + ", ".join(e.id for e, h in zip(all_examples, has_esm, strict=True) if not h)
            )
        self.use_esm = bool(all_examples) and all(has_esm)
        s = self.settings
        prepared = {
            name: [
                _prepare(i, e, int(s["graph_k"]), float(s["graph_cutoff"]), float(s["pocket_cutoff"]))
                for i, e in enumerate(examples.get(name, []))
            ]
            for name in self.splits
        }
        for p in prepared["train"]:
            if p.pocket is None:
                raise GeoplmError(
                    f"complex {p.example.id}: <= 3 Cα pairs within {s['pocket_cutoff']} Å; "
                    "the reference leaves such complexes out"
                )
        return prepared

    def input_dim(self, example: _Prepared) -> int | None:
        """The ESM-2 width when the complexes carry ESM-2 rows, else None (EquiDock embeds residue types)."""
        esm = example.example.receptor_esm
        return None if esm is None else int(esm.shape[1])

    def batches(self, examples: Sequence[_Prepared], batch_size: int, epoch: int | None) -> list[list[_Prepared]]:
        """Training batches: the complexes permuted by a generator seeded ``(seed, epoch)``; evaluation: in order."""
        if epoch is None:
            return [list(examples[i : i + batch_size]) for i in range(0, len(examples), batch_size)]
        order = np.random.default_rng([self.seed, epoch]).permutation(len(examples))
        return [[examples[int(i)] for i in order[i : i + batch_size]] for i in range(0, len(order), batch_size)]

    # --- model

    def build_model(self, model_spec: Mapping, input_dim: int | None, plm: bool, esm=None, name: str = "model"):
        model_cfg = {k: v for k, v in model_spec.items() if k not in ("type", "name")}
        if model_spec.get("type", "equidock") != "equidock":
            raise ConfigError(f"models.{name}: type must be 'equidock' for docking, got {model_spec.get('type')!r}")
        unknown = set(model_cfg) - set(DEFAULT_CONFIG)
        if unknown:
            raise ConfigError(
                f"models.{name}: unknown EquiDock option(s) {sorted(unknown)} (known: {sorted(DEFAULT_CONFIG)})"
            )
        return EquiDock(input_dim if self.use_esm else None, **model_cfg)

    # --- loss and evaluation

    def _losses(self, model: nn.Module, prep: _Prepared, swap: bool, transform) -> dict[str, Tensor]:
        s, device = self.settings, self.device
        rec, lig, true_lig, rec_pos, lig_pocket, rec_pocket = _pose(prep, swap, transform, self.use_esm)
        out = model(rec.to(device), lig.to(device))
        parts = {"ligand_mse": nn.functional.mse_loss(out["ligand_pos"], true_lig.to(device))}
        if lig_pocket is not None:
            parts["ot"] = ot_keypoint_loss(
                lig_pocket.to(device), rec_pocket.float().to(device), out["ligand_keypoints"], out["receptor_keypoints"]
            )
        else:
            parts["ot"] = out["ligand_pos"].sum() * 0.0
        parts["intersection"] = intersection_loss(
            out["ligand_pos"], rec_pos.to(device), float(s["intersection_sigma"]), float(s["intersection_surface_ct"])
        )
        parts["loss"] = (
            parts["ligand_mse"]
            + float(s["pocket_ot_loss_weight"]) * parts["ot"]
            + float(s["intersection_loss_weight"]) * parts["intersection"]
        )
        parts["docked"] = out["ligand_pos"]
        return parts

    def training_loss(self, model: nn.Module, batch: Sequence[_Prepared], epoch: int):
        """Mean loss over the batch's complexes, each in a random pose drawn from ``(seed, epoch, index)``."""
        total, sums = 0.0, {"loss": 0.0, "ligand_mse": 0.0, "ot": 0.0, "intersection": 0.0}
        for prep in batch:
            pose_rng = np.random.default_rng([self.seed, epoch, prep.index])
            swap = bool(self.settings["swap"]) and pose_rng.uniform() > 0.5
            transform = random_rigid_transform(pose_rng, float(self.settings["translation_interval"]))
            parts = self._losses(model, prep, swap, transform)
            total = total + parts["loss"] / len(batch)
            for key in sums:
                sums[key] += float(parts[key].detach())
        return total, {key: value / len(batch) for key, value in sums.items()}, float(len(batch))

    def eval_batch(self, model: nn.Module, batch: Sequence[_Prepared]) -> tuple[dict[str, Any], float, float]:
        gathered: dict[str, Any] = {"metrics": []}
        total = 0.0
        for prep in batch:
            e = prep.example
            given = e.ligand_input_pos is not None
            transform = None if given else _eval_transform(e.id, float(self.settings["translation_interval"]))
            parts = self._losses(model, prep, False, transform)
            total += float(parts["loss"])
            gathered["metrics"].append(
                (e.id, docking_metrics(parts["docked"].cpu(), e.receptor_pos, e.ligand_true_pos, e.receptor_pos))
            )
        return gathered, total, float(len(batch))

    def evaluate(self, gathered: Mapping[str, Any]) -> dict[str, float]:
        return summarize(dict(gathered["metrics"]))

    def report(self, splits: Mapping[str, Sequence], evaluations: Mapping[str, Mapping]) -> dict[str, Any]:
        test = self.test_splits[0]
        return {
            "task_kind": "rigid_docking",
            "num_complexes": {name: len(members) for name, members in splits.items()},
            "node_input": "esm" if self.use_esm else "residue_type",
            "node_input_dim": self.input_dim(splits["train"][0]) if self.use_esm else NUM_RESIDUE_TYPES,
            f"{test}_per_complex": dict(evaluations[test]["metrics"]),
        }
