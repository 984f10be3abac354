"""Workflow steps without Snakemake: download shard, parse shard (skip / fail), gather with splits."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import pandas as pd
import pytest

from geoplm import steps, structure
from geoplm.errors import StructureError
from geoplm.steps import read_tsv


@pytest.fixture
def downloaded(shared_data, tmp_path):
    """A download shard of three real files plus a truncated gzip, as download_structures writes it."""
    files = [
        {"url": "https://files.rcsb.org/download/11as.pdb"},
        {"url": "https://alphafold.ebi.ac.uk/files/AF-P76011-F1-model_v4.pdb"},
        {"url": "https://files.rcsb.org/download/1lzh.pdb.gz"},
    ]
    manifest = tmp_path / "raw" / "download_0000.tsv"
    steps.download_files(files, tmp_path / "raw" / "files", manifest, str(shared_data))
    truncated = tmp_path / "raw" / "files" / "broken.pdb.gz"
    truncated.write_bytes(gzip.compress((shared_data / "pdb" / "1orc.pdb").read_bytes())[:700])
    table = steps.read_tsv(manifest)
    table.loc[len(table)] = {
        "file": str(truncated),
        "url": "file://broken.pdb.gz",
        "sha256": "",
        "bytes": "700",
        "origin": "mirror",
    }
    table.to_csv(manifest, sep="\t", index=False)
    return manifest


def test_parse_skips_bad_file_and_keeps_the_rest(downloaded, tmp_path):
    out = tmp_path / "records"
    n_records, n_skipped = steps.parse_structure_files(
        [downloaded], out / "0000.pt", out / "0000.manifest.tsv", out / "0000.skipped.tsv", "0000", "skip"
    )
    assert (n_records, n_skipped) == (5, 1)  # 11as A+B, P76011, 1lzh A+B
    skipped = steps.read_tsv(out / "0000.skipped.tsv")
    assert list(skipped["entry"]) == ["broken.pdb.gz"] and "gzip" in skipped["reason"][0]
    records = structure.load_shard(out / "0000.pt")
    manifest = steps.read_tsv(out / "0000.manifest.tsv")
    assert list(manifest["id"]) == [r["id"] for r in records]
    lzh = manifest[manifest["source_file"] == "1lzh.pdb.gz"].iloc[0]
    assert int(lzh["num_masked"]) == int(lzh["length"])  # Cα-only model: every residue masked, none dropped


def test_parse_fail_mode_stops_and_writes_nothing(downloaded, tmp_path):
    out = tmp_path / "records"
    with pytest.raises(StructureError, match="broken.pdb.gz"):
        steps.parse_structure_files(
            [downloaded], out / "0000.pt", out / "0000.manifest.tsv", out / "0000.skipped.tsv", "0000", "fail"
        )
    assert not (out / "0000.pt").exists()


def test_gather_assigns_seeded_splits(downloaded, tmp_path):
    out = tmp_path / "records"
    steps.parse_structure_files(
        [downloaded], out / "0000.pt", out / "0000.manifest.tsv", out / "0000.skipped.tsv", "0000"
    )
    split = {"seed": 3, "fractions": {"train": 0.5, "valid": 0.25, "test": 0.25}}
    first = steps.gather_records(
        [out / "0000.manifest.tsv"], [out / "0000.skipped.tsv"], out / "m.tsv", out / "s.tsv", split
    )
    second = steps.gather_records(
        [out / "0000.manifest.tsv"], [out / "0000.skipped.tsv"], out / "m2.tsv", out / "s2.tsv", split
    )
    assert first["split"].value_counts().to_dict() == {"train": 2, "valid": 1, "test": 2}
    assert list(first["split"]) == list(second["split"])
    assert len(pd.read_csv(out / "s.tsv", sep="\t")) == 1


def test_splits_do_not_depend_on_input_order():
    ids = [f"p{i}" for i in range(50)]
    fractions = {"train": 0.8, "valid": 0.1, "test": 0.1}
    assert steps.assign_splits(ids, fractions, 0) == steps.assign_splits(ids[::-1], fractions, 0)
    assert steps.assign_splits(ids, fractions, 0) != steps.assign_splits(ids, fractions, 1)


def test_atom3d_lmdb_dataset_through_the_step(shared_data, tmp_path):
    """The full config's toy dataset reader (ATOM3D LMDB) behind parse_dataset_shard."""
    pytest.importorskip("lmdb")
    lmdb_dir = tmp_path / "raw" / "test"
    import shutil

    shutil.copytree(shared_data / "atom3d_lmdb", lmdb_dir, ignore=shutil.ignore_patterns("extra", "*.md", "*.txt"))
    download = tmp_path / "download_0000.tsv"
    steps.write_tsv(
        download,
        [{"file": str(lmdb_dir), "url": "", "sha256": "", "bytes": 0, "origin": "mirror"}],
        steps.DOWNLOAD_COLUMNS,
    )
    out = tmp_path / "records"
    counts = [
        steps.parse_dataset_shard(
            "atom3d_lmdb",
            [download],
            out / f"{i}.pt",
            out / f"{i}.m.tsv",
            out / f"{i}.s.tsv",
            f"{i:04d}",
            shards=2,
            subset="test",
        )
        for i in range(2)
    ]
    ids = [record["id"] for i in range(2) for record in structure.load_shard(out / f"{i}.pt")]
    assert sum(n for n, _ in counts) == len(ids) == len(set(ids)) > 0


