"""DB5.5 and DIPS readers (geoplm.datasets.docking) on the real files of the shared data."""

from __future__ import annotations

import collections
import hashlib
import io
import pickle
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from geoplm.datasets import docking, get_reader
from geoplm.errors import ChecksumError, ConfigError, GeoplmError
from geoplm.structure import RECORD_KEYS, parse_structure

DB5_CODES = ["1AHW", "1AVX", "1AY7", "1D6R", "1JPS", "1QA9", "2SNI", "3PC8", "3SGQ", "4POU", "5E5M", "7CEI"]
DB5_ROLES = ["receptor_bound", "ligand_bound", "receptor_unbound", "ligand_unbound"]
DIPS_PAIR = "kq_1kq1.pdb1_2.dill"


def _files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file())


@pytest.fixture(scope="module")
def db5_dir(shared_data) -> Path:
    return shared_data / "db5"


@pytest.fixture(scope="module")
def dips_dir(shared_data) -> Path:
    return shared_data / "dips"


@pytest.fixture(scope="module")
def db5(db5_dir):
    return docking.read_db5_shard(_files(db5_dir), 0, 1, {}, "skip")


@pytest.fixture(scope="module")
def dips(dips_dir):
    return docking.read_dips_shard(_files(dips_dir), 0, 1, {}, "skip")


def _by_group(records) -> dict[str, dict[str, dict]]:
    groups: dict[str, dict[str, dict]] = collections.defaultdict(dict)
    for record in records:
        assert record["role"] not in groups[record["group"]], f"two {record['role']} records in {record['group']}"
        groups[record["group"]][record["role"]] = record
    return groups


def _raw_residues(path: Path) -> dict[tuple[str, int, str], dict[str, np.ndarray]]:
    """Backbone atoms per (chain, number, icode) by fixed PDB columns (first altloc), independent of Biopython."""
    residues: dict[tuple[str, int, str], dict[str, np.ndarray]] = {}
    for line in path.read_text().splitlines():
        if not line.startswith(("ATOM  ", "HETATM")):
            continue
        name, altloc, resname = line[12:16].strip(), line[16], line[17:20].strip()
        if resname == "HOH" or altloc not in (" ", "A") or name not in ("N", "CA", "C"):
            continue
        key = (line[21].strip(), int(line[22:26]), line[26].strip())
        xyz = np.array([float(line[30:38]), float(line[38:46]), float(line[46:54])])
        residues.setdefault(key, {}).setdefault(name, xyz)
    return {key: atoms for key, atoms in residues.items() if len(atoms) == 3}


def _interface_keys(record) -> set[tuple[str, int, str]]:
    return {
        (record["chains"][int(record["chain_index"][i])], int(record["residue_number"][i]), record["insertion_code"][i])
        for i in torch.nonzero(record["interface"]).flatten().tolist()
    }


def _kabsch_rmsd(a: np.ndarray, b: np.ndarray) -> float:
    """RMSD of a onto b after the optimal rotation and translation (Kabsch)."""
    a0, b0 = a - a.mean(0), b - b.mean(0)
    u, _, vt = np.linalg.svd(a0.T @ b0)
    d = np.sign(np.linalg.det(u @ vt))
    rotation = u @ np.diag([1.0, 1.0, d]) @ vt
    return float(np.sqrt(((a0 @ rotation - b0) ** 2).sum(1).mean()))


# --------------------------------------------------------------------------------------------------
# DB5.5


def test_registered_readers():
    assert get_reader("db5") is docking.read_db5_shard
    assert get_reader("dips") is docking.read_dips_shard


def test_db5_complexes_roles_and_record_keys(db5):
    records, skipped = db5
    assert skipped == []
    groups = _by_group(records)
    assert sorted(groups) == DB5_CODES
    for code, roles in groups.items():
        assert sorted(roles) == sorted(DB5_ROLES), code
        for role, record in roles.items():
            side, state = role.split("_")
            assert record["id"] == f"{code}_{side[0]}_{state[0]}"
            assert record["source"] == f"{record['id']}.pdb"
            assert set(RECORD_KEYS) <= set(record)
            length = len(record["sequence"])
            assert record["backbone"].shape == (length, 4, 3)
            assert record["backbone_mask"].shape == (length, 4)
            for key in ("residue_number", "b_factor", "residue_mask", "chain_index"):
                assert record[key].shape == (length,), (record["id"], key)
            assert len(record["residue_name"]) == len(record["insertion_code"]) == length
            assert record["chain_index"].dtype == torch.long
            assert int(record["chain_index"].max()) == len(record["chains"]) - 1


