"""Single-label protein classification: fold (SCOPe 1.75, 1,195 folds) and enzyme reaction (384 EC classes)
(GearNet Table 2).

torchdrug 0.2.1 ``tasks.PropertyPrediction`` with ``criterion: ce`` (``torchdrug/tasks/property_prediction.py``,
tag v0.2.1) as GearNet's ``config/downstream/Fold3D/*.yaml`` configures it (DeepGraphLearning/GearNet):

* target: the class index (``labels["target"]``: the class map's index of the fold, the reaction's class);
* head: ``MLP(D, [D] * (num_mlp_layer - 1) + [C])`` on the graph feature with ``mlp_batch_norm`` and
  ``mlp_dropout`` (Fold3D: 3 layers, batch norm, dropout 0.5);
* loss: cross-entropy, mean over the batch;
* metric: accuracy; the best epoch is the one of highest validation accuracy (``accuracy [fold_label]``).
  Fold is tested on three splits at once (``test_splits``: ``test_fold``, ``test_superfamily``,
  ``test_family``), each reported under its name.

GearNet releases no Reaction config; the paper (Sec. 5.1, App. D) trains Reaction with the Fold settings,
which the config follows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from geoplm.errors import ConfigError
from geoplm.inputs import ProteinInput
from geoplm.metrics import accuracy
from geoplm.tasks.base import Task, class_names_from_labels, label_value, torchdrug_head


class Classification(Task):
    """``kind: classification`` -- Fold, Reaction (see the module docstring).

    Settings: ``num_classes`` (from the labels' ``num_classes`` when absent), ``num_mlp_layer`` (3),
    ``mlp_batch_norm`` (false), ``mlp_dropout`` (0), ``label`` (the labels key of the class index, ``target``).
    """

    options = {"num_classes": None, "num_mlp_layer": 3, "mlp_batch_norm": False, "mlp_dropout": 0.0, "label": "target"}
    default_selection = {"metric": "accuracy", "mode": "max"}

    def __init__(self, spec: Mapping, name: str = "task"):
        super().__init__(spec, name)
        self.num_classes = self.settings["num_classes"]
        self._labels: list[Mapping] = []  # the labels of every record with a target: the class names (state)

    def target(self, record: Mapping, protein: ProteinInput) -> Tensor | None:
        value = label_value(record, self.settings["label"], self.name)
        if value is None:
            return None
        num_classes = self.num_classes or (record.get("labels") or {}).get("num_classes")
        if num_classes is None:
            raise ConfigError(
                f"tasks.{self.name}: record {record['id']} gives no num_classes; set tasks.{self.name}.num_classes"
            )
        self.num_classes = int(num_classes)
        self._labels.append(record.get("labels") or {})
        if not 0 <= int(value) < self.num_classes:
            raise ConfigError(f"record {record['id']}: class {value} outside 0..{self.num_classes - 1}")
        return torch.tensor(int(value))

    def state(self) -> dict[str, Any]:
        """The class names by index, as the records' labels give them (None where none does), so that a trained
        model's predictions are named (:mod:`geoplm.apply`)."""
        if not self.num_classes:
            return {}
        return {"class_names": class_names_from_labels(self._labels, int(self.num_classes))}

    def head(self, output_dim: int) -> nn.Module:
        return torchdrug_head(
            output_dim,
            output_dim,
            int(self.num_classes),
            self.settings["num_mlp_layer"],
            batch_norm=bool(self.settings["mlp_batch_norm"]),
            dropout=float(self.settings["mlp_dropout"]),
        )

    def criterion(self, output: Tensor, target: Tensor) -> Tensor:
        return nn.functional.cross_entropy(output, target)

    def evaluate(self, gathered: Mapping[str, Any]) -> dict[str, float]:
        return {"accuracy": accuracy(gathered["pred"], gathered["target"]), "proteins": len(gathered["target"])}

    def report(self, splits: Mapping[str, Sequence], evaluations: Mapping[str, Mapping]) -> dict[str, Any]:
        return {**super().report(splits, evaluations), "num_classes": self.num_classes}
