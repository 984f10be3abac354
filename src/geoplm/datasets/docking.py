"""Protein–protein docking datasets: Docking Benchmark 5.5 (DB5.5) and DIPS, read into residue records.

Both readers follow EquiDock (Ganea et al., ICLR 2022; repository octavian-ganea/equidock_public,
commit ac2c754399bf20b50a27d86dbff4f6669788d47f), whose data Wu et al. (Communications Biology 2023)
reuse for their docking experiments.

Partners (receptor, ligand)
    EquiDock treats each partner file as one protein, all its chains together
    (``src/utils/db5_data.py`` ``get_residues_db5`` reads the whole ``{ID}_r_b.pdb``). A partner is
    therefore **one record** here: the chains of :func:`geoplm.structure.parse_structure` concatenated
    in file order (:func:`merge_chains`), with every key of :data:`geoplm.structure.RECORD_KEYS`
    concatenated consistently, plus ``chains`` (list[str], the chain ids in order) and ``chain_index``
    (LongTensor (L,), each residue's index into ``chains``). ``chain`` is the chain id for one chain,
    else the ids joined without separator (blank ids as ``_``), as DB5 writes chain sets (``1AHW_AB:C``).

Interface labels
    EquiDock's ``src/utils/protein_utils.py`` ``preprocess_unbound_bound`` (``pos_cutoff`` 8.0,
    ``src/utils/args.py`` ``-pocket_cutoff``) keeps residues with exactly one N, CA and C atom and calls
    a ligand/receptor residue pair a contact when the **Cα–Cα distance** in the bound complex is
    ``< 8 Å`` (strict); complexes with at most 3 contacts are dropped (``active_ligand.size <= 3``).
    atom3's DIPS pairing (drorlab/atom3, ``atom3/pair.py``, ``--criteria ca --cutoff 8``) uses the same
    Cα 8 Å definition. Here ``interface`` (BoolTensor (L,)) is True for a residue with
    ``residue_mask`` (N, CA, C present) whose Cα lies within ``interface_cutoff`` Å (strict) of the Cα
    of a partner residue with ``residue_mask``; ``labels`` carries ``interface_size`` (its count),
    ``num_contacts`` (contacting residue pairs) and ``interface_cutoff``. Complexes with fewer than
    ``min_contacts`` (default 4, EquiDock's filter) contacts are skipped with the reason.
    Differences from EquiDock, by design: residues are in file order (EquiDock groups atoms by
    ``(chain, residue, resname)``, i.e. sorted by residue number, merging insertion codes), altlocs are
    resolved as in :mod:`geoplm.structure` (EquiDock's biopandas table keeps every altloc and so drops
    residues with a disordered CA), and HETATM amino acids of the polymer (MSE, ...) are residues
    (EquiDock reads only ATOM records).

DB5.5 (:func:`read_db5_shard`, reader ``db5``)
    Files ``{ID}_{r,l}_{b,u}.pdb`` (receptor/ligand, bound/unbound; ``{ID}`` four characters, see the
    benchmark README), EquiDock's split lists ``cv_{k}_{train,val,test}.txt`` (or ``train.txt`` ...
    in a folder ``cv_{k}``), ``rigid.txt``/``medium.txt``/``difficult.txt`` and optionally
    ``Table_BM5.5.xlsx``. One ``group`` per complex ``{ID}``; records (roles) ``receptor_bound``,
    ``ligand_bound`` (together the ground-truth complex; both carry ``interface``) and, when present,
    ``receptor_unbound``, ``ligand_unbound`` (no interface: unbound residues are other PDB entries and
    are not mapped to the bound ones). ``split`` is ``train``/``valid``/``test`` from the cv lists, ``""``
    for a complex in none. ``labels``: ``difficulty`` (rigid/medium/difficult), and from the table
    ``category`` (e.g. ``EI``), ``i_rmsd`` (Å), ``dasa`` (ΔASA, Å²), ``bm_version``, ``receptor_chains``,
    ``ligand_chains``. Other file names are ignored and logged at INFO level (e.g. ``1JPS_l_u.pdb.2``,
    the benchmark's alternative unbound ligand taken from 1TFH chain A; CSV lists of other projects);
    so are structure files in EquiDock's random-transformed test folders (``test_random_transformed``,
    ``random_transformed``, ``complexes``, ``test_pdb_random_transformed``), whose names repeat the
    structures'. A complex without a bound receptor or ligand file, or whose bound file cannot be
    parsed, is skipped with the reason; an unreadable unbound file only drops that record (a skipped
    row with entry ``{ID}_{r,l}_u``).

DIPS (:func:`read_dips_shard`, reader ``dips``)
    (a) EquiDock's PDB test pairs (``test_sets_pdb/dips_test_random_transformed``):
    ``{pair}_{l,r}_b.pdb`` are the randomly rotated and translated inputs (roles ``ligand``,
    ``receptor``), ``{pair}_{l,r}_b_COMPLEX.pdb`` the ground truth (roles ``ligand_complex``,
    ``receptor_complex``), ``{pair}`` the pair file name with ``/`` replaced by ``_``
    (``kq_1kq1.pdb1_2.dill``). These files carry a trailing ``0.0`` after the element (biopandas'
    ``charge`` column, cols 79–82): Biopython reads the fixed columns, so coordinates (cols 31–54)
    and elements (cols 77–78) are unaffected (checked in the tests against a fixed-column read).
    (b) DIPS pair files ``{code[1:3]}/{pdb file}_{i}.dill`` (DIPS-Plus/atom3 ``Pair`` namedtuples,
    ``(complex, df0, df1, pos_idx, neg_idx, srcs, id, ...)``), written with dill; EquiDock loads them with
    ``pandas.read_pickle`` (``src/utils/db5_data.py`` ``get_residues_DIPS``) and uses ``df0`` as the
    ligand and ``df1`` as the receptor. Unpickling runs code, so a ``.dill`` file is only opened after
    its SHA-256 matched ``options["checksums"]``; it is then read with a restricted unpickler (pandas,
    numpy and a few builtins; atom3's ``Pair`` and dill's ``_create_namedtuple`` mapped to a local
    namedtuple factory, so neither dill nor atom3 need be installed). The atom tables may be in atom3's
    layout (``pdb_name, model, chain, residue`` as ``"12"``/``"12A"``, ``resname, x, y, z, element,
    atom_name, aid``; drorlab/atom3 ``atom3/structure.py``) or ATOM3D's (:data:`ATOM_COLUMNS`); they
    become records through :func:`geoplm.datasets.atom3d.atoms_to_records`. Records: roles
    ``ligand_complex`` (df0) and ``receptor_complex`` (df1), the ground-truth complex, ids as the
    matching PDB files (``{pair}_l_b_COMPLEX``).
    ``group`` is ``{pair}``; ``split`` is ``train``/``valid``/``test`` from
    ``pairs-postprocessed-{train,val,test}.txt`` when the pair is listed there, else ``test`` (the PDB
    pairs are EquiDock's DIPS test set).

Sharding: a complex (pair) goes to shard ``int(sha1(group), 16) % num_shards``, so the same complex
always lands in the same shard whatever other files are present, with all its records.
"""

