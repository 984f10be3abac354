"""Multi-label protein function prediction: EC numbers and GO terms (GearNet Table 1; ESM-GearNet Table 2).

torchdrug 0.2.1 ``tasks.MultipleBinaryClassification`` (``torchdrug/tasks/property_prediction.py``, tag v0.2.1)
as GearNet (DeepGraphLearning/GearNet ``config/downstream/{EC,GO-BP,GO-MF,GO-CC}/*.yaml``) and ESM-GearNet
(DeepGraphLearning/ESM-GearNet ``config/{EC,GO}/*.yaml``) configure it:

* target: the ``(C,)`` 0/1 vector of the chain's terms (``labels["target"]``: indices into the annotation
  file's term list, 538 EC numbers; 1,943 / 489 / 320 GO-BP / MF / CC terms in DeepFRI's files);
* head: ``MLP(D, [D] * (num_mlp_layer - 1) + [C])`` on the encoder's graph feature (``num_mlp_layer: 3``;
  ESM-2 alone: 2), no batch norm, no dropout (the task's MLP takes neither);
* loss: ``binary_cross_entropy_with_logits`` averaged over the batch, then over the terms with equal weights
  (``reweight: false``);
* metrics on a whole split: protein-centric Fmax (``f1_max``) and micro-averaged AUPR (``auprc@micro``)
  (:mod:`geoplm.metrics`); the best epoch is the one of highest validation Fmax (``metric: f1_max``).

Test-set identity cutoff (DeepFRI ``nrPDB-*_test.csv``; torchdrug ``EnzymeCommission(test_cutoff=0.95)``,
``GeneOntology(test_cutoff=0.95)``): only test chains flagged at the chosen cutoff are tested
(``test_cutoff``, one of 0.3, 0.4, 0.5, 0.7, 0.95; the papers' 0.95 by default). The labelled-chains reader
stores the flags in ``labels["test_identity"]``; a test chain without flags (a dataset whose reader already
applied a cutoff) is kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from geoplm.errors import ConfigError
from geoplm.inputs import ProteinInput
from geoplm.metrics import auprc_micro, f1_max
from geoplm.tasks.base import Task, class_names_from_labels, label_value, torchdrug_head

TEST_CUTOFFS = (0.3, 0.4, 0.5, 0.7, 0.95)


class MultiLabelFunction(Task):
    """``kind: multilabel`` -- EC / GO (see the module docstring).

    Settings: ``num_mlp_layer`` (3), ``num_classes`` (taken from the labels' ``num_classes`` when absent),
    ``label`` (the labels key holding the term indices, ``target``), ``test_cutoff`` (0.95).
    """

    options = {"num_mlp_layer": 3, "num_classes": None, "label": "target", "test_cutoff": 0.95}
    default_selection = {"metric": "f1_max", "mode": "max"}

    def __init__(self, spec: Mapping, name: str = "task"):
        super().__init__(spec, name)
        cutoff = float(self.settings["test_cutoff"])
        cutoff = cutoff / 100 if cutoff > 1 else cutoff
        if not any(abs(cutoff - c) < 1e-9 for c in TEST_CUTOFFS):
            raise ConfigError(
                f"config key 'tasks.{name}.test_cutoff': {self.settings['test_cutoff']} is not one of DeepFRI's "
                f"cutoffs {', '.join(map(str, TEST_CUTOFFS))}"
            )
        self.cutoff_key = str(round(cutoff * 100))
        self.num_classes = self.settings["num_classes"]
        self._labels: list[Mapping] = []  # the labels of every record with a target: the class names (state)

    def target(self, record: Mapping, protein: ProteinInput) -> Tensor | None:
        terms = label_value(record, self.settings["label"], self.name)
        if terms is None:
            return None
        flags = (record.get("labels") or {}).get("test_identity")
        if isinstance(flags, Mapping) and not flags.get(self.cutoff_key, True):
            return None  # a test chain above the identity cutoff (torchdrug drops it)
        num_classes = self.num_classes or (record.get("labels") or {}).get("num_classes")
        if num_classes is None:
            raise ConfigError(
                f"tasks.{self.name}: record {record['id']} gives no num_classes; set tasks.{self.name}.num_classes"
            )
        self.num_classes = int(num_classes)
        self._labels.append(record.get("labels") or {})
        target = torch.zeros(self.num_classes)
        target[torch.as_tensor(list(terms), dtype=torch.long)] = 1.0
        return target

    def state(self) -> dict[str, Any]:
        """The class names by index, as the records' labels give them (None where none does), so that a trained
        model's predictions are named (:mod:`geoplm.apply`)."""
        if not self.num_classes:
            return {}
        return {"class_names": class_names_from_labels(self._labels, int(self.num_classes))}

    def head(self, output_dim: int) -> nn.Module:
        return torchdrug_head(output_dim, output_dim, int(self.num_classes), self.settings["num_mlp_layer"])

    def criterion(self, output: Tensor, target: Tensor) -> Tensor:
        return nn.functional.binary_cross_entropy_with_logits(output, target)

    def evaluate(self, gathered: Mapping[str, Any]) -> dict[str, float]:
        pred, target = gathered["pred"], gathered["target"]
        return {"f1_max": f1_max(pred, target), "auprc_micro": auprc_micro(pred, target), "proteins": len(target)}

    def report(self, splits: Mapping[str, Sequence], evaluations: Mapping[str, Mapping]) -> dict[str, Any]:
        return {**super().report(splits, evaluations), "num_classes": self.num_classes, "test_cutoff": self.cutoff_key}