def test_db5_multichain_partner_is_chains_in_file_order(db5, db5_dir):
    record = _by_group(db5[0])["1AHW"]["receptor_bound"]
    chains = parse_structure(db5_dir / "1AHW_r_b.pdb")
    assert [c["chain"] for c in chains] == record["chains"] == ["A", "B"]
    assert record["chain"] == "AB"
    assert record["sequence"] == chains[0]["sequence"] + chains[1]["sequence"]
    n0 = len(chains[0]["sequence"])
    assert record["chain_index"][:n0].eq(0).all() and record["chain_index"][n0:].eq(1).all()
    assert torch.allclose(record["backbone"][n0:], chains[1]["backbone"], equal_nan=True)
    assert torch.equal(record["residue_number"][n0:], chains[1]["residue_number"])


def test_db5_splits_match_cv0_lists_and_difficulty(db5, db5_dir):
    expected = {}
    for name, split in (("cv_0_train.txt", "train"), ("cv_0_val.txt", "valid"), ("cv_0_test.txt", "test")):
        for line in (db5_dir / name).read_text().split():
            expected[line.strip()] = split
    difficulty = {}
    for level in ("rigid", "medium", "difficult"):
        for line in (db5_dir / f"{level}.txt").read_text().split():
            difficulty[line.split("_")[0]] = level
    for code, roles in _by_group(db5[0]).items():
        for record in roles.values():
            assert record["split"] == expected[code], code
            assert record["labels"]["difficulty"] == difficulty[code]
    groups = _by_group(db5[0])
    assert groups["1AVX"]["ligand_bound"]["split"] == "test"
    assert groups["1D6R"]["ligand_bound"]["split"] == "train"
    assert groups["1AHW"]["ligand_bound"]["split"] == "valid"
    assert groups["4POU"]["receptor_bound"]["labels"]["difficulty"] == "medium"
    # Table_BM5.5.xlsx: 7CEI_A:B, category EI, I-RMSD 0.70 Å, ΔASA 1384 Å²
    labels = groups["7CEI"]["receptor_unbound"]["labels"]
    assert labels["category"] == "EI" and labels["i_rmsd"] == pytest.approx(0.7) and labels["dasa"] == 1384
    assert (labels["receptor_chains"], labels["ligand_chains"]) == ("A", "B")


def test_db5_interface_matches_direct_distance_computation(db5, db5_dir):
    groups = _by_group(db5[0])
    for code, roles in groups.items():
        receptor, ligand = roles["receptor_bound"], roles["ligand_bound"]
        assert "interface" not in roles["receptor_unbound"] and "interface" not in roles["ligand_unbound"]
        raw_r = _raw_residues(db5_dir / f"{code}_r_b.pdb")
        raw_l = _raw_residues(db5_dir / f"{code}_l_b.pdb")
        keys_r, keys_l = list(raw_r), list(raw_l)
        ca_r = np.stack([raw_r[k]["CA"] for k in keys_r])
        ca_l = np.stack([raw_l[k]["CA"] for k in keys_l])
        distance = np.sqrt(((ca_r[:, None, :] - ca_l[None, :, :]) ** 2).sum(-1))
        contact = distance < 8.0
        expected_r = {keys_r[i] for i in np.nonzero(contact.any(1))[0]}
        expected_l = {keys_l[j] for j in np.nonzero(contact.any(0))[0]}
        assert _interface_keys(receptor) == expected_r, code
        assert _interface_keys(ligand) == expected_l, code
        for record in (receptor, ligand):
            assert record["interface"].dtype == torch.bool
            size = int(record["interface"].sum())
            assert record["labels"]["interface_size"] == size
            assert 4 <= size <= 40, (record["id"], size)  # both partners have an interface of plausible size
            assert record["labels"]["num_contacts"] == int(contact.sum())
            assert record["labels"]["interface_cutoff"] == 8.0
            assert not (record["interface"] & ~record["residue_mask"]).any()


def test_db5_interface_grows_with_cutoff(db5_dir):
    files = [db5_dir / f"1AY7_{s}_b.pdb" for s in "rl"]
    small, _ = docking.read_db5_shard(files, 0, 1, {"interface_cutoff": 8.0}, "fail")
    large, _ = docking.read_db5_shard(files, 0, 1, {"interface_cutoff": 12.0}, "fail")
    for a, b in zip(small, large, strict=True):
        assert not (a["interface"] & ~b["interface"]).any()
        assert int(b["interface"].sum()) > int(a["interface"].sum())
        assert a["split"] == ""  # no cv lists among the files


