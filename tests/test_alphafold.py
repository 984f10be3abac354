"""Tests of the AlphaFold DB reader (geoplm.datasets.alphafold) on the real models of shared/data/alphafold."""

from __future__ import annotations

import gzip
import io
import itertools
import shutil
import tarfile

import pytest
import torch

from geoplm.datasets import get_reader
from geoplm.datasets.alphafold import (
    AFDB_V2_TARBALLS,
    entry_name,
    entry_slot,
    header_identity,
    read_shard,
    tar_assignment,
)
from geoplm.errors import ConfigError, StructureError
from geoplm.structure import RECORD_KEYS


@pytest.fixture(scope="module")
def afdb(shared_data):
    return shared_data / "alphafold"


def _one(records):
    assert len(records) == 1
    return records[0]


def test_registry_and_gearnet_tarball_list():
    assert get_reader("alphafold") is read_shard
    # torchdrug species 0-21: 21 proteomes + Swiss-Prot, each with its MD5
    assert len(AFDB_V2_TARBALLS) == 22
    assert AFDB_V2_TARBALLS[8] == (
        "https://ftp.ebi.ac.uk/pub/databases/alphafold/latest/UP000005640_9606_HUMAN_v2.tar",
        "9a659c4aed2a8b833478dcd5fffc5fd8",
    )
    assert AFDB_V2_TARBALLS[21][0].endswith("/swissprot_pdb_v2.tar")


def test_entry_names():
    name = entry_name("alphafold.ebi.ac.uk_files_AF-A0A286Q506-F1-model_v4.pdb")
    assert (name.key, name.accession, name.fragment, name.version, name.file_type) == (
        "AF-A0A286Q506-F1",
        "A0A286Q506",
        1,
        4,
        "pdb",
    )
    name = entry_name("AF-Q15772-F11-model_v4.cif.gz")
    assert (name.key, name.fragment, name.file_type) == ("AF-Q15772-F11", 11, "cif")
    name = entry_name("P04629.pdb")
    assert (name.key, name.accession, name.fragment, name.version) == ("P04629", None, None, None)


def test_plddt_per_residue_equals_pdb_b_factor_column(afdb):
    path = afdb / "AF-P76011-F1-model_v4.pdb"
    record = _one(read_shard([path], 0, 1, {}, "skip")[0])
    assert set(RECORD_KEYS) <= set(record)
    assert record["plddt"] is True
    assert record["id"] == "AF-P76011-F1" and record["group"] == "P76011"
    # residue 3's CA line: columns 61-66 hold the B-factor = pLDDT
    line = next(
        line
        for line in path.read_text().splitlines()
        if line.startswith("ATOM") and line[12:16].strip() == "CA" and int(line[22:26]) == 3
    )
    expected = float(line[60:66])
    assert expected == 78.82
    index = int((record["residue_number"] == 3).nonzero()[0, 0])
    assert record["b_factor"][index].item() == pytest.approx(expected, abs=1e-4)
    assert record["labels"] == {
        "uniprot": "P76011",
        "fragment": 1,
        "version": 4,
        "mean_plddt": pytest.approx(float(record["b_factor"].mean()), abs=1e-4),
    }


def test_gzipped_cif_plddt_matches_qa_metric_table(afdb):
    from Bio.PDB.MMCIF2Dict import MMCIF2Dict

    path = afdb / "AF-P29373-F1-model_v4.cif.gz"
    record = _one(read_shard([path], 0, 1, None, "skip")[0])
    assert record["plddt"] is True and record["id"] == "AF-P29373-F1"
    table = MMCIF2Dict(io.StringIO(gzip.decompress(path.read_bytes()).decode()))
    local = torch.tensor([float(v) for v in table["_ma_qa_metric_local.metric_value"]])
    assert len(local) == len(record["sequence"]) == 138
    assert torch.allclose(record["b_factor"], local, atol=1e-3)
    assert record["labels"]["version"] == 4


def test_fragments_of_one_protein_share_a_group(afdb):
    files = [afdb / "AF-Q15772-F3-model_v4.cif.gz", afdb / "AF-Q15772-F11-model_v4.cif.gz"]
    records, skipped = read_shard(files, 0, 1, {}, "skip")
    assert skipped == []
    by_id = {r["id"]: r for r in records}
    assert sorted(by_id) == ["AF-Q15772-F11", "AF-Q15772-F3"]
    assert {r["group"] for r in records} == {"Q15772"}
    assert by_id["AF-Q15772-F3"]["labels"]["fragment"] == 3
    assert by_id["AF-Q15772-F11"]["labels"]["fragment"] == 11
    # fragments are at most 1,400 residues (F3 covers residues 401-1800 of Q15772)
    assert len(by_id["AF-Q15772-F3"]["sequence"]) == 1400
    assert len(by_id["AF-Q15772-F11"]["sequence"]) < 1400


