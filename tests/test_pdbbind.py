"""PDBbind reader on the real shared complexes, INDEX files and label tables."""

from __future__ import annotations

import io
import math
import shutil

import numpy as np
import pytest
import torch

from geoplm.datasets import get_reader
from geoplm.datasets.pdbbind import (
    INDEX_COLUMNS,
    PDBbindError,
    missing_archive_message,
    parse_affinity,
    read_index,
    read_label_table,
    read_labels,
    read_ligand,
    read_shard,
)
from geoplm.errors import ConfigError
from geoplm.structure import RECORD_KEYS, parse_structure

SHARED_COMPLEXES = (
    "1a0q",
    "1a61",
    "1qkt",
    "2l1r",
    "2w9r",
    "3q6z",
    "3tws",
    "4cjq",
    "4cwb",
    "4mx1",
    "5i7x",
    "5oha",
    "6ce6",
)
INDEX_FILES = (  # 2007, 2013 and 2016 formats
    "oddt_mini_pdbbind/INDEX.2007.general.data",
    "oddt_mini_pdbbind/INDEX_general_PL_data.2013",
    "oddt_mini_pdbbind/index/INDEX_general_PL_data.2016",
)


@pytest.fixture(scope="module")
def pdbbind(shared_data):
    return shared_data / "pdbbind"


@pytest.fixture(scope="module")
def gign_files(pdbbind):
    return sorted(pdbbind.glob("GIGN_*.csv"))


@pytest.fixture(scope="module")
def shared_records(pdbbind, gign_files):
    """The 13 shared complexes read in pocket mode with GIGN labels."""
    files = [pdbbind / code for code in SHARED_COMPLEXES] + gign_files
    records, skipped = read_shard(files, 0, 1, {"labels": ["GIGN_*.csv"]}, "skip")
    return {record["id"]: record for record in records}, skipped


def _line_of(path, code):
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.startswith(code):
            return number, line
    raise AssertionError(f"{code} not in {path}")


# --------------------------------------------------------------------------------------------------
# INDEX files and affinities


@pytest.mark.parametrize("name", INDEX_FILES)
def test_read_index_formats(pdbbind, name):
    path = pdbbind / name
    table = read_index(path)
    assert list(table.columns) == list(INDEX_COLUMNS)
    assert list(table["pdb_code"]) == ["1k9q", "1nlo", "1nlp", "1imx", "4yef", "10gs"]
    row = table.set_index("pdb_code").loc["4yef"]
    number, line = _line_of(path, "4yef")
    assert line.split()[:5] == ["4yef", "1.72", "2015", "5.35", "Kd=4.44uM"]
    assert row["line"] == number and row["source"] == str(path)
    assert row["resolution"] == pytest.approx(1.72)
    assert row["release_year"] == 2015
    assert row["neg_log_affinity"] == pytest.approx(5.35)
    assert row["affinity"] == "Kd=4.44uM" and row["affinity_type"] == "Kd" and row["relation"] == "="
    assert row["affinity_molar"] == pytest.approx(4.44e-6)
    assert -math.log10(row["affinity_molar"]) == pytest.approx(5.35, abs=0.005)
    assert row["reference"] == "4yee.pdf" and row["ligand_name"] == "4CQ"


def test_read_index_nmr_peptide_and_ki(pdbbind):
    table = read_index(pdbbind / INDEX_FILES[0]).set_index("pdb_code")
    # "1k9q   NMR  2001   3.15  Kd=700uM      // 1k9q.pdf (7-mer)"
    assert math.isnan(table.loc["1k9q", "resolution"])
    assert table.loc["1k9q", "ligand_name"] == "7-mer"
    assert table.loc["1k9q", "affinity_molar"] == pytest.approx(7e-4)
    assert table.loc["1nlo", "ligand_name"] == "11-mer"
    # "10gs  2.20  1998   6.40  Ki=0.4uM      // 10gs.pdf (3-mer)": Ki 0.4 µM -> 6.398
    assert table.loc["10gs", "affinity_type"] == "Ki"
    assert table.loc["10gs", "affinity_molar"] == pytest.approx(4e-7)
    assert table.loc["10gs", "neg_log_affinity"] == pytest.approx(6.40)
    assert not table["resolution"].drop(["1k9q", "1nlo", "1nlp"]).isna().any()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Kd=1.2nM", ("Kd", "=", 1.2e-9)),
        ("Ki<10uM", ("Ki", "<", 1e-5)),
        ("IC50~3mM", ("IC50", "~", 3e-3)),
        ("Kd>=5fM", ("Kd", ">=", 5e-15)),
        ("Ki<=0.25pM", ("Ki", "<=", 2.5e-13)),
        ("Kd>2M", ("Kd", ">", 2.0)),
    ],
)
def test_parse_affinity_units(text, expected):
    kind, relation, molar = parse_affinity(text)
    assert (kind, relation) == expected[:2]
    assert molar == pytest.approx(expected[2], rel=1e-12)


