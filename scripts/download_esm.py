"""Rule download_esm: fair-esm weights and contact regression (geoplm.steps.download_esm)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from geoplm import steps  # noqa: E402

sm = snakemake  # noqa: F821

with steps.logged(sm.log[0]):
    steps.download_esm(
        sm.wildcards.checkpoint,
        sm.output.model,
        sm.output.regression,
        sm.params.checksum,
        sm.config.get("mirror"),
        lock=sm.params.lock,
    )