def test_renamed_v2_model_read_with_accession_from_header(afdb):
    record = _one(read_shard([afdb / "P04629.pdb"], 0, 1, {}, "skip")[0])
    assert record["id"] == "P04629" and record["group"] == "P04629"
    assert record["plddt"] is True and len(record["sequence"]) == 796
    assert record["labels"]["uniprot"] == "P04629" and record["labels"]["fragment"] == 1
    assert record["labels"]["version"] is None
    # a name that is no accession: the accession comes from the DBREF record (10 characters)
    record = _one(read_shard([afdb / "EF2_lokiarchaea.pdb"], 0, 1, {}, "skip")[0])
    assert record["id"] == "EF2_lokiarchaea" and record["group"] == "A0A1Q9N1S3"


def test_header_identity_of_mmcif_and_pdb(afdb):
    assert header_identity((afdb / "O05012.cif").read_text()) == ("O05012", 1)
    assert header_identity((afdb / "A0A523VPS0.pdb").read_text()) == ("A0A523VPS0", 1)


def test_pdb_cif_pair_gives_one_record_preferring_pdb(afdb):
    pair = [afdb / "AF-P76011-F1-model_v4.cif", afdb / "AF-P76011-F1-model_v4.pdb"]
    record = _one(read_shard(pair, 0, 1, {}, "skip")[0])
    assert record["source"] == "AF-P76011-F1-model_v4.pdb"
    record = _one(read_shard(pair, 0, 1, {"file_types": ["cif", "pdb"]}, "skip")[0])
    assert record["source"] == "AF-P76011-F1-model_v4.cif"
    # a renamed pair (Q7Z6M3.pdb / Q7Z6M3.cif)
    record = _one(read_shard([afdb / "Q7Z6M3.cif", afdb / "Q7Z6M3.pdb"], 0, 1, {}, "skip")[0])
    assert record["source"] == "Q7Z6M3.pdb"
    # several versions of one entry: the newest is read
    versions = [afdb / f"AF-Q5VSL9-F1-model_v{k}.{'cif' if k == 4 else 'pdb'}" for k in (2, 3, 4)]
    record = _one(read_shard(versions, 0, 1, {}, "skip")[0])
    assert record["labels"]["version"] == 4 and record["source"] == "AF-Q5VSL9-F1-model_v4.cif"


def test_single_files_partition_over_shards(afdb):
    files = [afdb / name for name in ("AF-P76011-F1-model_v4.pdb", "AF-P76011-F1-model_v4.cif", "P01308.cif")]
    files += [afdb / "AF-Q9Y5P2-F1-model_v4.pdb", afdb / "AF-P29373-F1-predicted_aligned_error_v4.json"]
    ids = []
    for shard in range(2):
        records, skipped = read_shard(files, shard, 2, {}, "skip")
        assert skipped == []
        ids.append([r["id"] for r in records])
    # entries sorted by key (AF-P76011-F1, AF-Q9Y5P2-F1, P01308), dealt round robin
    assert ids == [["AF-P76011-F1", "P01308"], ["AF-Q9Y5P2-F1"]]


def test_min_mean_plddt_skips_with_reason(afdb):
    files = [afdb / "AF-Q9Y5P2-F1-model_v4.pdb", afdb / "AF-P76011-F1-model_v4.pdb"]
    records, skipped = read_shard(files, 0, 1, {"min_mean_plddt": 60}, "fail")
    assert [r["id"] for r in records] == ["AF-P76011-F1"]
    assert skipped == [
        {
            "entry": "AF-Q9Y5P2-F1-model_v4.pdb",
            "source_file": str(files[0]),
            "reason": "mean pLDDT 56.07 < min_mean_plddt 60",
        }
    ]