def test_parse_affinity_kd_nanomolar_to_neg_log():
    assert -math.log10(parse_affinity("Kd=1.2nM")[2]) == pytest.approx(8.9208, abs=1e-4)


@pytest.mark.parametrize("text", ["Kd=1.2xM", "Kx=1nM", "Kd=nM", "Kd=-1nM", "Kd=0nM"])
def test_parse_affinity_rejects(text):
    with pytest.raises(ValueError, match="affinity"):
        parse_affinity(text)


def test_read_index_malformed_line_names_file_and_line(pdbbind, tmp_path):
    path = tmp_path / "INDEX_refined_data.2016"
    lines = (pdbbind / INDEX_FILES[2]).read_text().splitlines()
    lines.append("3abc  2.00  2010   6.00  Kd=1.0qM      // 3abc.pdf (XYZ)")  # unknown unit
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(PDBbindError, match=rf"INDEX_refined_data.2016:{len(lines)}: malformed INDEX line"):
        read_index(path)
    lines[-1] = "3abc  2.00  2010"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(PDBbindError, match=rf":{len(lines)}: .*got 3 fields"):
        read_index(path)
    lines[-1] = "3abc  abc  2010   6.00  Kd=1uM  // 3abc.pdf (XYZ)"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(PDBbindError, match="resolution 'abc'"):
        read_index(path)


def test_read_index_checks_neg_log_against_affinity(tmp_path):
    path = tmp_path / "INDEX_general_PL_data.2020"
    path.write_text("# header\n1abc  2.00  2010   7.00  Kd=1.2nM      // 1abc.pdf (XYZ)\n")
    with pytest.raises(PDBbindError, match=r"INDEX_general_PL_data.2020:2 \(1abc\): -logKd/Ki 7.0 disagrees"):
        read_index(path)
    assert read_index(path, tolerance=None).loc[0, "neg_log_affinity"] == 7.0


def test_read_index_without_neg_log_column(pdbbind, tmp_path):
    # INDEX_general_PL.2020 style: the -logKd/Ki column absent; computed from the measurement.
    path = tmp_path / "INDEX_general_PL.2020"
    rows = []
    for line in (pdbbind / INDEX_FILES[2]).read_text().splitlines():
        fields = line.split(None, 4)
        rows.append(line if line.startswith("#") else " ".join(fields[:3] + [fields[4]]))
    path.write_text("\n".join(rows) + "\n")
    table = read_index(path).set_index("pdb_code")
    assert table.loc["1k9q", "neg_log_affinity"] == pytest.approx(3.15)  # -log10(700 µM) = 3.155 -> 3.15
    assert table.loc["4yef", "neg_log_affinity"] == pytest.approx(5.35)


def test_gign_label_tables(pdbbind, gign_files):
    toy = read_label_table(pdbbind / "GIGN_toy_examples.csv").set_index("pdb_code")
    assert toy.loc["4cjq", "neg_log_affinity"] == pytest.approx(3.59)
    assert toy.loc["4cjq", "affinity"] == ""
    labels = read_labels(gign_files)
    assert labels.index.is_unique
    for code, value in {"1a61": 8.62, "1qkt": 9.04, "5oha": 4.89, "1a0q": 7.57}.items():
        assert labels.loc[code, "neg_log_affinity"] == pytest.approx(value)


def test_read_labels_conflict(pdbbind, tmp_path):
    other = tmp_path / "other.csv"
    other.write_text("pdbid,-logKd/Ki\n4cjq,7.00\n")
    with pytest.raises(PDBbindError, match=r"other.csv:2 \(4cjq\): -logK 7.0 disagrees with 3.59"):
        read_labels([pdbbind / "GIGN_toy_examples.csv", other])


