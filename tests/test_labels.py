"""Label readers on the real DeepFRI, HomologyTAPE and ProtFunct files (shared/data/labels)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from geoplm.datasets import labels
from geoplm.errors import GeoplmError


@pytest.fixture(scope="module")
def label_dir(shared_data: Path) -> Path:
    return shared_data / "labels"


@pytest.fixture(scope="module")
def chains(shared_data: Path) -> pd.DataFrame:
    return pd.read_csv(shared_data / "chains" / "CHAINS.tsv", sep="\t", dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def ec(label_dir):
    return labels.load_deepfri_ec(label_dir / "deepfri_EC_GO")


def test_deepfri_ec(ec, chains):
    table, terms = ec
    assert len(terms) == 538 and terms[:2] == ["1.4.3.-", "4.2.1.1"]
    assert table["split"].value_counts().to_dict() == {"train": 15551, "valid": 1729, "test": 1919}
    row = table.set_index("pdb_chain").loc["4PR3-A"]  # first line: 3.2.2.9,3.2.2.-
    assert [terms[i] for i in row["labels"]] == sorted(["3.2.2.9", "3.2.2.-"], key=terms.index)
    test = table[table["split"] == "test"]
    assert int(test["below_30"].sum()) == 720 and bool(test["below_95"].all())
    assert table[table["split"] != "test"]["below_30"].isna().all()
    assert test.set_index("pdb_chain").loc["2FOR-A", ["below_30", "below_50"]].tolist() == [False, True]
    # cross-check with CHAINS.tsv: the 77 chains with a DeepFRI EC split
    labelled = chains[chains["EC_split"] != ""]
    assert len(labelled) == 77
    by_chain = table.set_index("pdb_chain")
    for _, chain in labelled.iterrows():
        got = by_chain.loc[chain["pdb_chain"]]
        assert got["split"] == chain["EC_split"]
        assert {terms[i] for i in got["labels"]} == set(chain["EC_numbers"].split(","))


def test_deepfri_go_splits(label_dir, chains):
    table = labels.load_deepfri_go_splits(label_dir / "deepfri_EC_GO")
    assert table["split"].value_counts().to_dict() == {"train": 29902, "valid": 3323, "test": 3416}
    labelled = chains[chains["GO_split"] != ""]
    splits = table.set_index("pdb_chain")["split"]
    assert len(labelled) > 150
    assert all(splits[c] == s for c, s in zip(labelled["pdb_chain"], labelled["GO_split"], strict=True))
    assert not (label_dir / "deepfri_EC_GO" / labels.GO_FILES["annotations"]).exists()


def test_fold(label_dir, chains):
    table, folds = labels.load_fold(label_dir / "fold_HomologyTAPE")
    assert len(folds) == 1195 and folds[0] == "a.1"
    assert table["split"].value_counts().to_dict() == {
        "training": 12312,
        "validation": 736,
        "test_fold": 718,
        "test_superfamily": 1254,
        "test_family": 1272,
    }
    assert table["domain"].is_unique
    row = table.set_index("domain").loc["d1kf6b1"]
    assert (row["split"], row["number"], row["fold"], folds[row["label"]]) == ("test_fold", 138, "a.1", "a.1")
    assert table[table["split"] == "training"]["number"].isna().all()
    # CHAINS.tsv: "d1a12a_(test_fold,b.69);..." with train/valid for training/validation
    names = {"train": "training", "valid": "validation"}
    by_domain = table.set_index("domain")
    checked = 0
    for field in chains["SCOPe_domains(split,fold)"]:
        for item in filter(None, field.split(";")):
            domain, rest = item.rstrip(")").split("(")
            split, fold = rest.split(",")
            assert by_domain.loc[domain, "split"] == names.get(split, split)
            assert by_domain.loc[domain, "fold"] == fold
            checked += 1
    assert checked > 20


def test_reaction(label_dir, chains):
    table, classes = labels.load_reaction(label_dir / "reaction_ProtFunct")
    assert len(classes) == 384 and classes[0] == "4.2.1.10"
    assert table["split"].value_counts().to_dict() == {"training": 29215, "validation": 2562, "test": 5651}
    row = table.set_index("name").loc["4fae.B"]
    assert (row["label"], row["ec"], row["pdb_chain"]) == (247, classes[247], "4FAE-B")
    names = {"train": "training", "valid": "validation"}
    labelled = chains[chains["ProtFunct_reaction_split"] != ""]
    splits = table.set_index("pdb_chain")["split"]
    assert len(labelled) == 28
    for chain, split in zip(labelled["pdb_chain"], labelled["ProtFunct_reaction_split"], strict=True):
        assert splits[chain] == names.get(split, split)


def _copy(folder: Path, tmp_path: Path) -> Path:
    dest = tmp_path / folder.name
    shutil.copytree(folder, dest)
    for path in dest.iterdir():
        path.chmod(0o644)
    return dest


def _replace_line(path: Path, number: int, text: str) -> None:
    lines = path.read_bytes().split(b"\n")
    lines[number - 1] = text.encode()
    path.write_bytes(b"\n".join(lines))


@pytest.mark.parametrize(
    ("file_name", "number", "text", "message"),
    [
        ("nrPDB-EC_2020.04_annot.tsv", 4, "4PR3-A\t3.2.2.9,9.9.9.9\r", r"not in the term list"),
        ("nrPDB-EC_2020.04_annot.tsv", 5, "1TNT_A\t6.5.1.-\r", r"malformed PDB-chain"),
        ("nrPDB-EC_2020.04_annot.tsv", 6, "1T8A-A\t3.2.1.17\textra\r", r"3 fields"),
        ("nrPDB-EC_2020.04_annot.tsv", 1, "EC-numbers", r"expected a '### ' heading"),
        ("nrPDB-EC_2020.04_test.csv", 3, "5U4N-A,0,0,2,0,1", r"flags must be 0 or 1"),
        ("nrPDB-EC_2020.04_test.csv", 4, "1NW6-A,1,1,1", r"4 fields, expected 6"),
        ("nrPDB-EC_2020.04_train.txt", 7, "not a chain", r"malformed chain name"),
    ],
)
def test_malformed_deepfri_lines(label_dir, tmp_path, file_name, number, text, message):
    folder = _copy(label_dir / "deepfri_EC_GO", tmp_path)
    _replace_line(folder / file_name, number, text)
    with pytest.raises(GeoplmError, match=rf"{file_name}:{number}: .*{message}"):
        labels.load_deepfri_ec(folder)


@pytest.mark.parametrize(
    ("file_name", "number", "text", "message"),
    [
        ("class_map.txt", 3, "a.3 2", r"expected '<fold><TAB><index>'"),
        ("training.txt", 2, "d2lhba_\ta.1\tz.999", r"fold 'z.999' not in the class map"),
        ("test_fold.txt", 2, "d2bs2b1\tmany\ta.1\ta.1", r"not an integer"),
        ("validation.txt", 1, "d1gtea1\ta.1", r"2 fields, expected 3 or 4"),
    ],
)
def test_malformed_fold_lines(label_dir, tmp_path, file_name, number, text, message):
    folder = _copy(label_dir / "fold_HomologyTAPE", tmp_path)
    _replace_line(folder / file_name, number, text)
    with pytest.raises(GeoplmError, match=rf"{file_name}:{number}: .*{message}"):
        labels.load_fold(folder)


@pytest.mark.parametrize(
    ("file_name", "number", "text", "message"),
    [
        ("chain_functions.txt", 2, "3o9d.A;247", r"expected '<pdb>.<chain>,<class>'"),
        ("chain_functions.txt", 3, "2rkg.B,384", r"class 384 out of range"),
        ("unique_functions.txt", 2, "six", r"malformed EC number"),
        ("testing.txt", 2, "4xib-A", r"malformed chain name"),
    ],
)
def test_malformed_reaction_lines(label_dir, tmp_path, file_name, number, text, message):
    folder = _copy(label_dir / "reaction_ProtFunct", tmp_path)
    _replace_line(folder / file_name, number, text)
    with pytest.raises(GeoplmError, match=rf"{file_name}:{number}: .*{message}"):
        labels.load_reaction(folder)
