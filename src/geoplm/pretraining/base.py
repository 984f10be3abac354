"""What every self-supervised pretraining task shares: label-free examples, per-batch truncation, the corpus
streamed split by split and the round-robin schedule of GearNet's ``script/pretrain.py``.

A pretraining task is a :class:`~geoplm.tasks.base.Task` (one training loop, :func:`geoplm.train.fit`) over
label-free inputs: it has a training split only (no validation, no test), a head of its own (the projection MLP
of multiview contrast, the prediction MLPs of the other tasks; saved in ``model.pt`` with the resume state, not
in ``encoder.pt``), and its :meth:`~geoplm.tasks.base.Task.training_loss` makes the views / masks / samples of a
batch itself. The encoder's ``state_dict`` is what the pretraining stage hands on (``encoder.pt``), as the
references save it (GearNet ``script/pretrain.py``: ``solver.model.model.state_dict()``).

Truncation (torchdrug ``transforms.TruncateProtein(max_length, random=True)``, a transform applied each time an
item is read, so a new window every epoch) is applied per batch here: :meth:`PretrainingTask.batch_inputs` cuts
each protein to a window of at most ``truncate`` nodes drawn from the run's generator.

Corpus and schedule (:class:`Corpus`): the corpus datasets' records, in manifest order, cut into splits of at
most ``max_split_size`` (22,000, as torchdrug's ``datasets.AlphaFoldDB`` splits each species) proteins. The
schedule is GearNet's round robin (``script/pretrain.py``): for each block of ``epochs_per_split``
(``save_interval``, 5) epochs, every split in turn trains that many consecutive epochs, so "50 epochs" over S
splits is 50 x S passes of the loop, one split in memory at a time (memory flat in corpus size; torchdrug#178
loads the whole corpus and runs out of memory).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from geoplm.errors import GeoplmError
from geoplm.inputs import InputLoader, ProteinInput
from geoplm.tasks.base import Example, Task

#: an empty target: pretraining examples carry no label
NO_TARGET = torch.zeros(0)


class PretrainingTask(Task):
    """Base class of the tasks in :data:`geoplm.pretraining.PRETRAINING_TASKS`.

    Subclasses give :meth:`head` (a module, possibly a ``ModuleDict`` of several MLPs) and
    :meth:`training_loss`; they read :meth:`batch_inputs` (the batch's proteins, truncated) and
    :meth:`encode_inputs` (pack proteins, run ``model.encoder``).

    Settings (besides the loop's): ``truncate`` / ``truncate_random`` (per batch, see the module docstring),
    ``epochs_per_split`` (5) and ``max_split_size`` (22,000) of the corpus schedule, ``corpus`` (the datasets,
    read by the workflow).
    """

    options: ClassVar[dict[str, Any]] = {
        "epochs_per_split": 5,
        "max_split_size": 22000,
        "corpus": [],
        "seed": 0,
        "gpus": 1,
    }
    default_selection: ClassVar[dict[str, Any]] = {"metric": "loss", "mode": "min"}
    section: ClassVar[str] = "pretraining"

    @property
    def splits(self) -> tuple[str, ...]:
        return ("train",)

    @property
    def test_splits(self) -> tuple[str, ...]:
        return ()

    def input_loader(self, **options) -> InputLoader:
        """Whole proteins (truncation is per batch: :meth:`batch_inputs`)."""
        return InputLoader(**options)

    def target(self, record: Mapping, protein: ProteinInput) -> Tensor | None:
        return NO_TARGET

    def batches(self, examples, batch_size: int, epoch: int | None) -> list[list]:
        """The batches of an epoch; on a :class:`Corpus`, of the split the schedule gives this epoch."""
        if isinstance(examples, Corpus):
            examples = examples.examples(0 if epoch is None else epoch)
        return super().batches(examples, batch_size, epoch)

    def batch_inputs(self, batch: Sequence[Example]) -> list[ProteinInput]:
        """The batch's proteins, each cut to a window of at most ``truncate`` nodes (from the first node, or at
        a start drawn uniformly from the run's generator with ``truncate_random``; torchdrug
        ``TruncateProtein``)."""
        limit = self.settings.get("truncate")
        proteins = []
        for example in batch:
            protein = example.proteins[0]
            if limit and protein.num_nodes > int(limit):
                start = (
                    self.rng.randrange(protein.num_nodes - int(limit) + 1) if self.settings["truncate_random"] else 0
                )
                protein = protein.crop(start, start + int(limit))
            proteins.append(protein)
        return proteins

    def encode_inputs(self, model: nn.Module, proteins: Sequence[ProteinInput]) -> dict[str, Tensor]:
        """The encoder's output on proteins (:meth:`~geoplm.tasks.base.Task.encode`)."""
        return self.encode(model, proteins)

    def eval_batch(self, model: nn.Module, batch: Sequence) -> tuple[dict[str, Any], float, float]:
        loss, _, weight = self.training_loss(model, batch, 0)
        return {}, float(loss) * len(batch), float(len(batch))

    def evaluate(self, gathered: Mapping[str, Any]) -> dict[str, float]:
        return {}

    def report(self, splits, evaluations) -> dict[str, Any]:
        train = splits["train"]
        return {
            "num_examples": {"train": len(train)},
            **({"corpus": train.describe()} if isinstance(train, Corpus) else {}),
        }


def round_robin(num_epochs: int, num_splits: int, epochs_per_split: int) -> list[int]:
    """The split each pass of the loop trains on: GearNet ``script/pretrain.py`` trains, for each block of
    ``epochs_per_split`` epochs (the last block possibly shorter), every split in turn for that many epochs.

    Returns:
        ``num_epochs * num_splits`` split indices.

    Raises:
        GeoplmError: no split, or a non-positive count.
    """
    if num_splits < 1 or num_epochs < 1 or epochs_per_split < 1:
        raise GeoplmError(
            f"round robin needs a split, an epoch and epochs_per_split >= 1 "
            f"(got {num_splits} splits, {num_epochs} epochs, {epochs_per_split} per split)"
        )
    schedule = []
    for first in range(0, num_epochs, epochs_per_split):
        step = min(epochs_per_split, num_epochs - first)
        for split in range(num_splits):
            schedule.extend([split] * step)
    return schedule


class Corpus:
    """A label-free corpus streamed split by split (see the module docstring).

    Args:
        members: ``(record shard path, [record ids])`` in corpus order (the datasets' manifests: ids by shard).
        loader: turns a record into its :class:`~geoplm.inputs.ProteinInput` (None: left out).
        max_split_size: the most proteins in one split (torchdrug ``AlphaFoldDB``: 22,000).
        schedule: the split of every loop pass (:func:`round_robin`); None: split 0 every pass.

    Only the split in use is held in memory; moving to another split frees it first.

    Raises:
        GeoplmError: an empty corpus.
    """

    def __init__(
        self,
        members: Sequence[tuple[str, Sequence[str]]],
        loader,
        max_split_size: int = 22000,
        schedule: Sequence[int] | None = None,
    ):
        flat = [(str(path), record_id) for path, ids in members for record_id in ids]
        if not flat:
            raise GeoplmError("the pretraining corpus is empty (no record in its datasets' manifests)")
        size = max(1, int(max_split_size))
        self.parts = [flat[i : i + size] for i in range(0, len(flat), size)]
        self.loader = loader
        self.schedule = list(schedule) if schedule is not None else None
        self.ids = [record_id for _, record_id in flat]
        self._current: tuple[int, list[Example]] | None = None

    @property
    def num_splits(self) -> int:
        return len(self.parts)

    def __len__(self) -> int:
        return len(self.ids)

    def split_of_epoch(self, epoch: int) -> int:
        if self.schedule is None:
            return 0
        if not 0 <= epoch < len(self.schedule):
            raise GeoplmError(f"loop pass {epoch} is outside the pretraining schedule of {len(self.schedule)} passes")
        return self.schedule[epoch]

    def examples(self, epoch: int) -> list[Example]:
        """The examples of the split that pass ``epoch`` trains on (loaded when it is not the one held)."""
        index = self.split_of_epoch(epoch)
        if self._current is None or self._current[0] != index:
            self._current = None  # free the previous split before reading the next
            self._current = (index, self.load(index))
        return self._current[1]

    def load(self, index: int) -> list[Example]:
        """Read split ``index``: every shard it touches, keeping its records only.

        Raises:
            GeoplmError: a record of the manifest missing from its shard.
        """
        from geoplm.structure import load_shard

        wanted: dict[str, set[str]] = {}
        for path, record_id in self.parts[index]:
            wanted.setdefault(path, set()).add(record_id)
        examples = []
        for path, ids in wanted.items():
            found = set()
            for record in load_shard(path):
                if record["id"] in ids:
                    found.add(record["id"])
                    protein = self.loader(record)
                    if protein is not None:
                        examples.append(Example(record["id"], (protein,), NO_TARGET))
            if found != ids:
                raise GeoplmError(f"{path}: records {sorted(ids - found)[:5]} of the manifest are not in the shard")
        order = {record_id: i for i, (_, record_id) in enumerate(self.parts[index])}
        examples.sort(key=lambda e: order[e.id])
        return examples

    def describe(self) -> dict[str, Any]:
        return {"proteins": len(self), "splits": [len(p) for p in self.parts], "passes": len(self.schedule or [])}


def sample_with_replacement(count: Tensor, per_graph: Tensor | int) -> Tensor:
    """Sample ``per_graph`` items of each graph uniformly with replacement, as torchdrug's pretraining tasks do
    (``(torch.rand(...) * count).long()``), on the global torch generator.

    Args:
        count: ``(B,)`` long, the number of items (nodes, edges) of each graph, packed one graph after another.
        per_graph: samples per graph (an int, or ``(B,)`` long).

    Returns:
        ``(sum per_graph,)`` long indices into the packed items (graph-major).
    """
    count = count.long()
    per = torch.as_tensor(per_graph, dtype=torch.long, device=count.device).expand_as(count)
    offset = torch.cumsum(count, 0) - count
    graph = torch.repeat_interleave(torch.arange(len(count), device=count.device), per)
    return (torch.rand(len(graph), device=count.device) * count[graph]).long() + offset[graph]
