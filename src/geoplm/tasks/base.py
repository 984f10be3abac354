"""The task interface, the settings every task shares with the training loop, and the prediction heads.

A :class:`Task` answers, for the one training loop (:func:`geoplm.train.fit`):

* **data** -- which records it uses and the examples it makes of them (:meth:`Task.build_examples`: one
  :class:`Example` per record by default: the record's :class:`~geoplm.inputs.ProteinInput`, its target and
  its group), and what it learns from the training split before training (:meth:`Task.prepare`, e.g. the
  target mean and standard deviation of a normalised regression);
* **model** -- the head on the encoder's output width (:meth:`Task.head`; the encoder comes from the model
  zoo), or a whole model of its own (docking);
* **loss** -- :meth:`Task.training_loss` on a batch of examples;
* **evaluation** -- :meth:`Task.eval_batch` gathers what a whole split needs (predictions, targets, groups)
  and :meth:`Task.evaluate` computes the metrics once on the gathered split (:mod:`geoplm.metrics`);
* **selection** -- the metric that picks the best epoch and its direction (``selection`` setting).

Settings (a ``tasks`` config entry): :data:`LOOP_DEFAULTS` hold the loop's (optimizer, scheduler, early
stopping, evaluation interval, selection, truncation, ...); each task class adds its own in
:attr:`Task.options` and may change the loop defaults of its family in :attr:`Task.loop_defaults` (e.g. Wu et
al.'s ``ReduceLROnPlateau`` on the validation loss for the toy tasks). An unknown key is a
:class:`~geoplm.errors.ConfigError` naming ``tasks.<name>.<key>``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from geoplm.errors import ConfigError, GeoplmError
from geoplm.inputs import InputLoader, ProteinInput, pack

#: Keys every ``tasks`` entry has (checked by the schema).
REQUIRED_KEYS = ("dataset", "kind", "epochs", "batch_size", "lr")

#: The training loop's settings and their defaults (a task family may change them: ``Task.loop_defaults``).
LOOP_DEFAULTS: dict[str, Any] = {
    # optimizer: "adam" | "adamw" | "sgd" (torch.optim), with weight_decay and (sgd) momentum
    "optimizer": "adam",
    "weight_decay": 0.0,
    "momentum": 0.0,
    # scheduler: None, {"type": "plateau", "factor", "patience", "min_lr", "mode"} (ReduceLROnPlateau stepped
    # with the validation value of the selection metric after each evaluation), {"type": "step", "step_size",
    # "gamma"} (StepLR stepped after every epoch, as torchdrug's Engine does)
    "scheduler": None,
    # early stopping after `patience` evaluations without a new best; `patience_resets: false` keeps counting
    # across improvements (Wu et al.'s main.py never resets its counter)
    "patience": None,
    "patience_resets": True,
    # evaluate the validation split every `eval_interval` epochs (GearNet's downstream.py: ceil(epochs / 50))
    "eval_interval": 1,
    # {"metric", "mode": "min" | "max", "relative_improvement": r}: a new best needs (1 - r) x best (min) or
    # (1 + r) x best (max); metric "loss" is the validation loss
    "selection": None,
    # gradient-norm clip (None: no clipping)
    "clip": None,
    # weights the test splits are evaluated with: "best" (best validation epoch) or "last"
    "test_weights": "best",
    # torchdrug TruncateProtein: keep at most `truncate` residues (the first ones, or a random window)
    "truncate": None,
    "truncate_random": False,
    # shuffle the training batches every epoch (Wu et al.'s PPI does not)
    "shuffle": True,
    # carve a seeded validation split of this fraction out of the training split (datasets without one)
    "valid_fraction": None,
    # the splits tested, each reported under its name (Fold: test_fold, test_superfamily, test_family)
    "test_splits": ["test"],
}

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


@dataclass
class Example:
    """One example of a protein task.

    Attributes:
        id: the example's id (the record id; the wild type's for a mutation pair).
        proteins: the proteins the encoder reads: one, or two for a pair (wild type, mutant).
        target: the example's target tensor (shape per task).
        group: the group the example belongs to for per-group metrics (a CASP target, a complex), or "".
    """

    id: str
    proteins: tuple[ProteinInput, ...]
    target: Tensor
    group: str = ""


class MLP(nn.Module):
    """torchdrug 0.2.1 ``layers.MultiLayerPerceptron`` (``torchdrug/layers/common.py``): ``Linear`` layers of
    widths ``[input_dim] + hidden_dims``; after every layer but the last: batch norm (optional), ReLU,
    dropout (optional). The prediction head of torchdrug's tasks: ``MLP(D, [D] * (num_mlp_layer - 1) + [C])``.

    Shapes: ``(B, input_dim) -> (B, hidden_dims[-1])``.
    """

    def __init__(self, input_dim: int, hidden_dims: Sequence[int], batch_norm: bool = False, dropout: float = 0.0):
        super().__init__()
        dims = [int(input_dim), *map(int, hidden_dims)]
        self.layers = nn.ModuleList(nn.Linear(dims[i], dims[i + 1]) for i in range(len(dims) - 1))
        self.batch_norms = (
            nn.ModuleList(nn.BatchNorm1d(dims[i + 1]) for i in range(len(dims) - 2)) if batch_norm else None
        )
        self.dropout = nn.Dropout(dropout) if dropout else None

    def forward(self, input: Tensor) -> Tensor:
        hidden = input
        for i, layer in enumerate(self.layers):
            hidden = layer(hidden)
            if i < len(self.layers) - 1:
                if self.batch_norms is not None:
                    hidden = self.batch_norms[i](hidden)
                hidden = torch.relu(hidden)
                if self.dropout is not None:
                    hidden = self.dropout(hidden)
        return hidden


def torchdrug_head(input_dim: int, hidden_dim: int, num_outputs: int, num_mlp_layer: int, **options) -> MLP:
    """torchdrug's task head ``MLP(input_dim, [hidden_dim] * (num_mlp_layer - 1) + [num_outputs])``
    (``tasks.PropertyPrediction`` / ``MultipleBinaryClassification``: ``hidden_dim`` = the encoder's
    ``output_dim``)."""
    return MLP(input_dim, [hidden_dim] * (int(num_mlp_layer) - 1) + [num_outputs], **options)


#: Wu et al.'s loop (GGNN_Meets_PLM ``main.py``: Adam, ``ReduceLROnPlateau('min', 0.6, 5, min_lr=5e-7)`` on the
#: validation loss, early stopping after 8 epochs without a new best, its counter never reset)
WU_LOOP = {
    "optimizer": "adam",
    "scheduler": {"type": "plateau", "factor": 0.6, "patience": 5, "min_lr": 5e-7, "mode": "min"},
    "patience": 8,
    "patience_resets": False,
}


#: settings of a task with :class:`WuHead` (the toy tasks; regression with ``head: wu``): its hidden width factor
#: and Molformer's Xavier initialisation
WU_HEAD_OPTIONS: dict[str, Any] = {"head_hidden_factor": 2, "head_xavier_init": False}


class WuHead(nn.Module):
    """The prediction head of Wu et al.'s models (GGNN_Meets_PLM): ``Linear(D, h) -> ReLU -> Dropout(0.1) ->
    Linear(h, C)`` with ``h = hidden_factor * D``, then a ReLU with ``final_relu``; ``(N, D) -> (N, C)``.

    ``hidden_factor`` 2 is GVP-GNN's and EGNN's ``dense`` (``gvp/atom3d.py`` ``BaseModel``, ``TOYModel``;
    ``egnn/egnn_clean.py`` ``BaseModel``, ``TOYModel``), 1 Molformer's ``Generator3D.proj``
    (``molformer/tr_spe.py``), whose weights the reference initialises Xavier-uniform with the rest of the model
    (``xavier_init``; tr_cpe.py ``PSRModel``). ``final_relu``: the toy relative-position head.
    """

    def __init__(
        self,
        input_dim: int,
        num_outputs: int,
        hidden_factor: int = 2,
        final_relu: bool = False,
        xavier_init: bool = False,
    ):
        super().__init__()
        hidden = int(hidden_factor) * int(input_dim)
        layers: list[nn.Module] = [
            nn.Linear(input_dim, hidden),
            nn.ReLU(),
            nn.Dropout(p=0.1),
            nn.Linear(hidden, num_outputs),
        ]
        if final_relu:
            layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)
        if xavier_init:
            for parameter in self.parameters():
                if parameter.dim() > 1:
                    nn.init.xavier_uniform_(parameter)

    @classmethod
    def from_settings(cls, settings: Mapping, input_dim: int, num_outputs: int, final_relu: bool = False) -> WuHead:
        """The head a task's :data:`WU_HEAD_OPTIONS` settings describe."""
        factor, xavier = settings["head_hidden_factor"], settings["head_xavier_init"]
        return cls(input_dim, num_outputs, factor, final_relu=final_relu, xavier_init=xavier)

    def forward(self, input: Tensor) -> Tensor:
        return self.net(input)


