"""The Snakemake report's pages for each table (rules/report.smk): the table as HTML, reproduced beside published,
a plot of the reproduced against the published values, and the learning curves of every training run.

``snakemake --report`` shows a CSV only as a download, so each table is also written as a small self-contained
HTML page (rendered in the report); its caption (``report/table.rst``) names the paper, the section and the
settings (:func:`table_settings`). The learning curves read each run's ``metrics.json`` ``history``: per epoch the
training and validation loss and the validation value of the metric the run selects its best epoch by.
"""

from __future__ import annotations

import html
import json
import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from geoplm import atomic
from geoplm.errors import GeoplmError

#: task settings the caption lists, where a task sets them
TASK_SETTINGS = ("dataset", "kind", "epochs", "batch_size", "optimizer", "lr", "truncate", "test_cutoff")
#: model settings the caption lists, where a model sets them
MODEL_SETTINGS = ("type", "graph", "fusion", "hidden_dims", "hidden_dim", "embed_dim", "num_layers", "freeze_esm")


# --- settings and columns -----------------------------------------------------------------------------------


def _format_value(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_format_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_format_value(v) for v in value) + "]"
    return str(value)


def table_settings(config: Mapping, table: str) -> dict[str, Any]:
    """What a table reproduces and with which settings, for its caption: title, caption, paper, seeds, and one
    line of settings per task and per model of the table (``{"tasks": {task: "epochs=4, lr=0.001, ..."}, ...}``).

    Raises:
        GeoplmError: no such table.
    """
    from geoplm.config import column_task

    if table not in config.get("tables", {}):
        raise GeoplmError(f"unknown table {table!r}")
    spec = config["tables"][table]
    models = list(spec.get("models", []))
    tasks: list[str] = []
    for column in spec.get("columns", []):
        for model in models or [None]:
            task = column_task(column, model) if model is not None else column["task"]
            if task not in tasks:
                tasks.append(task)
    task_lines = {}
    for task in tasks:
        task_spec = config.get("tasks", {}).get(task, {})
        task_lines[task] = ", ".join(
            f"{key}={_format_value(task_spec[key])}" for key in TASK_SETTINGS if key in task_spec
        )
    model_lines = {}
    for model in models:
        model_spec = config.get("models", {}).get(model, {})
        model_lines[model] = ", ".join(
            f"{key}={_format_value(model_spec[key])}" for key in MODEL_SETTINGS if key in model_spec
        )
    return {
        "name": table,
        "title": spec.get("title", table),
        "caption": " ".join(str(spec.get("caption", "")).split()),
        "paper": spec.get("paper", "not given"),
        "plms": [str(plm) for plm in spec.get("plms", [])],
        "pretrain": [str(p) for p in spec.get("pretrain", [])] if isinstance(spec.get("pretrain"), list) else [],
        "seeds": list(config.get("seeds", [])),
        "tasks": task_lines,
        "models": model_lines,
    }


def value_columns(table) -> list[str]:
    """The table's value columns (the names before `` mean``), in order."""
    return [column[: -len(" mean")] for column in table.columns if column.endswith(" mean")]


def row_label(row: Mapping) -> str:
    """``model / node features[ / pretraining]`` of a table row."""
    parts = [str(row["model"]), str(row["node_features"])]
    if "pretraining" in row and str(row["pretraining"]) not in ("", "none", "nan"):
        parts.append(str(row["pretraining"]))
    return " / ".join(parts)


def published_number(value: Any) -> float | None:
    """The number in a published cell (``"0.512"``, ``"0.512 (SUSPECT)"``), or None (``not available``, empty)."""
    text = str(value).replace("(SUSPECT)", "").strip()
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


# --- the table as HTML --------------------------------------------------------------------------------------


