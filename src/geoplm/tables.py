"""Paper tables: the reproduced mean ± std over seeds beside the published value.

A table is configured as rows (model x node features) and columns (task, metric). Each cell
reads the ``metrics.json`` of every seed's run; the published value comes from
``config/published_values.tsv`` (paper, task, metric, model, setting, value, source), and a cell
the papers do not report (or that could not be found) says ``not available`` rather than a number.
"""

from __future__ import annotations

import json
import logging
import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from geoplm import atomic
from geoplm.config import NO_PLM, NO_PRETRAIN, column_applies, column_task, table_rows
from geoplm.errors import GeoplmError

log = logging.getLogger(__name__)

NOT_AVAILABLE = "not available"
METRIC_LABELS = {
    "accuracy": "Accuracy",
    "rmse": "RMSE",
    "mae": "MAE",
    "f1_max": "Fmax",
    "auprc_micro": "AUPR",
    "auprc": "AUPR",
    "auroc": "AUROC",
    "spearman": "Spearman",
    "pearson": "Pearson",
    "kendall": "Kendall",
}


def run_value(run: Mapping, column: Mapping) -> float | None:
    """The value of a table column in one run's metrics: ``metric`` on the column's ``split`` (``test`` by
    default; another tested split such as Fold's ``test_superfamily`` is read from the run's ``splits``)."""
    split = column.get("split", "test")
    metrics = run["test"] if split == "test" else run.get("splits", {}).get(split, {})
    value = metrics.get(column["metric"])
    return None if value is None else float(value)


def column_name(column: Mapping) -> str:
    """A column's heading: its ``label``, else task (and split) and metric."""
    if column.get("label"):
        return str(column["label"])
    split = f" {column['split']}" if column.get("split", "test") != "test" else ""
    return f"{column['task']}{split} {METRIC_LABELS.get(column['metric'], column['metric'])}"


def published_row(spec: Mapping, model: str, plm: str, pretrain: str = NO_PRETRAIN) -> tuple[str, str | None]:
    """The (model, setting) of published_values.tsv a table row is compared with: ``published_names[model]``
    (a name, or ``{model, setting}``), the setting otherwise from ``published_pretrain[pretrain]`` for a row that
    starts from a ``pretrained`` entry, else ``published_settings[plm]``. A pretrained row without a
    ``published_pretrain`` setting has none (not the from-scratch value)."""
    name = spec.get("published_names", {}).get(model, model)
    if pretrain != NO_PRETRAIN:
        setting = spec.get("published_pretrain", {}).get(pretrain, f"pretrain={pretrain} (not published)")
    else:
        setting = spec.get("published_settings", {}).get(plm)
    if isinstance(name, Mapping):
        return str(name["model"]), name.get("setting", setting)
    return str(name), setting


