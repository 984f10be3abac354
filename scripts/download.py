"""Rule download_structures: fetch one source shard (geoplm.steps.download_files)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from geoplm import steps  # noqa: E402

sm = snakemake  # noqa: F821

with steps.logged(sm.log[0]):
    steps.download_files(
        sm.params.files,
        sm.params.directory,
        sm.output[0],
        sm.config.get("mirror"),
        missing_files=sm.params.missing_files,
        manual=sm.params.manual,
        lock=sm.params.lock,
    )