def test_files_the_mirror_lacks_are_reported_missing_not_fatal(shared_data, tmp_path):
    """With a mirror, a file it lacks (and the network cannot give) is listed, not fatal; the
    dataset's skipped report names it; without a mirror (or with missing_files=fail) it stops."""
    from geoplm.errors import DownloadError

    files = [
        {"url": "https://files.rcsb.org/download/11as.pdb"},
        {"url": (tmp_path / "nowhere" / "EnzymeCommission.zip").as_uri()},
    ]
    manifest = tmp_path / "raw" / "download_0000.tsv"
    table = steps.download_files(files, tmp_path / "raw" / "files", manifest, str(shared_data), manual="register first")
    assert list(table["origin"]) == ["mirror", "missing"]
    assert "EnzymeCommission.zip" in table["reason"][1] and "register first" in table["reason"][1]
    with pytest.raises(DownloadError, match="EnzymeCommission.zip"):
        steps.download_files(files, tmp_path / "raw2", tmp_path / "m2.tsv", str(shared_data), missing_files="fail")
    assert not (tmp_path / "m2.tsv").exists()

    out = tmp_path / "records"
    n_records, n_skipped = steps.parse_dataset_shard(
        "structures", [manifest], out / "0.pt", out / "0.m.tsv", out / "0.s.tsv", "0000"
    )
    skipped = steps.read_tsv(out / "0.s.tsv")
    assert n_records == len(structure.load_shard(out / "0.pt")) >= 1
    assert list(skipped["entry"]) == ["EnzymeCommission.zip"] and n_skipped == 1


def test_manifest_carries_group_role_and_labels_and_splits_by_group(shared_data, tmp_path):
    import json

    record = structure.parse_structure(shared_data / "pdb" / "4hhb.cif")
    for i, r in enumerate(record):
        r.update(group="complexA" if i < 2 else "complexB", role="receptor", labels={"n": i})
    rows = [steps.manifest_row(r, "0000") for r in record]
    assert json.loads(rows[1]["labels"]) == {"n": 1} and rows[0]["group"] == "complexA"
    steps.write_tsv(tmp_path / "m.tsv", rows, steps.MANIFEST_COLUMNS)
    steps.write_tsv(tmp_path / "s.tsv", [], steps.SKIPPED_COLUMNS)
    frame = steps.gather_records(
        [tmp_path / "m.tsv"],
        [tmp_path / "s.tsv"],
        tmp_path / "all.tsv",
        tmp_path / "sk.tsv",
        {"seed": 0, "fractions": {"train": 0.5, "valid": 0.0, "test": 0.5}},
    )
    for _, members in frame.groupby("group"):
        assert members["split"].nunique() == 1  # a complex never straddles two splits


def test_same_named_mirror_file_of_another_checksum(shared_data, tmp_path):
    """Mirrors are searched by name: a file of that name whose checksum differs (corrupt, or another file) is
    never taken, nor counted as missing: the download fails with the file and both digests named, whatever
    ``missing_files`` says, and keeps nothing."""
    from geoplm.errors import ChecksumError

    files = [{"url": "https://files.rcsb.org/download/11as.pdb", "checksum": "sha256:" + "0" * 64}]
    actual = hashlib.sha256((shared_data / "pdb" / "11as.pdb").read_bytes()).hexdigest()
    for policy in ("auto", "skip", "fail"):
        with pytest.raises(ChecksumError) as error:
            steps.download_files(files, tmp_path / policy, tmp_path / f"{policy}.tsv", str(shared_data), policy)
        assert "11as.pdb" in str(error.value) and actual in str(error.value) and "0" * 64 in str(error.value)
        assert not (tmp_path / policy / "11as.pdb").exists() and not (tmp_path / f"{policy}.tsv").exists()


