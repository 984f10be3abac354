"""Tests of geoplm.structure on the real structure files in shared/data."""

from __future__ import annotations

import csv
import gzip
import logging
import math
from pathlib import Path

import pytest
import torch

from geoplm.errors import StructureError
from geoplm.structure import (
    RECORD_KEYS,
    RESIDUE_VOCAB,
    concatenate_chains,
    load_shard,
    parse_structure,
    residue_type_index,
    save_shard,
)

NOT_STRUCTURES = {".dssp", ".json"}

# Chains and their lengths for every structure file of shared/data/pdb and shared/data/alphafold.
# Notes: 1AS5's C-terminal NH2 cap and 2n0n's NH2 are no residues; 1pfe's protein chain B is the
# echinomycin peptide (DSN/N2C/MVA... as X); 11as's HETATM ASN 331 is a bound ligand, not residue
# 331; a_structure (a deliberately broken Biopython test file) has its chains outside its single
# MODEL block, which are read as part of the first model, and its blank chain holds only waters.
EXPECTED_CHAINS = {
    "pdb/103l.cif": {"A": 159},
    "pdb/103l.pdb": {"A": 159},
    "pdb/103l.pdb.gz": {"A": 159},
    "pdb/117e.pdb.gz": {"A": 282, "B": 282},
    "pdb/11as.pdb": {"A": 327, "B": 327},
    "pdb/1A8O.pdb": {"A": 70},
    "pdb/1AS5.cif": {"A": 24},
    "pdb/1GBT.cif": {"A": 223},
    "pdb/1LCD.pdb": {"A": 51},
    "pdb/1S3P-A.pdb": {"A": 109},
    "pdb/1dix.pdb": {"A": 208},
    "pdb/1f2n.pdb": {"A": 189, "B": 189, "C": 212},
    "pdb/1l2y.pdb": {"A": 20},
    "pdb/1lds.pdb": {"A": 97},
    "pdb/1lzh.pdb.gz": {"A": 129, "B": 129},
    "pdb/1o1z.pdb": {"A": 226},
    "pdb/1orc.pdb": {"A": 64},
    "pdb/1pfe.cif.gz": {"B": 8},
    "pdb/2BEG.pdb": {"A": 26, "B": 26, "C": 26, "D": 26, "E": 26},
    "pdb/2J9H-A.pdb": {"A": 209},
    "pdb/2PE5-B.pdb": {"B": 330},
    "pdb/2W83-E.pdb": {"E": 162},
    "pdb/2XHE.pdb": {"A": 567, "B": 220},
    "pdb/2n0n_M1.pdb": {"A": 11},
    "pdb/2olx.pdb": {"A": 4},
    "pdb/3JQH.cif": {"A": 23},
    "pdb/3eiy.pdb": {"A": 174},
    "pdb/4CUP.cif": {"A": 115},
    "pdb/4ZHL.cif": {"U": 247, "P": 10},
    "pdb/4hhb.cif": {"A": 141, "B": 146, "C": 141, "D": 146},
    "pdb/4hhb.pdb": {"A": 141, "B": 146, "C": 141, "D": 146},
    "pdb/5cvz_final.pdb": {"A": 141},
    "pdb/6WQA.cif": {"A": 391},
    "pdb/7CFN.cif": {"A": 232, "B": 339, "G": 58, "N": 128, "R": 274},
    "pdb/7DDO.pdb": {"A": 597, "C": 194},
    "pdb/a_structure.pdb": {"A": 87, "B": 10},
    "pdb/input_pdb_cryst1.pdb": {"L": 112, "H": 123, "A": 223},
    "alphafold/A0A523VPS0.pdb": {"A": 576},
    "alphafold/A0A524LBV7.pdb": {"A": 758},
    "alphafold/AF-A0A1W2PQ64-F1-model_v4.pdb": {"A": 194},
    "alphafold/AF-P00520-F1-model_v3.cif.gz": {"A": 1123},
    "alphafold/AF-P04637-F1-model_v4.pdb": {"A": 393},
    "alphafold/AF-P29373-F1-model_v4.cif.gz": {"A": 138},
    "alphafold/AF-P76011-F1-model_v4.cif": {"A": 84},
    "alphafold/AF-P76011-F1-model_v4.pdb": {"A": 84},
    "alphafold/AF-Q15772-F11-model_v4.cif.gz": {"A": 1267},
    "alphafold/AF-Q15772-F3-model_v4.cif.gz": {"A": 1400},
    "alphafold/AF-Q5T5X7-F1-model_v4.pdb": {"A": 828},
    "alphafold/AF-Q5VSL9-F1-model_v2.pdb": {"A": 837},
    "alphafold/AF-Q5VSL9-F1-model_v3.pdb": {"A": 837},
    "alphafold/AF-Q5VSL9-F1-model_v4.cif": {"A": 837},
    "alphafold/AF-Q8W3K0-F1-model_v4.pdb": {"A": 1138},
    "alphafold/AF-Q96HM7-F1-model_v4.pdb": {"A": 432},
    "alphafold/AF-Q96M98-F1-model_v4.pdb": {"A": 296},
    "alphafold/AF-Q96PD2-F1-model_v4.pdb": {"A": 775},
    "alphafold/AF-Q9P273-F1-model_v4.pdb": {"A": 2699},
    "alphafold/AF-Q9Y5P2-F1-model_v4.pdb": {"A": 127},
    "alphafold/AF-V9WDR2-F1-model_v4.cif": {"A": 152},
    "alphafold/EF2_lokiarchaea.pdb": {"A": 740},
    "alphafold/O05011.pdb": {"A": 411},
    "alphafold/O05012.cif": {"A": 411},
    "alphafold/O05023.cif": {"A": 118},
    "alphafold/O15552.cif": {"A": 330},
    "alphafold/P01308.cif": {"A": 110},
    "alphafold/P04629.pdb": {"A": 796},
    "alphafold/P05067.cif": {"A": 770},
    "alphafold/P60709.pdb": {"A": 375},
    "alphafold/Q7Z6M3.cif": {"A": 343},
    "alphafold/Q7Z6M3.pdb": {"A": 343},
    "alphafold/alphafold.ebi.ac.uk_files_AF-A0A286Q506-F1-model_v4.pdb": {"A": 376},
    "alphafold/alphafold.ebi.ac.uk_files_AF-A0A2Y9FRR4-F1-model_v4.pdb": {"A": 384},
    "alphafold/alphafold.ebi.ac.uk_files_AF-A0A3L8SFX2-F1-model_v4.pdb": {"A": 385},
    "alphafold/alphafold.ebi.ac.uk_files_AF-A0A3P6STH8-F1-model_v4.pdb": {"A": 445},
    "alphafold/alphafold.ebi.ac.uk_files_AF-A0A3Q3SLX0-F1-model_v4.pdb": {"A": 422},
    "alphafold/alphafold.ebi.ac.uk_files_AF-A0A507BZ37-F1-model_v4.pdb": {"A": 507},
    "alphafold/alphafold.ebi.ac.uk_files_AF-D7RIF5-F1-model_v4.pdb": {"A": 375},
    "alphafold/alphafold.ebi.ac.uk_files_AF-I1MDT4-F1-model_v4.pdb": {"A": 377},
    "alphafold/alphafold.ebi.ac.uk_files_AF-P60713-F1-model_v4.pdb": {"A": 375},
    "alphafold/alphafold.ebi.ac.uk_files_AF-Q6QAQ1-F1-model_v4.pdb": {"A": 375},
    "alphafold/foldcomp_test_AF-A0A009DXE7-F1.cif.gz": {"A": 188},
    "alphafold/foldcomp_test_af_AF-A0A0B7P221-F1.pdb": {"A": 28},
}