def test_db5_ignores_odd_names_and_random_transformed_copies(db5, db5_dir):
    records, _ = db5
    assert not any(record["source"].endswith(".2") for record in records)
    assert (db5_dir / "1JPS_l_u.pdb.2").exists() and (db5_dir / "test_random_transformed" / "1AVX_l_b.pdb").exists()
    ligand = _by_group(records)["1AVX"]["ligand_bound"]
    original = parse_structure(db5_dir / "1AVX_l_b.pdb")[0]
    transformed = parse_structure(db5_dir / "test_random_transformed" / "1AVX_l_b.pdb")[0]
    assert torch.allclose(ligand["backbone"], original["backbone"], equal_nan=True)
    assert not torch.allclose(ligand["backbone"], transformed["backbone"], equal_nan=True, atol=1.0)


def test_db5_shards_partition_complexes(db5_dir, db5):
    files = [path for path in _files(db5_dir) if "_u.pdb" not in path.name]
    seen: dict[str, int] = {}
    for shard in range(3):
        records, skipped = docking.read_db5_shard(files, shard, 3, {"unbound": False}, "skip")
        assert skipped == []
        for code, roles in _by_group(records).items():
            assert sorted(roles) == ["ligand_bound", "receptor_bound"]
            assert code not in seen
            seen[code] = shard
    assert sorted(seen) == DB5_CODES
    assert all(seen[code] == docking.shard_of(code, 3) for code in DB5_CODES)
    # the same complex lands in the same shard when fewer files are given
    subset = [path for path in files if path.name.startswith("2SNI")]
    records, _ = docking.read_db5_shard(subset, seen["2SNI"], 3, {"unbound": False}, "skip")
    assert {record["group"] for record in records} == {"2SNI"}


def test_db5_bad_files_skipped_with_reason(tmp_path, db5_dir):
    for code in ("7CEI", "1AY7", "3PC8", "1QA9"):
        for name in (f"{code}_r_b.pdb", f"{code}_l_b.pdb", f"{code}_r_u.pdb", f"{code}_l_u.pdb"):
            shutil.copy(db5_dir / name, tmp_path / name)
    (tmp_path / "7CEI_r_b.pdb").write_bytes(b"")  # truncated to nothing
    (tmp_path / "1AY7_l_b.pdb").write_bytes(b"\x00\x01\x02garbage\xff" * 20)  # corrupt, binary
    (tmp_path / "3PC8_l_b.pdb").unlink()  # bound ligand missing
    (tmp_path / "1QA9_l_u.pdb").write_text("REMARK nothing here\n")  # unbound without atoms
    files = sorted(tmp_path.iterdir())
    records, skipped = docking.read_db5_shard(files, 0, 1, {}, "skip")
    reasons = {row["entry"]: row for row in skipped}
    assert set(reasons) == {"7CEI", "1AY7", "3PC8", "1QA9_l_u"}
    assert "empty file" in reasons["7CEI"]["reason"] and reasons["7CEI"]["source_file"].endswith("7CEI_r_b.pdb")
    assert "binary" in reasons["1AY7"]["reason"] and reasons["1AY7"]["source_file"].endswith("1AY7_l_b.pdb")
    assert "3PC8_l_b.pdb" in reasons["3PC8"]["reason"]
    assert "unbound ligand" in reasons["1QA9_l_u"]["reason"]
    assert sorted(r["role"] for r in records) == ["ligand_bound", "receptor_bound", "receptor_unbound"]
    with pytest.raises(GeoplmError, match=r"1AY7_l_b\.pdb.*binary data"):
        docking.read_db5_shard(files, 0, 1, {}, "fail")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cutoff": 8}, "unknown options"),
        ({"interface_cutoff": -1.0}, "interface_cutoff"),
        ({"interface_cutoff": "8"}, "interface_cutoff"),
        ({"unbound": "yes"}, "unbound"),
        ({"subset": "test"}, "subset"),
    ],
)
def test_db5_bad_options(options, message):
    with pytest.raises(ConfigError, match=message):
        docking.read_db5_shard([], 0, 1, options, "skip")


# --------------------------------------------------------------------------------------------------
# DIPS, PDB pairs


