"""The ``labelled_chains`` reader on the real chains of shared/data (chains/, pdb/) and the real label files."""

from __future__ import annotations

import gzip
import shutil
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from geoplm.datasets import get_reader
from geoplm.datasets.chains import extract_zip, identify, read_shard
from geoplm.datasets.labels import read_deepfri_test_cutoffs
from geoplm.errors import ConfigError, GeoplmError, StructureError

LABEL_DIRS = {
    "ec": "deepfri_EC_GO",
    "go_mf": "deepfri_EC_GO",
    "fold": "fold_HomologyTAPE",
    "reaction": "reaction_ProtFunct",
}


@pytest.fixture(scope="module")
def table(shared_data: Path) -> pd.DataFrame:
    return pd.read_csv(shared_data / "chains" / "CHAINS.tsv", sep="\t", dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def chain_map(table) -> dict[str, str]:
    """Files CHAINS.tsv identifies other than by file name or HEADER (DB5.5, DIPS pairs).

    DB5.5 unbound files hold another PDB entry than their name says; DB5.5 bound files hold one side
    of the complex (the other side's labelled chain would be reported missing from them).
    """
    other = table[~table["identified_by"].str.startswith(("file name", "HEADER"))]
    return dict(zip(other["file"], other["pdb_chain"], strict=True))


def structure_files(shared_data: Path) -> list[Path]:
    return sorted(p for p in (shared_data / "chains").iterdir() if p.name != "CHAINS.tsv")


def label_files(shared_data: Path, task: str) -> list[Path]:
    return sorted((shared_data / "labels" / LABEL_DIRS[task]).iterdir())


def hetatm_ca(path: Path, chain: str) -> int:
    """HETATM records named CA (ions or ligand atoms) of ``chain`` in the first model."""
    text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    count = 0
    for line in text.splitlines():
        if line.startswith("ENDMDL"):
            break
        count += line.startswith("HETATM") and line[12:16].strip() == "CA" and line[21] == chain
    return count


def run(shared_data, task, chain_map, shards=1, extra=(), **options):
    files = structure_files(shared_data) + list(extra) + label_files(shared_data, task)
    records, skipped = [], []
    for shard in range(shards):
        got, bad = read_shard(files, shard, shards, {"task": task, "chain_map": chain_map, **options}, "skip")
        records.append(got)
        skipped.extend(bad)
    return records, skipped


@pytest.fixture(scope="module")
def ec(shared_data, chain_map):
    return run(shared_data, "ec", chain_map, shards=3)


def test_ec_labels_and_splits(ec, table, shared_data):
    shards, skipped = ec
    records = [record for shard in shards for record in shard]
    by_id = {record["id"]: record for record in records}
    assert len(by_id) == len(records)  # every chain once over the shards
    labelled = table[table["EC_split"] != ""]
    assert len(labelled) == 77 and set(by_id) == set(labelled["pdb_chain"])
    assert skipped == []
    for _, row in labelled.iterrows():
        record = by_id[row["pdb_chain"]]
        assert record["split"] == row["EC_split"]
        assert set(record["labels"]["ec"]) == set(row["EC_numbers"].split(","))
        assert len(record["labels"]["target"]) == len(record["labels"]["ec"]) and record["labels"]["num_classes"] == 538
        assert record["group"] == row["pdb_chain"][:4] and record["source"] == row["file"]
        assert record["chain"] == row["pdb_chain"].split("-")[1]
        # CHAINS.tsv's CA_residues also counts HETATM atoms named CA (calcium ions, ligands)
        het_ca = hetatm_ca(shared_data / "chains" / row["file"], record["chain"])
        assert int(row["CA_residues"]) - het_ca <= int(record["backbone_mask"][:, 1].sum()) <= int(row["CA_residues"])
        assert record["backbone"].shape == (len(record["sequence"]), 4, 3)
    # DB5.5 unbound 1AZS_r_u.pdb holds PDB 1AB8 (chain_map); labels 4.6.1.1 + 4.6.1.- at indices of the term list
    assert by_id["1AB8-A"]["labels"]["target"] == [388, 484] and by_id["1AB8-A"]["group"] == "1AB8"
    # test chains carry DeepFRI's identity flags, train chains none
    flags = read_deepfri_test_cutoffs(shared_data / "labels/deepfri_EC_GO/nrPDB-EC_2020.04_test.csv").set_index(
        "pdb_chain"
    )
    tests = [r for r in records if r["split"] == "test"]
    assert len(tests) == 8
    for record in tests:
        expected = {str(c): bool(flags.at[record["id"], f"below_{c}"]) for c in (30, 40, 50, 70, 95)}
        assert record["labels"]["test_identity"] == expected
    assert by_id["1F6M-A"]["labels"]["test_identity"] == {
        "30": False,
        "40": False,
        "50": False,
        "70": False,
        "95": True,
    }
    assert "test_identity" not in by_id["1AB8-A"]["labels"]


def test_shards_partition_the_files(ec, shared_data, chain_map):
    shards, _ = ec
    sources = [{record["source"] for record in shard} for shard in shards]
    assert all(sources) and not (sources[0] & sources[1] or sources[0] & sources[2] or sources[1] & sources[2])
    files = sorted((p.name, str(p)) for p in structure_files(shared_data))
    for index in range(3):  # round robin over the files sorted by name
        assert sources[index] <= {name for name, _ in files[index::3]}
    # every labelled chain exactly once over the shards: test_ec_labels_and_splits


def test_pdb_folder_chains_identified_by_name_and_header(shared_data):
    pdb = shared_data / "pdb"
    files = [pdb / "1dix.pdb", pdb / "11as.pdb", pdb / "2PE5-B.pdb", pdb / "1A8O.pdb"]
    records, skipped = read_shard(files + label_files(shared_data, "ec"), 0, 1, {"task": "ec"}, "skip")
    by_id = {r["id"]: r for r in records}
    assert by_id["1DIX-A"]["split"] == "train" and by_id["11AS-A"]["split"] == "valid"
    assert by_id["11AS-A"]["group"] == "11AS" and skipped == []
    assert set(by_id) <= {"1DIX-A", "11AS-A", "11AS-B", "2PE5-B"}
    assert identify(pdb / "1dix.pdb") == ("1DIX", "file name")
    assert identify(shared_data / "chains" / "1avg.pdb") == ("1AVG", "file name")
    assert identify(shared_data / "chains" / "1AZS_r_u.pdb", {"1AZS_r_u.pdb": "1AB8-A"}) == ("1AB8", "chain_map")
    assert identify(pdb / "a_structure.pdb")[0] is None


def test_header_idcode(tmp_path, shared_data):
    renamed = tmp_path / "entry.pdb"
    shutil.copy(shared_data / "pdb" / "1dix.pdb", renamed)
    assert identify(renamed) == ("1DIX", "header")
    records, _ = read_shard([renamed, *label_files(shared_data, "ec")], 0, 1, {"task": "ec"}, "skip")
    assert [r["id"] for r in records] == ["1DIX-A"] and records[0]["source"] == "entry.pdb"


def test_fold(shared_data, chain_map, table, tmp_path):
    shards, skipped = run(shared_data, "fold", chain_map, extra=[shared_data / "pdb" / "1A8O.pdb"])
    by_id = {r["id"]: r for r in shards[0]}
    expected = {}
    for cell in table["SCOPe_domains(split,fold)"]:
        for item in filter(None, cell.split(";")):
            domain, rest = item.split("(")
            split, fold = rest.rstrip(")").split(",")
            expected[domain] = (split.replace("validation", "valid"), fold)
    assert set(expected) <= set(by_id) and skipped == []
    for domain, (split, fold) in expected.items():
        assert (by_id[domain]["split"], by_id[domain]["labels"]["fold"]) == (split, fold)
    a8o = by_id["d1a8oa_"]
    assert a8o["split"] == "test_fold" and a8o["group"] == "1A8O" and a8o["chain"] == "A"
    assert a8o["labels"]["fold"] == "a.28"  # test_fold.txt: d1a8oa_ 66 a.28 a.28
    class_map = dict(
        line.split("\t") for line in (shared_data / "labels/fold_HomologyTAPE/class_map.txt").read_text().splitlines()
    )
    assert a8o["labels"]["target"] == int(class_map[a8o["labels"]["fold"]]) and a8o["labels"]["coverage"] == "chain"
    # two domains of one chain: both recorded, each with the whole chain
    assert by_id["d1b26a1"]["labels"]["coverage"] == "whole_chain_of_partial_domain"
    assert by_id["d1b26a1"]["sequence"] == by_id["d1b26a2"]["sequence"]
    assert (by_id["d1b26a1"]["labels"]["fold"], by_id["d1b26a2"]["labels"]["fold"]) == ("c.2", "c.58")
    # a file named by its SCOPe domain is that domain
    domain_file = tmp_path / "d1a8oa_.pdb"
    shutil.copy(shared_data / "pdb" / "1A8O.pdb", domain_file)
    records, _ = read_shard([domain_file, *label_files(shared_data, "fold")], 0, 1, {"task": "fold"}, "skip")
    assert [(r["id"], r["labels"]["coverage"], r["split"]) for r in records] == [("d1a8oa_", "domain", "test_fold")]


def test_reaction(shared_data, chain_map, table):
    shards, skipped = run(shared_data, "reaction", chain_map)
    by_id = {r["id"]: r for r in shards[0]}
    labelled = table[table["ProtFunct_reaction_split"] != ""]
    assert len(labelled) == 28
    for chain, split in zip(labelled["pdb_chain"], labelled["ProtFunct_reaction_split"], strict=True):
        assert by_id[chain]["split"] == split
    classes = (shared_data / "labels/reaction_ProtFunct/unique_functions.txt").read_text().split()
    for record in by_id.values():
        assert record["labels"]["ec"] == classes[record["labels"]["target"]] and record["labels"]["num_classes"] == 384
    # chains of the lists that the file lacks are skipped with the reason
    assert {(s["entry"], Path(s["source_file"]).name) for s in skipped} == {
        ("2PV2-C", "2pv2_protein.pdb"),
        ("2PV2-D", "2pv2_protein.pdb"),
    }
    assert "labelled chain 'C' not in the file" in skipped[0]["reason"]


def test_bad_structures_skipped_or_raised(shared_data, tmp_path):
    data = (shared_data / "pdb" / "1dix.pdb").read_bytes()
    truncated = tmp_path / "1dix.pdb.gz"
    truncated.write_bytes(gzip.compress(data)[:2000])
    no_ca = tmp_path / "11as.pdb"
    lines = (shared_data / "pdb" / "11as.pdb").read_text().splitlines(keepends=True)
    no_ca.write_text("".join(line for line in lines if not (line.startswith("ATOM") and line[12:16] == " CA ")))
    files = [truncated, no_ca, *label_files(shared_data, "ec")]
    records, skipped = read_shard(files, 0, 1, {"task": "ec"}, "skip")
    reasons = {s["entry"]: s["reason"] for s in skipped}
    assert reasons["1DIX-A"].startswith("truncated gzip stream")
    assert reasons["11AS-A"] == "chain 'A' has no residue with a Cα atom"
    assert {s["source_file"] for s in skipped} == {str(truncated), str(no_ca)} and records == []
    with pytest.raises(StructureError, match="truncated gzip stream"):
        read_shard([f for f in files if f != no_ca], 0, 1, {"task": "ec"}, "fail")
    with pytest.raises(GeoplmError, match="11AS-A: chain 'A' has no residue with a Cα atom"):
        read_shard(files, 0, 1, {"task": "ec"}, "fail")


def test_options_and_label_files(shared_data):
    files = [shared_data / "pdb" / "1dix.pdb", *label_files(shared_data, "ec")]
    with pytest.raises(ConfigError, match="options.task"):
        read_shard(files, 0, 1, {"task": "enzyme"}, "skip")
    with pytest.raises(ConfigError, match="options.colour"):
        read_shard(files, 0, 1, {"task": "ec", "colour": 1}, "skip")
    with pytest.raises(ConfigError, match="options.test_cutoff"):
        read_shard(files, 0, 1, {"task": "ec", "test_cutoff": 0.6}, "skip")
    with pytest.raises(ConfigError, match="options.chain_map.x.pdb"):
        read_shard(files, 0, 1, {"task": "ec", "chain_map": {"x.pdb": "1AB8"}}, "skip")
    with pytest.raises(GeoplmError, match="nrPDB-EC_2020.04_test.csv"):
        read_shard([f for f in files if f.suffix != ".csv"], 0, 1, {"task": "ec"}, "skip")
    with pytest.raises(GeoplmError, match="nrPDB-GO_2019.06.18_annot.tsv"):
        read_shard(files, 0, 1, {"task": "go_mf"}, "skip")
    # a renamed label file, named through options.label_files
    assert get_reader("labelled_chains") is read_shard


def test_label_file_override(shared_data, tmp_path):
    renamed = tmp_path / "ec_train_list.txt"
    shutil.copy(shared_data / "labels/deepfri_EC_GO/nrPDB-EC_2020.04_train.txt", renamed)
    files = [shared_data / "pdb" / "1dix.pdb", renamed] + [
        f for f in label_files(shared_data, "ec") if f.name != "nrPDB-EC_2020.04_train.txt"
    ]
    with pytest.raises(GeoplmError, match="nrPDB-EC_2020.04_train.txt"):
        read_shard(files, 0, 1, {"task": "ec"}, "skip")
    records, _ = read_shard(files, 0, 1, {"task": "ec", "label_files": {"train": "ec_train_list.txt"}}, "skip")
    assert [(r["id"], r["split"]) for r in records] == [("1DIX-A", "train")]


def test_test_cutoff_filters_like_torchdrug(shared_data, chain_map, table):
    test_rows = table[table["EC_split"] == "test"]
    files = [shared_data / "chains" / name for name in test_rows["file"]] + [shared_data / "pdb" / "1dix.pdb"]
    options = {"task": "ec", "chain_map": chain_map}
    kept, _ = read_shard(files + label_files(shared_data, "ec"), 0, 1, {**options, "test_cutoff": 0.5}, "skip")
    every, _ = read_shard(files + label_files(shared_data, "ec"), 0, 1, options, "skip")
    assert len(every) == 9 and {r["id"] for r in every} == {*test_rows["pdb_chain"], "1DIX-A"}
    expected = {r["id"] for r in every if r["split"] != "test" or r["labels"]["test_identity"]["50"]}
    assert {r["id"] for r in kept} == expected and "1DIX-A" in expected and len(expected) < 9


def build_ec_zip(path: Path, shared_data: Path) -> Path:
    """torchdrug's EnzymeCommission.zip layout, from the real DeepFRI files and structures."""
    labels = shared_data / "labels/deepfri_EC_GO"
    chains = shared_data / "chains"
    members = {
        "train": [("1DIX-A_1dix.pdb", shared_data / "pdb/1dix.pdb")],
        "valid": [("11AS-A_11as.pdb", shared_data / "pdb/11as.pdb")],
        "test": [("1F6M-A_1F6M.pdb", chains / "1F6M_r_b.pdb")],
    }
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(labels / "nrPDB-EC_2020.04_annot.tsv", "EnzymeCommission/nrPDB-EC_annot.tsv")
        archive.write(labels / "nrPDB-EC_2020.04_test.csv", "EnzymeCommission/nrPDB-EC_test.csv")
        for split, items in members.items():
            inner = path.parent / f"{split}.zip"
            with zipfile.ZipFile(inner, "w") as nested:
                for name, source in items:
                    nested.write(source, f"{split}/{name}")
            archive.write(inner, f"EnzymeCommission/{split}.zip")
            inner.unlink()
    return path


def test_torchdrug_zip(shared_data, tmp_path):
    archive = build_ec_zip(tmp_path / "EnzymeCommission.zip", shared_data)
    records, skipped = read_shard([archive], 0, 1, {"task": "ec"}, "skip")
    assert [(r["id"], r["split"]) for r in records] == [("11AS-A", "valid"), ("1DIX-A", "train"), ("1F6M-A", "test")]
    assert records[2]["labels"]["test_identity"]["95"] is True and skipped == []
    root = tmp_path / "EnzymeCommission.zip.extracted"
    assert (root / "EnzymeCommission/train.zip.extracted/train/1DIX-A_1dix.pdb").is_file()
    assert extract_zip(archive) == root  # extracted once, then reused
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    with pytest.raises(GeoplmError, match=r"label file missing.csv \(cutoffs\) is not among"):
        read_shard([archive], 0, 1, {"task": "ec", "label_files": {"cutoffs": "missing.csv"}}, "skip")
    # at 30 % identity torchdrug drops 1F6M-A (flag 0)
    records, _ = read_shard([archive], 0, 1, {"task": "ec", "test_cutoff": 0.3}, "skip")
    assert [r["id"] for r in records] == ["11AS-A", "1DIX-A"]


def test_unsafe_zip(tmp_path, shared_data):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.write(shared_data / "pdb" / "1dix.pdb", "../1dix.pdb")
    with pytest.raises(GeoplmError, match="unsafe member path '../1dix.pdb'"):
        read_shard([archive, *label_files(shared_data, "ec")], 0, 1, {"task": "ec"}, "skip")
    assert not (tmp_path / "1dix.pdb").exists() and not (tmp_path / "evil.zip.extracted").exists()


def test_fold3d_zip(shared_data, tmp_path):
    """The .pdb variant of GearNet's fold3d.zip: label lists named by split, {split}_pdb.zip of domain files."""
    labels = shared_data / "labels/fold_HomologyTAPE"
    names = {"class_map": "class_map", "training": "train", "validation": "valid"}
    names.update({s: s for s in ("test_fold", "test_superfamily", "test_family")})
    inner = tmp_path / "test_fold_pdb.zip"
    with zipfile.ZipFile(inner, "w") as nested:
        nested.write(shared_data / "pdb/1A8O.pdb", "test_fold/d1a8oa_.pdb")
    archive = tmp_path / "fold3d.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for upstream, name in names.items():
            handle.write(labels / f"{upstream}.txt", f"fold3d/{name}.txt")
        handle.write(inner, "fold3d/test_fold_pdb.zip")
    records, skipped = read_shard([archive], 0, 1, {"task": "fold"}, "skip")
    assert skipped == [] and [(r["id"], r["split"], r["labels"]["coverage"]) for r in records] == [
        ("d1a8oa_", "test_fold", "domain")
    ]
    class_map = dict(line.split("\t") for line in (labels / "class_map.txt").read_text().splitlines())
    assert records[0]["labels"]["fold"] == "a.28" and records[0]["labels"]["target"] == int(class_map["a.28"])
