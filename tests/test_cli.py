"""The ``geoplm`` command line runs the workflow's steps without Snakemake."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
GEOPLM = Path(sys.executable).parent / "geoplm"
URLS = [
    f"https://alphafold.ebi.ac.uk/files/{n}"
    for n in (
        "AF-P76011-F1-model_v4.pdb",
        "AF-Q9Y5P2-F1-model_v4.pdb",
        "AF-A0A1W2PQ64-F1-model_v4.pdb",
        "AF-Q96M98-F1-model_v4.pdb",
    )
]
URLS += [
    f"https://files.rcsb.org/download/{n}"
    for n in ("11as.pdb", "1orc.pdb", "103l.pdb", "1lds.pdb", "3eiy.pdb", "1dix.pdb")
]


def geoplm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(GEOPLM), *map(str, args)], capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_cli_steps_end_to_end(shared_data, tmp_path):
    args = [a for url in URLS for a in ("--url", url)]
    geoplm("download", *args, "--out-dir", tmp_path / "raw", "--manifest", tmp_path / "d.tsv", "--mirror", shared_data)
    geoplm("parse", "--downloads", tmp_path / "d.tsv", "--out", tmp_path / "r.pt")
    manifest = pd.read_csv(tmp_path / "r.manifest.tsv", sep="\t")
    assert len(manifest) == 11 and set(manifest["split"]) == {"train", "valid", "test"}
    geoplm("graphs", "--records", tmp_path / "r.pt", "--out", tmp_path / "g.pt")
    geoplm("random-esm", "--out", tmp_path / "esm2_tiny.pt", "--embed-dim", "32")
    geoplm(
        "embed",
        "--records",
        tmp_path / "r.pt",
        "--checkpoint",
        tmp_path / "esm2_tiny.pt",
        "--repr-layer",
        "2",
        "--store",
        tmp_path / "store",
        "--index",
        tmp_path / "index.tsv",
    )
    geoplm(
        "train",
        "--config",
        REPO / "config" / "config.yaml",
        REPO / "config" / "demo.yaml",
        "--task",
        "toy_relative_position",
        "--model",
        "gearnet",
        "--manifest",
        tmp_path / "r.manifest.tsv",
        "--records",
        tmp_path / "r.pt",
        "--graphs",
        tmp_path / "g.pt",
        "--embeddings",
        tmp_path / "index.tsv",
        "--out",
        tmp_path / "run",
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["node_input_dim"] == 32 and metrics["test"]["rmse"] > 0


def test_cli_bad_input_is_one_line_naming_the_file(tmp_path):
    bad = tmp_path / "broken.pdb"
    bad.write_text("this is not a structure\n")
    (tmp_path / "d.tsv").write_text(f"file\turl\tsha256\tbytes\torigin\n{bad}\tfile://x\t\t0\tmirror\n")
    result = geoplm(
        "parse", "--downloads", tmp_path / "d.tsv", "--out", tmp_path / "r.pt", "--on-error", "fail", check=False
    )
    assert result.returncode == 2
    assert "broken.pdb" in result.stderr.splitlines()[-1]


def test_every_cli_option_has_help_text():
    from geoplm.cli import _parser

    parser = _parser()
    subparsers = next(a for a in parser._actions if a.choices and isinstance(a.choices, dict))
    missing = [
        f"{name} {'/'.join(action.option_strings) or action.dest}"
        for name, sub in subparsers.choices.items()
        for action in sub._actions
        if not action.help and action.dest != "help"
    ]
    assert not missing, missing
