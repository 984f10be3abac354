"""Rule make_table: published beside reproduced values (geoplm.tables.make_table)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from geoplm import steps  # noqa: E402

sm = snakemake  # noqa: F821

from geoplm import tables  # noqa: E402

with steps.logged(sm.log[0]):
    tables.make_table(
        sm.wildcards.table,
        sm.params.table,
        list(sm.input.metrics),
        sm.input.published,
        sm.output.csv,
        sm.output.markdown,
    )
