"""Wu et al. (Communications Biology 2023)'s toy position-recovery tasks: can a structure encoder tell where a
residue sits in the sequence?

Follows smiles724/GGNN_Meets_PLM (commit 088c1f5): ``gvp/atom3d.py`` ``TOYDataset`` (labels over the residues
that have a Cα) and ``TOYModel`` (head), ``main.py`` (loop):

- ``absolute_position`` ("id"): classify each residue's index ``i`` in ``0..n-1`` among ``num_classes``
  classes (9,000 in the paper), cross-entropy; residues beyond the classes are ignored; metric: accuracy
  over residues.
- ``relative_position`` ("dist"): regress ``min(i, n - i)``, the residue's sequence distance to the nearer
  chain end as the reference defines it, mean squared error; metric: RMSE (residues).

Head (``TOYModel``): ``Linear(D, 2D) -> ReLU -> Dropout(0.1) -> Linear(2D, C)``, with a final ReLU for the
(non-negative) relative-position regression (:class:`~geoplm.tasks.base.WuHead`); Molformer's ``TOYModel``
(``molformer/tr_cpe.py``, ``Generator3D``) is ``Linear(D, D) -> ReLU -> Dropout -> Linear(D, C)`` without the
ReLU, Xavier-initialised: ``head_hidden_factor: 1``, ``head_xavier_init: true``, ``head_final_relu: false``
(config ``toy_*_molformer``). Loop (``main.py``): Adam, ``ReduceLROnPlateau(mode="min",
factor=0.6, patience=5, min_lr=5e-7)`` stepped on the validation loss, early stopping once the validation loss
has failed to improve ``patience`` (8) times -- the reference's counter is never reset, and neither is ours --
and the test set evaluated with the weights of the epoch with the lowest validation loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from geoplm.errors import GeoplmError
from geoplm.inputs import ProteinInput
from geoplm.metrics import accuracy, rmse
from geoplm.tasks.base import WU_HEAD_OPTIONS, WU_LOOP, Example, Task, WuHead


def position_labels(kind: str, n: int) -> Tensor:
    """Labels of the toy tasks for a chain of ``n`` Cα residues.

    Returns:
        ``absolute_position``: ``arange(n)`` (long); ``relative_position``: ``min(i, n - i)``
        (float) -- GGNN_Meets_PLM ``gvp/atom3d.py`` ``TOYDataset``.

    Raises:
        GeoplmError: unknown task kind.
    """
    index = torch.arange(n)
    if kind == "absolute_position":
        return index
    if kind == "relative_position":
        return torch.minimum(index, n - index).float()
    raise GeoplmError(f"unknown position task kind '{kind}' (absolute_position, relative_position)")


class _Position(Task):
    """Per-residue toy task (see the module docstring)."""

    loop_defaults = WU_LOOP
    kind = ""

    def target(self, record: Mapping, protein: ProteinInput) -> Tensor:
        return position_labels(self.kind, protein.num_nodes)

    def group(self, record: Mapping) -> str:
        return record["id"]

    def forward(self, model: nn.Module, batch: Sequence[Example]) -> Tensor:
        return model.head(self.encode(model, [e.proteins[0] for e in batch])["node_feature"])

    def targets(self, batch: Sequence[Example]) -> Tensor:
        return torch.cat([e.target for e in batch]).to(self.device)

    def eval_batch(self, model: nn.Module, batch: Sequence[Example]) -> tuple[dict[str, Any], float, float]:
        output, target = self.forward(model, batch), self.targets(batch)
        loss = float(self.criterion(output, target))
        return {"pred": self.point_prediction(output).cpu(), "target": target.cpu()}, loss * len(target), len(target)

    def point_prediction(self, output: Tensor) -> Tensor:
        return output.detach()


class AbsolutePosition(_Position):
    """``absolute_position``: cross-entropy over ``num_classes`` residue-index classes; accuracy (residues)."""

    kind = "absolute_position"
    options = {"num_classes": 9000, **WU_HEAD_OPTIONS}

    def head(self, output_dim: int) -> nn.Module:
        return WuHead.from_settings(self.settings, output_dim, int(self.settings["num_classes"]))

    def targets(self, batch: Sequence[Example]) -> Tensor:
        label = super().targets(batch)
        return torch.where(label < int(self.settings["num_classes"]), label, torch.full_like(label, -100))

    def criterion(self, output: Tensor, target: Tensor) -> Tensor:
        if (target >= 0).sum() == 0:
            return output.sum() * 0.0
        return nn.functional.cross_entropy(output, target, ignore_index=-100)

    def point_prediction(self, output: Tensor) -> Tensor:
        return output.detach().argmax(-1)  # the class is all accuracy needs (not (N, 9000) logits)

    def evaluate(self, gathered: Mapping[str, Any]) -> dict[str, float]:
        pred, target = gathered["pred"], gathered["target"]
        valid = target >= 0
        return {
            "accuracy": accuracy(pred[valid], target[valid]) if bool(valid.any()) else float("nan"),
            "residues": int(valid.sum()),
            "residues_beyond_classes": int((~valid).sum()),
        }


class RelativePosition(_Position):
    """``relative_position``: MSE on ``min(i, n - i)``; RMSE (residues)."""

    kind = "relative_position"
    options = {**WU_HEAD_OPTIONS, "head_final_relu": True}

    def head(self, output_dim: int) -> nn.Module:
        head = WuHead.from_settings(self.settings, output_dim, 1, final_relu=self.settings["head_final_relu"])
        return nn.Sequential(head, nn.Flatten(0))

    def criterion(self, output: Tensor, target: Tensor) -> Tensor:
        return nn.functional.mse_loss(output, target)

    def evaluate(self, gathered: Mapping[str, Any]) -> dict[str, float]:
        return {"rmse": rmse(gathered["pred"], gathered["target"]), "residues": len(gathered["target"])}
