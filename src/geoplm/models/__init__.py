"""Protein structure encoders of the three papers; :mod:`geoplm.models.zoo` builds them by config name.

GearNet / GearNet-Edge (:mod:`~geoplm.models.gearnet`), GearNet-(Edge-)IEConv
(:mod:`~geoplm.models.gearnet_ieconv`), CDConv (:mod:`~geoplm.models.cdconv`), ESM-2 alone and
its fusions with a structure encoder (ESM-GearNet, ESM-CDConv, ESM-GVP; :mod:`~geoplm.models.fusion`), GVP-GNN
(:mod:`~geoplm.models.gvp`; ESM-GearNet's variant :mod:`~geoplm.models.gvp_esmgearnet`), EGNN
(:mod:`~geoplm.models.egnn`), Molformer (:mod:`~geoplm.models.molformer`) and EquiDock
(:mod:`~geoplm.models.equidock`).
"""

from geoplm.models.cdconv import CDConv
from geoplm.models.egnn import EGNN
from geoplm.models.equidock import EquiDock
from geoplm.models.fusion import ESMEncoder, ESMFusion, ESMGearNet, param_groups
from geoplm.models.gearnet import GearNet
from geoplm.models.gearnet_ieconv import GearNetIEConv
from geoplm.models.gvp import GVPGNN
from geoplm.models.gvp_esmgearnet import ESMGearNetGVPGNN
from geoplm.models.molformer import Molformer

__all__ = [
    "CDConv",
    "EGNN",
    "ESMEncoder",
    "ESMFusion",
    "ESMGearNet",
    "ESMGearNetGVPGNN",
    "EquiDock",
    "GVPGNN",
    "GearNet",
    "GearNetIEConv",
    "Molformer",
    "param_groups",
]
