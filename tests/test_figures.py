"""Tables' figures (geoplm.tables.make_figure): Wu et al. Fig. 2b's scale curve drawn from a table's CSV."""

from __future__ import annotations

import pandas as pd
import pytest

from geoplm import tables
from geoplm.errors import GeoplmError

SPEC = {
    "title": "scale",
    "columns": [{"task": "wu_mqa", "metric": "per_target_spearman", "label": "Mean Spearman"}],
    "figure": {"kind": "scale", "column": "Mean Spearman", "x": {"esm_small": 8e6, "esm_large": 6.5e8}},
}


def _table(tmp_path):
    rows = [  # one-hot rows have no ESM-2 size: left out of the figure
        ("gvp", "esm_large", 0.6, 0.05), ("gvp", "esm_small", 0.4, 0.1), ("gvp", "residue one-hot", 0.2, 0.0),
        ("egnn", "esm_small", 0.3, float("nan")), ("egnn", "esm_large", 0.5, 0.02),
    ]  # fmt: skip
    table = pd.DataFrame(rows, columns=["model", "node_features", "Mean Spearman mean", "Mean Spearman std"])
    path = tmp_path / "t.csv"
    table.to_csv(path, index=False)
    return path


def test_scale_figure_draws_one_curve_per_model_against_the_esm_size(tmp_path):
    png = tmp_path / "figures" / "t.png"
    figure = tables.make_figure(SPEC, _table(tmp_path), png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (ax,) = figure.axes
    assert ax.get_xscale() == "log"
    curves = {
        label: container for container, label in zip(ax.containers, ax.get_legend_handles_labels()[1], strict=True)
    }
    assert set(curves) == {"gvp", "egnn"}
    line = curves["gvp"].lines[0]  # sorted by size; the one-hot row has none
    assert list(line.get_xdata()) == [8e6, 6.5e8] and list(line.get_ydata()) == [0.4, 0.6]
    assert list(curves["egnn"].lines[0].get_ydata()) == [0.3, 0.5]


def test_figure_errors_name_the_problem(tmp_path):
    csv = _table(tmp_path)
    with pytest.raises(GeoplmError, match="'Global Spearman' is not a column"):
        tables.make_figure({**SPEC, "figure": {**SPEC["figure"], "column": "Global Spearman"}}, csv, tmp_path / "a.png")
    with pytest.raises(GeoplmError, match="no row of the table has node features in figure.x"):
        tables.make_figure({**SPEC, "figure": {**SPEC["figure"], "x": {"other": 1.0}}}, csv, tmp_path / "b.png")
    with pytest.raises(GeoplmError, match="unknown figure kind 'pie'"):
        tables.make_figure({**SPEC, "figure": {**SPEC["figure"], "kind": "pie"}}, csv, tmp_path / "c.png")
    assert not list(tmp_path.glob("*.png"))  # nothing half-written


def test_bars_figure_groups_node_features_per_model(tmp_path):
    """Wu et al. Fig. 2a: one group of bars per model, one bar per node features, heights the seed means."""
    spec = {**SPEC, "figure": {"kind": "bars", "column": "Mean Spearman"}}
    figure = tables.make_figure(spec, _table(tmp_path), tmp_path / "bars.png")
    (ax,) = figure.axes
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["esm_large", "esm_small", "residue one-hot"]
    from matplotlib.container import BarContainer

    bars = [container for container in ax.containers if isinstance(container, BarContainer)]
    heights = {label: [bar.get_height() for bar in container] for container, label in zip(bars, labels, strict=True)}
    assert heights["esm_small"] == [0.4, 0.3] and heights["esm_large"] == [0.6, 0.5]  # gvp, egnn
    assert [tick.get_text() for tick in ax.get_xticklabels()] == ["gvp", "egnn"]
    with pytest.raises(GeoplmError, match="needs 'x'"):
        tables.make_figure(
            {**SPEC, "figure": {"kind": "scale", "column": "Mean Spearman"}}, _table(tmp_path), tmp_path / "x.png"
        )
