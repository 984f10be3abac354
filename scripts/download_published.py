"""Rule download_published: an authors' published pretrained checkpoint (geoplm.steps.download_published)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from geoplm import steps  # noqa: E402

sm = snakemake  # noqa: F821

with steps.logged(sm.log[0]):
    steps.download_published(sm.wildcards.checkpoint, sm.output[0], sm.config.get("mirror"), lock=sm.params.lock)
