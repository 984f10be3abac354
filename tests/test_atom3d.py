"""ATOM3D LMDB reader on the real test LMDBs of drorlab/atom3d (shared/data/atom3d_lmdb)."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

lmdb = pytest.importorskip("lmdb")

from geoplm.datasets import atom3d  # noqa: E402
from geoplm.errors import GeoplmError  # noqa: E402
from geoplm.structure import RECORD_KEYS, parse_structure  # noqa: E402

IDS = ["11as.pdb", "117e.pdb", "2olx.pdb", "103l.pdb"]
RECORD_IDS = ["11as_A", "11as_B", "117e_A", "117e_B", "2olx_A", "103l_A"]


@pytest.fixture(scope="module")
def lmdb_dir(shared_data: Path) -> Path:
    return shared_data / "atom3d_lmdb"


def _copy_lmdb(source: Path, dest: Path, replace: dict[bytes, bytes] | None = None) -> Path:
    """Copy an LMDB key by key (with lmdb), replacing some values."""
    dest.mkdir(parents=True)
    src = lmdb.open(str(source), readonly=True, lock=False)
    out = lmdb.open(str(dest), map_size=1 << 26)
    with src.begin() as rtxn, out.begin(write=True) as wtxn:
        for key, value in rtxn.cursor():
            wtxn.put(key, (replace or {}).get(key, value))
    src.close()
    out.close()
    return dest


@pytest.mark.parametrize("folder", ["", "extra/test_lmdb_old", "extra/test_lmdb_with_label"])
def test_entries_and_layouts(lmdb_dir, folder):
    with atom3d.open_lmdb(lmdb_dir / folder) as reader:
        assert len(reader) == 4
        assert reader.serialization_format == "json"
        assert reader.id_to_idx == {name: i for i, name in enumerate(IDS)}
        items = list(reader)
    assert [item["id"] for item in items] == IDS
    for item in items:
        atoms = item["atoms"]
        assert isinstance(atoms, pd.DataFrame)
        assert set(atom3d.ATOM_COLUMNS) <= set(atoms.columns)
    assert [len(item["atoms"]) for item in items] == [5220, 4943, 105, 1404]
    if folder == "extra/test_lmdb_old":
        assert "types" not in items[0]  # the older layout has no type map
    else:
        assert "DataFrame" in items[0]["types"]["atoms"]
    if folder.endswith("with_label"):
        assert [item["label"] for item in items] == [0, 0, 0, 0]


def test_records_match_the_atoms_table_and_the_pdb_files(lmdb_dir, shared_data):
    with atom3d.open_lmdb(lmdb_dir) as reader:
        item = reader[0]
    atoms = item["atoms"]
    records = atom3d.atoms_to_records(atoms, item["id"], "lmdb#0")
    assert [r["id"] for r in records] == ["11as_A", "11as_B"]
    for record in records:
        assert set(RECORD_KEYS) <= set(record)
        assert record["source"] == "lmdb#0"
        assert record["backbone"].shape == (len(record["sequence"]), 4, 3)
        assert record["plddt"] is False
    first = records[0]
    assert len(first["sequence"]) == 327 and first["sequence"].startswith("AYIAKQRQISF")
    # one atom: chain A, residue 4 (ALA), CA is row 1 of the table
    row = atoms.iloc[1]
    assert (row["chain"], row["residue"], row["name"], row["resname"]) == ("A", 4, "CA", "ALA")
    assert first["residue_number"][0] == 4 and first["residue_name"][0] == "ALA"
    assert torch.allclose(first["backbone"][0, 1], torch.tensor([row["x"], row["y"], row["z"]], dtype=torch.float32))
    assert first["b_factor"][0] == pytest.approx(row["bfactor"])
    # the free HETATM ASN (a ligand) and the waters are no residues
    ligand = atoms[atoms["hetero"] == "H_ASN"]
    assert len(ligand) > 0 and (atoms["hetero"] == "W").any()
    for record in records:
        numbers = set(record["residue_number"].tolist())
        chain_ligands = set(ligand[ligand["chain"] == record["chain"]]["residue"])
        assert not numbers & chain_ligands
        assert "HOH" not in record["residue_name"]

    # every entry equals geoplm.structure's records of the PDB file it was made from
    with atom3d.open_lmdb(lmdb_dir) as reader:
        for item in reader:
            ours = atom3d.atoms_to_records(item["atoms"], item["id"], "x")
            path = next(p for p in sorted((shared_data / "pdb").glob(item["id"] + "*")))
            theirs = parse_structure(path)
            assert [r["id"] for r in ours] == [r["id"] for r in theirs]
            for a, b in zip(ours, theirs, strict=True):
                assert a["sequence"] == b["sequence"]
                assert a["insertion_code"] == b["insertion_code"]
                assert torch.equal(a["residue_number"], b["residue_number"])
                assert torch.allclose(a["backbone"], b["backbone"], atol=1e-4, equal_nan=True)
                assert torch.equal(a["residue_mask"], b["residue_mask"])


def test_first_model_and_insertion_codes(lmdb_dir):
    with atom3d.open_lmdb(lmdb_dir) as reader:
        nmr, lysozyme = reader[2], reader[3]
    assert sorted(nmr["atoms"]["model"].unique()) == [1, 2, 3]
    (record,) = atom3d.atoms_to_records(nmr["atoms"], nmr["id"], "x")
    assert record["sequence"] == "NNQQ"
    model1 = nmr["atoms"][(nmr["atoms"]["model"] == 1) & (nmr["atoms"]["name"] == "CA")]
    assert np.allclose(record["backbone"][:, 1].numpy(), model1[["x", "y", "z"]].to_numpy(), atol=1e-5)
    (record,) = atom3d.atoms_to_records(lysozyme["atoms"], lysozyme["id"], "x")
    assert [c for c in record["insertion_code"] if c] == ["A", "B", "C"]


def test_shards_partition_the_entries(lmdb_dir):
    for num_shards in (1, 2, 3, 4, 7):
        ids = []
        for shard in range(num_shards):
            records, skipped = atom3d.read_lmdb_shard([lmdb_dir], None, shard, num_shards, "fail")
            assert skipped == []
            ids.extend(r["id"] for r in records)
        assert ids == RECORD_IDS
    records, _ = atom3d.read_lmdb_shard([lmdb_dir], None, 1, 4, "fail")
    assert [r["id"] for r in records] == ["117e_A", "117e_B"]
    assert records[0]["source"] == f"{lmdb_dir}#1"
    with pytest.raises(GeoplmError, match="shard index 4"):
        atom3d.read_lmdb_shard([lmdb_dir], None, 4, 4, "fail")


def _tarball(tmp_path: Path, lmdb_dir: Path, shared_data: Path) -> Path:
    tree = tmp_path / "tree" / "split-by-cath-topology" / "data"
    for sub, src in (("test", lmdb_dir), ("train", shared_data / "atom3d_lmdb/extra/test_lmdb_old")):
        (tree / sub).mkdir(parents=True)
        for name in ("data.mdb", "lock.mdb"):
            shutil.copyfile(src / name, tree / sub / name)
    archive = tmp_path / "downloads" / "RES-split-by-cath-topology.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "tree" / "split-by-cath-topology", arcname="split-by-cath-topology")
    return archive


def test_tarball_is_extracted_once_and_read(tmp_path, lmdb_dir, shared_data):
    archive = _tarball(tmp_path, lmdb_dir, shared_data)
    records, skipped = atom3d.read_lmdb_shard([archive], "test", 0, 1, "fail")
    assert [r["id"] for r in records] == RECORD_IDS and skipped == []
    extracted = archive.with_name(archive.name + ".extracted")
    assert (extracted / "split-by-cath-topology/data/test/data.mdb").is_file()
    assert sorted(p.name for p in archive.parent.iterdir()) == [archive.name, extracted.name]  # no temp left
    marker = extracted / "reused"
    marker.write_text("")
    records, _ = atom3d.read_lmdb_shard([archive], "test", 1, 2, "fail")
    assert [r["id"] for r in records] == RECORD_IDS[4:] and marker.exists()
    assert atom3d.find_lmdb(archive, "train").name == "train"
    with pytest.raises(atom3d.Atom3dError, match="no LMDB folder named 'valid'"):
        atom3d.find_lmdb(archive, "valid")
    with pytest.raises(atom3d.Atom3dError, match="several LMDBs"):
        atom3d.find_lmdb(archive, None)


@pytest.mark.parametrize("name", ["../evil.txt", "/abs/evil.txt"])
def test_unsafe_tarball_is_rejected(tmp_path, name):
    archive = tmp_path / "bad.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo(name)  # built by hand: tar.add strips a leading "/"
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with tarfile.open(archive) as tar:
        assert tar.getnames() == [name]
    with pytest.raises(atom3d.Atom3dError, match="unsafe member path"):
        atom3d.read_lmdb_shard([archive], "test", 0, 1, "skip")
    assert not (tmp_path / "evil.txt").exists()
    assert not archive.with_name(archive.name + ".extracted").exists()


def test_corrupt_entries_are_skipped_or_fail(tmp_path, lmdb_dir):
    bad = _copy_lmdb(
        lmdb_dir,
        tmp_path / "bad",
        {b"1": b"this is not gzip", b"2": gzip.compress(b"{not json")},
    )
    records, skipped = atom3d.read_lmdb_shard([bad], None, 0, 1, "skip")
    assert [r["id"] for r in records] == ["11as_A", "11as_B", "103l_A"]
    assert [row["entry"] for row in skipped] == ["1 (117e.pdb)", "2 (2olx.pdb)"]
    assert all(row["source_file"] == str(bad) for row in skipped)
    assert "gzip" in skipped[0]["reason"] and "cannot decode json" in skipped[1]["reason"]
    with pytest.raises(atom3d.Atom3dError, match=r"entry 1 \(117e.pdb\): value is not a valid gzip"):
        atom3d.read_lmdb_shard([bad], None, 0, 1, "fail")
    # an entry without protein residues
    water = json.dumps(
        {
            "id": "water",
            "atoms": {
                "columns": list(atom3d.ATOM_COLUMNS),
                "index": [0],
                "data": [["w", 0, "w", 1, "A", "W", " ", 1, "HOH", "O", "O", 0.0, 0.0, 0.0]],
            },
        }
    ).encode()
    only_water = _copy_lmdb(lmdb_dir, tmp_path / "water", {b"0": gzip.compress(water)})
    records, skipped = atom3d.read_lmdb_shard([only_water], None, 0, 4, "skip")
    assert records == [] and "no protein chain" in skipped[0]["reason"]
    with pytest.raises(GeoplmError, match="water"):
        atom3d.read_lmdb_shard([only_water], None, 0, 4, "fail")


def test_bad_inputs(tmp_path, lmdb_dir):
    with pytest.raises(atom3d.Atom3dError, match="no data.mdb"):
        atom3d.open_lmdb(tmp_path)
    with pytest.raises(atom3d.Atom3dError, match="no such file"):
        atom3d.read_lmdb_shard([tmp_path / "missing.tar.gz"], "test", 0, 1, "skip")
    with atom3d.open_lmdb(lmdb_dir) as reader:
        with pytest.raises(atom3d.Atom3dError, match="out of range"):
            reader[4]
        atoms = reader[2]["atoms"]
    with pytest.raises(GeoplmError, match=r"lacks columns \['x'\]"):
        atom3d.atoms_to_records(atoms.drop(columns=["x"]), "2olx.pdb", "x")


def test_read_shard_keeps_item_labels_and_groups(shared_data):
    from geoplm.datasets import get_reader

    read = get_reader("atom3d_lmdb")
    lmdb_dir = shared_data / "atom3d_lmdb" / "extra" / "test_lmdb_with_label"
    records, skipped = read([lmdb_dir], 0, 1, {"task": "psr"}, "skip")
    assert not skipped and records
    env = atom3d.open_lmdb(lmdb_dir)
    try:
        first = atom3d.read_entry(env, 0)
    finally:
        env.close()
    first_records = [r for r in records if r["group"] == first["id"]]
    assert first_records and all(r["labels"] == {"label": first["label"]} for r in first_records)
    assert {r["role"] for r in records} == {"atoms"}
    # the two shards of two partition the items
    halves = [read([lmdb_dir], i, 2, {"task": "psr"}, "skip")[0] for i in range(2)]
    assert sorted(r["id"] for half in halves for r in half) == sorted(r["id"] for r in records)


def test_read_shard_rejects_unknown_options(shared_data):
    from geoplm.datasets import get_reader
    from geoplm.errors import ConfigError

    read = get_reader("atom3d_lmdb")
    with pytest.raises(ConfigError, match="task"):
        read([shared_data / "atom3d_lmdb"], 0, 1, {"task": "qm9"}, "skip")
    with pytest.raises(ConfigError, match="unknown options"):
        read([shared_data / "atom3d_lmdb"], 0, 1, {"colour": "red"}, "skip")


def test_read_shard_takes_an_lmdb_downloaded_as_its_mdb_files(shared_data, tmp_path):
    from geoplm.datasets import get_reader

    for name in ("data.mdb", "lock.mdb"):
        shutil.copy(shared_data / "atom3d_lmdb" / name, tmp_path / name)
    read = get_reader("atom3d_lmdb")
    records, skipped = read([tmp_path / "data.mdb", tmp_path / "lock.mdb"], 0, 1, {}, "skip")
    direct, _ = read([shared_data / "atom3d_lmdb"], 0, 1, {}, "skip")
    assert [r["id"] for r in records] == [r["id"] for r in direct] and not skipped


# --- LBA: one record per complex (pocket + ligand), as the pdbbind reader makes it ----------------------------


def _pdb_atom_table(path: Path) -> pd.DataFrame:
    """An ATOM3D atoms table of a PDB file, as atom3d's ``formats.bp_to_df`` builds it with Biopython."""
    from Bio.PDB import PDBParser

    rows = []
    structure = PDBParser(QUIET=True).get_structure(path.name, str(path))
    for atom in structure.get_atoms():
        residue = atom.get_parent()
        chain = residue.get_parent()
        rows.append({
            "ensemble": path.name, "subunit": 0, "structure": path.name, "model": chain.get_parent().serial_num,
            "chain": chain.id, "hetero": residue.id[0], "insertion_code": residue.id[2], "residue": residue.id[1],
            "segid": residue.segid, "resname": residue.resname, "altloc": atom.altloc, "occupancy": atom.occupancy,
            "bfactor": atom.bfactor, "x": float(atom.coord[0]), "y": float(atom.coord[1]), "z": float(atom.coord[2]),
            "element": atom.element, "name": atom.name, "fullname": atom.fullname, "serial_number": atom.serial_number,
        })  # fmt: skip
    return pd.DataFrame(rows)


