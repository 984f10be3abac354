"""Tests of the ``structures`` reader (geoplm.datasets.generic) on the real files of shared/data."""

from __future__ import annotations

import gzip
import logging
import shutil

import pytest
import torch

from geoplm.datasets import get_reader
from geoplm.datasets.generic import read_structures_shard, structure_files
from geoplm.errors import ConfigError, StructureError
from geoplm.structure import RECORD_KEYS

SMALL = ["2olx.pdb", "1lzh.pdb.gz", "4hhb.cif", "1l2y.pdb"]


@pytest.fixture()
def small_files(shared_data):
    return [shared_data / "pdb" / name for name in SMALL]


def test_registry_names_the_reader():
    assert get_reader("structures") is read_structures_shard


def test_shards_partition_the_structure_files(shared_data):
    folder = shared_data / "alphafold"
    files = sorted(folder.iterdir())
    listed = structure_files(files)
    names = [p.name for p in listed]
    # .json (PAE) and .dssp files are not structures
    assert "AF-P29373-F1-predicted_aligned_error_v4.json" not in names
    assert "AF-P00520-F1-model_v3.dssp" not in names
    assert len(names) == len(files) - 2
    assert names == sorted(names)
    from geoplm.datasets.generic import deal

    dealt = [deal(listed, k, 3) for k in range(3)]
    flat = [p for part in dealt for p in part]
    assert sorted(flat) == sorted(listed) and len(flat) == len(set(flat))
    assert [len(part) for part in dealt] == [15, 15, 14]
    # deterministic whatever the input order
    assert deal(structure_files(list(reversed(files))), 1, 3) == dealt[1]


def test_each_shard_parses_its_files(small_files):
    seen = []
    for shard in range(2):
        records, skipped = read_structures_shard(small_files, shard, 2, {}, "skip")
        assert skipped == []
        for record in records:
            assert set(RECORD_KEYS) <= set(record)
        seen.extend(r["id"] for r in records)
    # 4hhb has four protein chains, the Cα-only 1lzh two; 2olx and 1l2y one each (1l2y: first NMR model only)
    assert sorted(seen) == sorted(["2olx_A", "1lzh_A", "1lzh_B", "1l2y_A", "4hhb_A", "4hhb_B", "4hhb_C", "4hhb_D"])


def test_bad_file_skipped_with_reason_or_raises(tmp_path, small_files, caplog):
    bad = tmp_path / "truncated.pdb.gz"
    bad.write_bytes(gzip.compress((small_files[0]).read_bytes())[:200])
    notes = tmp_path / "notes.txt"
    notes.write_text("not a structure\n")
    good = tmp_path / "2olx.pdb"
    shutil.copy(small_files[0], good)
    with caplog.at_level(logging.INFO, logger="geoplm.datasets.generic"):
        records, skipped = read_structures_shard([bad, notes, good], 0, 1, None, "skip")
    assert [r["id"] for r in records] == ["2olx_A"]
    assert skipped == [{"entry": "truncated.pdb.gz", "source_file": str(bad), "reason": skipped[0]["reason"]}]
    assert skipped[0]["reason"].startswith("truncated gzip stream")
    assert "notes.txt: not a structure file" in caplog.text
    with pytest.raises(StructureError, match="truncated.pdb.gz: truncated gzip stream"):
        read_structures_shard([bad, good], 0, 1, {}, "fail")


def test_bad_arguments_raise_config_error(small_files):
    with pytest.raises(ConfigError, match="options.chains"):
        read_structures_shard(small_files, 0, 1, {"chains": ["A"]}, "skip")
    with pytest.raises(ConfigError, match="shard must be"):
        read_structures_shard(small_files, 2, 2, {}, "skip")
    with pytest.raises(ConfigError, match="on_error"):
        read_structures_shard(small_files, 0, 1, {}, "ignore")


def test_directory_expanded_and_plddt_kept(shared_data, tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(shared_data / "alphafold" / "AF-P76011-F1-model_v4.pdb", folder)
    shutil.copy(shared_data / "alphafold" / "AF-P29373-F1-predicted_aligned_error_v4.json", folder)
    records, skipped = read_structures_shard([folder], 0, 1, {}, "skip")
    assert skipped == [] and [r["id"] for r in records] == ["AF-P76011-F1-model_v4_A"]
    assert records[0]["plddt"] is True
    assert torch.isfinite(records[0]["b_factor"]).all()