from __future__ import annotations

import _compat_pickle
import hashlib
import io
import logging
import os
import pickle
import re
import warnings
from collections import namedtuple
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from geoplm.errors import ChecksumError, ConfigError, GeoplmError, StructureError
from geoplm.structure import concatenate_chains, parse_structure

logger = logging.getLogger(__name__)

#: EquiDock's ``pocket_cutoff`` (src/utils/args.py): Cα–Cα distance in Å below which two residues are in contact.
INTERFACE_CUTOFF: float = 8.0
#: EquiDock drops complexes with ``active_ligand.size <= 3`` contacts (src/utils/protein_utils.py).
MIN_CONTACTS: int = 4

_DB5_NAME = re.compile(r"^(?P<code>[0-9A-Za-z]{4})_(?P<side>[rl])_(?P<state>[bu])\.pdb$")
_DIPS_PDB_NAME = re.compile(r"^(?P<pair>.+\.dill)_(?P<side>[rl])_b(?P<complex>_COMPLEX)?\.pdb$")
_CV_NAME = re.compile(r"^cv_(?P<fold>\d+)_(?P<split>train|val|valid|test)\.txt$")
_PLAIN_SPLIT_NAME = re.compile(r"^(?P<split>train|val|valid|test)\.txt$")
_DIPS_LIST_NAME = re.compile(r"^pairs-postprocessed-(?P<split>train|val|valid|test)\.txt$")
_TABLE_COMPLEX = re.compile(r"^(?P<code>[0-9A-Za-z]{4})_(?P<receptor>[^:\s]*):(?P<ligand>\S*)$")
_SPLIT_NAMES = {"train": "train", "val": "valid", "valid": "valid", "test": "test"}
_DIFFICULTIES = ("rigid", "medium", "difficult")
_RANDOM_TRANSFORMED_DIRS = frozenset(
    {"test_random_transformed", "random_transformed", "complexes", "test_pdb_random_transformed"}
)
_SIDE = {"r": "receptor", "l": "ligand"}
_STATE = {"b": "bound", "u": "unbound"}

_DB5_OPTIONS = {"cv": int, "interface_cutoff": float, "min_contacts": int, "unbound": bool, "subset": type(None)}
_DIPS_OPTIONS = {"interface_cutoff": float, "min_contacts": int, "checksums": dict, "subset": type(None)}


class DockingError(GeoplmError):
    """A docking complex (pair) cannot be read; the message names the complex, the file and the reason.

    Args:
        entry: the complex or pair (``1AHW``, ``kq_1kq1.pdb1_2.dill``) or record (``1AHW_l_u``).
        source_file: the file concerned.
        reason: why, in words.
    """

    def __init__(self, entry: str, source_file, reason: str):
        self.entry = entry
        self.source_file = str(source_file)
        self.reason = reason
        super().__init__(f"{entry} ({self.source_file}): {reason}")


# --------------------------------------------------------------------------------------------------
# records of partners