def test_bad_options_raise_config_error(afdb):
    files = [afdb / "AF-P76011-F1-model_v4.pdb"]
    with pytest.raises(ConfigError, match="options.min_plddt"):
        read_shard(files, 0, 1, {"min_plddt": 50}, "skip")
    with pytest.raises(ConfigError, match="options.min_mean_plddt"):
        read_shard(files, 0, 1, {"min_mean_plddt": 150}, "skip")
    with pytest.raises(ConfigError, match="options.file_types"):
        read_shard(files, 0, 1, {"file_types": ["mmtf"]}, "skip")


def test_corrupt_file_skipped_with_reason(afdb, tmp_path):
    bad = tmp_path / "AF-P76011-F1-model_v4.pdb.gz"
    bad.write_bytes(gzip.compress((afdb / "AF-P76011-F1-model_v4.pdb").read_bytes())[:300])
    good = afdb / "AF-Q9Y5P2-F1-model_v4.pdb"
    records, skipped = read_shard([bad, good], 0, 1, {}, "skip")
    assert [r["id"] for r in records] == ["AF-Q9Y5P2-F1"]
    assert len(skipped) == 1 and skipped[0]["entry"] == bad.name and skipped[0]["source_file"] == str(bad)
    assert skipped[0]["reason"].startswith("truncated gzip stream")
    with pytest.raises(StructureError, match="AF-P76011-F1-model_v4.pdb.gz: truncated gzip stream"):
        read_shard([bad, good], 0, 1, {}, "fail")


# --- tarballs ------------------------------------------------------------------------------------

# (member name as in the AFDB tarballs, real file): gzipped members, PDB and mmCIF of one entry
TAR_MEMBERS = [
    ("AF-P76011-F1-model_v4.cif.gz", "AF-P76011-F1-model_v4.cif"),
    ("AF-P76011-F1-model_v4.pdb.gz", "AF-P76011-F1-model_v4.pdb"),
    ("AF-Q9Y5P2-F1-model_v4.pdb.gz", "AF-Q9Y5P2-F1-model_v4.pdb"),
    ("AF-A0A0B7P221-F1-model_v1.pdb.gz", "foldcomp_test_af_AF-A0A0B7P221-F1.pdb"),
    ("AF-P29373-F1-model_v4.cif.gz", "AF-P29373-F1-model_v4.cif.gz"),
    ("AF-V9WDR2-F1-model_v4.cif.gz", "AF-V9WDR2-F1-model_v4.cif"),
    ("AF-A0A1W2PQ64-F1-model_v4.pdb.gz", "AF-A0A1W2PQ64-F1-model_v4.pdb"),
]
ENTRIES = {"AF-P76011-F1", "AF-Q9Y5P2-F1", "AF-A0A0B7P221-F1", "AF-P29373-F1", "AF-V9WDR2-F1", "AF-A0A1W2PQ64-F1"}


