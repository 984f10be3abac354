"""PDBbind protein–ligand complexes (LBA: ligand binding affinity) read into residue records.

Layout (PDBbind readme ``PDBbind-101.txt``, v.2020, Part III): one folder per complex named after
its PDB code, holding ``{id}_protein.pdb`` (the biological unit; DiffDock's copies name it
``{id}_protein_processed.pdb``), ``{id}_pocket.pdb`` (every residue within 10 Å of the ligand) and the
ligand as ``{id}_ligand.sdf`` (neutral form, since v.2020) and ``{id}_ligand.mol2`` (protonated,
Gasteiger-Hückel charges). Affinities come from the INDEX files (Part II; :func:`read_index`) or from
two-column label tables such as GIGN's ``GIGN_*.csv`` (``pdbid,-logKd/Ki``; repository
guaguabujianle/GIGN, ``data/*.csv``, commit ef514d326202d71b0674ae20e95456454bf10c6e;
:func:`read_label_table`).

:func:`read_shard` (reader ``pdbbind``) makes one record per complex: the pocket (default, as in
ATOM3D LBA, Townshend et al. 2021, and Wu et al. 2023, which embed the pocket residues) or the whole
protein, parsed with :func:`geoplm.structure.parse_structure`, its chains merged into one record
(:func:`merge_chain_records`), plus the ligand's heavy atoms read with RDKit (:func:`read_ligand`).

PDBbind is licensed (registration at http://www.pdbbind.org.cn/): the workflow cannot download it;
:func:`missing_archive_message` says where to get it and where to put it.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from geoplm.datasets.generic import check_on_error, check_shard, deal, expand_files
from geoplm.errors import ConfigError, GeoplmError, StructureError
from geoplm.structure import concatenate_chains, parse_structure

logger = logging.getLogger(__name__)

#: Columns of :func:`read_index`'s DataFrame (and of :func:`read_label_table`'s, where the table
#: lacks a value it is NaN / ``""``).
INDEX_COLUMNS: tuple[str, ...] = (
    "pdb_code",  # str, lower case (e.g. "1a61")
    "resolution",  # float, Å; NaN for NMR structures ("NMR" in the file)
    "release_year",  # int (-1 where the table has none)
    "neg_log_affinity",  # float, -log10(Kd/Ki/IC50 in M) as given in the file (the "-logKd/Ki" column)
    "affinity",  # str, the raw measurement, e.g. "Kd=1.2nM", "Ki<10uM", "IC50~3mM"
    "affinity_type",  # str: "Kd", "Ki", "IC50" ("" where unknown)
    "relation",  # str: "=", "<", ">", "<=", ">=", "~" ("" where unknown)
    "affinity_molar",  # float, the value converted to mol/L (NaN where unknown)
    "reference",  # str, the reference after "//" (e.g. "4yee.pdf")
    "ligand_name",  # str, the name in parentheses: a 3-letter HET code ("4CQ") or "(n-mer)" peptides
    "note",  # str, free text after the ligand name (e.g. "incomplete ligand structure")
    "source",  # str, the file the row comes from
    "line",  # int, 1-based line number in that file
)

#: Affinity units (PDBbind INDEX files use fM .. M) -> factor to mol/L.
UNITS: dict[str, float] = {"fM": 1e-15, "pM": 1e-12, "nM": 1e-9, "uM": 1e-6, "µM": 1e-6, "mM": 1e-3, "M": 1.0}
AFFINITY_TYPES: tuple[str, ...] = ("Kd", "Ki", "IC50")
#: Default largest |-log10(value in M) - given -logK| accepted by :func:`read_index` (the files round
#: -logK to two decimals).
DEFAULT_TOLERANCE = 0.015

_AFFINITY = re.compile(
    r"^(?P<type>Kd|Ki|IC50)(?P<relation><=|>=|=|<|>|~)(?P<value>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+)"
    r"(?P<unit>fM|pM|nM|uM|µM|mM|M)$"
)
_PDB_CODE = re.compile(r"^[0-9][A-Za-z0-9]{3}$")
_LIGAND_SUFFIXES = (".sdf", ".mol2")
_PROTEIN_SUFFIXES = ("_protein_processed.pdb", "_protein.pdb")
_POCKET_SUFFIX = "_pocket.pdb"
_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_OPTIONS = ("protein", "labels", "splits", "tolerance", "subset")
#: Default ``labels`` option: file-name patterns of the INDEX data files of every PDBbind version
#: (``INDEX_general_PL_data.2020``, ``INDEX_refined_data.2016``, ``INDEX.2007.refined.data``, ...).
DEFAULT_LABEL_PATTERNS: tuple[str, ...] = ("INDEX*data*",)
PDBBIND_URL = "http://www.pdbbind.org.cn/"


class PDBbindError(GeoplmError):
    """A PDBbind file, complex or label cannot be used.

    Args:
        path: the file (or complex folder) concerned.
        reason: why, in words.
        entry: the complex (PDB code), where known.
        line: the 1-based line number in ``path``, where known.
    """

    def __init__(self, path, reason: str, entry: str | None = None, line: int | None = None):
        self.path = str(path)
        self.reason = reason
        self.entry = entry
        self.line = line
        where = self.path if line is None else f"{self.path}:{line}"
        if entry is not None:
            where = f"{where} ({entry})"
        super().__init__(f"{where}: {reason}")


def missing_archive_message(source_name: str, expected_path: str | Path) -> str:
    """The error text for a PDBbind download that is absent (PDBbind cannot be fetched automatically).

    Args:
        source_name: the config's source name (e.g. ``pdbbind_refined_2020``).
        expected_path: where the workflow looks for the archive (the source's mirror/download path).

    Returns:
        A message naming the source, where to get PDBbind (http://www.pdbbind.org.cn/, free
        registration, licence accepted) and where to place the archive or its extracted folder.
    """
    return (
        f"source '{source_name}': the PDBbind archive is not at {expected_path}. PDBbind is licensed and "
        f"cannot be downloaded automatically: register (free for academic use) at {PDBBIND_URL}, download "
        f"the package (e.g. the refined set 'PDBbind_v2020_refined.tar.gz' and the index files "
        f"'PDBbind_v2020_plain_text_index.tar.gz'), and place the archive -- or the folder extracted from "
        f"it, one sub-folder per complex with {{id}}_pocket.pdb, {{id}}_protein.pdb, {{id}}_ligand.sdf/.mol2 "
        f"-- at {expected_path}; then rerun the workflow."
    )


# --------------------------------------------------------------------------------------------------
# affinities and INDEX files


def parse_affinity(text: str) -> tuple[str, str, float]:
    """Split a PDBbind affinity string into (type, relation, value in mol/L).

    Args:
        text: e.g. ``"Kd=1.2nM"``, ``"Ki<10uM"``, ``"IC50~3mM"``, ``"Kd>=0.5fM"``; types Kd, Ki, IC50;
            relations ``= < > <= >= ~``; units fM, pM, nM, uM (µM), mM, M (:data:`UNITS`).

    Returns:
        (``"Kd"``/``"Ki"``/``"IC50"``, relation, molar value); -log10 of the value is the -logKd/Ki
        column of the INDEX files.

    Raises:
        ValueError: the string does not have that form, or the value is not positive.
    """
    match = _AFFINITY.match(text.strip())
    if match is None:
        raise ValueError(f"affinity {text!r} is not <Kd|Ki|IC50><=|<|>|<=|>=|~><number><fM|pM|nM|uM|mM|M>")
    value = float(match["value"]) * UNITS[match["unit"]]
    if not value > 0:
        raise ValueError(f"affinity {text!r} is not positive")
    return match["type"], match["relation"], value


def _parse_index_line(line: str) -> dict[str, Any]:
    """Fields of one INDEX data line; raises ValueError with the reason."""
    head, _, tail = line.partition("//")
    fields = head.split()
    if len(fields) == 5:  # PDB code, resolution, year, -logKd/Ki, Kd/Ki (the *_data files)
        code, resolution, year, neg_log, affinity = fields
    elif len(fields) == 4:  # INDEX_general_PL.2020 style: no -logK column, computed from the affinity
        code, resolution, year, affinity = fields
        neg_log = None
    else:
        raise ValueError(
            f"expected 'PDB code, resolution, release year, -logKd/Ki, Kd/Ki // reference (ligand)', "
            f"got {len(fields)} fields before '//'"
        )
    if not _PDB_CODE.match(code):
        raise ValueError(f"{code!r} is not a PDB code")
    if resolution.upper() == "NMR":
        res = math.nan
    else:
        try:
            res = float(resolution)
        except ValueError:
            raise ValueError(f"resolution {resolution!r} is neither a number nor NMR") from None
    try:
        release_year = int(year)
    except ValueError:
        raise ValueError(f"release year {year!r} is not an integer") from None
    affinity_type, relation, molar = parse_affinity(affinity)
    computed = -math.log10(molar)
    if neg_log is None:
        neg_log_value = round(computed, 2)
    else:
        try:
            neg_log_value = float(neg_log)
        except ValueError:
            raise ValueError(f"-logKd/Ki {neg_log!r} is not a number") from None
    tail = tail.strip()
    reference, ligand_name, note = "", "", ""
    if tail:
        parts = tail.split(None, 1)
        if parts[0].startswith("("):
            rest = tail
        else:
            reference = parts[0]
            rest = parts[1] if len(parts) > 1 else ""
        ligand = re.match(r"^\((?P<name>[^)]*)\)\s*(?P<note>.*)$", rest)
        if ligand:
            ligand_name, note = ligand["name"].strip(), ligand["note"].strip()
        else:
            note = rest.strip()
    return {
        "pdb_code": code.lower(),
        "resolution": res,
        "release_year": release_year,
        "neg_log_affinity": neg_log_value,
        "affinity": affinity,
        "affinity_type": affinity_type,
        "relation": relation,
        "affinity_molar": molar,
        "reference": reference,
        "ligand_name": ligand_name,
        "note": note,
        "_computed": computed,
    }


def read_index(path: str | Path, tolerance: float | None = DEFAULT_TOLERANCE) -> pd.DataFrame:
    """Read a PDBbind INDEX file (2007, 2013, 2016 or 2020 format) into a DataFrame.

    Format (``PDBbind-101.txt`` Part II; the genuine files of ODDT's test data, repository oddt/oddt,
    ``tests/data/pdbbind/``, commit bfbf9ea99768b556684dc99c6ac87a9f16b16f80): ``#`` comment lines, then
    one complex per line, whitespace-separated ::

        4yef  1.72  2015   5.35  Kd=4.44uM     // 4yee.pdf (4CQ)
        1k9q   NMR  2001   3.15  Kd=700uM      // 1k9q.pdf (7-mer)

    i.e. PDB code, resolution (Å, or ``NMR``), release year, -logKd/Ki, the measurement (Kd/Ki/IC50,
    relation, value, unit), ``//``, the reference, the ligand name in parentheses (a HET code, or
    ``n-mer`` for peptides) and optional notes. Files without the -logKd/Ki column
    (``INDEX_general_PL.2020``) are read too; -logK is then computed (rounded to 2 decimals).

    Args:
        path: the INDEX file.
        tolerance: largest accepted difference between -log10(the measurement in M) and the given
            -logKd/Ki; None skips the check.

    Returns:
        DataFrame with the columns :data:`INDEX_COLUMNS`, one row per complex in file order
        (``resolution`` NaN for NMR, ``affinity_molar`` in mol/L).

    Raises:
        PDBbindError: the file cannot be read, or a line is malformed (wrong field count, bad PDB code,
            resolution, year, number or affinity string, unknown unit) or its -logKd/Ki disagrees with
            its measurement; the message names the file and the line number.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise PDBbindError(path, f"cannot read INDEX file: {exc.strerror or exc}") from exc
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            row = _parse_index_line(stripped)
        except ValueError as exc:
            raise PDBbindError(path, f"malformed INDEX line {stripped[:80]!r}: {exc}", line=number) from exc
        computed = row.pop("_computed")
        if tolerance is not None and abs(computed - row["neg_log_affinity"]) > tolerance:
            raise PDBbindError(
                path,
                f"-logKd/Ki {row['neg_log_affinity']} disagrees with {row['affinity']} "
                f"(-log10 = {computed:.3f}, tolerance {tolerance})",
                entry=row["pdb_code"],
                line=number,
            )
        row["source"] = str(path)
        row["line"] = number
        rows.append(row)
    return pd.DataFrame(rows, columns=list(INDEX_COLUMNS))