def merge_chains(records: Sequence[dict[str, Any]], record_id: str, source: str | None = None) -> dict[str, Any]:
    """One record of a multi-chain partner: the chain records concatenated in the given (file) order.

    Args:
        records: chain records as :func:`geoplm.structure.parse_structure` returns them (every key of
            :data:`RECORD_KEYS`), L_i residues each.
        record_id: the merged record's ``id``.
        source: its ``source`` (default: the first record's).

    Returns:
        A record with every :data:`RECORD_KEYS` key over L = sum L_i residues (``backbone`` (L, 4, 3)
        float32 in Å, ``backbone_mask`` (L, 4), ``b_factor`` (L,), ``residue_mask`` (L,),
        ``residue_number`` (L,), lists of length L), plus ``chains`` (list[str], chain ids in order)
        and ``chain_index`` (LongTensor (L,), index into ``chains``). ``chain`` is the single chain id,
        or the ids joined without separator with blank ids written ``_``. ``plddt`` is True only if
        every chain's is.

    Raises:
        GeoplmError: no records.
    """
    if not records:
        raise GeoplmError(f"{record_id}: no chain records to merge")
    chains = [record["chain"] for record in records]
    merged = concatenate_chains(list(records), record_id, records[0]["source"] if source is None else source)
    merged.update(chain=chains[0] if len(chains) == 1 else "".join(chain or "_" for chain in chains), chains=chains)
    return merged