def test_dips_pdb_pairs_roles_split_interface(dips, dips_dir):
    records, skipped = dips
    assert skipped == []
    groups = _by_group(records)
    listed = {
        line.strip().replace("/", "_") for line in (dips_dir / "pairs-postprocessed-test.txt").read_text().split()
    }
    assert len(groups) == 8 and set(groups) <= listed
    for pair, roles in groups.items():
        assert sorted(roles) == ["ligand", "ligand_complex", "receptor", "receptor_complex"]
        assert roles["ligand"]["id"] == f"{pair}_l_b" and roles["receptor_complex"]["id"] == f"{pair}_r_b_COMPLEX"
        for record in roles.values():
            assert record["split"] == "test"
            assert int(record["interface"].sum()) == record["labels"]["interface_size"] > 0
        for side in ("ligand", "receptor"):
            assert torch.equal(roles[side]["interface"], roles[f"{side}_complex"]["interface"])


def test_dips_trailing_column_parsed_right(dips, dips_dir):
    """The files end each line with ' 0.0' after the element: coordinates and elements must be the fixed columns."""
    from Bio.PDB import PDBParser

    path = dips_dir / "test_random_transformed" / f"{DIPS_PAIR}_l_b.pdb"
    lines = [line for line in path.read_text().splitlines() if line.startswith("ATOM")]
    assert all(line.endswith(" 0.0") for line in lines)
    raw = _raw_residues(path)
    record = _by_group(dips[0])[DIPS_PAIR]["ligand"]
    assert len(raw) == len(record["sequence"])
    expected = np.stack([raw[key]["CA"] for key in raw])
    assert np.allclose(record["backbone"][:, 1].numpy(), expected, atol=1e-3)
    structure = PDBParser(QUIET=True).get_structure("x", path)
    elements = [atom.element for atom in structure.get_atoms()]
    assert elements == [line[76:78].strip() for line in lines]
    assert set(elements) <= {"C", "N", "O", "S"}


def test_dips_input_is_rigid_transform_of_ground_truth(dips):
    for pair, roles in _by_group(dips[0]).items():
        for side in ("ligand", "receptor"):
            moved, truth = roles[side], roles[f"{side}_complex"]
            assert moved["sequence"] == truth["sequence"]
            mask = moved["backbone_mask"] & truth["backbone_mask"]  # (L, 4): atoms present in both
            a = moved["backbone"][mask].double().numpy()
            b = truth["backbone"][mask].double().numpy()
            assert len(a) >= 4 * len(moved["sequence"]) - 8
            before = float(np.sqrt(((a - b) ** 2).sum(1).mean()))
            after = _kabsch_rmsd(a, b)
            assert after < 0.01, (pair, side, after)  # PDB coordinates carry 0.001 Å
            assert before > 5.0, (pair, side, before)


def test_dips_split_from_pair_lists_and_missing_file(tmp_path, dips_dir):
    folder = dips_dir / "test_random_transformed"
    listed = tmp_path / "pairs-postprocessed-train.txt"
    listed.write_text(DIPS_PAIR.replace("_", "/", 1) + "\n")
    files = [listed] + sorted(folder.glob(f"{DIPS_PAIR}_*")) + sorted(folder.glob("tn_4tn5.pdb1_0.dill_*"))
    records, skipped = docking.read_dips_shard(files, 0, 1, {}, "skip")
    splits = {record["group"]: record["split"] for record in records}
    assert splits == {DIPS_PAIR: "train", "tn_4tn5.pdb1_0.dill": "test"}
    files = [path for path in files if not path.name.endswith("tn_4tn5.pdb1_0.dill_r_b_COMPLEX.pdb")]
    records, skipped = docking.read_dips_shard(files, 0, 1, {}, "skip")
    assert {record["group"] for record in records} == {DIPS_PAIR}
    assert [row["entry"] for row in skipped] == ["tn_4tn5.pdb1_0.dill"]
    assert "tn_4tn5.pdb1_0.dill_r_b_COMPLEX.pdb" in skipped[0]["reason"]


def test_dips_shards_partition_pairs(dips_dir, dips):
    files = _files(dips_dir)
    groups: list[str] = []
    for shard in range(2):
        records, _ = docking.read_dips_shard(files, shard, 2, {}, "skip")
        for pair, roles in _by_group(records).items():
            assert len(roles) == 4 and docking.shard_of(pair, 2) == shard
            groups.append(pair)
    assert sorted(groups) == sorted(_by_group(dips[0]))


