"""geoplm: a Snakemake workflow reproducing GearNet (Zhang et al., ICLR 2023), ESM-GearNet
(Zhang et al., 2023) and Wu et al. (Communications Biology 2023) on protein structures.

All logic lives in this package and is importable and testable without Snakemake; the workflow's
scripts are thin entry points into it.
"""

__version__ = "0.1.0"