def test_missing_archive_message():
    text = missing_archive_message("pdbbind_refined", "/data/downloads/pdbbind/PDBbind_v2020_refined.tar.gz")
    assert "pdbbind_refined" in text
    assert "http://www.pdbbind.org.cn/" in text
    assert "register" in text
    assert "/data/downloads/pdbbind/PDBbind_v2020_refined.tar.gz" in text


# --------------------------------------------------------------------------------------------------
# complexes


def test_all_shared_complexes_read_or_skipped(shared_records):
    records, skipped = shared_records
    assert sorted(records) == sorted(set(SHARED_COMPLEXES) - {"1a0q"})
    # 1a0q (DiffDock's copy) has only 1a0q_protein_processed.pdb, no pocket
    assert [row["entry"] for row in skipped] == ["1a0q"]
    assert skipped[0]["reason"] == "no 1a0q_pocket.pdb (options.protein = 'pocket')"
    for code, record in records.items():
        assert all(key in record for key in RECORD_KEYS)
        assert record["group"] == code and record["role"] == "complex" and record["split"] == ""
        length = len(record["sequence"])
        assert record["backbone"].shape == (length, 4, 3)
        assert record["chain_index"].shape == (length,)
        assert len(record["residue_name"]) == len(record["insertion_code"]) == length
        assert record["source"] == f"{code}_pocket.pdb"
    assert records["1a61"]["labels"] == {"neg_log_affinity": pytest.approx(8.62), "affinity": ""}


def test_pocket_chains_merged(shared_records, pdbbind):
    record = shared_records[0]["4cjq"]
    chains = parse_structure(pdbbind / "4cjq" / "4cjq_pocket.pdb")
    assert [c["chain"] for c in chains] == ["A", "B"]
    assert record["chain"] == "A,B" and record["chain_ids"] == ["A", "B"]
    assert record["sequence"] == chains[0]["sequence"] + chains[1]["sequence"]
    counts = torch.bincount(record["chain_index"]).tolist()
    assert counts == [len(chains[0]["sequence"]), len(chains[1]["sequence"])]
    assert torch.equal(record["residue_number"], torch.cat([c["residue_number"] for c in chains]))
    torch.testing.assert_close(record["backbone"], torch.cat([c["backbone"] for c in chains]), equal_nan=True)


def _sdf_atoms(path):
    lines = path.read_text().splitlines()
    count = int(lines[3][:3])
    atoms = []
    for line in lines[4 : 4 + count]:
        atoms.append((line[31:34].strip(), [float(line[0:10]), float(line[10:20]), float(line[20:30])]))
    return atoms


def _mol2_atoms(path):
    text = path.read_text()
    block = text.split("@<TRIPOS>ATOM")[1].split("@<TRIPOS>")[0]
    atoms = []
    for line in block.strip().splitlines():
        fields = line.split()
        atoms.append((fields[5].split(".")[0], [float(fields[2]), float(fields[3]), float(fields[4])]))
    return atoms


def test_ligands_match_rdkit_and_files(shared_records, pdbbind):
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    sources = {}
    for code, record in shared_records[0].items():
        ligand = record["ligand"]
        path = pdbbind / code / ligand["source"]
        sources[code] = path.suffix
        if path.suffix == ".sdf":
            mol = Chem.MolFromMolFile(str(path), sanitize=False, removeHs=False)
            atoms = _sdf_atoms(path)
        else:
            mol = Chem.MolFromMol2File(str(path), sanitize=False, removeHs=False)
            atoms = _mol2_atoms(path)
        heavy = [(element, xyz) for element, xyz in atoms if element != "H"]
        assert ligand["position"].shape == (mol.GetNumHeavyAtoms(), 3) == (len(heavy), 3)
        np.testing.assert_allclose(ligand["position"].numpy(), np.array([xyz for _, xyz in heavy]), atol=1e-3)
        assert [e.upper() for e in ligand["element"]] == [e.upper() for e, _ in heavy]
        assert ligand["atomic_number"].dtype == torch.long and (ligand["atomic_number"] > 1).all()
        bonds = ligand["bonds"]
        assert bonds.dtype == torch.long and bonds.shape[1] == 3 and bonds.shape[0] > 0
        assert bonds[:, :2].max() < len(heavy) and set(bonds[:, 2].tolist()) <= {1, 2, 3}
        assert Chem.MolFromSmiles(ligand["smiles"]).GetNumHeavyAtoms() == len(heavy)
        # with hydrogens (ATOM3D's LBA tables): the file's atoms in file order, then those RDKit adds
        with_h, elements = ligand["position_with_h"], ligand["element_with_h"]
        assert len(elements) == len(with_h) >= len(atoms)
        np.testing.assert_allclose(with_h[: len(atoms)].numpy(), np.array([xyz for _, xyz in atoms]), atol=1e-3)
        assert [e.upper() for e in elements[: len(atoms)]] == [e.upper() for e, _ in atoms]
        assert set(elements[len(atoms) :]) <= {"H"}
        heavy_rows = torch.tensor([e != "H" for e in elements])
        assert torch.equal(with_h[heavy_rows], ligand["position"])
        # every hydrogen lies within bonding distance (< 1.5 Å: C-H 1.09, S-H 1.33) of a heavy atom
        hydrogens = with_h[~heavy_rows]
        assert len(hydrogens) > 0 and float(torch.cdist(hydrogens, ligand["position"]).min(dim=1).values.max()) < 1.5
    # SDFs RDKit cannot sanitise (valence, kekulisation) fall back to the MOL2 file
    assert sources["1a61"] == ".mol2" and sources["5i7x"] == ".mol2"
    assert sources["1qkt"] == ".sdf" and sources["5oha"] == ".sdf"