def _sdf_atom_table(path: Path) -> pd.DataFrame:
    """ATOM3D's ligand table of an SDF (atom3d ``SDFDataset``: read with its hydrogens, unsanitised, then
    ``formats.mol_to_df(add_hs=True)``: RDKit ``AddHs(addCoords=True)``, residue name ``LIG``)."""
    from rdkit import Chem

    mol = Chem.SDMolSupplier(str(path), sanitize=False, removeHs=False)[0]
    mol.UpdatePropertyCache(strict=False)
    mol = Chem.AddHs(mol, addCoords=True)
    conformer = mol.GetConformer()
    rows = []
    for i, atom in enumerate(mol.GetAtoms()):
        position = conformer.GetAtomPosition(i)
        rows.append({
            "ensemble": path.name, "structure": path.name, "model": path.name, "chain": "LIG", "hetero": "",
            "insertion_code": "", "residue": 0, "segid": "", "resname": "LIG", "altloc": "", "occupancy": 1,
            "bfactor": 0, "x": position.x, "y": position.y, "z": position.z, "element": atom.GetSymbol(),
            "name": f"{atom.GetSymbol()}{i + 1}", "fullname": f"{atom.GetSymbol()}{i + 1}", "serial_number": i,
        })  # fmt: skip
    return pd.DataFrame(rows)