def read_label_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV/TSV label table of PDB codes and -logK values (e.g. GIGN's ``train.csv``).

    The table has a header; the PDB code column is the first of ``pdbid``, ``pdb_code``, ``pdb``,
    ``id``, ``complex_name``, and the label column the first of ``-logKd/Ki`` (GIGN), ``-logK``,
    ``neg_log_affinity``, ``affinity``, ``label``, ``pK`` (case-insensitive).

    Returns:
        DataFrame with the columns :data:`INDEX_COLUMNS` (``affinity`` ``""`` and the other
        measurement columns NaN/empty: such tables hold -logK only).

    Raises:
        PDBbindError: the file cannot be read, lacks those columns, or has a non-numeric label or an
            empty PDB code (the message names the file and the line).
    """
    path = Path(path)
    sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    try:
        table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, comment=None)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise PDBbindError(path, f"cannot read label table: {exc}") from exc
    lowered = {column.strip().lower(): column for column in table.columns}
    id_column = next((lowered[c] for c in ("pdbid", "pdb_code", "pdb", "id", "complex_name") if c in lowered), None)
    value_column = next(
        (lowered[c] for c in ("-logkd/ki", "-logk", "neg_log_affinity", "affinity", "label", "pk") if c in lowered),
        None,
    )
    if id_column is None or value_column is None:
        raise PDBbindError(
            path,
            f"label table needs a PDB code column (pdbid) and a -logK column (-logKd/Ki); has {list(table.columns)}",
        )
    rows = []
    for index, (code, value) in enumerate(zip(table[id_column], table[value_column], strict=True)):
        line = index + 2  # header is line 1
        code = code.strip().lower()
        if not code:
            raise PDBbindError(path, "empty PDB code", line=line)
        try:
            number = float(value)
        except ValueError:
            raise PDBbindError(path, f"label {value!r} is not a number", entry=code, line=line) from None
        rows.append(
            {
                "pdb_code": code,
                "resolution": math.nan,
                "release_year": -1,
                "neg_log_affinity": number,
                "affinity": "",
                "affinity_type": "",
                "relation": "",
                "affinity_molar": math.nan,
                "reference": "",
                "ligand_name": "",
                "note": "",
                "source": str(path),
                "line": line,
            }
        )
    return pd.DataFrame(rows, columns=list(INDEX_COLUMNS))


def read_labels(paths: Sequence[str | Path], tolerance: float | None = DEFAULT_TOLERANCE) -> pd.DataFrame:
    """Labels of several INDEX files and/or label tables, one row per PDB code.

    Files ending in ``.csv``/``.tsv`` are read with :func:`read_label_table`, others with
    :func:`read_index`. A code listed in several files (e.g. the general, refined and core sets, or
    two GIGN tables) keeps its first row, preferring a row with a measurement string; the values must
    agree within 0.01.

    Returns:
        DataFrame with the columns :data:`INDEX_COLUMNS`, indexed by ``pdb_code``.

    Raises:
        PDBbindError: from the readers, or a code whose -logK differs between two files (the message
            names both files and lines).
    """
    frames = []
    for path in paths:
        path = Path(path)
        if path.suffix.lower() in (".csv", ".tsv", ".tab"):
            frames.append(read_label_table(path))
        else:
            frames.append(read_index(path, tolerance))
    if not frames:
        return pd.DataFrame(columns=list(INDEX_COLUMNS)).set_index("pdb_code", drop=False)
    table = pd.concat(frames, ignore_index=True)
    kept: dict[str, dict[str, Any]] = {}
    for row in table.to_dict("records"):
        code = row["pdb_code"]
        first = kept.get(code)
        if first is None:
            kept[code] = row
            continue
        if abs(first["neg_log_affinity"] - row["neg_log_affinity"]) > 0.01 + 1e-9:
            raise PDBbindError(
                row["source"],
                f"-logK {row['neg_log_affinity']} disagrees with {first['neg_log_affinity']} in "
                f"{first['source']}:{first['line']}",
                entry=code,
                line=row["line"],
            )
        if not first["affinity"] and row["affinity"]:
            kept[code] = row
    result = pd.DataFrame(list(kept.values()), columns=list(INDEX_COLUMNS))
    return result.set_index("pdb_code", drop=False)


# --------------------------------------------------------------------------------------------------
# ligands


def _ligand_from_mol(mol, path: Path) -> dict[str, Any]:
    from rdkit import Chem

    heavy = [atom.GetIdx() for atom in mol.GetAtoms() if atom.GetAtomicNum() != 1]
    if not heavy:
        raise ValueError("no heavy atoms")
    new_index = {old: new for new, old in enumerate(heavy)}
    positions = mol.GetConformer().GetPositions()[heavy]
    kekule = Chem.Mol(mol)
    Chem.Kekulize(kekule, clearAromaticFlags=True)
    bonds, aromatic = [], []
    for bond, kek_bond in zip(mol.GetBonds(), kekule.GetBonds(), strict=True):
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        if i not in new_index or j not in new_index:
            continue
        bonds.append([new_index[i], new_index[j], int(round(kek_bond.GetBondTypeAsDouble()))])
        aromatic.append(bond.GetIsAromatic())
    atoms = [mol.GetAtomWithIdx(i) for i in heavy]
    # every atom with hydrogens, as ATOM3D's LBA ligand tables hold them (atom3d ``SDFDataset``: the SDF read
    # with its hydrogens, then ``formats.mol_to_df(add_hs=True)``: RDKit ``AddHs(addCoords=True)``): the
    # file's atoms in file order, then any hydrogen RDKit adds
    with_h = Chem.AddHs(mol, addCoords=True)
    return {
        "position": torch.tensor(np.asarray(positions), dtype=torch.float32),
        "element": [atom.GetSymbol() for atom in atoms],
        "position_with_h": torch.tensor(np.asarray(with_h.GetConformer().GetPositions()), dtype=torch.float32),
        "element_with_h": [atom.GetSymbol() for atom in with_h.GetAtoms()],
        "atomic_number": torch.tensor([atom.GetAtomicNum() for atom in atoms], dtype=torch.long),
        "formal_charge": torch.tensor([atom.GetFormalCharge() for atom in atoms], dtype=torch.long),
        "bonds": torch.tensor(bonds, dtype=torch.long).reshape(-1, 3),
        "bond_aromatic": torch.tensor(aromatic, dtype=torch.bool),
        "smiles": Chem.MolToSmiles(Chem.RemoveAllHs(mol)),
        "source": path.name,
    }


def _read_mol(path: Path):
    """(mol, None) or (None, reason) for an SDF/MOL2 file, read unsanitised then sanitised."""
    from rdkit import Chem, rdBase

    with rdBase.BlockLogs():
        if path.suffix.lower() == ".sdf":
            try:
                supplier = Chem.SDMolSupplier(str(path), sanitize=False, removeHs=False)
                mol = next(iter(supplier), None) if len(supplier) else None
            except OSError as exc:
                return None, f"cannot read {path.name}: {exc}"
        else:
            mol = Chem.MolFromMol2File(str(path), sanitize=False, removeHs=False)
        if mol is None:
            return None, f"RDKit cannot parse {path.name}"
        if mol.GetNumConformers() == 0:
            return None, f"{path.name} has no coordinates"
        mol = _plain_copy(mol)
        try:
            Chem.SanitizeMol(mol)
        except Exception as exc:  # rdkit raises AtomValenceException, KekulizeException, ...
            return None, f"RDKit cannot sanitise {path.name}: {str(exc).strip()}"
        Chem.AssignStereochemistryFrom3D(mol)
    return mol, None


def _plain_copy(mol):
    """``mol`` rebuilt from plain atoms and bonds (element, formal charge, isotope, bond type, 3D
    coordinates), so that MDL query features some PDBbind SDFs carry (hydrogen-count fields written
    by X-TOOL) do not block hydrogen removal and aromaticity perception."""
    from rdkit import Chem

    plain = Chem.RWMol()
    for atom in mol.GetAtoms():
        new = Chem.Atom(atom.GetAtomicNum())
        new.SetFormalCharge(atom.GetFormalCharge())
        new.SetIsotope(atom.GetIsotope())
        new.SetIsAromatic(atom.GetIsAromatic())
        plain.AddAtom(new)
    for bond in mol.GetBonds():
        plain.AddBond(bond.GetBeginAtomIdx(), bond.GetEndAtomIdx(), bond.GetBondType())
        if bond.GetIsAromatic():
            plain.GetBondBetweenAtoms(bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()).SetIsAromatic(True)
    conformer = Chem.Conformer(mol.GetConformer())
    conformer.Set3D(True)
    plain.AddConformer(conformer, assignId=True)
    return plain.GetMol()


def read_ligand(sdf: str | Path | None, mol2: str | Path | None = None) -> dict[str, Any]:
    """The heavy atoms and bonds of a PDBbind ligand, read with RDKit: the SDF first, the MOL2 if
    the SDF is absent or RDKit cannot parse or sanitise it.

    Args:
        sdf: ``{id}_ligand.sdf`` (the first molecule is read) or None.
        mol2: ``{id}_ligand.mol2`` or None.

    Returns:
        ``{"position": FloatTensor (A, 3) Å, "element": list[str] (A), "atomic_number": LongTensor (A,),
        "formal_charge": LongTensor (A,), "bonds": LongTensor (B, 3) rows [i, j, bond order 1/2/3 of
        the Kekulé form], "bond_aromatic": BoolTensor (B,), "smiles": str (canonical, hydrogens
        removed), "position_with_h": FloatTensor (A + H, 3) Å and "element_with_h": list[str] (A + H), every atom
        with hydrogens as ATOM3D's LBA ligand tables hold them (the file's atoms in file order, then the hydrogens
        RDKit's ``AddHs(addCoords=True)`` adds: atom3d ``formats.mol_to_df``), "source": the file name read}``;
        A = heavy atoms in file order (hydrogens dropped),
        B = bonds between heavy atoms.

    Raises:
        PDBbindError: neither file exists, or RDKit can read neither (the message gives each file's
            reason, e.g. ``Explicit valence for atom # 27 N, 4, is greater than permitted``).
    """
    reasons = []
    for path in (sdf, mol2):
        if path is None:
            continue
        path = Path(path)
        if not path.is_file():
            reasons.append(f"{path.name} absent")
            continue
        mol, reason = _read_mol(path)
        if mol is None:
            reasons.append(reason)
            continue
        try:
            return _ligand_from_mol(mol, path)
        except Exception as exc:  # Kekulize failures, missing conformer
            reasons.append(f"{path.name}: {type(exc).__name__}: {exc}")
    where = Path(sdf) if sdf is not None else Path(mol2) if mol2 is not None else Path("?")
    if not reasons:
        reasons.append("no ligand file (.sdf or .mol2)")
    raise PDBbindError(where, "ligand unusable: " + "; ".join(reasons))


# --------------------------------------------------------------------------------------------------
# records


def merge_chain_records(records: Sequence[dict[str, Any]], record_id: str, source: str) -> dict[str, Any]:
    """One residue record from the per-chain records of one file (e.g. a pocket spanning chains A, B).

    Args:
        records: records of :func:`geoplm.structure.parse_structure`, in file order.
        record_id: the merged record's ``id``.
        source: its ``source``.

    Returns:
        A record with every key of :data:`geoplm.structure.RECORD_KEYS`: ``sequence``,
        ``residue_name``, ``residue_number`` (L,), ``insertion_code``, ``backbone`` (L, 4, 3) Å,
        ``backbone_mask`` (L, 4), ``b_factor`` (L,), ``residue_mask`` (L,) concatenated in record
        order; ``chain`` the chain ids joined by ``","`` (``"A,B"``; ``""`` for one blank chain);
        ``plddt`` True only if every input is; plus ``chain_ids`` (list[str], C) and ``chain_index``
        (LongTensor (L,), index into ``chain_ids`` of each residue's chain).

    Raises:
        GeoplmError: ``records`` is empty.
    """
    if not records:
        raise GeoplmError(f"{source}: no chain records to merge for {record_id}")
    chain_ids = [record["chain"] for record in records]
    merged = concatenate_chains(list(records), record_id, source)
    merged.update(chain=",".join(chain_ids), chain_ids=chain_ids)
    return merged


def _complex_file_kind(name: str) -> tuple[str, str] | None:
    """(PDB code, kind) for a PDBbind complex file name, kind in pocket/protein/sdf/mol2; else None."""
    lowered = name.lower()
    for suffix in _PROTEIN_SUFFIXES:
        if lowered.endswith(suffix):
            return name[: -len(suffix)], "protein"
    if lowered.endswith(_POCKET_SUFFIX):
        return name[: -len(_POCKET_SUFFIX)], "pocket"
    for suffix in _LIGAND_SUFFIXES:
        if lowered.endswith("_ligand" + suffix):
            return name[: -len("_ligand" + suffix)], suffix[1:]
    return None


def _expand(files: Sequence[str | Path]) -> list[Path]:
    """Directories expanded; tar archives extracted once (beside the archive) and expanded."""
    from geoplm.datasets.atom3d import Atom3dError, extract_archive

    expanded = []
    for path in expand_files(files):
        if path.name.lower().endswith(_ARCHIVE_SUFFIXES):
            try:
                folder = extract_archive(path)
            except Atom3dError as exc:
                raise PDBbindError(path, exc.reason) from exc
            expanded.extend(expand_files([folder]))
        else:
            expanded.append(path)
    return expanded


def find_complexes(paths: Sequence[Path]) -> dict[str, dict[str, Path]]:
    """PDBbind complexes among ``paths``: ``{pdb code (lower case): {kind: file}}``.

    Kinds: ``pocket``, ``protein`` (``_protein.pdb`` preferred to ``_protein_processed.pdb``),
    ``sdf``, ``mol2``; the code is the file name's prefix before ``_pocket``/``_protein``/``_ligand``.

    Raises:
        PDBbindError: one code's file of one kind found in two folders (two copies of a complex).
    """
    complexes: dict[str, dict[str, Path]] = {}
    for path in sorted(paths, key=lambda p: (p.name, str(p))):
        found = _complex_file_kind(path.name)
        if found is None:
            continue
        code, kind = found
        code = code.lower()
        entry = complexes.setdefault(code, {})
        if kind in entry:
            if kind == "protein" and entry[kind].parent == path.parent:
                continue  # {id}_protein.pdb sorts before {id}_protein_processed.pdb and is kept
            raise PDBbindError(path, f"complex {code} also at {entry[kind]} (two copies of one complex)", entry=code)
        entry[kind] = path
    return complexes


def read_split_lists(splits: Mapping[str, Sequence[Path]]) -> dict[str, str]:
    """``{pdb code: split name}`` from split list files (one id per line, e.g. DiffDock's
    ``timesplit_test``; the first token of a line, split at whitespace or ``,``, lower-cased; a
    first line that is no PDB code is a header, as in GIGN's csv tables).

    Raises:
        PDBbindError: a list cannot be read, or an id is in two splits' lists.
    """
    assignment: dict[str, str] = {}
    where: dict[str, str] = {}
    for split, paths in splits.items():
        for path in paths:
            try:
                text = Path(path).read_text(encoding="utf-8", errors="replace")
            except OSError as exc:
                raise PDBbindError(path, f"cannot read split list: {exc.strerror or exc}") from exc
            for number, line in enumerate(text.splitlines(), start=1):
                token = re.split(r"[\s,]+", line.strip(), maxsplit=1)[0].lower()
                if not token or token.startswith("#"):
                    continue
                if number == 1 and not re.fullmatch(r"[0-9][0-9a-z]{3}", token):
                    continue  # a header line (GIGN's csv tables: "pdbid,-logKd/Ki"), not a PDB code
                previous = assignment.get(token)
                if previous is not None and previous != split:
                    raise PDBbindError(
                        path, f"{token} is in split {split!r} and in split {previous!r} ({where[token]})", line=number
                    )
                assignment[token] = split
                where[token] = f"{path}:{number}"
    return assignment


def _match_files(paths: Sequence[Path], patterns: Sequence[str], key: str) -> list[Path]:
    matched = []
    for pattern in patterns:
        hits = [p for p in paths if fnmatch.fnmatch(p.name, pattern) or fnmatch.fnmatch(str(p), pattern)]
        if not hits and not any(ch in pattern for ch in "*?["):
            raise ConfigError(f"options.{key}: no file named {pattern!r} among the dataset's files")
        matched.extend(p for p in hits if p not in matched)
    return matched


def _options(options: Mapping[str, Any] | None, paths: list[Path]) -> dict[str, Any]:
    options = dict(options or {})
    for key in options:
        if key not in _OPTIONS:
            raise ConfigError(f"options.{key}: unknown option of the 'pdbbind' reader (known: {', '.join(_OPTIONS)})")
    protein = options.get("protein", "pocket")
    if protein not in ("pocket", "protein"):
        raise ConfigError(f"options.protein: 'pocket' or 'protein', got {protein!r}")
    labels = options.get("labels", list(DEFAULT_LABEL_PATTERNS))
    if isinstance(labels, str):
        labels = [labels]
    if not isinstance(labels, list | tuple) or not all(isinstance(p, str) for p in labels):
        raise ConfigError(f"options.labels: a list of file names or patterns, got {labels!r}")
    splits = options.get("splits") or {}
    if not isinstance(splits, Mapping):
        raise ConfigError(f"options.splits: a mapping split name -> list file(s), got {splits!r}")
    split_files = {}
    for split, names in splits.items():
        names = [names] if isinstance(names, str) else names
        if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"options.splits.{split}: a file name or a list of file names, got {names!r}")
        split_files[str(split)] = _match_files(paths, names, f"splits.{split}")
    tolerance = options.get("tolerance", DEFAULT_TOLERANCE)
    if tolerance is not None and (not isinstance(tolerance, int | float) or tolerance < 0):
        raise ConfigError(f"options.tolerance: a non-negative number or null, got {tolerance!r}")
    return {
        "protein": protein,
        "label_files": _match_files(paths, labels, "labels"),
        "split_files": split_files,
        "tolerance": tolerance,
    }


def read_complex(
    code: str,
    entry: Mapping[str, Path],
    labels: pd.DataFrame,
    protein: str = "pocket",
    split: str = "",
) -> dict[str, Any]:
    """The record of one complex (see :func:`read_shard`).

    Raises:
        PDBbindError: no label, no pocket/protein file, a structure :func:`parse_structure` rejects
            (e.g. an empty pocket: "no protein chain"), or an unusable ligand.
    """
    folder = next(iter(entry.values())).parent
    if code not in labels.index:
        raise PDBbindError(folder, "no affinity label in the label files", entry=code)
    structure_path = entry.get(protein)
    if structure_path is None:
        name = f"{code}_pocket.pdb" if protein == "pocket" else f"{code}_protein.pdb"
        raise PDBbindError(folder, f"no {name} (options.protein = {protein!r})", entry=code)
    if "sdf" not in entry and "mol2" not in entry:
        raise PDBbindError(folder, f"no ligand file ({code}_ligand.sdf or .mol2)", entry=code)
    try:
        chains = parse_structure(structure_path)
    except StructureError as exc:
        raise PDBbindError(structure_path, f"{protein}: {exc.reason}", entry=code) from exc
    ligand = read_ligand(entry.get("sdf"), entry.get("mol2"))
    record = merge_chain_records(chains, code, structure_path.name)
    label = labels.loc[code]
    record.update(
        {
            "split": split,
            "labels": {"neg_log_affinity": float(label["neg_log_affinity"]), "affinity": str(label["affinity"])},
            "group": code,
            "role": "complex",
            "ligand": ligand,
        }
    )
    return record


def read_shard(
    files: Sequence[str | Path],
    shard: int,
    num_shards: int,
    options: Mapping[str, Any] | None = None,
    on_error: str = "skip",
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Records of one shard of the PDBbind complexes among ``files`` (reader ``pdbbind``).

    Args:
        files: the downloads: complex folders, folders holding them, tar archives of them (extracted
            once beside the archive), INDEX files, label tables and split lists.
        shard, num_shards: complexes sorted by PDB code are dealt round robin: complex ``i`` goes to
            shard ``i % num_shards``.
        options:
            ``protein``: ``"pocket"`` (default; ``{id}_pocket.pdb``, ATOM3D LBA / Wu et al.) or
            ``"protein"`` (``{id}_protein.pdb``, else ``{id}_protein_processed.pdb``);
            ``labels``: file names or glob patterns of the label files among ``files`` (default
            ``["INDEX*data*"]``, the INDEX data files; e.g. ``["GIGN_*.csv"]`` for GIGN's tables);
            ``splits``: ``{split name: list file name(s)}`` (e.g. ``{train:
            DiffDock_timesplit_no_lig_overlap_train, valid: ..., test: DiffDock_timesplit_test}``);
            complexes in no list get split ``""``;
            ``tolerance``: -logK check of :func:`read_index` (default 0.015; null: no check).
        on_error: ``"skip"`` or ``"fail"``.

    Returns:
        (records, skipped). One record per complex: the chains of the pocket/protein merged by
        :func:`merge_chain_records` (``id`` = PDB code, every key of
        :data:`geoplm.structure.RECORD_KEYS`, ``chain_ids``, ``chain_index`` (L,)), plus
        ``labels = {"neg_log_affinity": float, "affinity": "Kd=..." ("" from -logK-only tables)}``,
        ``group`` = PDB code, ``role`` = ``"complex"``, ``split``, and ``ligand`` (:func:`read_ligand`:
        ``position`` (A, 3) Å, ``element``, ``atomic_number`` (A,), ``bonds`` (B, 3), ``smiles``, ...).
        Complexes without a label, without the chosen structure file, with an empty pocket, without a
        ligand file, or whose ligand RDKit can sanitise from neither SDF nor MOL2 become ``skipped``
        rows ``{"entry": code, "source_file": ..., "reason": ...}``.

    Raises:
        ConfigError: bad options, shard or on_error, or a named label/split file absent.
        PDBbindError: unreadable or malformed label/split files (always); a bad complex when
            ``on_error == "fail"``.
    """
    check_shard(shard, num_shards)
    check_on_error(on_error)
    paths = _expand(files)
    opts = _options(options, paths)
    labels = read_labels(opts["label_files"], opts["tolerance"])
    split_of = read_split_lists(opts["split_files"])
    complexes = find_complexes(paths)
    if not complexes:
        logger.warning("pdbbind: no complex ({id}_pocket.pdb / _protein.pdb / _ligand.sdf) among %d files", len(paths))
    records: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for code in deal(sorted(complexes), shard, num_shards):
        entry = complexes[code]
        try:
            records.append(read_complex(code, entry, labels, opts["protein"], split_of.get(code, "")))
        except PDBbindError as error:
            if on_error == "fail":
                raise
            logger.warning("skipped %s", error)
            skipped.append({"entry": code, "source_file": error.path, "reason": error.reason})
    logger.info("pdbbind shard %d/%d: %d records, %d skipped", shard, num_shards, len(records), len(skipped))
    return records, skipped
