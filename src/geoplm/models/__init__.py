"""Protein structure encoders of the three papers; :mod:`geoplm.models.zoo` builds them by config name.

GearNet / GearNet-Edge (:mod:`~geoplm.models.gearnet`), ESM-GearNet fusions (:mod:`~geoplm.models.fusion`),
GVP-GNN (:mod:`~geoplm.models.gvp`; ESM-GearNet's variant :mod:`~geoplm.models.gvp_esmgearnet`),
EGNN (:mod:`~geoplm.models.egnn`), Molformer
(:mod:`~geoplm.models.molformer`) and EquiDock (:mod:`~geoplm.models.equidock`).
"""

from geoplm.models.egnn import EGNN
from geoplm.models.equidock import EquiDock
from geoplm.models.fusion import ESMGearNet, param_groups
from geoplm.models.gearnet import GearNet
from geoplm.models.gvp import GVPGNN
from geoplm.models.gvp_esmgearnet import ESMGearNetGVPGNN
from geoplm.models.molformer import Molformer

__all__ = ["EGNN", "ESMGearNet", "ESMGearNetGVPGNN", "EquiDock", "GVPGNN", "GearNet", "Molformer", "param_groups"]
