"""Protein structure encoders of the three papers; :mod:`geoplm.models.zoo` builds them by config name.

GearNet / GearNet-Edge (:mod:`~geoplm.models.gearnet`), GearNet-(Edge-)IEConv
(:mod:`~geoplm.models.gearnet_ieconv`), ESM-GearNet fusions (:mod:`~geoplm.models.fusion`),
GVP-GNN (:mod:`~geoplm.models.gvp`), EGNN (:mod:`~geoplm.models.egnn`), Molformer
(:mod:`~geoplm.models.molformer`) and EquiDock (:mod:`~geoplm.models.equidock`).
"""

from geoplm.models.egnn import EGNN
from geoplm.models.equidock import EquiDock
from geoplm.models.fusion import ESMGearNet, param_groups
from geoplm.models.gearnet import GearNet
from geoplm.models.gearnet_ieconv import GearNetIEConv
from geoplm.models.gvp import GVPGNN
from geoplm.models.molformer import Molformer

__all__ = ["EGNN", "ESMGearNet", "EquiDock", "GVPGNN", "GearNet", "GearNetIEConv", "Molformer", "param_groups"]