def table_html(settings: Mapping, table) -> str:
    """A self-contained HTML page: the title, the caption, then one row per table row with, for every value
    column, the reproduced mean ± std and the published value side by side; the settings below."""
    esc = html.escape
    columns = value_columns(table)
    key_columns = ["model", "node_features", *(["pretraining"] if "pretraining" in table.columns else [])]
    head_top = "".join(f'<th rowspan="2">{esc(c.replace("_", " "))}</th>' for c in key_columns) + "".join(
        f'<th colspan="2">{esc(c)}</th>' for c in columns
    )
    head_bottom = "".join("<th>reproduced</th><th>published</th>" for _ in columns)
    body = []
    for _, row in table.iterrows():
        cells = "".join(f"<td>{esc(str(row[c]))}</td>" for c in key_columns)
        for column in columns:
            reproduced = row.get(f"{column} (reproduced)", "")
            published = row.get(f"{column} (published)", "")
            reproduced = "" if _missing(reproduced) else str(reproduced)
            published = "" if _missing(published) else str(published)
            cls = ' class="na"' if published == "not available" else ""
            cells += f'<td class="reproduced">{esc(reproduced)}</td><td{cls}>{esc(published)}</td>'
        body.append(f"<tr>{cells}</tr>")
    sources = sorted(
        {str(s) for c in table.columns if c.endswith("published source") for s in table[c] if not _missing(s) and s}
    )
    settings_items = "".join(
        f"<li><b>{esc(task)}</b>: {esc(line)}</li>" for task, line in settings.get("tasks", {}).items()
    ) + "".join(f"<li><b>{esc(model)}</b>: {esc(line)}</li>" for model, line in settings.get("models", {}).items())
    return textwrap.dedent(
        f"""\
        <!DOCTYPE html>
        <html lang="en"><head><meta charset="utf-8"><title>{esc(settings["title"])}</title>
        <style>
        body {{ font-family: sans-serif; font-size: 14px; margin: 1em; color: #111; background: #fff; }}
        table {{ border-collapse: collapse; margin: 1em 0; }}
        th, td {{ border: 1px solid #bbb; padding: 3px 8px; text-align: left; }}
        th {{ background: #eef; }} td.reproduced {{ font-weight: bold; }} td.na {{ color: #888; font-style: italic; }}
        </style></head>
        <body>
        <h2>{esc(settings["title"])}</h2>
        <p>{esc(settings.get("caption") or "")}</p>
        <p>Paper: {esc(str(settings.get("paper")))}. Reproduced: mean ± sample std over seeds
        {esc(", ".join(map(str, settings.get("seeds", []))))} on the test split; published: the paper's value
        (<i>not available</i> where none could be found).</p>
        <table id="geoplm-table" data-table="{esc(settings["name"])}">
        <thead><tr>{head_top}</tr><tr>{head_bottom}</tr></thead>
        <tbody>
        {"".join(body)}
        </tbody></table>
        <h3>Settings</h3><ul>{settings_items}</ul>
        <h3>Published values</h3><ul>{"".join(f"<li>{esc(s)}</li>" for s in sources)}</ul>
        </body></html>
        """
    )


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# --- plots --------------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def _save(fig, png_path: str | os.PathLike) -> None:
    plt = _pyplot()
    fig.tight_layout()
    with atomic.atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def plot_comparison(settings: Mapping, table, png_path: str | os.PathLike) -> Any:
    """One panel per value column: per table row, the reproduced mean ± std (bar) and the published value (black
    diamond, where the paper has one), written as PNG. Returns the figure."""
    import numpy as np

    plt = _pyplot()
    columns = value_columns(table)
    if table.empty or not columns:
        raise GeoplmError(f"table {settings.get('name')}: no row or no value column to plot")
    labels = [row_label(row) for _, row in table.iterrows()]
    ncols = min(3, len(columns))
    nrows = math.ceil(len(columns) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 0.6 + (1.2 + 0.28 * len(labels)) * nrows),
                             squeeze=False)  # fmt: skip
    positions = np.arange(len(labels))
    for ax, column in zip(axes.flat, columns, strict=False):
        means = table[f"{column} mean"].astype(float).to_numpy()
        stds = table[f"{column} std"].astype(float).fillna(0.0).to_numpy()
        ax.barh(positions, np.nan_to_num(means), xerr=stds, color="#4c72b0", alpha=0.8, capsize=2,
                label="reproduced (mean ± std)")  # fmt: skip
        published = [published_number(v) for v in table.get(f"{column} (published)", [None] * len(labels))]
        shown = [(p, v) for p, v in zip(positions, published, strict=True) if v is not None]
        if shown:
            ax.scatter([v for _, v in shown], [p for p, _ in shown], marker="D", color="black", zorder=3,
                       label="published")  # fmt: skip
        ax.set_yticks(positions, labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(textwrap.fill(column, 40), fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        ax.locator_params(axis="x", nbins=4)
        ax.legend(fontsize=6, loc="lower right")
    for ax in list(axes.flat)[len(columns) :]:
        ax.axis("off")
    fig.suptitle(textwrap.fill(f"{settings.get('title')}: reproduced vs published", 100), fontsize=9)
    _save(fig, png_path)
    return fig


def run_name(path: str | os.PathLike) -> tuple[str, int]:
    """(``task/model/plm/pretrain``, seed) of a ``.../train/{task}/{model}/{plm}/{pretrain}/seed{seed}/metrics.json``.

    Raises:
        GeoplmError: not a training run's path.
    """
    parts = Path(path).parts
    if len(parts) < 6 or not parts[-2].startswith("seed"):
        raise GeoplmError(f"{path}: not a train/{{task}}/{{model}}/{{plm}}/{{pretrain}}/seed{{seed}}/metrics.json")
    return "/".join(parts[-6:-2]), int(parts[-2][len("seed") :])


def learning_curves(metrics_paths: Sequence[str | os.PathLike]) -> dict[str, dict[int, dict[str, list]]]:
    """Per run (``task/model/plm/pretrain``) and seed: ``epoch``, ``train_loss``, ``valid_loss`` and
    ``valid_metric`` (the validation value of the run's selection metric, named in ``metric``) per epoch, from
    each ``metrics.json`` ``history``."""
    runs: dict[str, dict[int, dict[str, list]]] = {}
    for path in metrics_paths:
        name, seed = run_name(path)
        data = json.loads(Path(path).read_text())
        history = data.get("history") or []
        metric = (data.get("selection") or {}).get("metric")
        if not metric or metric == "loss" or not any(f"valid_{metric}" in record for record in history):
            metric = next((key[len("valid_") :] for record in history for key in record
                           if key.startswith("valid_") and key != "valid_loss"), None)  # fmt: skip
        curve: dict[str, list] = {"epoch": [], "train_loss": [], "valid_loss": [], "valid_metric": [],
                                  "metric": metric, "best_epoch": data.get("best_epoch")}  # fmt: skip
        for record in history:
            curve["epoch"].append(record.get("epoch", len(curve["epoch"])))
            curve["train_loss"].append(_number(record.get("train_loss")))
            curve["valid_loss"].append(_number(record.get("valid_loss")))
            curve["valid_metric"].append(_number(record.get(f"valid_{metric}")) if metric else math.nan)
        runs.setdefault(name, {})[seed] = curve
    return runs


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def plot_learning_curves(settings: Mapping, metrics_paths: Sequence[str | os.PathLike], png_path) -> Any:
    """One panel per training run of the table: training and validation loss (left axis) and the validation
    metric (right axis) per epoch, one line style per seed; the best epoch dotted. Written as PNG."""
    plt = _pyplot()
    runs = learning_curves(metrics_paths)
    if not runs:
        raise GeoplmError(f"table {settings.get('name')}: no training run to plot")
    ncols = min(3, len(runs))
    nrows = math.ceil(len(runs) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 2.9 * nrows), squeeze=False)
    styles = ["-", "--", ":", "-."]
    for ax, (name, seeds) in zip(axes.flat, sorted(runs.items()), strict=False):
        right = ax.twinx()
        metric = None
        for i, (seed, curve) in enumerate(sorted(seeds.items())):
            style = styles[i % len(styles)]
            suffix = f" (seed {seed})" if len(seeds) > 1 else ""
            ax.plot(curve["epoch"], curve["train_loss"], style, c="#1f77b4", marker=".", label="train loss" + suffix)
            ax.plot(curve["epoch"], curve["valid_loss"], style, c="#ff7f0e", marker=".", label="valid loss" + suffix)
            if curve["metric"]:
                metric = curve["metric"]
                right.plot(curve["epoch"], curve["valid_metric"], style, color="#2ca02c", marker="s", markersize=3,
                           label=f"valid {metric}{suffix}")  # fmt: skip
            if curve["best_epoch"] is not None:
                ax.axvline(curve["best_epoch"], color="grey", linestyle=":", linewidth=0.8)
        ax.set_title(textwrap.fill(name, 45), fontsize=8)
        ax.set_xlabel("epoch", fontsize=7)
        ax.set_ylabel("loss", fontsize=7)
        right.set_ylabel(f"valid {metric}" if metric else "", fontsize=7, color="#2ca02c")
        ax.tick_params(labelsize=6)
        right.tick_params(labelsize=6)
        handles = ax.get_legend_handles_labels()
        extra = right.get_legend_handles_labels()
        ax.legend(handles[0] + extra[0], handles[1] + extra[1], fontsize=5, loc="best")
    for ax in list(axes.flat)[len(runs) :]:
        ax.axis("off")
    fig.suptitle(textwrap.fill(f"{settings.get('title')}: learning curves", 100), fontsize=9)
    _save(fig, png_path)
    return fig


def make_report_table(
    settings: Mapping,
    csv_path: str | os.PathLike,
    metrics_paths: Sequence[str | os.PathLike],
    html_path: str | os.PathLike,
    comparison_png: str | os.PathLike,
    curves_png: str | os.PathLike,
) -> None:
    """Rule report_table: the table's HTML page, its reproduced-vs-published plot and its learning curves."""
    import pandas as pd

    table = pd.read_csv(csv_path, keep_default_na=False, na_values=[""])
    for column in table.columns:  # pandas reads "not available" columns as text; the mean / std as numbers
        if column.endswith((" mean", " std")):
            table[column] = pd.to_numeric(table[column], errors="coerce")
    atomic.write_text(html_path, table_html(settings, table))
    plot_comparison(settings, table, comparison_png)
    plot_learning_curves(settings, metrics_paths, curves_png)
