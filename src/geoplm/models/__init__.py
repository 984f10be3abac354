"""Protein structure encoders of the three papers; :mod:`geoplm.models.zoo` builds them by config name.

GearNet / GearNet-Edge (:mod:`~geoplm.models.gearnet`), CDConv (:mod:`~geoplm.models.cdconv`), ESM-2 alone and
its fusions with a structure encoder (ESM-GearNet, ESM-CDConv; :mod:`~geoplm.models.fusion`), GVP-GNN
(:mod:`~geoplm.models.gvp`), EGNN (:mod:`~geoplm.models.egnn`), Molformer (:mod:`~geoplm.models.molformer`) and
EquiDock (:mod:`~geoplm.models.equidock`).
"""

from geoplm.models.cdconv import CDConv
from geoplm.models.egnn import EGNN
from geoplm.models.equidock import EquiDock
from geoplm.models.fusion import ESMEncoder, ESMFusion, ESMGearNet, param_groups
from geoplm.models.gearnet import GearNet
from geoplm.models.gvp import GVPGNN
from geoplm.models.molformer import Molformer

__all__ = [
    "CDConv",
    "EGNN",
    "ESMEncoder",
    "ESMFusion",
    "ESMGearNet",
    "EquiDock",
    "GVPGNN",
    "GearNet",
    "Molformer",
    "param_groups",
]