def interface_residues(
    receptor: dict[str, Any], ligand: dict[str, Any], cutoff: float = INTERFACE_CUTOFF
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Interface residues of a bound complex by EquiDock's Cα–Cα criterion.

    Source: EquiDock ``src/utils/protein_utils.py`` ``preprocess_unbound_bound`` (octavian-ganea/
    equidock_public, commit ac2c754399bf20b50a27d86dbff4f6669788d47f): residues with N, CA and C
    (``residue_mask``), contact when ``cdist(Cα_ligand, Cα_receptor) < pos_cutoff`` (8 Å).

    Args:
        receptor, ligand: records in the bound (complex) frame, Lr and Ll residues; the Cα is
            ``backbone[:, 1]`` in Å.
        cutoff: the Cα–Cα distance in Å below which (strictly) two residues are in contact.

    Returns:
        (receptor interface BoolTensor (Lr,), ligand interface BoolTensor (Ll,), number of contacting
        residue pairs). Residues without N, CA or C are never interface residues.
    """
    ca_r = receptor["backbone"][:, 1].double()
    ca_l = ligand["backbone"][:, 1].double()
    valid_r = receptor["residue_mask"].bool()
    valid_l = ligand["residue_mask"].bool()
    contact = torch.zeros((ca_r.shape[0], ca_l.shape[0]), dtype=torch.bool)
    if valid_r.any() and valid_l.any():
        distance = torch.cdist(ca_r[valid_r], ca_l[valid_l])
        contact[valid_r.nonzero(as_tuple=True)[0].unsqueeze(1), valid_l.nonzero(as_tuple=True)[0].unsqueeze(0)] = (
            distance < cutoff
        )
    return contact.any(dim=1), contact.any(dim=0), int(contact.sum())


def _label_interface(receptor: dict, ligand: dict, cutoff: float, min_contacts: int, entry: str, source) -> None:
    """Set ``interface`` and interface labels on the bound pair; DockingError below ``min_contacts``."""
    iface_r, iface_l, contacts = interface_residues(receptor, ligand, cutoff)
    if contacts < min_contacts:
        raise DockingError(
            entry,
            source,
            f"{contacts} Cα–Cα contacts < {cutoff:g} Å between receptor and ligand (at least {min_contacts} "
            "needed, EquiDock's filter): not a bound complex",
        )
    for record, iface in ((receptor, iface_r), (ligand, iface_l)):
        record["interface"] = iface
        record["labels"] = {
            **record.get("labels", {}),
            "interface_size": int(iface.sum()),
            "num_contacts": contacts,
            "interface_cutoff": float(cutoff),
        }


def _partner_record(path: Path, record_id: str) -> dict[str, Any]:
    return merge_chains(parse_structure(path), record_id, source=path.name)


# --------------------------------------------------------------------------------------------------
# options, shards


def _check_options(reader: str, options: dict, known: dict[str, type], on_error: str) -> dict:
    options = dict(options or {})
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"{reader}: unknown options {unknown} (known: {sorted(known)})")
    for key, kind in known.items():
        if key not in options or options[key] is None:
            continue
        value = options[key]
        if kind is type(None):
            raise ConfigError(f"{reader}: options.{key} is not supported ({reader} has no subsets): got {value!r}")
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is float:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok:
            raise ConfigError(f"{reader}: options.{key} must be {kind.__name__}, got {value!r}")
    if options.get("interface_cutoff") is not None and not float(options["interface_cutoff"]) > 0:
        raise ConfigError(f"{reader}: options.interface_cutoff must be > 0 Å, got {options['interface_cutoff']!r}")
    for key in ("cv", "min_contacts"):
        if options.get(key) is not None and options[key] < 0:
            raise ConfigError(f"{reader}: options.{key} must be >= 0, got {options[key]!r}")
    if on_error not in ("skip", "fail"):
        raise ConfigError(f"{reader}: on_error must be 'skip' or 'fail', got {on_error!r}")
    return options


def shard_of(group: str, num_shards: int) -> int:
    """The record shard of a complex: ``int(sha1(group), 16) % num_shards`` (stable across runs and file sets).

    Raises:
        GeoplmError: ``num_shards < 1``.
    """
    if num_shards < 1:
        raise GeoplmError(f"number of shards must be >= 1, got {num_shards}")
    return int(hashlib.sha1(group.encode("utf-8")).hexdigest(), 16) % num_shards


def _check_shard(shard: int, num_shards: int) -> None:
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise GeoplmError(f"shard index {shard} out of range for {num_shards} shards")


def _read_list(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise GeoplmError(f"{path}: cannot read list: {exc.strerror or exc}") from exc
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _in_random_transformed_dir(path: Path) -> bool:
    return any(part in _RANDOM_TRANSFORMED_DIRS for part in path.parent.parts[-2:])


def _handle(error: GeoplmError, entry: str, source, on_error: str, skipped: list[dict[str, str]]) -> None:
    if on_error == "fail":
        raise error
    reason = getattr(error, "reason", str(error))
    logger.warning("skipped %s: %s", entry, reason)
    skipped.append({"entry": entry, "source_file": str(source), "reason": reason})


# --------------------------------------------------------------------------------------------------
# DB5.5


def _db5_table(path: Path) -> dict[str, dict[str, Any]]:
    """Per complex code: category, I-RMSD (Å), ΔASA (Å²), BM version and chain sets from Table_BM5.5.xlsx."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # openpyxl: "Unknown extension is not supported"
        return _read_db5_table(path)


def _read_db5_table(path: Path) -> dict[str, dict[str, Any]]:
    import openpyxl

    table: dict[str, dict[str, Any]] = {}
    try:
        workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises zipfile.BadZipFile, KeyError, InvalidFileException, ...
        logger.warning("%s: cannot read the benchmark table (%s: %s); labels without it", path, type(exc).__name__, exc)
        return table
    try:
        for row in workbook.worksheets[0].iter_rows(values_only=True):
            if not row or not isinstance(row[0], str):
                continue
            match = _TABLE_COMPLEX.match(row[0].strip())
            if not match:
                continue
            values = list(row) + [None] * 9
            entry: dict[str, Any] = {
                "receptor_chains": match["receptor"],
                "ligand_chains": match["ligand"],
            }
            if isinstance(values[1], str) and values[1].strip():
                entry["category"] = values[1].strip()
            for key, value in (("i_rmsd", values[6]), ("dasa", values[7]), ("bm_version", values[8])):
                if isinstance(value, int | float) and not isinstance(value, bool):
                    entry[key] = float(value) if key != "bm_version" else int(value)
            table[match["code"].upper()] = entry
    finally:
        workbook.close()
    return table


def _db5_metadata(meta: dict[str, list[Path]], cv: int) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """(code -> split, code -> labels) from the cv lists, difficulty lists and benchmark table."""
    splits: dict[str, str] = {}
    for split_name in ("train", "valid", "test"):
        for path in meta.get(f"cv{cv}_{split_name}", []):
            for line in _read_list(path):
                code = line.split()[0].upper()
                if code in splits and splits[code] != split_name:
                    logger.warning("%s: complex %s already in the %s list; kept there", path, code, splits[code])
                    continue
                splits[code] = split_name
    labels: dict[str, dict[str, Any]] = {}
    for difficulty in _DIFFICULTIES:
        for path in meta.get(difficulty, []):
            for line in _read_list(path):
                code = line.split("_")[0].split()[0].upper()
                labels.setdefault(code, {})["difficulty"] = difficulty
    for path in meta.get("table", []):
        for code, entry in _db5_table(path).items():
            labels.setdefault(code, {}).update(entry)
    return splits, labels


def _classify_db5(files: Sequence[os.PathLike]) -> tuple[dict[str, dict[str, Path]], dict[str, list[Path]]]:
    structures: dict[str, dict[str, Path]] = {}
    meta: dict[str, list[Path]] = {}
    for file in files:
        path = Path(file)
        name = path.name
        match = _DB5_NAME.match(name)
        if match:
            if _in_random_transformed_dir(path):
                logger.info("%s: EquiDock random-transformed test input, not a benchmark structure; ignored", path)
                continue
            code = match["code"].upper()
            key = f"{match['side']}_{match['state']}"
            if key in structures.get(code, {}):
                logger.warning("%s: a second file named %s; using %s", path, name, structures[code][key])
                continue
            structures.setdefault(code, {})[key] = path
            continue
        cv = _CV_NAME.match(name)
        plain = _PLAIN_SPLIT_NAME.match(name)
        if cv:
            meta.setdefault(f"cv{int(cv['fold'])}_{_SPLIT_NAMES[cv['split']]}", []).append(path)
        elif plain and re.fullmatch(r"cv_\d+", path.parent.name):
            fold = int(path.parent.name.split("_")[1])
            meta.setdefault(f"cv{fold}_{_SPLIT_NAMES[plain['split']]}", []).append(path)
        elif name in ("rigid.txt", "medium.txt", "difficult.txt"):
            meta.setdefault(name[:-4], []).append(path)
        elif name.lower().endswith(".xlsx"):
            meta.setdefault("table", []).append(path)
        else:
            logger.info("%s: not a DB5.5 structure ({ID}_{r,l}_{b,u}.pdb) or list file; ignored", path)
    return structures, meta


def read_db5_shard(
    files: Sequence[os.PathLike], shard: int, num_shards: int, options: dict, on_error: str = "skip"
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Reader ``db5``: the complexes of Docking Benchmark 5.5 dealt to this shard (see the module docstring).

    Source: EquiDock ``src/utils/db5_data.py`` (``Unbound_Bound_Data``, ``get_residues_db5``) and
    ``src/utils/protein_utils.py`` (``preprocess_unbound_bound``), octavian-ganea/equidock_public commit
    ac2c754399bf20b50a27d86dbff4f6669788d47f; file naming from the benchmark README.

    Args:
        files: the downloaded files (structures, cv lists, difficulty lists, the benchmark table).
        shard, num_shards: this shard; a complex goes to :func:`shard_of` (its code).
        options: ``cv`` (int, default 0: the EquiDock cross-validation fold whose lists give the split),
            ``interface_cutoff`` (Å, default 8.0), ``min_contacts`` (default 4; complexes with fewer
            Cα–Cα contacts are skipped), ``unbound`` (bool, default True: also the unbound records).
        on_error: ``"skip"`` or ``"fail"``.

    Returns:
        (records, skipped). Per complex, in this order: ``receptor_bound``, ``ligand_bound`` (with
        ``interface`` BoolTensor (L,)), then ``receptor_unbound``, ``ligand_unbound`` where present; ids
        ``{ID}_{r,l}_{b,u}``; keys of :func:`merge_chains` plus ``split``, ``labels``, ``group``, ``role``.
        Complexes in shard order of their code, sorted.

    Raises:
        ConfigError: an unknown or bad option. DockingError / StructureError: with ``on_error ==
        "fail"``, a complex without a bound partner, an unparsable file, too few contacts.
    """
    options = _check_options("db5", options, _DB5_OPTIONS, on_error)
    _check_shard(shard, num_shards)
    cutoff = float(options.get("interface_cutoff") or INTERFACE_CUTOFF)
    min_contacts = MIN_CONTACTS if options.get("min_contacts") is None else int(options["min_contacts"])
    cv = int(options.get("cv") or 0)
    with_unbound = True if options.get("unbound") is None else bool(options["unbound"])

    structures, meta = _classify_db5(files)
    if not any(key.startswith(f"cv{cv}_") for key in meta):
        logger.warning("db5: no split lists of cv fold %d among the files; split '' for every complex", cv)
    splits, labels = _db5_metadata(meta, cv)

    records: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for code in sorted(structures):
        if shard_of(code, num_shards) != shard:
            continue
        paths = structures[code]
        any_path = next(iter(paths.values()))
        try:
            missing = [f"{code}_{side}_b.pdb" for side in ("r", "l") if f"{side}_b" not in paths]
            if missing:
                raise DockingError(code, any_path, f"no bound {' or '.join(missing)}: the complex is incomplete")
            bound = []
            for side in ("r", "l"):
                path = paths[f"{side}_b"]
                try:
                    bound.append(_partner_record(path, f"{code}_{side}_b"))
                except StructureError as exc:
                    raise DockingError(code, path, f"bound {_SIDE[side]}: {exc.reason}") from exc
            _label_interface(bound[0], bound[1], cutoff, min_contacts, code, paths["r_b"])
        except DockingError as error:
            _handle(error, code, error.source_file, on_error, skipped)
            continue

        complex_records = bound
        if with_unbound:
            for side in ("r", "l"):
                path = paths.get(f"{side}_u")
                if path is None:
                    continue
                try:
                    complex_records.append(_partner_record(path, f"{code}_{side}_u"))
                except StructureError as exc:
                    error = DockingError(f"{code}_{side}_u", path, f"unbound {_SIDE[side]}: {exc.reason}")
                    _handle(error, error.entry, path, on_error, skipped)
        for record in complex_records:
            side, state = record["id"].split("_")[-2:]
            record["role"] = f"{_SIDE[side]}_{_STATE[state]}"
            record["group"] = code
            record["split"] = splits.get(code, "")
            record["labels"] = {**labels.get(code, {}), **record.get("labels", {})}
        records.extend(complex_records)
    return records, skipped


# --------------------------------------------------------------------------------------------------
# DIPS


def _dips_pair_name(list_entry: str) -> str:
    """``kq/1kq1.pdb1_2.dill`` -> ``kq_1kq1.pdb1_2.dill`` (EquiDock's ``replace('/', '_')``)."""
    return list_entry.strip().replace("/", "_")


def _dill_pair_name(path: Path) -> str:
    """The pair name of a ``.dill`` file: its two-letter folder (atom3: PDB code[1:3]) and its name."""
    folder = path.parent.name
    if len(folder) != 2:
        folder = path.name[1:3]
    return f"{folder}_{path.name}"


def _dips_splits(lists: list[Path]) -> dict[str, str]:
    splits: dict[str, str] = {}
    for path in lists:
        split_name = _SPLIT_NAMES[_DIPS_LIST_NAME.match(path.name)["split"]]
        for line in _read_list(path):
            splits.setdefault(_dips_pair_name(line), split_name)
    return splits


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _expected_checksum(path: Path, pair: str, checksums: dict) -> str:
    for key in (path.name, pair, pair.replace("_", "/", 1)):
        if key in checksums:
            value = checksums[key]
            if not isinstance(value, str) or not re.fullmatch(r"sha256:[0-9a-fA-F]{64}", value.strip()):
                raise ConfigError(f"dips: options.checksums[{key!r}] must be 'sha256:<64 hex digits>', got {value!r}")
            return value.strip().split(":", 1)[1].lower()
    raise ChecksumError(
        f"{path}: no sha256 in options.checksums for {path.name!r}: refusing to unpickle an unverified .dill file"
    )


def verify_checksum(path: str | os.PathLike, expected_sha256: str) -> None:
    """Check a file's SHA-256 before it is unpickled.

    Args:
        path: the file.
        expected_sha256: 64 hex digits (``sha256:`` prefix allowed).

    Raises:
        ChecksumError: the digests differ (the message names the file and both digests).
    """
    path = Path(path)
    expected = expected_sha256.lower().removeprefix("sha256:")
    actual = _sha256(path)
    if actual != expected:
        raise ChecksumError(f"{path}: sha256 {actual} differs from the expected {expected}: refusing to unpickle")


def _create_namedtuple(name, fieldnames, modulename=None, defaults=None):
    """Stand-in for dill's ``_create_namedtuple``: a fresh namedtuple class, nothing imported."""
    return namedtuple(str(name), [str(field) for field in fieldnames], defaults=defaults)


class _Pair(tuple):
    """Stand-in for atom3's ``Pair`` pickled by reference: fields ``complex, df0, df1, ...`` by position."""

    def __new__(cls, *args):
        return super().__new__(cls, args)

    complex = property(lambda self: self[0])
    df0 = property(lambda self: self[1])
    df1 = property(lambda self: self[2])


_SAFE_BUILTINS = frozenset(
    {
        "list",
        "dict",
        "tuple",
        "set",
        "frozenset",
        "str",
        "bytes",
        "bytearray",
        "int",
        "float",
        "complex",
        "bool",
        "slice",
        "range",
        "object",
    }
)
_SAFE_GLOBALS = frozenset(
    {
        ("collections", "OrderedDict"),
        ("collections", "defaultdict"),
        ("copyreg", "_reconstructor"),
        ("copyreg", "__newobj__"),
        ("copyreg", "__newobj_ex__"),
        ("_codecs", "encode"),
        ("datetime", "datetime"),
        ("datetime", "date"),
        ("datetime", "timedelta"),
        # pandas >= 3 with pyarrow installed stores strings as Arrow arrays: their reconstruction functions
        ("pyarrow.lib", "_restore_array"),
        ("pyarrow.lib", "type_for_alias"),
        ("pyarrow.lib", "py_buffer"),
    }
)
_DILL_MODULES = ("dill._dill", "dill.dill", "dill")


class _PairUnpickler(pickle.Unpickler):
    """Unpickler restricted to pandas/numpy/builtin containers, with atom3/dill names mapped to stand-ins."""

    def find_class(self, module: str, name: str):
        # Python 2 names (``__builtin__``, ``copy_reg``) of protocols 0-2, as pickle's own find_class maps them
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if module in _DILL_MODULES:
            if name == "_create_namedtuple":
                return _create_namedtuple
            if name == "_load_type":
                return _load_builtin_type
        if name == "Pair" and (module.startswith("atom3") or module.endswith("pair")):
            return _Pair
        if module == "builtins" and name in _SAFE_BUILTINS:
            return super().find_class(module, name)
        if (module, name) in _SAFE_GLOBALS or module.split(".")[0] in ("numpy", "pandas"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a DIPS pair file")


def _load_builtin_type(type_name: str):
    import builtins

    if type_name in _SAFE_BUILTINS and hasattr(builtins, type_name):
        return getattr(builtins, type_name)
    raise pickle.UnpicklingError(f"dill type {type_name!r} is not allowed in a DIPS pair file")


def load_dips_pair(path: str | os.PathLike, expected_sha256: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The two atom tables (``df0``, ``df1``) of a DIPS pair file, after verifying its SHA-256.

    Source: EquiDock ``src/utils/db5_data.py`` ``get_residues_DIPS`` (``pd.read_pickle(...).df0/.df1``);
    the ``Pair`` layout of drorlab/atom3 ``atom3/pair.py``.

    Args:
        path: a ``.dill`` pair file (dill or plain pickle of a ``Pair`` namedtuple or an object with
            ``df0``/``df1`` attributes).
        expected_sha256: its SHA-256 (64 hex digits, ``sha256:`` prefix allowed); checked before any
            byte is unpickled.

    Returns:
        (df0, df1): atom DataFrames; EquiDock uses df0 as the ligand and df1 as the receptor.

    Raises:
        ChecksumError: digest mismatch (nothing unpickled). DockingError: not a pickle, a global
        outside the allowed pandas/numpy/builtins, or no ``df0``/``df1`` DataFrames.
    """
    path = Path(path)
    verify_checksum(path, expected_sha256)
    entry = _dill_pair_name(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
        pair = _PairUnpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError) as exc:
        raise DockingError(entry, path, f"cannot unpickle the pair: {type(exc).__name__}: {exc}") from exc
    frames = []
    for index, attribute in ((1, "df0"), (2, "df1")):
        frame = getattr(pair, attribute, None)
        if frame is None and isinstance(pair, tuple) and len(pair) > index:
            frame = pair[index]
        if frame is None and isinstance(pair, dict):
            frame = pair.get(attribute)
        if not isinstance(frame, pd.DataFrame):
            raise DockingError(entry, path, f"the pair has no DataFrame {attribute} (got {type(frame).__name__})")
        frames.append(frame)
    return frames[0], frames[1]


_RESIDUE_ID = re.compile(r"^\s*(-?\d+)\s*([A-Za-z]?)\s*$")


def dips_atoms_to_record(df: pd.DataFrame, record_id: str, source: str) -> dict[str, Any]:
    """One partner record from a DIPS atom table (atom3 or ATOM3D column layout).

    atom3's layout (drorlab/atom3 ``atom3/structure.py`` ``parse_structure``: ``pdb_name, model, chain,
    residue`` (str: number and insertion code, ``"12"``/``"12A"``), ``resname, x, y, z, element,
    atom_name, aid``) is renamed to ATOM3D's (:data:`geoplm.datasets.atom3d.ATOM_COLUMNS`) and read by
    :func:`geoplm.datasets.atom3d.atoms_to_records`; its chains are merged by :func:`merge_chains`.

    Returns:
        A record as :func:`merge_chains` returns (coordinates in Å).

    Raises:
        GeoplmError: missing columns, a malformed residue id, no protein residue.
    """
    from geoplm.datasets.atom3d import ATOM_COLUMNS, atoms_to_records

    table = df.copy()
    if "name" not in table.columns and "atom_name" in table.columns:
        table = table.rename(columns={"atom_name": "name"})
    if "insertion_code" not in table.columns and "residue" in table.columns:
        parsed = table["residue"].astype(str).str.extract(_RESIDUE_ID)
        bad = parsed[0].isna()
        if bad.any():
            examples = table["residue"][bad].astype(str).unique()[:5].tolist()
            raise GeoplmError(f"{source}: {record_id}: malformed residue ids {examples}")
        table["residue"] = parsed[0].astype(int)
        table["insertion_code"] = parsed[1].fillna("")
    if "element" not in table.columns and "name" in table.columns:
        table["element"] = table["name"].astype(str).str.strip().str[:1]
    if "hetero" not in table.columns:
        table["hetero"] = " "  # atom3 keeps only standard residues (hetero flag ' ')
    if "model" not in table.columns:
        table["model"] = 0
    for column in ("ensemble", "subunit", "structure"):
        table[column] = record_id  # one structure per table: atoms_to_records' plain "{stem}_{chain}" ids
    missing = [column for column in ATOM_COLUMNS if column not in table.columns]
    if missing:
        raise GeoplmError(f"{source}: {record_id}: atom table lacks columns {missing}")
    return merge_chains(atoms_to_records(table, record_id, source), record_id, source=source)


def _classify_dips(files: Sequence[os.PathLike]) -> tuple[dict[str, dict[str, Path]], dict[str, Path], list[Path]]:
    pdb_pairs: dict[str, dict[str, Path]] = {}
    dill_pairs: dict[str, Path] = {}
    lists: list[Path] = []
    for file in files:
        path = Path(file)
        name = path.name
        match = _DIPS_PDB_NAME.match(name)
        if match:
            key = f"{match['side']}{'_complex' if match['complex'] else ''}"
            pdb_pairs.setdefault(match["pair"], {}).setdefault(key, path)
        elif name.endswith(".dill"):
            dill_pairs.setdefault(_dill_pair_name(path), path)
        elif _DIPS_LIST_NAME.match(name):
            lists.append(path)
        else:
            logger.info("%s: not a DIPS pair file or pair list; ignored", path)
    return pdb_pairs, dill_pairs, lists


def read_dips_shard(
    files: Sequence[os.PathLike], shard: int, num_shards: int, options: dict, on_error: str = "skip"
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Reader ``dips``: the DIPS pairs dealt to this shard, from PDB pairs and/or ``.dill`` pair files.

    Source: EquiDock ``src/utils/db5_data.py`` (``get_residues_DIPS``), ``src/utils/protein_utils.py``
    (``preprocess_unbound_bound``) and ``src/test_all_methods/testset_random_transf.py`` (``main_dips``:
    ``df0`` -> ``_l_b``, ``df1`` -> ``_r_b``), octavian-ganea/equidock_public commit
    ac2c754399bf20b50a27d86dbff4f6669788d47f.

    Args:
        files: PDB pair files (``{pair}_{l,r}_b[_COMPLEX].pdb``), ``.dill`` pair files and the
            ``pairs-postprocessed-{train,val,test}.txt`` lists.
        shard, num_shards: this shard; a pair goes to :func:`shard_of` (its name).
        options: ``checksums`` (``{file name or pair: "sha256:<hex>"}``; required when ``.dill`` files
            are present), ``interface_cutoff`` (Å, default 8.0), ``min_contacts`` (default 4).
        on_error: ``"skip"`` or ``"fail"``.

    Returns:
        (records, skipped). PDB pairs: ``receptor``, ``ligand`` (inputs), ``receptor_complex``,
        ``ligand_complex`` (ground truth); ``.dill`` pairs: ``receptor_complex``, ``ligand_complex``.
        ``interface`` (BoolTensor (L,)) on the ground-truth records, and on an input record whose
        sequence equals its ground truth's (the same residues, rigidly moved). A pair present in both
        forms is read from its PDB files.

    Raises:
        ConfigError: a bad option, or ``.dill`` files without ``options.checksums``. With ``on_error ==
        "fail"``: ChecksumError (no or wrong checksum: the file is not unpickled), DockingError,
        StructureError.
    """
    options = _check_options("dips", options, _DIPS_OPTIONS, on_error)
    _check_shard(shard, num_shards)
    cutoff = float(options.get("interface_cutoff") or INTERFACE_CUTOFF)
    min_contacts = MIN_CONTACTS if options.get("min_contacts") is None else int(options["min_contacts"])
    checksums = options.get("checksums") or {}

    pdb_pairs, dill_pairs, lists = _classify_dips(files)
    if dill_pairs and not checksums:
        raise ConfigError(
            f"dips: {len(dill_pairs)} .dill pair files (e.g. {next(iter(dill_pairs.values()))}) but no "
            "options.checksums: .dill files are pickles and are only unpickled after their sha256 matched"
        )
    splits = _dips_splits(lists)

    records: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for pair in sorted(set(pdb_pairs) | set(dill_pairs)):
        if shard_of(pair, num_shards) != shard:
            continue
        try:
            if pair in pdb_pairs:
                pair_records = _read_pdb_pair(pair, pdb_pairs[pair], cutoff, min_contacts)
            else:
                pair_records = _read_dill_pair(pair, dill_pairs[pair], checksums, cutoff, min_contacts)
        except ChecksumError as error:
            path = dill_pairs[pair]
            if on_error == "fail":
                raise
            logger.warning("skipped %s: %s", pair, error)
            skipped.append({"entry": pair, "source_file": str(path), "reason": str(error)})
            continue
        except DockingError as error:
            _handle(error, pair, error.source_file, on_error, skipped)
            continue
        for record in pair_records:
            record["group"] = pair
            record["split"] = splits.get(pair, "test")
        records.extend(pair_records)
    return records, skipped


def _read_pdb_pair(pair: str, paths: dict[str, Path], cutoff: float, min_contacts: int) -> list[dict[str, Any]]:
    roles = {"r": "receptor", "l": "ligand", "r_complex": "receptor_complex", "l_complex": "ligand_complex"}
    names = {
        "r": f"{pair}_r_b.pdb",
        "l": f"{pair}_l_b.pdb",
        "r_complex": f"{pair}_r_b_COMPLEX.pdb",
        "l_complex": f"{pair}_l_b_COMPLEX.pdb",
    }
    missing = [names[key] for key in roles if key not in paths]
    if missing:
        raise DockingError(pair, next(iter(paths.values())), f"missing {', '.join(missing)}")
    parsed: dict[str, dict[str, Any]] = {}
    for key in ("r_complex", "l_complex", "r", "l"):
        path = paths[key]
        try:
            parsed[key] = _partner_record(path, path.name[: -len(".pdb")])
        except StructureError as exc:
            raise DockingError(pair, path, f"{roles[key]}: {exc.reason}") from exc
        parsed[key]["role"] = roles[key]
    _label_interface(parsed["r_complex"], parsed["l_complex"], cutoff, min_contacts, pair, paths["r_complex"])
    for side in ("r", "l"):
        truth, moved = parsed[f"{side}_complex"], parsed[side]
        if moved["sequence"] == truth["sequence"]:
            moved["interface"] = truth["interface"].clone()
            moved["labels"] = dict(truth["labels"])
        else:
            logger.warning("%s: %s input and ground truth differ in sequence; no interface on the input", pair, side)
            moved["labels"] = {}
    return [parsed["r"], parsed["l"], parsed["r_complex"], parsed["l_complex"]]


def _read_dill_pair(pair: str, path: Path, checksums: dict, cutoff: float, min_contacts: int) -> list[dict[str, Any]]:
    expected = _expected_checksum(path, pair, checksums)
    df0, df1 = load_dips_pair(path, expected)
    out = []
    for side, frame, role in (("r", df1, "receptor_complex"), ("l", df0, "ligand_complex")):
        try:
            record = dips_atoms_to_record(frame, f"{pair}_{side}_b_COMPLEX", path.name)
        except GeoplmError as exc:
            raise DockingError(pair, path, f"{'df1' if side == 'r' else 'df0'} ({role}): {exc}") from exc
        record["role"] = role
        out.append(record)
    _label_interface(out[0], out[1], cutoff, min_contacts, pair, path)
    return out
