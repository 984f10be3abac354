"""The pretraining-task registry: GearNet's five self-supervised tasks and ESM-GearNet's SiamDiff, by the ``kind``
of a ``pretraining`` config entry.

A pretraining task is a :class:`geoplm.pretraining.base.PretrainingTask` (a :class:`~geoplm.tasks.base.Task`
over label-free inputs) run by the one training loop (:func:`geoplm.train.fit`) on a corpus streamed split by
split (:class:`geoplm.pretraining.base.Corpus`); its encoder's ``state_dict`` is the stage's output.

===================== ========================================================= ===================
kind                  task (torchdrug 0.2.1 ``tasks/pretrain.py``; ESM-GearNet)  module
===================== ========================================================= ===================
multiview_contrast    subsequence / subspace crops, edge masking, InfoNCE        ``gearnet_tasks``
attribute_masking     residue type prediction of masked residues                 ``gearnet_tasks``
distance_prediction   Cα distance of removed edges                               ``gearnet_tasks``
angle_prediction      angle bin of removed adjacent edge pairs                   ``gearnet_tasks``
dihedral_prediction   dihedral bin of removed edge triplets                      ``gearnet_tasks``
siamdiff              SiamDiff (ESM-GearNet ``gearnet/siamdiff.py``)             ``siamdiff``
===================== ========================================================= ===================

A new pretraining task is a module with a subclass plus one entry in :data:`PRETRAINING_TASKS` (and its kind in
``config/schema.yaml``).
"""

from __future__ import annotations

from collections.abc import Mapping

from geoplm.errors import ConfigError
from geoplm.registry import registered

#: pretraining kind -> "module:Class" (imported on first use)
PRETRAINING_TASKS: dict[str, str] = {
    "multiview_contrast": "geoplm.pretraining.gearnet_tasks:MultiviewContrast",
    "attribute_masking": "geoplm.pretraining.gearnet_tasks:AttributeMasking",
    "distance_prediction": "geoplm.pretraining.gearnet_tasks:DistancePrediction",
    "angle_prediction": "geoplm.pretraining.gearnet_tasks:AnglePrediction",
    "dihedral_prediction": "geoplm.pretraining.gearnet_tasks:DihedralPrediction",
    "siamdiff": "geoplm.pretraining.siamdiff:SiamDiff",
}


def pretraining_class(kind: str) -> type:
    """The class registered as ``kind`` in :data:`PRETRAINING_TASKS`.

    Raises:
        ConfigError: an unknown kind.
    """
    return registered(PRETRAINING_TASKS, kind, "pretraining kind", ConfigError)


def get_pretraining_task(spec: Mapping, name: str = "pretraining"):
    """The task object of a ``pretraining`` config entry.

    Raises:
        ConfigError: an unknown kind, or a setting the task does not accept (naming the key).
    """
    return pretraining_class(spec["kind"])(spec, name)