def _build_tar(path, afdb, members, corrupt=None):
    with tarfile.open(path, "w") as tar:
        for member, source in members:
            data = (afdb / source).read_bytes()
            if not source.endswith(".gz"):
                data = gzip.compress(data, mtime=0)
            if member == corrupt:
                data = data[: len(data) // 3]
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def tarballs(afdb, tmp_path_factory):
    folder = tmp_path_factory.mktemp("afdb_tar")
    first = _build_tar(folder / "UP000000001_1_TEST_v2.tar", afdb, TAR_MEMBERS)
    second = _build_tar(
        folder / "swissprot_pdb_v2.tar",
        afdb,
        [("AF-P04629-F1-model_v2.pdb.gz", "P04629.pdb"), ("AF-O05011-F1-model_v2.pdb.gz", "O05011.pdb")],
    )
    return first, second


def test_tar_assignment_covers_every_slot_once():
    for num_tarballs, num_shards in itertools.product(range(1, 5), range(1, 11)):
        pairs = [item for k in range(num_shards) for item in tar_assignment(k, num_shards, num_tarballs)]
        slots = {}
        for tarball, slot, count in pairs:
            slots.setdefault(tarball, []).append((slot, count))
        assert sorted(slots) == list(range(num_tarballs))
        for taken in slots.values():
            counts = {count for _, count in taken}
            assert len(counts) == 1
            assert sorted(slot for slot, _ in taken) == list(range(counts.pop()))
    # shard k reads tarball k % T when there are at least as many shards as tarballs
    assert tar_assignment(4, 5, 2) == [(0, 2, 3)]
    assert tar_assignment(3, 5, 2) == [(1, 1, 2)]
    assert tar_assignment(1, 2, 5) == [(1, 0, 1), (3, 0, 1)]


@pytest.mark.parametrize("num_shards", [1, 2, 3, 5])
def test_tar_shards_partition_the_entries(tarballs, num_shards):
    seen = []
    for shard in range(num_shards):
        records, skipped = read_shard(list(tarballs), shard, num_shards, {}, "fail")
        assert skipped == []
        seen.extend(r["id"] for r in records)
    assert len(seen) == len(set(seen))
    assert set(seen) == ENTRIES | {"AF-P04629-F1", "AF-O05011-F1"}


def test_tar_records_prefer_pdb_and_keep_plddt(tarballs):
    records, _ = read_shard([tarballs[0]], 0, 1, {}, "fail")
    by_id = {r["id"]: r for r in records}
    pair = by_id["AF-P76011-F1"]
    assert pair["source"] == "UP000000001_1_TEST_v2.tar:AF-P76011-F1-model_v4.pdb.gz"
    assert pair["plddt"] is True and pair["b_factor"][2].item() == pytest.approx(78.82, abs=1e-4)
    assert by_id["AF-V9WDR2-F1"]["source"].endswith("AF-V9WDR2-F1-model_v4.cif.gz")
    assert by_id["AF-A0A0B7P221-F1"]["labels"]["version"] == 1
    # with the slots of a 2-shard split of one tarball, each entry's slot is its crc32
    shard0 = {r["id"] for r in read_shard([tarballs[0]], 0, 2, {}, "fail")[0]}
    assert shard0 == {key for key in ENTRIES if entry_slot(key, 2) == 0}


def test_corrupt_member_skipped_with_member_name(afdb, tmp_path):
    corrupt = "AF-Q9Y5P2-F1-model_v4.pdb.gz"
    archive = _build_tar(tmp_path / "bad_member.tar", afdb, TAR_MEMBERS, corrupt=corrupt)
    records, skipped = read_shard([archive], 0, 1, {}, "skip")
    assert {r["id"] for r in records} == ENTRIES - {"AF-Q9Y5P2-F1"}
    assert len(skipped) == 1
    assert skipped[0]["entry"] == corrupt and skipped[0]["source_file"] == str(archive)
    assert skipped[0]["reason"].startswith("truncated gzip stream")
    with pytest.raises(StructureError, match=f"bad_member.tar:{corrupt}: truncated gzip stream"):
        read_shard([archive], 0, 1, {}, "fail")


def test_truncated_tarball_names_the_archive(tarballs, tmp_path):
    data = tarballs[0].read_bytes()
    archive = tmp_path / "truncated_v2.tar"
    archive.write_bytes(data[: len(data) // 2])
    records, skipped = read_shard([archive], 0, 1, {}, "skip")
    assert 0 < len(records) < len(ENTRIES)
    assert len(skipped) == 1
    assert skipped[0]["entry"] == "truncated_v2.tar" and skipped[0]["source_file"] == str(archive)
    assert "truncated or corrupt tar archive" in skipped[0]["reason"]
    with pytest.raises(StructureError, match="truncated_v2.tar: truncated or corrupt tar archive"):
        read_shard([archive], 0, 1, {}, "fail")


def test_tarball_cut_at_a_member_boundary_is_reported(afdb, tmp_path):
    whole = _build_tar(tmp_path / "whole.tar", afdb, TAR_MEMBERS[:3])
    with tarfile.open(whole) as tar:
        boundary = tar.getmembers()[2].offset  # the third member's header
    archive = tmp_path / "cut_v2.tar"
    archive.write_bytes(whole.read_bytes()[:boundary])
    records, skipped = read_shard([archive], 0, 1, {}, "skip")
    assert [r["id"] for r in records] == ["AF-P76011-F1"]
    assert len(skipped) == 1 and skipped[0]["entry"] == "cut_v2.tar"
    assert "no end-of-archive marker" in skipped[0]["reason"]
    assert read_shard([whole], 0, 1, {}, "fail")[1] == []


def test_directory_input_mixes_tarballs_and_files(tarballs, afdb, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(tarballs[1], folder)
    shutil.copy(afdb / "AF-P00520-F1-model_v3.cif.gz", folder)
    shutil.copy(afdb / "AF-P00520-F1-model_v3.dssp", folder)
    records, skipped = read_shard([folder], 0, 1, {}, "skip")
    assert skipped == []
    assert sorted(r["id"] for r in records) == ["AF-O05011-F1", "AF-P00520-F1", "AF-P04629-F1"]