def summarize(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (ddof=1; NaN for one seed) and count of finite values."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return math.nan, math.nan, 0
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else math.nan
    return float(np.mean(finite)), std, len(finite)


def format_cell(mean: float, std: float, n: int, digits: int = 3) -> str:
    """``"0.512 ± 0.013"`` (n > 1), ``"0.512"`` (one seed), ``"–"`` (no finished run)."""
    if n == 0:
        return "–"
    if n == 1 or math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def published_value(
    published: pd.DataFrame, paper: str | None, task: str | None, metric: str | None, model: str, setting: str | None
) -> tuple[str, str]:
    """The published value and its source for one cell, or (``not available``, reason).

    Matching is exact on paper, task, metric, model and (where given) setting; rows flagged
    ``SUSPECT`` in the table column are reported with that flag.
    """
    if not (paper and task and metric):
        return NOT_AVAILABLE, "the paper's value for this cell could not be found"
    rows = published[
        (published["paper"] == paper)
        & (published["task"] == task)
        & (published["metric"] == metric)
        & (published["model"] == model)
    ]
    if setting is not None:
        rows = rows[rows["setting"] == setting]
    if rows.empty:
        return NOT_AVAILABLE, "the paper's value for this cell could not be found"
    row = rows.iloc[0]
    flag = " (SUSPECT)" if "SUSPECT" in row["table"] else ""
    return f"{row['value']}{flag}", f"{row['source_kind']}: {row['source_url']}"


def read_metrics(path: str | os.PathLike) -> dict:
    """A run's metrics.json.

    Raises:
        GeoplmError: unreadable or missing ``test`` metrics.
    """
    try:
        data = json.loads(Path(path).read_text())
        data["test"]  # noqa: B018
    except (OSError, json.JSONDecodeError, KeyError) as error:
        raise GeoplmError(f"{path}: not a metrics file ({error})") from error
    return data


def build_table(spec: Mapping, metrics_paths: Sequence[str | os.PathLike], published: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, node features, pretraining); per column the reproduced and published values (a
    ``pretraining`` column when a row starts from a ``pretrained`` entry).

    Args:
        spec: a ``tables`` config entry.
        metrics_paths: every run's ``metrics.json`` (``results/train/{task}/{model}/{plm}/
            {pretrain}/seed{seed}/metrics.json``); the runs are identified by their path.
        published: ``published_values.tsv`` as a DataFrame.

    Raises:
        GeoplmError: a metrics file is unreadable, or its path is not a training run's.
    """
    runs: dict[tuple[str, str, str], list[dict]] = {}
    for path in metrics_paths:
        parts = Path(path).parts
        if len(parts) < 6 or not parts[-2].startswith("seed"):
            raise GeoplmError(f"{path}: not a results/train/{{task}}/{{model}}/{{plm}}/{{pretrain}}/seed{{seed}} path")
        task, model, plm, pretrain = parts[-6:-2]
        runs.setdefault((task, model, plm, pretrain), []).append(read_metrics(path))
    rows = []
    pretrained_rows = any(pretrain != NO_PRETRAIN for _, _, pretrain in table_rows(spec))
    for model, plm, pretrain in table_rows(spec):
        if not any((column_task(column, model), model, plm, pretrain) in runs for column in spec["columns"]):
            continue  # a combination the workflow does not run (a fusion model without ESM-2)
        row: dict = {"model": model, "node_features": "residue one-hot" if plm == NO_PLM else plm}
        if pretrained_rows:
            row["pretraining"] = pretrain
        published_model, published_setting = published_row(spec, model, plm, pretrain)
        for column in spec["columns"]:
            key = (column_task(column, model), model, plm, pretrain)
            if not column_applies(column, model):
                name = column_name(column)
                row.update({f"{name} (reproduced)": "", f"{name} mean": math.nan, f"{name} std": math.nan,
                            f"{name} seeds": 0, f"{name} (published)": "", f"{name} published source": ""})  # fmt: skip
                continue
            values = [run_value(run, column) for run in runs.get(key, [])]
            mean, std, n = summarize(values)
            name = column_name(column)
            row[f"{name} (reproduced)"] = format_cell(mean, std, n)
            row[f"{name} mean"] = mean
            row[f"{name} std"] = std
            row[f"{name} seeds"] = n
            value, source = published_value(
                published,
                spec.get("paper"),
                column.get("published_task"),
                column.get("published_metric"),
                published_model,
                published_setting,
            )
            row[f"{name} (published)"] = value
            row[f"{name} published source"] = source
        rows.append(row)
    return pd.DataFrame(rows)


def to_markdown(name: str, spec: Mapping, table: pd.DataFrame) -> str:
    """The table as Markdown: title, reproduced/published columns, and the sources below."""
    shown = ["model", "node_features", *(["pretraining"] if "pretraining" in table.columns else [])] + [
        c for c in table.columns if c.endswith("(reproduced)") or c.endswith("(published)")
    ]
    lines = [f"# {spec.get('title', name)}", ""]
    if spec.get("caption"):
        lines += [spec["caption"], ""]
    lines.append("| " + " | ".join(shown) + " |")
    lines.append("|" + "|".join("---" for _ in shown) + "|")
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(str(row[c]) for c in shown) + " |")
    lines += ["", "Reproduced: mean ± sample standard deviation over seeds on the test split.", ""]
    sources = sorted({s for c in table.columns if c.endswith("published source") for s in table[c]})
    if sources:
        lines.append("Published values:")
        lines += [f"- {source}" for source in sources]
    return "\n".join(lines) + "\n"


def make_table(
    name: str,
    spec: Mapping,
    metrics_paths: Sequence[str | os.PathLike],
    published_path: str | os.PathLike,
    csv_path: str | os.PathLike,
    markdown_path: str | os.PathLike,
) -> pd.DataFrame:
    """Build table ``name`` and write it as CSV and Markdown (atomically)."""
    published = pd.read_csv(published_path, sep="\t", dtype=str, keep_default_na=False)
    table = build_table(spec, metrics_paths, published)
    with atomic.atomic_path(csv_path) as tmp:
        table.to_csv(tmp, index=False)
    atomic.write_text(markdown_path, to_markdown(name, spec, table))
    log.info("table %s: %d rows -> %s", name, len(table), csv_path)
    return table


# --- figures ------------------------------------------------------------------------------------------------


def _figure_column(spec: Mapping, table: pd.DataFrame) -> str:
    """The heading of the column a table's ``figure`` draws.

    Raises:
        GeoplmError: the column is not in the table.
    """
    column = spec["figure"]["column"]
    if f"{column} mean" not in table.columns:
        raise GeoplmError(
            f"figure column {column!r} is not a column of the table: {[column_name(c) for c in spec['columns']]}"
        )
    return column


def _new_axes(size: tuple[float, float]) -> tuple[Any, Any]:
    """A new matplotlib figure and axes of ``size`` inches (the Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt.subplots(figsize=size)


def _save_figure(spec: Mapping, fig: Any, ax: Any, png_path: str | os.PathLike) -> Any:
    """Title, legend and layout of a table's figure, written as PNG (atomically) and closed; returns ``fig``."""
    from matplotlib import pyplot as plt

    ax.set_title(textwrap.fill(spec["figure"].get("title", spec.get("title", "")), 60), fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic.atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=150)
    plt.close(fig)
    return fig


def plot_scale(spec: Mapping, table: pd.DataFrame, png_path: str | os.PathLike) -> Any:
    """Wu et al. Fig. 2b: one line per model of a table column (mean ± std over seeds, error bars) against the
    size of the node features' ESM-2 (``figure.x``: plm -> parameters; log axis), written as PNG.

    ``spec["figure"]``: ``{"kind": "scale", "column": <a column's label or metric>, "x": {plm: number},
    "x_label": ..., "title": ...}``. Rows whose plm has no ``x`` are left out. Returns the matplotlib figure.

    Raises:
        GeoplmError: no ``x``, the column is not in the table, or no row has an ``x``.
    """
    figure_spec = spec["figure"]
    if "x" not in figure_spec:
        raise GeoplmError("a scale figure needs 'x' (plm -> ESM-2 parameters)")
    column = _figure_column(spec, table)
    x_of = figure_spec["x"]
    rows = table[table["node_features"].isin(list(x_of))]
    if rows.empty:
        raise GeoplmError(f"no row of the table has node features in figure.x ({sorted(x_of)})")
    fig, ax = _new_axes((5, 3.6))
    for model, group in rows.groupby("model", sort=False):
        group = group.assign(x=group["node_features"].map(x_of)).sort_values("x")
        ax.errorbar(group["x"], group[f"{column} mean"], yerr=group[f"{column} std"].fillna(0.0), marker="o",
                    capsize=3, label=str(model))  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel(figure_spec.get("x_label", "ESM-2 parameters"))
    ax.set_ylabel(column)
    return _save_figure(spec, fig, ax, png_path)


def plot_bars(spec: Mapping, table: pd.DataFrame, png_path: str | os.PathLike) -> Any:
    """Wu et al. Fig. 2a: grouped bars of a table column (mean ± std over seeds), one group per model, one bar per
    node features (residue one-hot, ESM-2), written as PNG. ``spec["figure"]``: ``{"kind": "bars", "column": <a
    column's label>, "title": ...}``. Returns the matplotlib figure.

    Raises:
        GeoplmError: the column is not in the table, or the table is empty.
    """
    column = _figure_column(spec, table)
    if table.empty:
        raise GeoplmError("the table has no row to draw")
    models = list(dict.fromkeys(table["model"]))
    features = list(dict.fromkeys(table["node_features"]))
    width = 0.8 / len(features)
    fig, ax = _new_axes((1.2 + 1.3 * len(models), 3.6))
    for i, feature in enumerate(features):
        rows = table[table["node_features"] == feature].set_index("model").reindex(models)
        positions = np.arange(len(models)) + (i - (len(features) - 1) / 2) * width
        ax.bar(positions, rows[f"{column} mean"], width, yerr=rows[f"{column} std"].fillna(0.0), capsize=3,
               label=str(feature))  # fmt: skip
    ax.set_xticks(np.arange(len(models)), models)
    ax.set_ylabel(column)
    return _save_figure(spec, fig, ax, png_path)


#: figure kinds a table's ``figure`` entry may ask for
FIGURES = {"scale": plot_scale, "bars": plot_bars}


def make_figure(spec: Mapping, csv_path: str | os.PathLike, png_path: str | os.PathLike) -> Any:
    """The figure of a table (``spec["figure"]["kind"]`` in :data:`FIGURES`) from its CSV, as PNG.

    Raises:
        GeoplmError: an unknown figure kind, or what the figure's function raises.
    """
    kind = spec["figure"].get("kind")
    if kind not in FIGURES:
        raise GeoplmError(f"unknown figure kind {kind!r} ({', '.join(FIGURES)})")
    return FIGURES[kind](spec, pd.read_csv(csv_path), png_path)