# --------------------------------------------------------------------------------------------------
# DIPS, .dill pair files


def _atom3_frame(path: Path) -> pd.DataFrame:
    """An atom3 (DIPS) atom table of a PDB file: pdb_name, model, chain, residue ('12'/'12A'), ..."""
    from Bio.PDB import PDBParser

    structure = PDBParser(QUIET=True).get_structure(path.stem, path)
    rows = []
    for atom in structure.get_atoms():
        residue = atom.get_parent()
        rows.append(
            (
                path.stem,
                str(residue.get_parent().get_parent().serial_num),
                residue.get_parent().id,
                f"{residue.id[1]}{residue.id[2].strip()}",
                residue.get_resname(),
                *map(float, atom.coord),
                atom.get_id()[0],
                atom.get_name(),
                str(atom.serial_number),
            )
        )
    columns = ["pdb_name", "model", "chain", "residue", "resname", "x", "y", "z", "element", "atom_name", "aid"]
    return pd.DataFrame(rows, columns=columns)


def _write_dill_like(path: Path, df0: pd.DataFrame, df1: pd.DataFrame, monkeypatch, style: str) -> str:
    """Write a Pair as dill does (``dill._dill._create_namedtuple``) or as a plain pickle of ``atom3.pair.Pair``.

    The modules are faked only while writing, so that reading needs neither dill nor atom3.
    """
    fields = ["complex", "df0", "df1", "pos_idx", "neg_idx", "srcs", "id"]
    with monkeypatch.context() as patch:
        if style == "dill":
            fake = types.ModuleType("dill._dill")

            def _create_namedtuple(name, fieldnames, modulename, defaults=None):
                raise AssertionError("never called while writing")

            _create_namedtuple.__module__ = "dill._dill"
            _create_namedtuple.__qualname__ = "_create_namedtuple"
            fake._create_namedtuple = _create_namedtuple
            patch.setitem(sys.modules, "dill", types.ModuleType("dill"))
            patch.setitem(sys.modules, "dill._dill", fake)
            pair_class = collections.namedtuple("Pair", fields, module="atom3.pair")

            class DillLike(pickle.Pickler):
                def reducer_override(self, obj):
                    if obj is pair_class:
                        return _create_namedtuple, ("Pair", tuple(fields), "atom3.pair")
                    return NotImplemented

            buffer = io.BytesIO()
            DillLike(buffer, protocol=4).dump(pair_class("1kq1.pdb1", df0, df1, np.zeros((0, 2)), None, {}, 2))
            data = buffer.getvalue()
            assert b"_create_namedtuple" in data
        else:
            fake = types.ModuleType("atom3.pair")
            pair_class = collections.namedtuple("Pair", fields, module="atom3.pair")
            fake.Pair = pair_class
            patch.setitem(sys.modules, "atom3", types.ModuleType("atom3"))
            patch.setitem(sys.modules, "atom3.pair", fake)
            data = pickle.dumps(pair_class("1kq1.pdb1", df0, df1, np.zeros((0, 2)), None, {}, 2), protocol=2)
            assert b"atom3.pair" in data
    path.write_bytes(data)
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def atom3_frames(dips_dir):
    folder = dips_dir / "test_random_transformed"
    return _atom3_frame(folder / f"{DIPS_PAIR}_l_b_COMPLEX.pdb"), _atom3_frame(folder / f"{DIPS_PAIR}_r_b_COMPLEX.pdb")


@pytest.mark.parametrize("style", ["dill", "pickle"])
def test_dips_dill_pair_matches_pdb_pair(tmp_path, monkeypatch, atom3_frames, dips, style):
    folder = tmp_path / "kq"
    folder.mkdir()
    path = folder / "1kq1.pdb1_2.dill"
    checksum = _write_dill_like(path, *atom3_frames, monkeypatch, style)
    assert "dill" not in sys.modules and "atom3.pair" not in sys.modules
    records, skipped = docking.read_dips_shard([path], 0, 1, {"checksums": {path.name: checksum}}, "fail")
    assert skipped == []
    roles = _by_group(records)[DIPS_PAIR]
    assert sorted(roles) == ["ligand_complex", "receptor_complex"]
    reference = _by_group(dips[0])[DIPS_PAIR]
    for role, record in roles.items():
        assert record["id"] == reference[role]["id"]
        assert record["sequence"] == reference[role]["sequence"]
        assert torch.allclose(record["backbone"], reference[role]["backbone"], atol=1e-3, equal_nan=True)
        assert torch.equal(record["interface"], reference[role]["interface"])
        assert record["labels"] == reference[role]["labels"]
        assert record["split"] == "test"  # not in any list passed