# Files of shared/data/pdb and shared/data/alphafold that raise StructureError: relative path ->
# substring of the reason. Every one of them parses at present.
EXPECTED_FAILURES: dict[str, str] = {}


@pytest.fixture(scope="module")
def parsed(shared_data):
    """Parse every structure file of pdb/ and alphafold/ once: relative path -> records or error."""
    results = {}
    for folder in ("pdb", "alphafold"):
        for path in sorted((shared_data / folder).iterdir()):
            if path.suffix in NOT_STRUCTURES or not path.is_file():
                continue
            key = f"{folder}/{path.name}"
            try:
                results[key] = parse_structure(path)
            except StructureError as exc:
                results[key] = exc
    return results


@pytest.fixture(scope="module")
def features(shared_data):
    """STRUCTURE_FEATURES.tsv rows by file."""
    with open(shared_data / "STRUCTURE_FEATURES.tsv", newline="") as handle:
        return {row["file"]: row for row in csv.DictReader(handle, delimiter="\t")}


def by_chain(records):
    return {record["chain"]: record for record in records}


def atom_line(path: Path, predicate) -> str:
    """The first ATOM/HETATM line of a (possibly gzipped) PDB file for which predicate holds."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
        for line in handle:
            if line.startswith(("ATOM", "HETATM")) and predicate(line):
                return line
    raise AssertionError(f"no matching line in {path}")


def residue_keys(record) -> list[tuple[int, str]]:
    return list(zip(record["residue_number"].tolist(), record["insertion_code"], strict=True))


def xyz(line: str) -> list[float]:
    return [float(line[30:38]), float(line[38:46]), float(line[46:54])]


def assert_record_consistent(record):
    assert tuple(record) == RECORD_KEYS
    length = len(record["sequence"])
    assert length > 0
    assert set(record["sequence"]) <= set(RESIDUE_VOCAB)
    assert len(record["residue_name"]) == len(record["insertion_code"]) == length
    assert record["residue_number"].dtype == torch.long and record["residue_number"].shape == (length,)
    assert record["backbone"].dtype == torch.float32 and record["backbone"].shape == (length, 4, 3)
    assert record["backbone_mask"].dtype == torch.bool and record["backbone_mask"].shape == (length, 4)
    assert torch.equal(record["backbone_mask"], ~record["backbone"].isnan().any(-1))
    assert torch.equal(record["residue_mask"], record["backbone_mask"][:, :3].all(-1))
    assert record["b_factor"].dtype == torch.float32 and record["b_factor"].shape == (length,)
    assert torch.equal(record["b_factor"].isnan(), ~record["backbone_mask"][:, 1])
    assert isinstance(record["plddt"], bool)
    assert record["id"].endswith("_" + (record["chain"] or "_"))


# ------------------------------------------------------------------------------------------------


def test_residue_vocab_is_torchdrug_order():
    # torchdrug/data/protein.py (commit 09ffe181a3b025a770e157ace3e2f64436b1919d), residue2id, + X.
    assert RESIDUE_VOCAB == "GASPVTCILNDQKEMHFRYWX"
    assert residue_type_index("GAWX").tolist() == [0, 1, 19, 20]
    assert residue_type_index("bzuo*").tolist() == [20, 20, 20, 20, 20]
    assert residue_type_index("gasp").tolist() == [0, 1, 2, 3]
    assert residue_type_index("").shape == (0,)
    assert residue_type_index("MK").dtype == torch.long


def test_every_structure_file_parses_or_fails_as_expected(parsed):
    assert set(parsed) == set(EXPECTED_CHAINS) | set(EXPECTED_FAILURES)
    for key, result in parsed.items():
        if key in EXPECTED_FAILURES:
            assert isinstance(result, StructureError), key
            assert EXPECTED_FAILURES[key] in result.reason, (key, result.reason)
            continue
        assert not isinstance(result, StructureError), (key, result)
        assert {r["chain"]: len(r["sequence"]) for r in result} == EXPECTED_CHAINS[key], key
        assert list(by_chain(result)) == list(EXPECTED_CHAINS[key]), key  # file order
        for record in result:
            assert_record_consistent(record)
            assert record["source"] == Path(key).name
            assert record["plddt"] is key.startswith("alphafold/"), key


def test_modified_residues_map_to_parent(parsed):
    a8o = parsed["pdb/1A8O.pdb"][0]  # HETATM MSE (STRUCTURE_FEATURES het_names)
    mse = [i for i, name in enumerate(a8o["residue_name"]) if name == "MSE"]
    assert [a8o["residue_number"][i].item() for i in mse] == [151, 185, 214, 215]
    assert all(a8o["sequence"][i] == "M" for i in mse)
    assert a8o["residue_mask"].all()

    chains = by_chain(parsed["pdb/a_structure.pdb"])  # PCA (pyroglutamate) and SEP
    assert chains["A"]["residue_name"][0] == "PCA" and chains["A"]["sequence"][0] == "Q"
    sep = chains["B"]["residue_name"].index("SEP")
    assert chains["B"]["sequence"][sep] == "S" and chains["B"]["residue_number"][sep] == 45

    n0n = parsed["pdb/2n0n_M1.pdb"][0]  # AIB -> A; PH8 has no parent -> X; the NH2 cap is dropped
    assert n0n["sequence"] == "HAEGKFTSEFX"
    assert n0n["residue_name"][1] == "AIB" and n0n["residue_name"][-1] == "PH8"

    pfe = parsed["pdb/1pfe.cif.gz"][0]  # echinomycin: N2C/NCY microheterogeneity, keep N2C (0.56)
    assert pfe["sequence"] == "XAXVXAXV"
    assert pfe["residue_name"][:4] == ["DSN", "ALA", "N2C", "MVA"]


def test_ligand_amino_acid_is_not_a_residue(parsed):
    for record in parsed["pdb/11as.pdb"]:  # HETATM ASN 331 is the bound substrate
        assert record["residue_number"][-1].item() == 330
        assert 331 not in record["residue_number"].tolist()


def test_nmr_first_model_only(parsed, shared_data, features):
    assert features["pdb/1l2y.pdb"]["models"] == "38"
    (record,) = parsed["pdb/1l2y.pdb"]
    assert record["sequence"] == "NLYIQWLKDGGPSSGRPPPS"
    first_n = atom_line(shared_data / "pdb/1l2y.pdb", lambda line: line[12:16] == " N  ")
    assert record["backbone"][0, 0].tolist() == pytest.approx(xyz(first_n), abs=1e-3)


def test_ca_only_model_is_masked_and_logged(parsed, shared_data, caplog):
    for record in parsed["pdb/1lzh.pdb.gz"]:
        assert not record["residue_mask"].any()
        assert record["backbone_mask"][:, 1].all()
        assert not record["backbone_mask"][:, [0, 2, 3]].any()
        assert not record["b_factor"].isnan().any()
    first_ca = atom_line(shared_data / "pdb/1lzh.pdb.gz", lambda line: line[12:16] == " CA ")
    assert parsed["pdb/1lzh.pdb.gz"][0]["backbone"][0, 1].tolist() == pytest.approx(xyz(first_ca), abs=1e-3)
    with caplog.at_level(logging.WARNING, logger="geoplm.structure"):
        parse_structure(shared_data / "pdb/1lzh.pdb.gz", chains=["B"])
    assert any("1lzh.pdb.gz" in m and "'B'" in m and "129 of 129" in m for m in caplog.messages)


def test_altloc_tie_keeps_first(parsed, shared_data):
    # 7DDO HIS A 228: CA altlocs A and B both at occupancy 0.50 -> A (the first).
    record = by_chain(parsed["pdb/7DDO.pdb"])["A"]
    i = record["residue_number"].tolist().index(228)
    line = atom_line(shared_data / "pdb/7DDO.pdb", lambda l: l[12:27] == " CA AHIS A 228 ")
    assert record["backbone"][i, 1].tolist() == pytest.approx(xyz(line), abs=1e-3)


def test_altloc_keeps_highest_occupancy(shared_data, tmp_path):
    # The residues 227-229 of 7DDO chain A with the altloc occupancies of HIS 228 changed to
    # A 0.30 / B 0.70: the B coordinates must be kept.
    lines = [
        line
        for line in (shared_data / "pdb/7DDO.pdb").read_text().splitlines()
        if line.startswith("ATOM") and line[21] == "A" and 227 <= int(line[22:26]) <= 229
    ]
    edited = []
    for line in lines:
        if line[16] in "AB":
            line = line[:54] + ("  0.30" if line[16] == "A" else "  0.70") + line[60:]
        edited.append(line)
    path = tmp_path / "altloc.pdb"
    path.write_text("\n".join(edited) + "\nEND\n")
    (record,) = parse_structure(path)
    ca_b = next(l for l in edited if l[12:27] == " CA BHIS A 228 ")
    assert record["backbone"][1, 1].tolist() == pytest.approx(xyz(ca_b), abs=1e-3)


def test_point_mutation_keeps_highest_occupancy(parsed, shared_data, tmp_path):
    # a_structure residue A 10: GLY (altloc A, 0.67) and SER (altloc B, 0.33).
    record = by_chain(parsed["pdb/a_structure.pdb"])["A"]
    i = record["residue_number"].tolist().index(10)
    assert record["residue_name"][i] == "GLY"
    n_a = atom_line(shared_data / "pdb/a_structure.pdb", lambda l: l[12:27] == " N  AGLY A  10 ")
    assert record["backbone"][i, 0].tolist() == pytest.approx(xyz(n_a), abs=1e-3)

    # The same two residues with the occupancies swapped: SER is kept.
    lines = [
        line[:54] + ("  0.33" if line[16] == "A" else "  0.67") + line[60:]
        for line in (shared_data / "pdb/a_structure.pdb").read_text().splitlines()
        if line.startswith("ATOM") and line[21] == "A" and line[22:26] == "  10"
    ]
    path = tmp_path / "mutation.pdb"
    path.write_text("\n".join(lines) + "\n")
    (record,) = parse_structure(path)
    assert record["residue_name"] == ["SER"] and record["sequence"] == "S"


def test_insertion_codes_preserved(parsed):
    l103 = parsed["pdb/103l.pdb"][0]
    keys = residue_keys(l103)
    i = keys.index((40, "A"))  # T4 lysozyme insertion mutant: 34, 40A, 40B, 40C, 41
    assert keys[i - 1 : i + 4] == [
        (34, ""),
        (40, "A"),
        (40, "B"),
        (40, "C"),
        (41, ""),
    ]
    assert sum(1 for code in l103["insertion_code"] if code) == 3

    n0n = parsed["pdb/2n0n_M1.pdb"][0]
    assert residue_keys(n0n)[8:10] == [(9, ""), (9, "A")]
    b = by_chain(parsed["pdb/a_structure.pdb"])["B"]
    assert (51, "A") in residue_keys(b)


def test_blank_chain(shared_data, features):
    # a_structure's blank chain holds only waters: present, but no protein chain.
    with pytest.raises(StructureError, match="no amino-acid residues"):
        parse_structure(shared_data / "pdb/a_structure.pdb", chains=[""])

    path = shared_data / "casp/T0980s1/models/AWSEM-Suite_TS4"  # CASP TS model, no extension
    (record,) = parse_structure(path)
    assert record["chain"] == "" and record["id"] == "AWSEM-Suite_TS4__"
    assert len(record["sequence"]) == int(features["casp/T0980s1/models/AWSEM-Suite_TS4"]["residues"])
    assert record["residue_mask"].all() and not record["plddt"]
    assert_record_consistent(record)
    for alias in ("_", " ", ""):
        assert parse_structure(path, chains=[alias])[0]["id"] == record["id"]


def test_short_peptide(parsed):
    (record,) = parsed["pdb/2olx.pdb"]
    assert record["sequence"] == "NNQQ"
    assert record["residue_number"].tolist() == [1, 2, 3, 4]
    assert record["residue_mask"].all()


def test_pdb_and_mmcif_agree(parsed):
    # 103l: the same deposition as PDB and mmCIF -> identical records but for the source.
    for pdb, cif in zip(parsed["pdb/103l.pdb"], parsed["pdb/103l.cif"], strict=True):
        for key in RECORD_KEYS:
            if key != "source":
                assert_equal(pdb[key], cif[key], key)

    # 4hhb: the mmCIF is a later remediation (2021) whose coordinates are in another frame, so
    # sequences, names, numbers, masks and B-factors agree and coordinates agree up to one rigid
    # motion of the whole structure (the files have 3 decimals).
    pdb, cif = parsed["pdb/4hhb.pdb"], parsed["pdb/4hhb.cif"]
    assert [r["chain"] for r in pdb] == [r["chain"] for r in cif] == ["A", "B", "C", "D"]
    for a, b in zip(pdb, cif, strict=True):
        for key in ("id", "sequence", "residue_name", "residue_number", "insertion_code"):
            assert_equal(a[key], b[key], key)
        for key in ("backbone_mask", "b_factor", "residue_mask"):
            assert_equal(a[key], b[key], key)
    p = torch.cat([r["backbone"][r["backbone_mask"]] for r in pdb]).double()
    q = torch.cat([r["backbone"][r["backbone_mask"]] for r in cif]).double()
    assert superposition_max_deviation(p, q) < 0.005


def test_gzipped_equals_plain(parsed):
    for plain, gz in zip(parsed["pdb/103l.pdb"], parsed["pdb/103l.pdb.gz"], strict=True):
        assert gz["source"] == "103l.pdb.gz" and plain["source"] == "103l.pdb"
        for key in RECORD_KEYS:
            if key != "source":
                assert_equal(plain[key], gz[key], key)


def test_alphafold_plddt(parsed, shared_data, features):
    for key, records in parsed.items():
        if key.startswith("alphafold/"):
            for record in records:
                assert record["plddt"] is True, key
                assert record["b_factor"].min() >= 0 and record["b_factor"].max() <= 100, key
    record = parsed["alphafold/AF-Q5VSL9-F1-model_v3.pdb"][0]
    first_ca = atom_line(shared_data / "alphafold/AF-Q5VSL9-F1-model_v3.pdb", lambda l: l[12:16] == " CA ")
    assert record["b_factor"][0].item() == pytest.approx(float(first_ca[60:66]))
    for fragment in ("F3", "F11"):
        key = f"alphafold/AF-Q15772-{fragment}-model_v4.cif.gz"
        (record,) = parsed[key]
        assert len(record["sequence"]) == int(features[key]["residues"])
        assert record["id"] == f"AF-Q15772-{fragment}-model_v4_A"
    # Renamed AFDB file (no AF- name): detected from its ALPHAFOLD header.
    assert parsed["alphafold/P04629.pdb"][0]["plddt"] is True


def test_chain_selection(shared_data):
    path = shared_data / "pdb/4hhb.pdb"
    assert [r["id"] for r in parse_structure(path, chains=["D", "B"])] == ["4hhb_B", "4hhb_D"]
    with pytest.raises(StructureError) as info:
        parse_structure(path, chains=["A", "Z"])
    assert "'Z'" in info.value.reason and "'A', 'B', 'C', 'D'" in info.value.reason
    assert info.value.path == str(path)
    (record,) = parse_structure(path, chains=["C"], source="custom")
    assert record["source"] == "custom"


def test_bad_input_raises_structure_error(shared_data, tmp_path):
    truncated = tmp_path / "103l.pdb.gz"
    data = (shared_data / "pdb/103l.pdb.gz").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    empty = tmp_path / "empty.pdb"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.pdb"
    garbage.write_text("this is not\na structure file\n")
    garbage_cif = tmp_path / "garbage.cif"
    garbage_cif.write_text("this is not\nan mmCIF file\n")
    truncated_cif = tmp_path / "103l.cif"
    text = (shared_data / "pdb/103l.cif").read_text()
    truncated_cif.write_text(text[: text.index("_atom_site.") + 3000])
    waters = tmp_path / "waters.pdb"
    waters.write_text(
        "".join(
            line + "\n"
            for line in (shared_data / "pdb/103l.pdb").read_text().splitlines()
            if line.startswith("HETATM") and line[17:20] == "HOH"
        )
    )
    not_gzip = tmp_path / "plain.pdb.gz"
    not_gzip.write_bytes((shared_data / "pdb/2olx.pdb").read_bytes())
    binary = tmp_path / "binary.pdb"
    binary.write_bytes(bytes(range(256)) * 4)

    cases = {
        truncated: "truncated gzip",
        empty: "empty file",
        garbage: "no ATOM/HETATM records",
        garbage_cif: "cannot parse as mmCIF",
        truncated_cif: "cannot parse as mmCIF",
        waters: "no protein chain",
        not_gzip: "not a gzip file",
        binary: "binary",
        tmp_path / "missing.pdb": "cannot read file",
    }
    for path, reason in cases.items():
        with pytest.raises(StructureError) as info:
            parse_structure(path)
        assert info.value.path == str(path)
        assert str(path) in str(info.value)
        assert reason in info.value.reason, (path.name, info.value.reason)


def test_shard_round_trip(parsed, tmp_path):
    records = parsed["pdb/4hhb.pdb"] + parsed["pdb/1lzh.pdb.gz"] + parsed["alphafold/P04629.pdb"]
    path = tmp_path / "shards" / "shard.pt"
    save_shard(records, path)
    assert [p.name for p in path.parent.iterdir()] == ["shard.pt"]  # no temporary file left
    for loaded in (load_shard(path), torch.load(path, weights_only=True)):
        assert len(loaded) == len(records)
        for a, b in zip(records, loaded, strict=True):
            assert list(b) == list(RECORD_KEYS)
            for key in RECORD_KEYS:
                assert_equal(a[key], b[key], key)


def test_load_shard_rejects_other_files(tmp_path):
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(StructureError, match="not a shard"):
        load_shard(path)
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("not a torch file")
    with pytest.raises(StructureError, match="cannot load shard"):
        load_shard(garbage)
    with pytest.raises(StructureError, match="lacks keys"):
        save_shard([{"id": "x"}], tmp_path / "bad.pt")


# ------------------------------------------------------------------------------------------------


def assert_equal(a, b, key):
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, key
        if a.is_floating_point():
            assert torch.equal(a.isnan(), b.isnan()), key
            assert torch.equal(a.nan_to_num(), b.nan_to_num()), key
        else:
            assert torch.equal(a, b), key
    else:
        assert type(a) is type(b) and a == b, key


def superposition_max_deviation(p: torch.Tensor, q: torch.Tensor) -> float:
    """Largest atom deviation (Å) after the optimal rigid superposition of p onto q (Kabsch)."""
    p = p - p.mean(0)
    q = q - q.mean(0)
    u, _, vt = torch.linalg.svd(p.T @ q)
    d = torch.sign(torch.linalg.det(u @ vt)).item()
    rotation = u @ torch.diag(torch.tensor([1.0, 1.0, d], dtype=p.dtype)) @ vt
    deviation = (p @ rotation - q).norm(dim=1).max().item()
    assert math.isfinite(deviation)
    return deviation


def test_concatenate_chains_keeps_every_record_key_in_order(shared_data):
    """Several chains as one protein (docking partners, pockets): every key, residues in chain order."""
    chains = parse_structure(shared_data / "pdb" / "4hhb.cif")
    merged = concatenate_chains(chains, "4hhb", "4hhb.cif")
    assert set(RECORD_KEYS) <= set(merged)
    assert merged["sequence"] == "".join(c["sequence"] for c in chains)
    assert merged["backbone"].shape == (len(merged["sequence"]), 4, 3)
    assert torch.bincount(merged["chain_index"]).tolist() == [len(c["sequence"]) for c in chains]
    with pytest.raises(StructureError, match="no chain records"):
        concatenate_chains([], "none", "x.pdb")
