"""Residue-level records of protein chains, read from PDB and mmCIF files.

:func:`parse_structure` reads a PDB file (``.pdb``, ``.ent``, CASP TS model files without an
extension), an mmCIF file (``.cif``) or a gzipped copy of either with Biopython's ``PDBParser`` /
``MMCIFParser`` and turns every protein chain of the first model into one record (a ``dict`` with the
keys :data:`RECORD_KEYS`):

============== ============================ ==============================================================
key            type                         meaning
============== ============================ ==============================================================
id             str                          ``f"{stem}_{chain}"``; ``stem`` is the file name without
                                            ``.gz`` and the structure extension; a blank chain is ``_``
source         str                          the file name, or the ``source`` argument
chain          str                          chain identifier (author chain for mmCIF); ``""`` if blank
sequence       str (L)                      one-letter sequence; modified residues as their parent
                                            (``MSE`` -> ``M``), unknown amino acids as ``X``
residue_name   list[str] (L)                three-letter residue names as written in the file
residue_number LongTensor (L,)              author residue numbers
insertion_code list[str] (L)                insertion codes, ``""`` where none
backbone       FloatTensor (L, 4, 3)        N, CA, C, O coordinates in Å; NaN where an atom is missing
backbone_mask  BoolTensor (L, 4)            True where the atom is present
b_factor       FloatTensor (L,)             the CA atom's B-factor in Å² (pLDDT, 0-100, for AlphaFold
                                            models); NaN where there is no CA
residue_mask   BoolTensor (L,)              True where N, CA and C are all present
plddt          bool                         True if the file is an AlphaFold model (``b_factor`` is pLDDT)
============== ============================ ==============================================================

Conventions (and where they come from):

* Only the first model of an ensemble (NMR) is read.
* Alternate locations: for every atom the altloc of highest occupancy is kept, the first one on
  ties (Biopython's ``DisorderedAtom`` selection); for point mutations/microheterogeneity (two
  residues at one position, every atom with an altloc) the residue of highest occupancy is kept.
* Waters, hydrogens and non-amino-acid HETATM groups are no residues. A HETATM group is an
  amino-acid residue of the chain if its name maps to a parent amino acid in
  ``Bio.Data.PDBData.protein_letters_3to1_extended`` (or is ``UNK``, or it has N, CA and C atoms)
  *and* it is part of the polymer: it lies between ATOM amino acids of the chain, or it is
  peptide-bonded (C-N at most 2.0 Å, either direction) to another amino-acid residue of the chain.
  A free amino acid bound as a ligand (e.g. the HETATM ASN 331 of 11AS) is therefore no residue,
  while N-terminal PCA, capped or all-HETATM (cyclic) peptides are. Amino-acid groups without a
  parent in that table (D-amino acids such as DSN, PH8, ...) and ``UNK`` are ``X``; N-/C-terminal
  caps without N, CA and C (ACE, NH2) are no residues.
* PDB files that use MODEL records but put coordinates outside MODEL/ENDMDL blocks (malformed): those
  records are read as part of the first model (with a warning) rather than as a separate model.
* Residues without N, CA or C stay in the sequence with ``residue_mask`` False and are reported
  through :mod:`logging`, never dropped. Chains without amino-acid residues (nucleic acids, ligand
  chains) are skipped and logged.
* :data:`RESIDUE_VOCAB` is torchdrug's residue order, so a one-hot over it matches GearNet's input.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import re
import warnings
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geoplm.atomic import torch_save
from geoplm.errors import StructureError

logger = logging.getLogger(__name__)

RECORD_KEYS: tuple[str, ...] = (
    "id",
    "source",
    "chain",
    "sequence",
    "residue_name",
    "residue_number",
    "insertion_code",
    "backbone",
    "backbone_mask",
    "b_factor",
    "residue_mask",
    "plddt",
)

# Residue order of torchdrug's ``Protein.residue2id`` / ``id2residue_symbol``
# (DeepGraphLearning/torchdrug, torchdrug/data/protein.py, commit
# 09ffe181a3b025a770e157ace3e2f64436b1919d): G A S P V T C I L N D Q K E M H F R Y W at indices
# 0-19. GearNet's residue one-hot (``feature.onehot(..., allow_unknown=True)``) has one more slot, last,
# for unknown residues: X is index 20 here.
RESIDUE_VOCAB: str = "GASPVTCILNDQKEMHFRYWX"
UNKNOWN_RESIDUE_INDEX: int = RESIDUE_VOCAB.index("X")
#: The one definition of the number of residue types: the width of the residue one-hot every model reads
#: (torchdrug's 20 residue types + unknown, 21).
NUM_RESIDUE_TYPES: int = len(RESIDUE_VOCAB)
#: The standard amino acids among them (0-19; ``len(torchdrug.data.Protein.residue2id)``).
NUM_STANDARD_RESIDUE_TYPES: int = UNKNOWN_RESIDUE_INDEX

#: Backbone atoms in the order of the ``backbone`` tensor's second axis.
BACKBONE_ATOMS: tuple[str, ...] = ("N", "CA", "C", "O")

_RESIDUE_INDEX = {letter: i for i, letter in enumerate(RESIDUE_VOCAB)}
_STRUCTURE_SUFFIXES = {".pdb": "pdb", ".ent": "pdb", ".brk": "pdb", ".cif": "mmcif", ".mmcif": "mmcif"}
_WATER_NAMES = frozenset({"HOH", "WAT", "DOD", "H2O", "TIP", "TIP3", "SOL"})
_PEPTIDE_BOND_MAX = 2.0  # Å; a C-N peptide bond is 1.33 Å
_ALPHAFOLD_NAME = re.compile(r"AF-[A-Za-z0-9]+-F\d+-model_v\d+")
_GZIP_MAGIC = b"\x1f\x8b"
_FORMAT_NAMES = {"pdb": "PDB", "mmcif": "mmCIF"}


def residue_type_index(sequence: str) -> torch.Tensor:
    """Indices of a one-letter sequence into :data:`RESIDUE_VOCAB` (torchdrug's residue order).

    Args:
        sequence: one-letter amino-acid sequence of length L (case-insensitive).

    Returns:
        LongTensor of shape (L,) with values in [0, 20]; letters outside the 20 standard amino acids
        (X, B, Z, U, O, ...) map to 20 (``X``, unknown), as torchdrug's one-hot with
        ``allow_unknown=True`` puts unknown residues in its last slot.
    """
    return torch.tensor(
        [_RESIDUE_INDEX.get(letter, UNKNOWN_RESIDUE_INDEX) for letter in sequence.upper()],
        dtype=torch.long,
    )


def parse_structure(
    path: str | os.PathLike,
    chains: Iterable[str] | None = None,
    source: str | None = None,
) -> list[dict[str, Any]]:
    """Read the protein chains of a structure file into residue-level records.

    Args:
        path: a PDB (``.pdb``, ``.ent``, or no extension such as CASP TS files) or mmCIF (``.cif``)
            file, optionally gzipped (``.gz``; detected from the gzip magic bytes). The format is taken
            from the content (``data_`` opens an mmCIF file) and the extension.
        chains: chain identifiers to keep (``""``, ``" "`` or ``"_"`` name a blank chain); ``None``
            keeps every protein chain.
        source: value of the records' ``source``; defaults to the file name.

    Returns:
        One record per protein chain of the first model, in file order; see the module docstring for
        the keys (:data:`RECORD_KEYS`), shapes (L residues: ``backbone`` (L, 4, 3) float32 in Å,
        ``backbone_mask`` (L, 4), ``b_factor`` (L,), ``residue_mask`` (L,), ``residue_number`` (L,))
        and conventions.

    Raises:
        StructureError: the file cannot be read, is empty, binary, a truncated or corrupt gzip stream,
            cannot be parsed as PDB/mmCIF, has no atoms or no protein chain; or a requested chain is
            absent (the message names it and the chains present) or has no amino-acid residues.
    """
    path = Path(path)
    stem, fmt = _stem_and_format(path.name)
    text = _read_text(path)
    fmt = _sniff_format(text, fmt)
    structure = _parse(path, stem, text, fmt)

    models = list(structure)
    if not models:
        raise StructureError(path, f"no ATOM/HETATM records: not a {_FORMAT_NAMES[fmt]} coordinate file")
    if len(models) > 1:
        logger.debug("%s: %d models, reading only the first", path, len(models))
    model = models[0]
    plddt = _is_alphafold(path.name, text, fmt)
    source = path.name if source is None else source

    present = [chain.id.strip() for chain in model]
    wanted = _normalise_chains(chains, present, path)

    records = []
    for chain in model:
        chain_id = chain.id.strip()
        if wanted is not None and chain_id not in wanted:
            continue
        residues = _protein_residues(path, chain)
        if not residues:
            if wanted is not None:
                raise StructureError(path, f"requested chain {chain_id!r} has no amino-acid residues")
            logger.info("%s: chain %r has no amino-acid residues; skipped", path, chain_id)
            continue
        records.append(_record(path, stem, source, chain_id, residues, plddt))

    if not records:
        raise StructureError(
            path, f"no protein chain (chains present: {', '.join(repr(c) for c in present) or 'none'})"
        )
    return records


def concatenate_chains(records: list[dict[str, Any]], record_id: str, source: str) -> dict[str, Any]:
    """One record of several chain records, concatenated in the given order.

    Used for a protein made of several chains: a docking partner (``geoplm.datasets.docking``), a
    PDBbind pocket (``geoplm.datasets.pdbbind``), a CASP model. The residue-level keys of
    :data:`RECORD_KEYS` are concatenated; ``plddt`` is True only if every input is; ``chain`` is
    left to the caller (each dataset writes chain sets its own way); ``chain_index`` (LongTensor
    (L,)) gives each residue's position in ``records``.

    Raises:
        StructureError: ``records`` is empty.
    """
    if not records:
        raise StructureError(source, f"no chain records to merge for {record_id}")
    lengths = [len(record["sequence"]) for record in records]
    return {
        "id": record_id,
        "source": source,
        "chain": "",
        "sequence": "".join(record["sequence"] for record in records),
        "residue_name": [name for record in records for name in record["residue_name"]],
        "residue_number": torch.cat([record["residue_number"] for record in records]),
        "insertion_code": [code for record in records for code in record["insertion_code"]],
        "backbone": torch.cat([record["backbone"] for record in records]),
        "backbone_mask": torch.cat([record["backbone_mask"] for record in records]),
        "b_factor": torch.cat([record["b_factor"] for record in records]),
        "residue_mask": torch.cat([record["residue_mask"] for record in records]),
        "plddt": all(bool(record["plddt"]) for record in records),
        "chain_index": torch.repeat_interleave(torch.arange(len(records)), torch.tensor(lengths)),
    }


def save_shard(records: list[dict[str, Any]], path: str | os.PathLike) -> None:
    """Write records to ``path`` atomically with ``torch.save`` (via :func:`geoplm.atomic.torch_save`).

    Args:
        records: records as returned by :func:`parse_structure` (tensors, str, int, float, bool and
            lists/dicts of them only, so that ``torch.load(weights_only=True)`` can read the file).
        path: the shard file; its directory is created.

    Raises:
        StructureError: a record lacks a key of :data:`RECORD_KEYS`.
    """
    for record in records:
        missing = [key for key in RECORD_KEYS if key not in record]
        if missing:
            raise StructureError(path, f"record {record.get('id', '?')!r} lacks keys {missing}")
    torch_save(list(records), path)


def load_shard(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read records written by :func:`save_shard` (with ``torch.load(weights_only=True)``, on CPU).

    Args:
        path: the shard file.

    Returns:
        The list of records (shapes as in :func:`parse_structure`).

    Raises:
        StructureError: the file cannot be read or does not hold a list of records.
    """
    try:
        records = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, OSError, ...
        raise StructureError(path, f"cannot load shard: {type(exc).__name__}: {exc}") from exc
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise StructureError(path, f"not a shard of structure records (a {type(records).__name__})")
    for record in records:
        missing = [key for key in RECORD_KEYS if key not in record]
        if missing:
            raise StructureError(path, f"record {record.get('id', '?')!r} lacks keys {missing}")
    return records


# --------------------------------------------------------------------------------------------------
# reading


def _stem_and_format(name: str) -> tuple[str, str | None]:
    """File name without ``.gz`` and structure extension, and the format the extension names."""
    if name.lower().endswith(".gz"):
        name = name[:-3]
    suffix = Path(name).suffix.lower()
    if suffix in _STRUCTURE_SUFFIXES:
        return name[: -len(suffix)], _STRUCTURE_SUFFIXES[suffix]
    return name, None


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StructureError(path, f"cannot read file: {exc.strerror or exc}") from exc
    if not data:
        raise StructureError(path, "empty file")
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except EOFError as exc:
            raise StructureError(path, f"truncated gzip stream ({exc})") from exc
        except (OSError, zlib.error) as exc:
            raise StructureError(path, f"corrupt gzip stream ({exc})") from exc
        if not data:
            raise StructureError(path, "empty file (after gzip decompression)")
    elif path.name.lower().endswith(".gz"):
        raise StructureError(path, "not a gzip file (no gzip magic bytes) despite the .gz suffix")
    if b"\x00" in data:
        raise StructureError(path, "binary data, not a PDB or mmCIF text file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    if not text.strip():
        raise StructureError(path, "empty file (whitespace only)")
    return text


def _sniff_format(text: str, from_suffix: str | None) -> str:
    """``mmcif`` if the first non-comment line opens a data block, else the suffix's format or PDB."""
    for line in io.StringIO(text):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("data_"):
            return "mmcif"
        break
    return from_suffix or "pdb"


_COORDINATE_RECORDS = ("ATOM  ", "HETATM", "ANISOU", "SIGATM", "SIGUIJ", "TER")


def _gather_stray_records(path: Path, text: str) -> str:
    """Move coordinate records outside MODEL/ENDMDL blocks into the first model.

    The PDB format puts every coordinate record inside a MODEL block once MODEL is used; Biopython
    reads records outside the blocks as a further model, which reading only the first model would
    lose (e.g. a single MODEL block around one residue followed by the chains, or ligands written
    after the last ENDMDL). They are read as part of the first model instead, with a warning.
    """
    lines = text.splitlines(keepends=True)
    if not any(line.startswith("MODEL") for line in lines):
        return text
    kept, stray = [], []
    in_model = False
    first_end = None
    for line in lines:
        if line.startswith("MODEL"):
            in_model = True
        elif line.startswith("ENDMDL"):
            in_model = False
            if first_end is None:
                first_end = len(kept)
        elif not in_model and line.startswith(_COORDINATE_RECORDS):
            stray.append(line if line.endswith("\n") else line + "\n")
            continue
        kept.append(line)
    if not stray or first_end is None:
        return text
    logger.warning(
        "%s: %d coordinate records outside MODEL/ENDMDL blocks; read as part of the first model",
        path,
        len(stray),
    )
    return "".join(kept[:first_end] + stray + kept[first_end:])


def _parse(path: Path, stem: str, text: str, fmt: str):
    from Bio.PDB import MMCIFParser, PDBParser

    if fmt == "mmcif":
        parser = MMCIFParser(QUIET=True, PERMISSIVE=True)
    else:
        parser = PDBParser(QUIET=True, PERMISSIVE=True)
        text = _gather_stray_records(path, text)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            structure = parser.get_structure(stem, io.StringIO(text))
        except Exception as exc:  # Biopython raises ValueError, KeyError, IndexError, PDBConstructionException
            raise StructureError(
                path, f"cannot parse as {_FORMAT_NAMES[fmt]} (malformed or truncated file): {type(exc).__name__}: {exc}"
            ) from exc
    for warning in caught[:20]:
        logger.debug("%s: %s", path, warning.message)
    if len(caught) > 20:
        logger.debug("%s: %d more parser warnings", path, len(caught) - 20)
    return structure


def _is_alphafold(name: str, text: str, fmt: str) -> bool:
    """AlphaFold model: AFDB file name, ``ALPHAFOLD`` in the header, or an mmCIF pLDDT QA metric."""
    if _ALPHAFOLD_NAME.search(name):
        return True
    if fmt == "mmcif":
        end = text.find("_atom_site.")
        header = text if end < 0 else text[:end]
        lowered = header.lower()
        return "alphafold" in lowered or ("_ma_qa_metric" in lowered and "plddt" in lowered)
    for line in io.StringIO(text):
        if line.startswith(("ATOM", "HETATM", "MODEL")):
            break
        if "ALPHAFOLD" in line.upper():
            return True
    return False


def _normalise_chains(chains: Iterable[str] | None, present: list[str], path: Path) -> set[str] | None:
    if chains is None:
        return None
    if isinstance(chains, str):
        chains = [chains]
    wanted = set()
    for chain in chains:
        chain = chain.strip()
        if chain == "_" and "_" not in present:
            chain = ""
        wanted.add(chain)
    missing = sorted(wanted - set(present))
    if missing:
        raise StructureError(
            path,
            f"chain(s) {', '.join(repr(c) for c in missing)} not in the first model "
            f"(chains present: {', '.join(repr(c) for c in present) or 'none'})",
        )
    return wanted


# --------------------------------------------------------------------------------------------------
# residues


def _one_letter(name: str) -> str | None:
    from Bio.Data.PDBData import protein_letters_3to1_extended

    if name == "UNK":
        return "X"
    return protein_letters_3to1_extended.get(name)


def _atom(residue, name: str):
    """The (selected altloc of the) atom ``name`` of ``residue``, hydrogens excluded; None if absent."""
    if not residue.has_id(name):
        return None
    atom = residue[name]
    if atom.element in ("H", "D"):
        return None
    return atom


def _has_backbone(residue) -> bool:
    return all(_atom(residue, name) is not None for name in ("N", "CA", "C"))


def _occupancy(residue) -> float:
    atom = _atom(residue, "CA")
    atoms = [atom] if atom is not None else list(residue)
    values = [a.get_occupancy() for a in atoms if a.get_occupancy() is not None]
    return max(values, default=0.0)


def _select_residue(residue):
    """The child of highest occupancy of a Biopython ``DisorderedResidue`` (first on ties)."""
    if residue.is_disordered() != 2:
        return residue
    best = None
    for child in residue.disordered_get_list():
        if best is None or _occupancy(child) > _occupancy(best):
            best = child
    return best


def _all_altloc(residue) -> bool:
    return all(atom.get_altloc() not in (" ", "") for atom in residue.get_unpacked_list())


def _coords(candidates, name: str) -> np.ndarray:
    """(n, 3) coordinates of atom ``name`` of each candidate residue; NaN where absent."""
    coords = np.full((len(candidates), 3), np.nan)
    for i, (residue, _, _) in enumerate(candidates):
        atom = _atom(residue, name)
        if atom is not None:
            coords[i] = atom.get_coord()
    return coords


def _protein_residues(path: Path, chain) -> list[tuple[Any, str]]:
    """The chain's amino-acid residues in file order, each with its one-letter code."""
    candidates = []  # (residue, letter, is_hetatm)
    for residue in chain:
        residue = _select_residue(residue)
        hetflag = residue.id[0]
        name = residue.get_resname().strip()
        if hetflag == "W" or name in _WATER_NAMES:
            continue
        letter = _one_letter(name)
        if letter is None and not _has_backbone(residue):
            continue  # ligand, nucleotide, capping group
        candidates.append((residue, letter or "X", hetflag.startswith("H")))

    # Microheterogeneity written as two HETATM residues at one position (e.g. N2C/NCY in 1PFE), every
    # atom with an altloc: keep the residue of highest occupancy, the first on ties.
    deduplicated = []
    for item in candidates:
        if deduplicated:
            previous = deduplicated[-1][0]
            residue = item[0]
            if previous.id[1:] == residue.id[1:] and _all_altloc(previous) and _all_altloc(residue):
                if _occupancy(residue) > _occupancy(previous):
                    deduplicated[-1] = item
                continue
        deduplicated.append(item)
    candidates = deduplicated

    # A HETATM amino acid is a residue of the chain if it lies between ATOM amino acids or is
    # peptide-bonded to another amino-acid residue of the chain (either direction, so that N-terminal
    # groups such as PCA and cyclic peptides count); otherwise it is a ligand.
    atom_positions = [i for i, (_, _, het) in enumerate(candidates) if not het]
    first_atom = atom_positions[0] if atom_positions else None
    last_atom = atom_positions[-1] if atom_positions else None
    n_coord = _coords(candidates, "N")
    c_coord = _coords(candidates, "C")
    kept = []
    for i, (residue, letter, het) in enumerate(candidates):
        if het and not (first_atom is not None and first_atom < i < last_atom):
            c_to_n = np.linalg.norm(n_coord - c_coord[i], axis=-1)
            n_to_c = np.linalg.norm(c_coord - n_coord[i], axis=-1)
            c_to_n[i] = n_to_c[i] = np.inf
            # NaN (absent atoms) compares False
            bonded = bool((c_to_n <= _PEPTIDE_BOND_MAX).any() or (n_to_c <= _PEPTIDE_BOND_MAX).any())
            if not bonded:
                logger.debug(
                    "%s: chain %r: HETATM %s %s is not part of the polymer; not a residue",
                    path,
                    chain.id,
                    residue.get_resname(),
                    residue.id[1:],
                )
                continue
        kept.append((residue, letter))
    return kept


def _record(
    path: Path, stem: str, source: str, chain_id: str, residues: list[tuple[Any, str]], plddt: bool
) -> dict[str, Any]:
    length = len(residues)
    backbone = np.full((length, len(BACKBONE_ATOMS), 3), np.nan, dtype=np.float32)
    b_factor = np.full(length, np.nan, dtype=np.float32)
    names, numbers, icodes, letters = [], [], [], []
    for i, (residue, letter) in enumerate(residues):
        for j, atom_name in enumerate(BACKBONE_ATOMS):
            atom = _atom(residue, atom_name)
            if atom is not None:
                backbone[i, j] = atom.get_coord()
                if atom_name == "CA":
                    b_factor[i] = atom.get_bfactor()
        _, number, icode = residue.id
        names.append(residue.get_resname().strip())
        numbers.append(int(number))
        icodes.append(icode.strip())
        letters.append(letter)
    backbone_t = torch.from_numpy(backbone)
    backbone_mask = ~torch.isnan(backbone_t).any(dim=-1)
    residue_mask = backbone_mask[:, :3].all(dim=-1)
    n_masked = int((~residue_mask).sum())
    if n_masked:
        logger.warning(
            "%s: chain %r: %d of %d residues lack backbone atoms (N, CA or C); kept in the sequence "
            "with residue_mask False",
            path,
            chain_id,
            n_masked,
            length,
        )
    return {
        "id": f"{stem}_{chain_id or '_'}",
        "source": source,
        "chain": chain_id,
        "sequence": "".join(letters),
        "residue_name": names,
        "residue_number": torch.tensor(numbers, dtype=torch.long),
        "insertion_code": icodes,
        "backbone": backbone_t,
        "backbone_mask": backbone_mask,
        "b_factor": torch.from_numpy(b_factor),
        "residue_mask": residue_mask,
        "plddt": bool(plddt),
    }
