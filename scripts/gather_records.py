"""Rule gather_records: dataset manifest with splits and skipped report (geoplm.steps.gather_records)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from geoplm import steps  # noqa: E402

sm = snakemake  # noqa: F821

with steps.logged(sm.log[0]):
    steps.gather_records(sm.input.manifests, sm.input.skipped, sm.output.manifest, sm.output.skipped, sm.params.split)
