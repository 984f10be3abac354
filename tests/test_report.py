"""The Snakemake report: each table as an HTML page (reproduced beside published) with its caption, the
reproduced-vs-published plot and the learning curves (geoplm.report), and, end to end, the report of a small demo
table rendered by headless Chromium: the table, the plots and the captions are in the page the browser builds.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import copy_workflow

from geoplm import report

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"


def write_run(root: Path, task: str, model: str, plm: str, seed: int, metric: str, test_value: float) -> Path:
    history = [
        {"epoch": e, "train_loss": 2.0 / (e + 1), "valid_loss": 2.5 / (e + 1), f"valid_{metric}": 0.1 * e, "lr": 1e-3}
        for e in range(4)
    ]
    path = root / "train" / task / model / plm / "none" / f"seed{seed}" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"history": history, "best_epoch": 3, "selection": {"metric": metric, "mode": "max"},
                                "test": {metric: test_value}}))  # fmt: skip
    return path


@pytest.fixture
def small_table():
    return pd.DataFrame(
        {
            "model": ["gearnet", "gearnet"],
            "node_features": ["residue one-hot", "esm2_random_demo"],
            "ec Fmax (reproduced)": ["0.500 ± 0.010", "0.600"],
            "ec Fmax mean": [0.5, 0.6],
            "ec Fmax std": [0.01, float("nan")],
            "ec Fmax seeds": [2, 1],
            "ec Fmax (published)": ["0.730", "not available"],
            "ec Fmax published source": ["paper table: https://example.org", "the paper's value could not be found"],
        }
    )


def test_table_settings_from_the_config():
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    settings = report.table_settings(config, "gearnet_function")
    assert settings["title"].startswith("GearNet Table 1")
    assert "Fmax" in settings["caption"] and settings["paper"].startswith("Zhang2023_GearNet")
    assert "epochs=50" in settings["tasks"]["ec"] and "lr=0.0001" in settings["tasks"]["ec"]
    assert set(settings["models"]) == {"gearnet", "gearnet_edge", "gearnet_ieconv", "gearnet_edge_ieconv"}
    with pytest.raises(Exception, match="unknown table"):
        report.table_settings(config, "no_such_table")


def test_table_html_shows_reproduced_beside_published(small_table):
    settings = {"name": "t", "title": "GearNet Table 1", "caption": "Test Fmax.", "paper": "Zhang2023", "seeds": [0, 1],
                "tasks": {"ec": "epochs=4"}, "models": {"gearnet": "type=gearnet"}}  # fmt: skip
    page = report.table_html(settings, small_table)
    assert page.startswith("<!DOCTYPE html>") and "<table" in page
    assert "<th>reproduced</th><th>published</th>" in page
    assert '<td class="reproduced">0.500 ± 0.010</td><td>0.730</td>' in page
    assert '<td class="na">not available</td>' in page
    assert "GearNet Table 1" in page and "Test Fmax." in page and "epochs=4" in page
    assert "https://example.org" in page


def test_plots_written(tmp_path, small_table):
    settings = {"name": "t", "title": "GearNet Table 1"}
    report.plot_comparison(settings, small_table, tmp_path / "comparison.png")
    metrics = [write_run(tmp_path, "ec", "gearnet", plm, seed, "f1_max", 0.5)
               for plm in ("none", "esm2_random_demo") for seed in (0, 1)]  # fmt: skip
    curves = report.learning_curves(metrics)
    assert set(curves) == {"ec/gearnet/none/none", "ec/gearnet/esm2_random_demo/none"}
    curve = curves["ec/gearnet/none/none"][1]
    assert curve["metric"] == "f1_max" and curve["epoch"] == [0, 1, 2, 3]
    assert curve["valid_metric"] == pytest.approx([0.0, 0.1, 0.2, 0.3]) and curve["train_loss"][0] == 2.0
    fig = report.plot_learning_curves(settings, metrics, tmp_path / "curves.png")
    assert len([ax for ax in fig.axes if ax.get_title()]) == 2  # a panel per run
    for name in ("comparison.png", "curves.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report.published_number("0.730 (SUSPECT)") == 0.73 and report.published_number("not available") is None


# --- the whole report in a real browser ---------------------------------------------------------------------


def chromium() -> str:
    """The Chromium binary, installed from Debian when missing (skips, saying why, where that is impossible)."""
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium is not installed and cannot be installed here (apt-get install chromium, as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    result = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"], env=env,
                            capture_output=True, text=True, timeout=900)  # fmt: skip
    if result.returncode != 0 or not shutil.which("chromium"):
        pytest.skip(f"apt-get install chromium failed: {result.stderr[-500:]}")
    return shutil.which("chromium")


#: appended to a copy of the report: opens every result as a click on it would, and writes what the page then
#: shows (rendered <img> sizes, <iframe> sources, the caption's text) into <pre id="probe">
PROBE = """
<script>
window.addEventListener("load", function () {
  const out = {categories: categories, results: {}, menu: ""};
  const paths = Object.keys(results);
  let i = 0;
  function step() {
    if (i > 0) {
      const path = paths[i - 1];
      const uri = results[path].data_uri;  // the result's own element (not the logo's image)
      const img = Array.from(document.querySelectorAll("img")).find((el) => el.getAttribute("src") === uri);
      const frame = Array.from(document.querySelectorAll("iframe")).find((el) => el.getAttribute("src") === uri);
      const box = (el) => el ? el.getBoundingClientRect() : null;
      out.results[path] = {
        mime: results[path].mime_type,
        img: img ? {complete: img.complete, naturalWidth: img.naturalWidth, width: box(img).width,
                    height: box(img).height} : null,
        iframe: frame ? {width: box(frame).width, height: box(frame).height} : null,
        text: document.body.innerText,
      };
    }
    if (i >= paths.length) {
      app.setView({navbarMode: "subcategory", category: "Tables", subcategory: Object.keys(categories.Tables)[0]});
      setTimeout(function () {
        out.menu = document.body.innerText;
        const pre = document.createElement("pre");
        pre.id = "probe";
        pre.textContent = JSON.stringify(out);
        document.body.appendChild(pre);
      }, 500);
      return;
    }
    const path = paths[i++];
    app.showResultInfo(path);
    new ToggleViewManager(app).handleSelectedResult(path);  // what a click on the result does
    setTimeout(step, 1000);
  }
  setTimeout(step, 1000);
});
</script>
"""


@pytest.mark.report
@pytest.mark.workflow
def test_report_in_chromium(shared_data, tmp_path):
    browser = chromium()
    workdir = tmp_path / "workflow"
    workdir.mkdir()
    copy_workflow(workdir)
    demo = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    override = {
        "mirror": str(shared_data),
        "outdir": "",
        "tables": {"toy_position": dict(demo["tables"]["toy_position"], models=["gearnet"], plms=["none"])},
    }
    (workdir / "config" / "test_report.yaml").write_text(yaml.safe_dump(override))
    env = {k: v for k, v in os.environ.items() if k != "GEOPLM_MIRROR"}
    command = [str(SNAKEMAKE), "report_toy_position", "--configfile", "config/demo.yaml", "config/test_report.yaml"]
    for extra in (["--cores", "2", "--set-threads", "train_model=1"], ["--report", "report.html"]):
        result = subprocess.run([*command, *extra], cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    page = (workdir / "report.html").read_text()
    probe = workdir / "probe.html"
    head, tail = page.rsplit("</body>", 1)  # the last one: the report embeds "</body>" in a script too
    probe.write_text(head + PROBE + "</body>" + tail)
    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000",
         "--virtual-time-budget=60000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert '<pre id="probe">' in dom.stdout, dom.stderr[-3000:]
    text = dom.stdout.split('<pre id="probe">', 1)[1].split("</pre>", 1)[0]
    import html as html_module

    seen = json.loads(html_module.unescape(text))
    tables = seen["categories"]["Tables"]["toy_position"]
    names = {Path(path).name: path for path in tables}
    assert {"toy_position.html", "toy_position_reproduced_vs_published.png", "toy_position_learning_curves.png",
            "toy_position.csv"} <= set(names)  # fmt: skip
    # the table: an HTML page in an iframe the browser laid out, with the reproduced and published cells
    table_view = seen["results"][names["toy_position.html"]]
    assert table_view["iframe"] and table_view["iframe"]["width"] > 300 and table_view["iframe"]["height"] > 300
    assert "Wu et al. toy tasks" in table_view["text"] and "Reproduces" in table_view["text"]  # the caption
    match = re.search(r'"data_uri": "(data:text/html;[^",]*filename=toy_position\.html[^",]*,[^"]*)"', page)
    assert match, "the table's page is not embedded in the report"
    header, payload = match.group(1).split(",", 1)
    table_page = base64.b64decode(payload).decode() if ";base64" in header else urllib.parse.unquote(payload)
    csv = pd.read_csv(workdir / "results" / "tables" / "toy_position.csv")
    assert '<table id="geoplm-table"' in table_page
    for cell in [*csv["toy_absolute_position Accuracy (reproduced)"], "not available", "residue one-hot"]:
        assert f">{cell}<" in table_page
    # the plots: images the browser decoded and laid out
    for name in ("toy_position_reproduced_vs_published.png", "toy_position_learning_curves.png"):
        view = seen["results"][names[name]]
        assert view["img"] and view["img"]["complete"], view
        assert view["img"]["naturalWidth"] > 300 and view["img"]["width"] > 300 and view["img"]["height"] > 100
    assert "learning curves" in seen["results"][names["toy_position_learning_curves.png"]]["text"].lower()
    assert "toy_position.html" in seen["menu"]  # the table's folder lists its results
    # and a screenshot of the report's start page (the workflow description), kept beside the report
    shot = workdir / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000",
                    "--virtual-time-budget=20000", f"--screenshot={shot}", (workdir / "report.html").as_uri()],
                   capture_output=True, timeout=300)  # fmt: skip
    assert shot.is_file() and shot.stat().st_size > 10_000
    if os.environ.get("GEOPLM_REPORT_ARTIFACTS"):
        out = Path(os.environ["GEOPLM_REPORT_ARTIFACTS"])
        out.mkdir(parents=True, exist_ok=True)
        for path in (shot, workdir / "report.html", probe):
            shutil.copy(path, out / path.name)