def test_protein_mode_reads_processed_protein(pdbbind, gign_files):
    files = [pdbbind / "1a0q", pdbbind / "5oha", *gign_files]
    records, skipped = read_shard(files, 0, 1, {"labels": ["GIGN_*.csv"], "protein": "protein"}, "fail")
    assert skipped == []
    by_id = {r["id"]: r for r in records}
    assert by_id["1a0q"]["source"] == "1a0q_protein_processed.pdb"
    assert by_id["5oha"]["source"] == "5oha_protein.pdb"
    assert by_id["1a0q"]["labels"]["neg_log_affinity"] == pytest.approx(7.57)
    pocket = read_shard(files, 0, 1, {"labels": ["GIGN_*.csv"]}, "skip")[0][0]
    assert len(by_id["5oha"]["sequence"]) > len(pocket["sequence"])


def _copy_complex(pdbbind, code, tmp_path):
    target = tmp_path / code
    shutil.copytree(pdbbind / code, target)
    for path in target.iterdir():
        path.chmod(0o644)
    return target


def test_corrupted_sdf_skipped_or_mol2_fallback(pdbbind, tmp_path):
    folder = _copy_complex(pdbbind, "1qkt", tmp_path)
    sdf = folder / "1qkt_ligand.sdf"
    sdf.write_text(sdf.read_text()[:300])  # cut inside the atom block
    labels = tmp_path / "labels.csv"
    labels.write_text("pdbid,-logKd/Ki\n1qkt,9.04\n")
    other = pdbbind / "GIGN_toy_examples.csv"
    options = {"labels": ["labels.csv"]}
    records, skipped = read_shard([folder, labels, other], 0, 1, options, "skip")
    assert skipped == [] and records[0]["ligand"]["source"] == "1qkt_ligand.mol2"
    assert records[0]["ligand"]["position"].shape == (20, 3)
    (folder / "1qkt_ligand.mol2").unlink()
    records, skipped = read_shard([folder, labels, other], 0, 1, options, "skip")
    assert records == []
    assert skipped[0]["entry"] == "1qkt"
    assert skipped[0]["reason"].startswith("ligand unusable: RDKit cannot parse 1qkt_ligand.sdf")
    with pytest.raises(PDBbindError, match="1qkt_ligand.sdf"):
        read_shard([folder, labels, other], 0, 1, options, "fail")


def test_read_ligand_unsanitisable_sdf_without_mol2(pdbbind):
    with pytest.raises(PDBbindError, match=r"RDKit cannot sanitise 1a61_ligand.sdf: .*Explicit valence"):
        read_ligand(pdbbind / "1a61" / "1a61_ligand.sdf", None)


