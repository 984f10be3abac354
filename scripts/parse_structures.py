"""Rule parse_structures: one record shard from raw files (geoplm.steps.parse_dataset_shard)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from geoplm import steps  # noqa: E402

sm = snakemake  # noqa: F821

with steps.logged(sm.log[0]):
    steps.parse_dataset_shard(
        reader=sm.params.reader,
        downloads=list(sm.input.downloads),
        records_path=sm.output.records,
        manifest_path=sm.output.manifest,
        skipped_path=sm.output.skipped,
        shard=sm.wildcards.shard,
        shards=sm.params.shards,
        subset=sm.params.subset,
        on_error=sm.params.on_error,
        options=sm.params.options,
    )
