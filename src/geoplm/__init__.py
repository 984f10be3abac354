"""geoplm: a Snakemake workflow reproducing GearNet (Zhang et al., ICLR 2023), ESM-GearNet
(Zhang et al., 2023) and Wu et al. (Communications Biology 2023) on protein structures.

All logic lives in this package and is importable and testable without Snakemake; the workflow's
scripts are thin entry points into it.
"""

import os

# OpenMP threads that spin while waiting (libgomp's default) collapse when another process shares the cores:
# torch's CPU index_add_ went from 0.1 ms to 19 ms a call and a GearNet-Edge epoch 15-28x slower with one other
# busy job on this project's 2-core machine (benchmarks/README.md, "EC fine-tuning epoch"). Sleeping waiters cost
# little on an idle machine. Set before torch loads OpenMP; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
