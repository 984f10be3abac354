"""Rule build_graphs: GearNet graphs of one record shard (geoplm.steps.build_graphs)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from geoplm import steps  # noqa: E402

sm = snakemake  # noqa: F821

with steps.logged(sm.log[0]):
    steps.build_graphs(sm.input.records, sm.output.graphs, sm.params.settings)