def test_empty_pocket_missing_ligand_and_label_skipped(pdbbind, tmp_path):
    empty = _copy_complex(pdbbind, "5oha", tmp_path)
    pocket = empty / "5oha_pocket.pdb"
    pocket.write_text("".join(line + "\n" for line in pocket.read_text().splitlines() if "HOH" in line) + "END\n")
    no_ligand = _copy_complex(pdbbind, "6ce6", tmp_path)
    for suffix in (".sdf", ".mol2"):
        (no_ligand / f"6ce6_ligand{suffix}").unlink()
    unlabelled = _copy_complex(pdbbind, "2w9r", tmp_path)
    labels = tmp_path / "labels.csv"
    labels.write_text("pdbid,-logKd/Ki\n5oha,4.89\n6ce6,5.1\n")
    records, skipped = read_shard([empty, no_ligand, unlabelled, labels], 0, 1, {"labels": ["labels.csv"]}, "skip")
    assert records == []
    reasons = {row["entry"]: row["reason"] for row in skipped}
    assert reasons["2w9r"] == "no affinity label in the label files"
    assert reasons["5oha"].startswith("pocket: no protein chain")
    assert reasons["6ce6"] == "no ligand file (6ce6_ligand.sdf or .mol2)"


def test_index_labels_and_peptide_ligands(pdbbind):
    # ODDT's mini PDBbind: INDEX files of three versions (agreeing), six complexes with SDF ligands.
    records, skipped = read_shard([pdbbind / "oddt_mini_pdbbind"], 0, 1, {}, "fail")
    assert skipped == []
    by_id = {r["id"]: r for r in records}
    assert sorted(by_id) == ["10gs", "1imx", "1k9q", "1nlo", "1nlp", "4yef"]
    assert by_id["1k9q"]["labels"] == {"neg_log_affinity": pytest.approx(3.15), "affinity": "Kd=700uM"}
    assert by_id["10gs"]["labels"]["affinity"] == "Ki=0.4uM"
    assert by_id["1k9q"]["ligand"]["position"].shape == (46, 3)  # the 7-mer peptide's heavy atoms
    assert "[H]" not in by_id["1k9q"]["ligand"]["smiles"]


def test_splits_and_sharding(pdbbind, gign_files):
    files = [pdbbind / code for code in SHARED_COMPLEXES] + gign_files
    files += [pdbbind / "DiffDock_timesplit_no_lig_overlap_train", pdbbind / "DiffDock_timesplit_no_lig_overlap_val"]
    options = {
        "labels": ["GIGN_*.csv"],
        "splits": {
            "train": "DiffDock_timesplit_no_lig_overlap_train",
            "valid": "DiffDock_timesplit_no_lig_overlap_val",
        },
    }
    seen, skipped_all = [], []
    for shard in range(3):
        records, skipped = read_shard(files, shard, 3, options, "skip")
        seen += [(r["id"], r["split"]) for r in records]
        skipped_all += [row["entry"] for row in skipped]
        expected = sorted(SHARED_COMPLEXES)[shard::3]
        assert sorted([r["id"] for r in records] + [row["entry"] for row in skipped]) == expected
    splits = dict(seen)
    assert len(seen) == len(splits) == 12 and skipped_all == ["1a0q"]
    assert splits["1qkt"] == "valid"
    assert {split for code, split in splits.items() if code != "1qkt"} == {"train"}


def test_options_validated(pdbbind):
    reader = get_reader("pdbbind")
    assert reader is read_shard
    with pytest.raises(ConfigError, match="options.pocket_cutoff"):
        reader([pdbbind / "5oha"], 0, 1, {"pocket_cutoff": 10}, "skip")
    with pytest.raises(ConfigError, match="options.protein"):
        reader([pdbbind / "5oha"], 0, 1, {"protein": "ligand"}, "skip")
    with pytest.raises(ConfigError, match="options.labels: no file named 'GIGN_absent.csv'"):
        reader([pdbbind / "5oha"], 0, 1, {"labels": ["GIGN_absent.csv"]}, "skip")


def test_record_survives_weights_only_load(shared_records):
    record = shared_records[0]["4cjq"]
    buffer = io.BytesIO()
    torch.save([record], buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)[0]
    assert loaded["ligand"]["smiles"] == record["ligand"]["smiles"]
    assert torch.equal(loaded["ligand"]["bonds"], record["ligand"]["bonds"])


def test_gign_csv_split_tables_skip_their_header(shared_data):
    """GIGN's split tables start with a 'pdbid,-logKd/Ki' header, which is no PDB code."""
    from geoplm.datasets import pdbbind

    splits = pdbbind.read_split_lists(
        {"train": [shared_data / "pdbbind" / "GIGN_train.csv"], "valid": [shared_data / "pdbbind" / "GIGN_valid.csv"]}
    )
    assert "pdbid" not in splits and len(splits) > 1000
    assert set(splits.values()) == {"train", "valid"}
