"""Interface residues of a protein pair: Wu et al.'s PPI benchmark (Communications Biology 2023, Fig. 2a).

Follows smiles724/GGNN_Meets_PLM @ bb4524b99962ecd8b71c57e5b6cc9abbebc25225 (``gvp/atom3d.py``
``PPITransform`` / ``PPIDataset`` / ``PPIModel``, ``egnn/egnn_clean.py`` ``PPIModel``, ``molformer/tr_cpe.py``
``PPIModel``, ``main.py``):

* example: one pair of bound chains (an ATOM3D PPI / DIPS item: the records of one ``group``; the first two
  chains, as the reference takes ``subunits[0]`` and ``subunits[1]``, or with ``roles`` the first chain of each
  of the two roles, e.g. ``[ligand_complex, receptor_complex]``: the ground-truth pose of the ``dips`` reader's
  pairs). A residue of either chain is an
  interface residue (label 1) when its Cα lies within ``cutoff`` (8 Å) of a Cα of the partner
  (``torch.cdist(x1, x2) < 8``);
* model: each chain is encoded on its own (no message crosses the pair), then Wu et al.'s head on every residue
  (:class:`~geoplm.tasks.base.WuHead`; Molformer's ``Generator3D``: ``head_hidden_factor: 1``,
  ``head_xavier_init: true``) and a sigmoid; loss: binary cross-entropy over the batch's residues;
* metric: AUROC over all residues of a split (atom3d's ``metrics.auroc`` = scikit-learn's ``roc_auc_score``);
  the best epoch by the validation loss, Wu et al.'s loop (:data:`~geoplm.tasks.base.WU_LOOP`); the reference
  does not shuffle the PPI training batches (``shuffle: false``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from geoplm.inputs import InputLoader
from geoplm.metrics import auroc
from geoplm.tasks.base import WU_HEAD_OPTIONS, WU_LOOP, Example, Task, WuHead

log = logging.getLogger(__name__)


def interface_labels(position_a: Tensor, position_b: Tensor, cutoff: float) -> tuple[Tensor, Tensor]:
    """Interface labels of two chains: ``(n_a,)``, ``(n_b,)`` float, 1 where a residue's Cα lies within ``cutoff``
    Å of any Cα of the other chain (``position_*``: ``(n, 3)`` Å)."""
    close = torch.cdist(position_a.double(), position_b.double()) < cutoff
    return close.any(dim=1).float(), close.any(dim=0).float()


class InterfaceResidues(Task):
    """``kind: interface_residues`` (see the module docstring). Settings: ``cutoff`` (8.0 Å), ``roles`` (None: the
    group's first two chains) and Wu et al.'s head settings (:data:`~geoplm.tasks.base.WU_HEAD_OPTIONS`)."""

    loop_defaults = {**WU_LOOP, "shuffle": False}
    options = {"cutoff": 8.0, "roles": None, **WU_HEAD_OPTIONS}

    def build_examples(
        self, records: Sequence[Mapping], split_of: Mapping[str, str], loader: InputLoader
    ) -> dict[str, list]:
        roles = self.settings["roles"]
        pairs: dict[str, list[Mapping]] = {}
        for record in records:
            if split_of.get(record["id"]) in self.splits and (not roles or record.get("role") in roles):
                pairs.setdefault(str(record.get("group") or record["id"]), []).append(record)
        out: dict[str, list] = {split: [] for split in self.splits}
        for item, members in pairs.items():
            if roles:  # the first chain of each role, in the roles' order
                members = [next((m for m in members if m.get("role") == role), None) for role in roles]
                members = [m for m in members if m is not None]
            proteins = [protein for protein in map(loader, members) if protein is not None][:2]
            if len(proteins) < 2:
                log.warning("%s: pair %s has %d usable chain(s), not 2; left out", self.name, item, len(proteins))
                continue
            labels = interface_labels(proteins[0].position, proteins[1].position, float(self.settings["cutoff"]))
            split = split_of[members[0]["id"]]
            out[split].append(Example(item, tuple(proteins), torch.cat(labels), item))
        return out

    def head(self, output_dim: int) -> nn.Module:
        return nn.Sequential(WuHead.from_settings(self.settings, output_dim, 1), nn.Flatten(0))

    def forward(self, model: nn.Module, batch: Sequence[Example]) -> Tensor:
        """Logits of every residue of the batch's chains ``(N,)``, chain by chain in example order."""
        proteins = [protein for example in batch for protein in example.proteins]
        return model.head(self.encode(model, proteins)["node_feature"])

    def targets(self, batch: Sequence[Example]) -> Tensor:
        return torch.cat([e.target for e in batch]).to(self.device)

    def criterion(self, output: Tensor, target: Tensor) -> Tensor:
        return nn.functional.binary_cross_entropy_with_logits(output, target)

    def eval_batch(self, model: nn.Module, batch: Sequence[Example]) -> tuple[dict[str, Any], float, float]:
        output, target = self.forward(model, batch), self.targets(batch)
        loss = float(self.criterion(output, target))
        return {"pred": torch.sigmoid(output).detach().cpu(), "target": target.cpu()}, loss * len(target), len(target)

    def evaluate(self, gathered: Mapping[str, Any]) -> dict[str, float]:
        pred, target = gathered["pred"], gathered["target"]
        return {"auroc": auroc(pred, target), "residues": len(target), "interface_residues": int(target.sum())}
