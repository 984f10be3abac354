"""Rule report_table: a table's report page (HTML), reproduced-vs-published plot and learning curves
(geoplm.report.make_report_table)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from geoplm import report, steps  # noqa: E402

sm = snakemake  # noqa: F821

with steps.logged(sm.log[0]):
    report.make_report_table(
        sm.params.settings,
        sm.input.csv,
        list(sm.input.metrics),
        sm.output.html,
        sm.output.comparison,
        sm.output.curves,
    )
