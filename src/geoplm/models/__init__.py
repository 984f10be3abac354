"""Protein structure encoders."""

from geoplm.models.gearnet import GearNet

__all__ = ["GearNet"]
