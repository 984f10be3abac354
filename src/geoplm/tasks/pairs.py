"""Mutation stability prediction (MSP, ATOM3D; ESM-GearNet Table 3): does a point mutation stabilise a
protein complex? Each example is a pair -- the wild-type complex and the mutant -- and a binary label.

ESM-GearNet (DeepGraphLearning/ESM-GearNet, ``gearnet/task.py`` ``MSP``, ``gearnet/dataset.py`` ``MSPDataset``
and ``TruncateProteinPair``, ``config/MSP/*.yaml``), on torchdrug 0.2.1 ``tasks.InteractionPrediction``:

* proteins: every chain of the item's ``original_atoms`` table as one protein (the wild type), every chain of
  ``mutated_atoms`` as the other (the mutant), in the table's chain order;
* mutated residues: the residues whose types differ between the two (``graph1.residue_type !=
  graph2.residue_type``); a pair whose proteins differ in their number of residues with a Cα is left out
  (the reference asserts equal counts);
* truncation (``TruncateProteinPair(max_length=1000)``, ``random: false``): a pair longer than ``truncate``
  keeps the window of that many residues starting at ``min(m - truncate // 2, L - truncate)`` (at least 0),
  ``m`` the first mutated residue, in both proteins;
* encoder: one encoder shared by both proteins (``model2=model``); the feature of each protein is the mean
  of its node features over the mutated residues (``scatter_add(h * mask) / (scatter_add(mask) + 1e-10)``);
* head: ``MLP(2D, [D] * (num_mlp_layer - 1) + [1])`` on ``[wild type, mutant]`` (``num_mlp_layer`` 1: the
  reference's default, no config sets it); loss: BCE with logits;
* metrics: AUROC (the selection metric, ``auroc [label]``) and AUPR over all pairs of a split.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from geoplm.inputs import InputLoader, ProteinInput, concatenate_proteins, pack
from geoplm.metrics import auprc_micro, auroc
from geoplm.tasks.base import Example, Task, label_value, torchdrug_head

log = logging.getLogger(__name__)


def mutation_window(mutated: Tensor, length: int, max_length: int) -> tuple[int, int]:
    """``[start, end)`` of ESM-GearNet's ``TruncateProteinPair(max_length)`` (``random=False``) over ``length``
    residues whose mutated positions are ``mutated`` ``(L,)`` bool: ``start = max(min(m - max_length // 2,
    length - max_length), 0)`` with ``m`` the first mutated residue (0 when there is none)."""
    if length <= max_length:
        return 0, length
    index = torch.nonzero(mutated).flatten()
    first = int(index[0]) if len(index) else 0
    start = max(min(first - max_length // 2, length - max_length), 0)
    return start, start + max_length


class PairHead(nn.Module):
    """The mutation head: mean node feature over the mutated residues of each protein, concatenated, then the
    MLP: ``(N_wt, D), (N_mt, D) -> (B,)`` logits."""

    def __init__(self, mlp: nn.Module):
        super().__init__()
        self.mlp = mlp

    @staticmethod
    def site_mean(node_feature: Tensor, mask: Tensor, node2graph: Tensor, batch_size: int) -> Tensor:
        mask = mask.to(node_feature).unsqueeze(-1)
        total = node_feature.new_zeros(batch_size, node_feature.shape[-1])
        total = total.index_add_(0, node2graph, node_feature * mask)
        count = node_feature.new_zeros(batch_size, 1).index_add_(0, node2graph, mask)
        return total / (count + 1e-10)

    def forward(self, wild: Tensor, mutant: Tensor) -> Tensor:
        return self.mlp(torch.cat([wild, mutant], dim=-1)).squeeze(-1)


class MutationPair(Task):
    """``kind: mutation_pair`` -- MSP (see the module docstring).

    Settings: ``roles`` (the record roles of the wild type and the mutant: ``[original_atoms,
    mutated_atoms]``, the ATOM3D reader's), ``label`` (``label``), ``num_mlp_layer`` (1), ``truncate`` (the
    pair window, 1,000 in the reference; handled here, not by the loader).
    """

    options = {"roles": ["original_atoms", "mutated_atoms"], "label": "label", "num_mlp_layer": 1}
    default_selection = {"metric": "auroc", "mode": "max"}

    def input_loader(self, **options) -> InputLoader:
        return InputLoader(**options)  # the pair is cut around the mutation after both proteins are built

    def build_examples(
        self, records: Sequence[Mapping], split_of: Mapping[str, str], loader: InputLoader
    ) -> dict[str, list]:
        wild_role, mutant_role = self.settings["roles"]
        items: dict[str, dict[str, list]] = {}
        for record in records:
            if split_of.get(record["id"]) in self.splits and record.get("role") in (wild_role, mutant_role):
                items.setdefault(str(record.get("group") or record["id"]), {}).setdefault(record["role"], []).append(
                    record
                )
        out: dict[str, list] = {split: [] for split in self.splits}
        max_length = self.settings.get("truncate")
        for item, roles in items.items():
            if wild_role not in roles or mutant_role not in roles:
                log.warning("MSP item %s: lacks its %s or %s chains; left out", item, wild_role, mutant_role)
                continue
            value = label_value(roles[wild_role][0], self.settings["label"], self.name)
            if value is None:
                continue
            pair = []
            for role in (wild_role, mutant_role):
                chains = [protein for protein in map(loader, roles[role]) if protein is not None]
                pair.append(concatenate_proteins(chains, f"{item}/{role}") if chains else None)
            wild, mutant = pair
            if wild is None or mutant is None or wild.num_nodes != mutant.num_nodes:
                log.warning("MSP item %s: wild type and mutant differ in their residues with a Cα; left out", item)
                continue
            mutated = wild.residue_type != mutant.residue_type
            if max_length and wild.num_nodes > int(max_length):
                start, end = mutation_window(mutated, wild.num_nodes, int(max_length))
                wild, mutant, mutated = wild.crop(start, end), mutant.crop(start, end), mutated[start:end]
            target = torch.tensor(float(str(value).strip() in ("1", "1.0", "True", "true")))
            split = split_of[roles[wild_role][0]["id"]]
            out[split].append(Example(item, (wild, mutant), target, item))
        return out

    def head(self, output_dim: int) -> nn.Module:
        return PairHead(torchdrug_head(2 * output_dim, output_dim, 1, self.settings["num_mlp_layer"]))

    def forward(self, model: nn.Module, batch: Sequence[Example]) -> Tensor:
        features = []
        for side in (0, 1):
            proteins: list[ProteinInput] = [e.proteins[side] for e in batch]
            packed = pack(proteins, self.device, self.graph_settings)
            node = model.encoder(packed.graph, packed.node_feature, **packed.encoder_inputs)["node_feature"]
            mask = torch.cat([e.proteins[0].residue_type != e.proteins[1].residue_type for e in batch])
            features.append(PairHead.site_mean(node, mask.to(node.device), packed.graph.node2graph, len(batch)))
        return model.head(*features)

    def criterion(self, output: Tensor, target: Tensor) -> Tensor:
        return nn.functional.binary_cross_entropy_with_logits(output, target)

    def evaluate(self, gathered: Mapping[str, Any]) -> dict[str, float]:
        pred, target = gathered["pred"], gathered["target"]
        return {"auroc": auroc(pred, target), "auprc": auprc_micro(pred, target), "pairs": len(target)}
