"""Rule gather_embeddings: the shards of a sheet into proteins.parquet, predictions.tsv, skipped.tsv and
settings.json (geoplm.apply.gather)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from geoplm import apply, steps  # noqa: E402

sm = snakemake  # noqa: F821

with steps.logged(sm.log[0]):
    summary = apply.gather(sm.input.shards, sm.input.skipped, Path(sm.output.proteins).parent, sm.params.threshold,
                           sm.params.top_k)  # fmt: skip
    print(apply.describe(summary))
