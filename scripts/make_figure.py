"""Rule make_figure: a table's figure as PNG (geoplm.tables.make_figure)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from geoplm import steps, tables  # noqa: E402

sm = snakemake  # noqa: F821

with steps.logged(sm.log[0]):
    tables.make_figure(sm.params.table, sm.input.csv, sm.output.png)