def _write_atom3d_lmdb(path: Path, items: list[dict]) -> Path:
    """An LMDB as atom3d's ``make_lmdb_dataset`` writes it (json, DataFrames split-oriented, 6 digits, gzip)."""
    path.mkdir(parents=True)
    env = lmdb.open(str(path), map_size=1 << 27)

    def frame(df):
        return json.loads(df.to_json(orient="split", double_precision=6))

    with env.begin(write=True) as txn:
        for index, item in enumerate(items):
            txn.put(str(index).encode(), gzip.compress(json.dumps(item, default=frame).encode()))
        txn.put(b"num_examples", str(len(items)).encode())
        txn.put(b"serialization_format", b"json")
        txn.put(b"id_to_idx", json.dumps({item["id"]: i for i, item in enumerate(items)}).encode())
    env.close()
    return path


def test_lba_items_become_pocket_and_ligand_records_equal_to_the_pdbbind_readers(shared_data, tmp_path):
    """ATOM3D LBA items (``atoms_pocket``, ``atoms_ligand`` with hydrogens, ``scores.neg_log_aff``) written from the
    mirror's real PDBbind complexes in ATOM3D's format: the ``atom3d_lmdb`` reader (``task: lba``, the train / test
    folders as splits) makes one record per complex, the pocket's chains merged, equal to the ``pdbbind`` reader's
    record of the same files (residues, Cα to the LMDB's 6 digits, the ligand with and without hydrogens); an item
    without a ligand table is skipped with the reason."""
    from geoplm.datasets import get_reader

    pdbbind = shared_data / "pdbbind"
    codes = {"train": ["1qkt", "2w9r"], "test": ["6ce6"]}
    labels = {"1qkt": 9.04, "2w9r": 5.32, "6ce6": 5.1}
    for split, members in codes.items():
        items = [
            {"id": code, "atoms_pocket": _pdb_atom_table(pdbbind / code / f"{code}_pocket.pdb"),
             "atoms_protein": _pdb_atom_table(pdbbind / code / f"{code}_pocket.pdb"),
             "atoms_ligand": _sdf_atom_table(pdbbind / code / f"{code}_ligand.sdf"),
             "scores": {"neg_log_aff": labels[code]}}
            for code in members
        ]  # fmt: skip
        if split == "test":
            items.append({"id": "broken", "atoms_pocket": items[0]["atoms_pocket"], "scores": {"neg_log_aff": 1.0}})
        _write_atom3d_lmdb(tmp_path / split, items)
    read = get_reader("atom3d_lmdb")
    records, skipped = read([tmp_path], 0, 1, {"task": "lba", "splits": {"train": "train", "test": "test"}}, "skip")
    assert [(r["id"], r["split"], r["role"], r["group"]) for r in records] == [
        ("1qkt", "train", "complex", "1qkt"), ("2w9r", "train", "complex", "2w9r"), ("6ce6", "test", "complex", "6ce6")
    ]  # fmt: skip
    assert [s["entry"] for s in skipped] == ["1 (broken)"] and "atoms_ligand" in skipped[0]["reason"]
    reference, _ = get_reader("pdbbind")(
        [pdbbind / code for code in labels] + [pdbbind / "GIGN_test2016.csv", pdbbind / "GIGN_train.csv",
                                               pdbbind / "GIGN_test2019.csv"],
        0, 1, {"labels": ["GIGN_*.csv"]}, "fail",
    )  # fmt: skip
    by_code = {r["id"]: r for r in reference}
    for record in records:
        expected = by_code[record["id"]]
        assert record["labels"] == {"scores": {"neg_log_aff": labels[record["id"]]}}
        assert record["sequence"] == expected["sequence"] and record["chain_ids"] == expected["chain_ids"]
        assert torch.equal(record["residue_number"], expected["residue_number"])
        torch.testing.assert_close(record["backbone"], expected["backbone"], atol=1e-5, rtol=0, equal_nan=True)
        ligand, expected_ligand = record["ligand"], expected["ligand"]
        assert ligand["element_with_h"] == expected_ligand["element_with_h"]
        torch.testing.assert_close(ligand["position_with_h"], expected_ligand["position_with_h"], atol=1e-4, rtol=0)
        torch.testing.assert_close(ligand["position"], expected_ligand["position"], atol=1e-5, rtol=0)
        assert "H" in ligand["element_with_h"] and "H" not in ligand["element"]