def test_corrupt_mirror_file_fails_and_the_repaired_mirror_is_used(shared_data, tmp_path):
    """The issue's case: a truncated copy of 103l.pdb in a private mirror, with the demo's pinned checksum, fails
    the download (not accepted, not missing); once the mirror is repaired the rerun takes it from the mirror."""
    from geoplm import config as geoplm_config
    from geoplm.errors import ChecksumError

    repo = Path(__file__).resolve().parents[1]
    demo = geoplm_config.load_config(repo / "config" / "config.yaml", repo / "config" / "demo.yaml")
    entry = next(f for f in demo["sources"]["demo_structures"]["files"] if f["url"].endswith("/103l.pdb"))
    assert entry["checksum"].startswith("sha256:")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    original = (shared_data / "pdb" / "103l.pdb").read_bytes()
    (mirror / "103l.pdb").write_bytes(original[:73305])
    with pytest.raises(ChecksumError, match="103l.pdb"):
        steps.download_files([entry], tmp_path / "files", tmp_path / "m.tsv", str(mirror), "skip")
    assert not (tmp_path / "files" / "103l.pdb").exists()
    (mirror / "103l.pdb").write_bytes(original)
    table = steps.download_files([entry], tmp_path / "files", tmp_path / "m.tsv", str(mirror), "skip")
    assert list(table["origin"]) == ["mirror"] and (tmp_path / "files" / "103l.pdb").read_bytes() == original


def test_unpinned_files_are_pinned_by_the_lock_file_on_first_download(shared_data, tmp_path):
    """A file whose source publishes no checksum is recorded in the lock file (url, sha256, name, time) on its
    first verified download; a later copy of another content is refused, naming the lock file."""
    from geoplm.errors import ChecksumError

    lock = tmp_path / "checksums.lock.tsv"
    files = [{"url": "https://files.rcsb.org/download/103l.pdb"}, {"url": "https://files.rcsb.org/download/1dix.pdb"}]
    steps.download_files(files, tmp_path / "a", tmp_path / "a.tsv", str(shared_data), lock=lock)
    rows = read_tsv(lock)
    assert list(rows.columns) == ["url", "checksum", "file", "recorded"]
    assert list(rows["url"]) == sorted(f["url"] for f in files)
    digest = hashlib.sha256((shared_data / "pdb" / "103l.pdb").read_bytes()).hexdigest()
    assert rows.set_index("file").loc["103l.pdb", "checksum"] == f"sha256:{digest}"
    # the same files again (another directory): accepted, lock unchanged
    before = lock.read_text()
    steps.download_files(files, tmp_path / "b", tmp_path / "b.tsv", str(shared_data), lock=lock)
    assert lock.read_text() == before
    # a mirror whose 103l.pdb differs: refused
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "103l.pdb").write_bytes((shared_data / "pdb" / "103l.pdb").read_bytes()[:-100])
    with pytest.raises(ChecksumError, match="checksums.lock.tsv"):
        steps.download_files(files[:1], tmp_path / "c", tmp_path / "c.tsv", str(mirror), lock=lock)


def test_cli_download_fails_on_a_checksum_mismatch(shared_data, tmp_path, capsys):
    from geoplm import cli

    status = cli.main(["download", "--url", "https://files.rcsb.org/download/11as.pdb", "--checksum",
                       "sha256:" + "0" * 64, "--out-dir", str(tmp_path), "--manifest", str(tmp_path / "m.tsv"),
                       "--mirror", str(shared_data)])  # fmt: skip
    assert status != 0 and "does not match" in capsys.readouterr().err


def test_device_setting(monkeypatch):
    """``device: cuda`` without a usable GPU fails with the reason instead of training on the CPU; ``auto`` falls
    back to the CPU; ``cpu`` never touches CUDA; anything else is a config error naming the key."""
    import torch

    from geoplm.errors import GeoplmError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert steps.device("auto") == "cpu" and steps.device("cpu") == "cpu"
    with pytest.raises(GeoplmError, match="device: cuda, but torch .* sees no CUDA device"):
        steps.device("cuda")
    with pytest.raises(GeoplmError, match="config key 'device'"):
        steps.device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # visible, but unusable (no driver here)
    if not torch.backends.cuda.is_built():
        with pytest.raises(GeoplmError, match="not usable"):
            steps.device("cuda")
        assert steps.device("auto") == "cpu"