def test_dips_dill_checksum_mismatch_refuses_to_unpickle(tmp_path, monkeypatch, atom3_frames):
    path = tmp_path / "1kq1.pdb1_2.dill"
    checksum = _write_dill_like(path, *atom3_frames, monkeypatch, "pickle")
    wrong = "sha256:" + "0" * 64
    loads = []
    monkeypatch.setattr(docking._PairUnpickler, "load", lambda self: loads.append(1))
    records, skipped = docking.read_dips_shard([path], 0, 1, {"checksums": {path.name: wrong}}, "skip")
    assert records == [] and [row["entry"] for row in skipped] == [DIPS_PAIR]
    assert checksum[7:] in skipped[0]["reason"] and "0" * 64 in skipped[0]["reason"]
    with pytest.raises(ChecksumError, match="refusing to unpickle"):
        docking.read_dips_shard([path], 0, 1, {"checksums": {path.name: wrong}}, "fail")
    with pytest.raises(ChecksumError, match="no sha256"):
        docking.read_dips_shard([path], 0, 1, {"checksums": {"other.dill": checksum}}, "fail")
    with pytest.raises(ConfigError, match="checksums"):
        docking.read_dips_shard([path], 0, 1, {}, "skip")
    with pytest.raises(ConfigError, match="sha256:<64 hex digits>"):
        docking.read_dips_shard([path], 0, 1, {"checksums": {path.name: "md5:abc"}}, "skip")
    assert loads == []


def test_dips_dill_foreign_globals_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (shutil.rmtree, (str(tmp_path / "never"),))

    path = tmp_path / "1kq1.pdb1_2.dill"
    data = pickle.dumps(Evil())
    path.write_bytes(data)
    checksum = "sha256:" + hashlib.sha256(data).hexdigest()
    with pytest.raises(GeoplmError, match="not allowed"):
        docking.read_dips_shard([path], 0, 1, {"checksums": {path.name: checksum}}, "fail")


def test_dips_atom3d_layout_table(atom3_frames, dips):
    """ATOM3D's column layout (name, residue int, insertion_code, hetero, ...) reads the same as atom3's."""
    atom3 = atom3_frames[0]
    atom3d = pd.DataFrame(
        {
            "ensemble": "x",
            "subunit": 0,
            "structure": "x",
            "model": 0,
            "chain": atom3["chain"],
            "hetero": " ",
            "insertion_code": " ",
            "residue": atom3["residue"].astype(int),
            "segid": "",
            "resname": atom3["resname"],
            "altloc": "",
            "occupancy": 1.0,
            "bfactor": 0.0,
            "x": atom3["x"],
            "y": atom3["y"],
            "z": atom3["z"],
            "element": atom3["element"],
            "name": atom3["atom_name"],
            "fullname": atom3["atom_name"],
            "serial_number": atom3["aid"].astype(int),
        }
    )
    record = docking.dips_atoms_to_record(atom3d, "x_l", "x.dill")
    reference = _by_group(dips[0])[DIPS_PAIR]["ligand_complex"]
    assert record["sequence"] == reference["sequence"] and record["chains"] == ["B"]
    assert torch.allclose(record["backbone"], reference["backbone"], atol=1e-3, equal_nan=True)


def test_min_contacts_filter_and_shard_round_trip(tmp_path, db5_dir, dips):
    from geoplm.structure import load_shard, save_shard

    files = [db5_dir / f"1AY7_{s}_b.pdb" for s in "rl"]
    records, skipped = docking.read_db5_shard(files, 0, 1, {"min_contacts": 1000}, "skip")
    assert records == [] and skipped[0]["entry"] == "1AY7"
    assert "22 Cα–Cα contacts < 8 Å" in skipped[0]["reason"] and "at least 1000" in skipped[0]["reason"]
    # records (with chains, chain_index, interface, labels) survive torch.load(weights_only=True)
    save_shard(dips[0][:4], tmp_path / "shard.pt")
    loaded = load_shard(tmp_path / "shard.pt")
    assert [r["id"] for r in loaded] == [r["id"] for r in dips[0][:4]]
    assert torch.equal(loaded[0]["interface"], dips[0][0]["interface"])
    assert loaded[0]["chains"] == dips[0][0]["chains"] and loaded[0]["labels"] == dips[0][0]["labels"]
