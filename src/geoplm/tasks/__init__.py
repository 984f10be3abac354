"""The task registry: every supervised task of the three papers, by the ``kind`` of a ``tasks`` config entry.

A task (:class:`geoplm.tasks.base.Task`) says what an example is and its target, the head on an encoder's
output, the loss, the evaluation of a whole gathered split (with each example's group, e.g. its CASP
target, for per-group metrics) and the metric that selects the best epoch with its direction. The one
training loop (:func:`geoplm.train.fit`) runs every task the same way.

=================== ============================================================ ===============================
kind                task                                                         module
=================== ============================================================ ===============================
absolute_position   Wu et al.'s toy task "id": classify each residue's index     :mod:`~geoplm.tasks.position`
relative_position   Wu et al.'s toy task "dist": regress ``min(i, n - i)``        :mod:`~geoplm.tasks.position`
multilabel          EC, GO-BP/MF/CC (GearNet, ESM-GearNet): BCE, Fmax, AUPR      :mod:`~geoplm.tasks.function`
classification      Fold, Reaction (GearNet): cross-entropy, accuracy            :mod:`~geoplm.tasks.classification`
regression          PSR (ESM-GearNet): GDT-TS, normalised MSE, Spearman          :mod:`~geoplm.tasks.regression`
mutation_pair       MSP (ESM-GearNet): wild type / mutant pairs, BCE, AUROC      :mod:`~geoplm.tasks.pairs`
docking             rigid docking with EquiDock (Ganea et al.; Wu et al.)        :mod:`~geoplm.tasks.docking`
interface_residues  PPI (Wu et al.): interface residues of a pair, BCE, AUROC    :mod:`~geoplm.tasks.interface`
ligand_affinity     LBA (Wu et al.): pK of a pocket + ligand graph, MSE, RMSE    :mod:`~geoplm.tasks.affinity`
=================== ============================================================ ===============================

A new task is a module with a :class:`~geoplm.tasks.base.Task` subclass plus one entry in :data:`TASKS`
(and its kind in ``config/schema.yaml``).
"""

from __future__ import annotations

from collections.abc import Mapping

from geoplm.errors import ConfigError
from geoplm.registry import registered

#: task kind -> "module:Class" (imported on first use)
TASKS: dict[str, str] = {
    "absolute_position": "geoplm.tasks.position:AbsolutePosition",
    "relative_position": "geoplm.tasks.position:RelativePosition",
    "multilabel": "geoplm.tasks.function:MultiLabelFunction",
    "classification": "geoplm.tasks.classification:Classification",
    "regression": "geoplm.tasks.regression:Regression",
    "mutation_pair": "geoplm.tasks.pairs:MutationPair",
    "docking": "geoplm.tasks.docking:RigidDocking",
    "interface_residues": "geoplm.tasks.interface:InterfaceResidues",
    "ligand_affinity": "geoplm.tasks.affinity:LigandAffinity",
}


def task_class(kind: str) -> type:
    """The task class registered as ``kind`` in :data:`TASKS`.

    Raises:
        ConfigError: an unknown kind.
    """
    return registered(TASKS, kind, "task kind", ConfigError)


def task_settings(kind: str) -> frozenset[str]:
    """Every key a ``tasks`` entry of ``kind`` may have (:meth:`geoplm.tasks.base.Task.known_settings`).

    Raises:
        ConfigError: an unknown kind.
    """
    return task_class(kind).known_settings()


def get_task(spec: Mapping, name: str = "task"):
    """The task object of a ``tasks`` config entry (its ``kind`` looked up in :data:`TASKS`).

    Raises:
        ConfigError: an unknown kind, or a setting the task does not accept (naming ``tasks.<name>.<key>``).
    """
    return task_class(spec["kind"])(spec, name)