class TaskModel(nn.Module):
    """An encoder of the model zoo with a task's head: ``head(encoder(graph, node_feature)[...])``.

    The state dict holds ``encoder.*`` (the pretrainable encoder) and ``head.*``.
    """

    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.head = head


class Task:
    """Base class of the tasks in :data:`geoplm.tasks.TASKS` (see the module docstring).

    Args:
        spec: the ``tasks`` config entry.
        name: the entry's name (for messages).

    Attributes:
        settings: :data:`LOOP_DEFAULTS`, then :attr:`loop_defaults`, then :attr:`options`, then ``spec``.
        graph_settings, device: set by the loop (:meth:`bind`) before any batch is made.

    Raises:
        ConfigError: a key that is neither a loop setting nor one of the task's options.
    """

    #: the task's own settings and their defaults
    options: ClassVar[dict[str, Any]] = {}
    #: this family's changes to :data:`LOOP_DEFAULTS`
    loop_defaults: ClassVar[dict[str, Any]] = {}
    #: the default ``selection``
    default_selection: ClassVar[dict[str, Any]] = {"metric": "loss", "mode": "min"}
    #: the config section of the task's entries (named in messages)
    section: ClassVar[str] = "tasks"

    @classmethod
    def known_settings(cls) -> frozenset[str]:
        """Every key a ``tasks`` entry of this kind may have: :data:`REQUIRED_KEYS`, the loop's settings
        (:data:`LOOP_DEFAULTS`) and the task's :attr:`options` (checked when the config is loaded,
        :func:`geoplm.config.check_entries`, and again here)."""
        return frozenset(REQUIRED_KEYS) | frozenset(LOOP_DEFAULTS) | frozenset(cls.options)

    def __init__(self, spec: Mapping, name: str = "task"):
        self.name = name
        known = set(self.known_settings())
        unknown = sorted(set(spec) - known)
        if unknown:
            raise ConfigError(
                f"config key '{self.section}.{name}.{unknown[0]}': not a setting of task kind '{spec.get('kind')}' "
                f"(its settings: {', '.join(sorted(known - {'kind'}))})"
            )
        self.settings: dict[str, Any] = {**LOOP_DEFAULTS, **self.loop_defaults, **self.options, **dict(spec)}
        selection = {**self.default_selection, **(self.settings.get("selection") or {})}
        if selection["mode"] not in ("min", "max"):
            raise ConfigError(
                f"config key '{self.section}.{name}.selection.mode': 'min' or 'max', not {selection['mode']!r}"
            )
        self.selection = selection
        if self.settings["optimizer"] not in OPTIMIZERS:
            raise ConfigError(
                f"config key '{self.section}.{name}.optimizer': {self.settings['optimizer']!r} is not one of "
                f"{', '.join(OPTIMIZERS)}"
            )
        self.graph_settings: Mapping | None = None
        self.device: str | torch.device = "cpu"
        self.seed = 0
        self.rng = random.Random(0)

    # --- data ---------------------------------------------------------------------------------------------

    @property
    def splits(self) -> tuple[str, ...]:
        """The splits the task trains, validates and tests on (train, valid, then the test splits)."""
        return ("train", "valid", *self.test_splits)

    @property
    def test_splits(self) -> tuple[str, ...]:
        return tuple(self.settings["test_splits"])

    def input_loader(self, **options) -> InputLoader:
        """The loader of this task's protein inputs (truncation from the settings)."""
        return InputLoader(
            max_length=self.settings.get("truncate"),
            random_start=bool(self.settings.get("truncate_random")),
            **options,
        )

    def target(self, record: Mapping, protein: ProteinInput) -> Tensor | None:
        """The target of one record (None: the record has no label for this task and is left out)."""
        raise NotImplementedError

    def group(self, record: Mapping) -> str:
        """The group of a record's example for per-group metrics: its ``group`` (CASP target, complex)."""
        return str(record.get("group") or "")

    def build_examples(
        self, records: Sequence[Mapping], split_of: Mapping[str, str], loader: InputLoader
    ) -> dict[str, list]:
        """One :class:`Example` per record of the task's splits that has a target.

        Args:
            records: residue records (:func:`geoplm.structure.load_shard`).
            split_of: record id -> split (the dataset manifest's ``split``).
            loader: turns a record into its :class:`~geoplm.inputs.ProteinInput`.

        Returns:
            ``{split: [examples]}`` for every split of :attr:`splits`.
        """
        out: dict[str, list] = {split: [] for split in self.splits}
        for record in records:
            split = split_of.get(record["id"])
            if split not in out:
                continue
            protein = loader(record)
            if protein is None:
                continue
            target = self.target(record, protein)
            if target is None:
                continue
            out[split].append(Example(record["id"], (self.example_input(record, protein, loader),), target,
                                      self.group(record)))  # fmt: skip
        return out

    def example_input(self, record: Mapping, protein: ProteinInput, loader: InputLoader) -> ProteinInput:
        """What the encoder reads of a record that has a target: its protein (by default), or more (LBA adds
        the ligand's atoms)."""
        return protein

    def input_dim(self, example) -> int | None:
        """The node input width of the task's examples (21 for the one-hot, the ESM-2 width with stored rows)."""
        return int(example.proteins[0].node_feature.shape[1])

    def prepare(self, train: Sequence) -> None:
        """Learn what the task needs from the training examples before training (nothing by default)."""

    def batches(self, examples: Sequence, batch_size: int, epoch: int | None) -> list[list]:
        """The batches of an epoch: shuffled by the run's Python generator (:attr:`rng`, seeded by the run's
        seed and saved with the resume state) for training (``epoch`` given; unless ``shuffle: false``), in order
        for evaluation."""
        order = list(range(len(examples)))
        if epoch is not None and self.settings.get("shuffle", True):
            self.rng.shuffle(order)
        return [[examples[i] for i in order[start : start + batch_size]] for start in range(0, len(order), batch_size)]

    def state(self) -> dict[str, Any]:
        """What a trained model needs besides its weights to predict (saved in ``model.pt`` as ``task_state``)."""
        return {}

    # --- model --------------------------------------------------------------------------------------------

    def head(self, output_dim: int) -> nn.Module:
        """The prediction head on an encoder of node / graph output width ``output_dim``."""
        raise NotImplementedError

    def build_model(self, model_spec: Mapping, input_dim: int, plm: bool, esm=None, name: str = "model") -> nn.Module:
        """The zoo's encoder of ``model_spec`` with this task's head (:class:`TaskModel`)."""
        from geoplm.models.zoo import build_encoder

        encoder, output_dim = build_encoder(model_spec, input_dim, plm, name=name, esm=esm)
        return TaskModel(encoder, self.head(output_dim))

    def bind(self, device: str | torch.device, graph_settings: Mapping | None, seed: int = 0) -> None:
        """Set the device, the model's graph settings used to pack batches, and the run's seed (:attr:`rng`)."""
        self.device = device
        self.graph_settings = graph_settings
        self.seed = seed
        self.rng = random.Random(seed)

    def encode(self, model: nn.Module, proteins: Sequence[ProteinInput]) -> dict[str, Tensor]:
        """The encoder's output (``node_feature`` (N, D), ``graph_feature`` (B, D), ...) on packed proteins."""
        batch = pack(proteins, self.device, self.graph_settings)
        return model.encoder(batch.graph, batch.node_feature, **batch.encoder_inputs)

    # --- loss and evaluation ------------------------------------------------------------------------------

    def forward(self, model: nn.Module, batch: Sequence[Example]) -> Tensor:
        """The model's output on a batch (graph-level by default: ``head(graph_feature)``, (B, C))."""
        return model.head(self.encode(model, [e.proteins[0] for e in batch])["graph_feature"])

    def targets(self, batch: Sequence[Example]) -> Tensor:
        """The batch's targets, stacked, on the task's device."""
        return torch.stack([e.target for e in batch]).to(self.device)

    def criterion(self, output: Tensor, target: Tensor) -> Tensor:
        """The loss of a batch's output against its target (a scalar, mean over the batch)."""
        raise NotImplementedError

    def training_loss(self, model: nn.Module, batch: Sequence, epoch: int) -> tuple[Tensor, dict[str, float], float]:
        """(loss to back-propagate, loss parts to log, the weight of this batch in the epoch mean)."""
        loss = self.criterion(self.forward(model, batch), self.targets(batch))
        return loss, {"loss": float(loss.detach())}, 1.0

    def eval_batch(self, model: nn.Module, batch: Sequence) -> tuple[dict[str, Any], float, float]:
        """What the evaluation of a split gathers from one batch (tensors concatenated along the first
        dimension, lists extended), the batch's summed loss and its count (the split loss is their ratio)."""
        output, target = self.forward(model, batch), self.targets(batch)
        loss = float(self.criterion(output, target))
        return (
            {"pred": output.detach().cpu(), "target": target.cpu(), "group": [e.group for e in batch]},
            (loss * len(batch)),
            float(len(batch)),
        )

    def evaluate(self, gathered: Mapping[str, Any]) -> dict[str, float]:
        """The metrics of a whole gathered split (without ``loss``: the loop adds it)."""
        raise NotImplementedError

    def report(self, splits: Mapping[str, Sequence], evaluations: Mapping[str, Mapping]) -> dict[str, Any]:
        """Extra keys of ``metrics.json`` (counts, inputs) after training; ``evaluations`` maps each split to
        its final gathered outputs (keys of :meth:`eval_batch`)."""
        return {"num_examples": {split: len(members) for split, members in splits.items()}}


