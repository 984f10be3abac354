"""Protein-level regression: model quality (PSR / MQA: GDT-TS of a CASP model; ESM-GearNet Table 3, Wu et al.
Table 1) and binding affinity (LBA: pK).

torchdrug 0.2.1 ``tasks.PropertyPrediction`` with ``criterion: mse`` and ``normalization: True``
(``torchdrug/tasks/property_prediction.py``, tag v0.2.1) as ESM-GearNet's ``config/PSR/*.yaml`` configures it
(DeepGraphLearning/ESM-GearNet):

* target: one label value (``label``: ``gdt_ts`` for the CASP reader, ``scores.gdt_ts`` for ATOM3D's PSR
  LMDBs); records without it (CASP natives) are left out;
* normalisation: the mean and standard deviation (``torch.std``, unbiased) of the training targets; the loss is
  ``MSE((pred - mean) / std, (target - mean) / std)`` and the prediction ``head(graph_feature) * std + mean``
  (``normalization: false`` drops both);
* head: ``MLP(D, [D] * (num_mlp_layer - 1) + [1])`` on the graph feature (3 layers); ``head: wu`` takes Wu et
  al.'s instead (:class:`~geoplm.tasks.base.WuHead`: ``Linear(D, h D) -> ReLU -> Dropout(0.1) -> Linear(h D, 1)``,
  ``h = head_hidden_factor``; GGNN_Meets_PLM's PSR / LBA models), with ``normalization: false`` and Wu et al.'s
  loop (``tasks.wu_mqa`` in ``config/config.yaml``);
* metrics on a whole split, on the de-normalised predictions: the global Spearman over all examples pooled
  (ESM-GearNet's ``spearmanr [gdt_ts]``, the selection metric), Pearson, Kendall, RMSE and MAE; and per group
  (a CASP target: ``group``, or the part of it matched by ``group_pattern``) the mean over groups of the
  Spearman, Pearson and Kendall within each group and the first rank loss (Wu et al.'s "mean" correlations,
  with atom3d's metrics; :mod:`geoplm.metrics`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from geoplm.errors import ConfigError, GeoplmError
from geoplm.inputs import ProteinInput
from geoplm.metrics import first_rank_loss, kendall, mae, pearson, per_group, rmse, spearman
from geoplm.tasks.base import WU_HEAD_OPTIONS, Task, WuHead, label_value, torchdrug_head


class Regression(Task):
    """``kind: regression`` (see the module docstring).

    Settings: ``label`` (``gdt_ts``), ``normalization`` (true), ``num_mlp_layer`` (3), ``group_pattern`` (a
    regular expression; the group is its first match in the record's group, e.g. the CASP target in an
    ATOM3D PSR item id), ``head`` (``torchdrug`` or ``wu``), ``head_hidden_factor`` (2) and
    ``head_xavier_init`` (false) of the ``wu`` head.

    Raises:
        ConfigError: an invalid ``group_pattern`` or ``head``.
    """

    options = {
        "label": "gdt_ts",
        "normalization": True,
        "num_mlp_layer": 3,
        "group_pattern": None,
        "head": "torchdrug",
        **WU_HEAD_OPTIONS,
    }
    default_selection = {"metric": "spearman", "mode": "max"}

    def __init__(self, spec: Mapping, name: str = "task"):
        super().__init__(spec, name)
        pattern = self.settings["group_pattern"]
        try:
            self.group_pattern = re.compile(pattern) if pattern else None
        except re.error as error:
            raise ConfigError(f"config key 'tasks.{name}.group_pattern': {error}") from error
        if self.settings["head"] not in ("torchdrug", "wu"):
            raise ConfigError(
                f"config key 'tasks.{name}.head': {self.settings['head']!r} is not a head (torchdrug, wu)"
            )
        self.mean, self.std = 0.0, 1.0

    def target(self, record: Mapping, protein: ProteinInput) -> Tensor | None:
        value = label_value(record, self.settings["label"], self.name)
        return None if value is None else torch.tensor(float(value))

    def group(self, record: Mapping) -> str:
        group = str(record.get("group") or record["id"])
        if self.group_pattern is None:
            return group
        match = self.group_pattern.search(group)
        if match is None:
            raise GeoplmError(f"record {record['id']}: group {group!r} does not match group_pattern")
        return match.group(1) if match.groups() else match.group(0)

    def prepare(self, train: Sequence) -> None:
        """Training-target mean and unbiased standard deviation (torchdrug ``PropertyPrediction.preprocess``)."""
        if not self.settings["normalization"]:
            return
        values = torch.stack([e.target for e in train]).double()
        std = float(values.std()) if len(values) > 1 else float("nan")
        if not std > 0:
            raise GeoplmError(
                f"tasks.{self.name}: the training targets' standard deviation is {std} "
                f"({len(values)} examples): cannot normalise (set normalization: false)"
            )
        self.mean, self.std = float(values.mean()), std

    def head(self, output_dim: int) -> nn.Module:
        if self.settings["head"] == "wu":
            head = WuHead.from_settings(self.settings, output_dim, 1)
        else:
            head = torchdrug_head(output_dim, output_dim, 1, self.settings["num_mlp_layer"])
        return nn.Sequential(head, nn.Flatten(0))

    def forward(self, model: nn.Module, batch: Sequence) -> Tensor:
        """De-normalised predictions ``(B,)``."""
        return super().forward(model, batch) * self.std + self.mean

    def criterion(self, output: Tensor, target: Tensor) -> Tensor:
        return nn.functional.mse_loss((output - self.mean) / self.std, (target - self.mean) / self.std)

    def evaluate(self, gathered: Mapping[str, Any]) -> dict[str, float]:
        pred, target, group = gathered["pred"], gathered["target"], gathered["group"]
        return {
            "spearman": spearman(pred, target),
            "pearson": pearson(pred, target),
            "kendall": kendall(pred, target),
            "rmse": rmse(pred, target),
            "mae": mae(pred, target),
            "per_target_spearman": per_group(spearman, pred, target, group),
            "per_target_pearson": per_group(pearson, pred, target, group),
            "per_target_kendall": per_group(kendall, pred, target, group),
            "first_rank_loss": first_rank_loss(pred, target, group),
            "examples": len(target),
            "groups": len(set(group)),
        }

    def state(self) -> dict[str, Any]:
        return {"target_mean": self.mean, "target_std": self.std}

    def report(self, splits: Mapping[str, Sequence], evaluations: Mapping[str, Mapping]) -> dict[str, Any]:
        return {**super().report(splits, evaluations), "target_mean": self.mean, "target_std": self.std}
