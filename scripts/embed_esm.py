"""Rule embed_esm: ESM-2 embeddings of one record shard into the shared store, and the shard's index
(geoplm.steps.embed_records: the checkpoint is loaded only when the store lacks one of the shard's sequences)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from geoplm import steps  # noqa: E402

sm = snakemake  # noqa: F821

with steps.logged(sm.log[0]):
    steps.embed_records(
        sm.input.records,
        sm.input.model,
        sm.output.index,
        sm.params.store,
        sm.wildcards.plm,
        sm.params.settings,
        steps.device(sm.config.get("device", "auto")),
    )
