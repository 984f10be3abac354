"""Rule build_random_esm: a random ESM-2 in fair-esm's format (geoplm.steps.build_random_esm)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from geoplm import steps  # noqa: E402

sm = snakemake  # noqa: F821

with steps.logged(sm.log[0]):
    steps.build_random_esm(sm.output.model, sm.params.random_init)