#: labels keys that name the classes of a record's ``target`` (the ``labelled_chains`` reader, geoplm.datasets.chains:
#: the EC / GO term lists beside the term indices, a fold's SCOPe id, a reaction's EC number)
CLASS_NAME_KEYS = ("ec", "go_bp", "go_mf", "go_cc", "fold")


def class_names_from_labels(labels: Sequence[Mapping], num_classes: int) -> list[str | None]:
    """Class index -> name from records' ``labels``: ``target`` beside a :data:`CLASS_NAME_KEYS` key (a list of
    term names in the order of ``target``, or one name for one class index); None where no record names it.
    A task saves them in its :meth:`Task.state` so that a trained model's predictions can be named
    (:mod:`geoplm.apply`)."""
    names: list[str | None] = [None] * num_classes
    for label in labels:
        target = label.get("target")
        for key in CLASS_NAME_KEYS:
            value = label.get(key)
            if value is None or target is None:
                continue
            if isinstance(value, str) and isinstance(target, int) and 0 <= target < num_classes:
                names[target] = value
            elif isinstance(value, list) and isinstance(target, list) and len(value) == len(target):
                for index, name in zip(target, value, strict=True):
                    if 0 <= int(index) < num_classes:
                        names[int(index)] = str(name)
            break
    return names


def label_value(record: Mapping, key: str, name: str) -> Any:
    """``record["labels"][key]``, where ``key`` may be a dotted path (``scores.gdt_ts``); None when absent.

    Raises:
        GeoplmError: the labels are not a mapping.
    """
    value: Any = record.get("labels") or {}
    for part in key.split("."):
        if not isinstance(value, Mapping):
            raise GeoplmError(f"record {record['id']}: labels are not a mapping where task {name} looks up {key!r}")
        value = value.get(part)
        if value is None:
            return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
