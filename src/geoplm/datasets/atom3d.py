"""ATOM3D LMDB datasets (PSR, PPI, LBA, RES, ...) read into residue records.

Format (ATOM3D's ``LMDBDataset`` / ``make_lmdb_dataset``, repository drorlab/atom3d, file
``atom3d/datasets/datasets.py``, commit 052393604716059c5dd95ff4279dfafaae73edd0; checked against the
real LMDBs of ``atom3d/data/test_lmdb`` and ``tests/test_data/lmdb{,_old}`` at commit
4c2f3b7e9efe128791b83f03b2e8cae91e78b018):

* an LMDB environment directory (``data.mdb``, ``lock.mdb``);
* key ``b"num_examples"``: the number of entries as ASCII digits;
* key ``b"serialization_format"``: ``json`` (the default, and the only one used by the released
  datasets), ``msgpack`` or ``pkl``;
* key ``b"id_to_idx"``: the serialized ``{entry id: index}`` map;
* keys ``b"0"`` .. ``b"{n-1}"``: one entry each, gzip-compressed serialized ``dict``. DataFrames are
  written with ``DataFrame.to_json(orient="split", double_precision=6)``, i.e. ``{"columns": [...],
  "index": [...], "data": [[...], ...]}``, and restored with ``pd.DataFrame(**value)`` for every key
  that starts or ends with ``atoms``. Newer files add a ``types`` entry mapping each key to its
  Python type (``"<class 'pandas.core.frame.DataFrame'>"``), which older files lack; a DataFrame named
  there (e.g. RES's ``labels``) is restored too.

The ``atoms`` table (``atom3d/util/formats.py`` ``bp_to_df``) has one row per atom of Biopython's
selected altloc, in file order, with columns ensemble, subunit, structure, model (Biopython's model
serial number), chain, hetero (Biopython's hetero flag: ``" "``, ``"W"``, ``"H_XXX"``; RES writes
``""``), insertion_code, residue, segid, resname, altloc, occupancy, bfactor, x, y, z, element, name,
fullname, serial_number.

:func:`atoms_to_records` turns the protein residues of the first model into records with the
conventions of :mod:`geoplm.structure` (waters, hydrogens and ligands dropped; HETATM amino acids
kept only when part of the polymer; residues without N/CA/C kept with ``residue_mask`` False).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import torch

from geoplm.errors import GeoplmError
from geoplm.structure import BACKBONE_ATOMS

logger = logging.getLogger(__name__)

ATOM_COLUMNS: tuple[str, ...] = (
    "ensemble",
    "subunit",
    "structure",
    "model",
    "chain",
    "hetero",
    "insertion_code",
    "residue",
    "resname",
    "name",
    "element",
    "x",
    "y",
    "z",
)
_META_KEYS = (b"num_examples", b"serialization_format", b"id_to_idx")
_WATER_NAMES = frozenset({"HOH", "WAT", "DOD", "H2O", "TIP", "TIP3", "SOL"})
_PEPTIDE_BOND_MAX = 2.0  # Å, as in geoplm.structure
_STRUCTURE_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif")
_EXTRACTED_SUFFIX = ".extracted"


class Atom3dError(GeoplmError):
    """An ATOM3D LMDB or one of its entries cannot be read.

    Args:
        source: the LMDB directory or archive.
        reason: why, in words.
        entry: the entry (index and, where known, its id), or None for the whole LMDB.
    """

    def __init__(self, source, reason: str, entry: str | None = None):
        self.source = str(source)
        self.entry = entry
        self.reason = reason
        where = f"{self.source} entry {entry}" if entry is not None else self.source
        super().__init__(f"{where}: {reason}")


# --------------------------------------------------------------------------------------------------
# LMDB access


class LMDBReader:
    """Read-only view of one ATOM3D LMDB: ``len()``, ``reader[i]`` (an entry dict), iteration.

    Use :func:`open_lmdb` to create one; close it (or use it as a context manager) when done.
    """

    def __init__(self, path: str | os.PathLike):
        import lmdb

        self.path = Path(path)
        if not (self.path / "data.mdb").is_file():
            raise Atom3dError(self.path, "not an LMDB directory (no data.mdb)")
        try:
            self.env = lmdb.open(
                str(self.path), readonly=True, lock=False, readahead=False, meminit=False, max_readers=1
            )
        except lmdb.Error as exc:
            raise Atom3dError(self.path, f"cannot open LMDB: {exc}") from exc
        with self.env.begin(write=False) as txn:
            fmt = txn.get(b"serialization_format")
            self.serialization_format = fmt.decode() if fmt is not None else "json"
            num = txn.get(b"num_examples")
            if num is not None:
                try:
                    self.num_examples = int(num)
                except ValueError as exc:
                    raise Atom3dError(self.path, f"num_examples is not an integer: {num[:40]!r}") from exc
            else:  # count the numeric keys
                self.num_examples = sum(1 for key in txn.cursor().iternext(values=False) if key.isdigit())
            raw_ids = txn.get(b"id_to_idx")
        self.id_to_idx: dict[str, int] = {}
        if raw_ids is not None:
            try:
                self.id_to_idx = {str(k): int(v) for k, v in self._deserialize(raw_ids).items()}
            except Exception as exc:  # malformed map: entries are still readable by index
                logger.warning("%s: cannot read id_to_idx (%s); entries named by index", self.path, exc)
        self.idx_to_id = {v: k for k, v in self.id_to_idx.items()}

    def _deserialize(self, data: bytes) -> Any:
        if self.serialization_format == "json":
            return json.loads(data)
        if self.serialization_format == "msgpack":
            try:
                import msgpack
            except ImportError as exc:
                raise Atom3dError(self.path, "msgpack serialization needs the msgpack package") from exc
            return msgpack.unpackb(data)
        raise Atom3dError(
            self.path, f"unsupported serialization format {self.serialization_format!r} (json or msgpack)"
        )

    def entry_name(self, index: int) -> str:
        """``"{index}"`` or ``"{index} ({id})"`` where the id is known."""
        name = self.idx_to_id.get(index)
        return f"{index} ({name})" if name is not None else str(index)

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict[str, Any]:
        return read_entry(self, index)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for index in range(len(self)):
            yield self[index]

    def close(self) -> None:
        self.env.close()

    def __enter__(self) -> LMDBReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_lmdb(path: str | os.PathLike) -> LMDBReader:
    """Open an ATOM3D LMDB directory read-only (``lock=False``, so read-only folders work).

    Raises:
        Atom3dError: no ``data.mdb`` in ``path``, or LMDB cannot open it.
    """
    return LMDBReader(path)


def read_entry(env: LMDBReader, index: int) -> dict[str, Any]:
    """Entry ``index`` of an LMDB opened with :func:`open_lmdb`, DataFrames restored.

    Every key starting or ending with ``atoms`` (ATOM3D's rule), and every key whose ``types`` entry
    names a DataFrame, becomes a ``pandas.DataFrame``; ``id`` defaults to ``str(index)``.

    Raises:
        Atom3dError: index out of range, key absent, not gzip, not valid JSON/msgpack, not a dict, or a
            DataFrame value of the wrong shape; the message names the LMDB and the entry.
    """
    entry = env.entry_name(index)
    if not 0 <= index < len(env):
        raise Atom3dError(env.path, f"index out of range (0..{len(env) - 1})", entry)
    with env.env.begin(write=False) as txn:
        compressed = txn.get(str(index).encode())
    if compressed is None:
        raise Atom3dError(env.path, "key absent from the LMDB", entry)
    try:
        serialized = gzip.decompress(compressed)
    except (OSError, EOFError, zlib.error) as exc:
        raise Atom3dError(env.path, f"value is not a valid gzip stream ({exc})", entry) from exc
    try:
        item = env._deserialize(serialized)
    except Atom3dError:
        raise
    except Exception as exc:
        raise Atom3dError(
            env.path, f"cannot decode {env.serialization_format}: {type(exc).__name__}: {exc}", entry
        ) from exc
    if not isinstance(item, dict):
        raise Atom3dError(env.path, f"entry is a {type(item).__name__}, not a dict", entry)
    types = item.get("types") if isinstance(item.get("types"), dict) else {}
    for key in list(item):
        is_frame = key.startswith("atoms") or key.endswith("atoms") or "DataFrame" in str(types.get(key, ""))
        if is_frame and isinstance(item[key], dict):
            try:
                item[key] = pd.DataFrame(**item[key])
            except Exception as exc:
                raise Atom3dError(env.path, f"{key!r} is not a split-oriented DataFrame: {exc}", entry) from exc
    item.setdefault("id", str(index))
    item.setdefault("file_path", str(env.path))
    return item


# --------------------------------------------------------------------------------------------------
# atoms -> records


def _one_letter(name: str) -> str | None:
    from Bio.Data.PDBData import protein_letters_3to1_extended

    if name == "UNK":
        return "X"
    return protein_letters_3to1_extended.get(name)


def _entry_stem(entry_id: str) -> str:
    stem = str(entry_id)
    if stem.lower().endswith(".gz"):
        stem = stem[:-3]
    for suffix in _STRUCTURE_SUFFIXES:
        if stem.lower().endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def atoms_to_records(df: pd.DataFrame, entry_id: str, source: str) -> list[dict[str, Any]]:
    """Protein chains of an ATOM3D ``atoms`` table as residue records (see :mod:`geoplm.structure`).

    Args:
        df: the ``atoms`` DataFrame (columns :data:`ATOM_COLUMNS` at least; ``occupancy``/``bfactor``
            optional).
        entry_id: the entry's id; its file extension (``.pdb``, ``.gz``, ...) is dropped, so records
            are ``f"{stem}_{chain}"`` (``_`` for a blank chain) as for structure files. When the
            table holds several structures (ensemble/subunit/structure), ids are
            ``f"{stem}_{structure stem}_{chain}"``.
        source: the records' ``source``.

    Returns:
        One record per protein chain of the first model of each structure, in table order. Waters
        (hetero ``W`` or a water name), hydrogens and non-amino-acid groups are dropped; a HETATM
        amino acid (hetero ``H_...``) is a residue only between ATOM residues of its chain or when
        peptide-bonded (C-N <= 2.0 Å) to another residue, so free amino-acid ligands are not. Of
        duplicated atom names in a residue (altlocs) the highest occupancy is kept, the first on ties.

    Raises:
        GeoplmError: columns missing, or no protein residue.
    """
    missing = [column for column in ATOM_COLUMNS if column not in df.columns]
    if missing:
        raise GeoplmError(f"{source}: entry {entry_id}: atoms table lacks columns {missing}")
    if df.empty:
        raise GeoplmError(f"{source}: entry {entry_id}: empty atoms table")
    df = df.reset_index(drop=True)
    structure_key = (
        df["ensemble"].astype(str) + "\x00" + df["subunit"].astype(str) + "\x00" + df["structure"].astype(str)
    )
    first_model = df.groupby(structure_key, sort=False)["model"].transform("first")
    hetero = df["hetero"].fillna("").astype(str).str.strip()
    resname = df["resname"].fillna("").astype(str).str.strip()
    element = df["element"].fillna("").astype(str).str.strip().str.upper()
    keep = (df["model"] == first_model) & (hetero != "W") & ~resname.isin(_WATER_NAMES) & ~element.isin(["H", "D"])
    df = df[keep]
    structure_key = structure_key[keep]
    hetero = hetero[keep]
    resname = resname[keep]
    if df.empty:
        raise GeoplmError(f"{source}: entry {entry_id}: no protein chain (only water/hydrogens)")

    stem = _entry_stem(entry_id)
    structures = list(dict.fromkeys(structure_key))
    chain_col = df["chain"].fillna("").astype(str)
    icode = df["insertion_code"].fillna("").astype(str).str.strip()
    names = df["name"].fillna("").astype(str).str.strip()
    coords = df[["x", "y", "z"]].to_numpy(dtype=np.float64)
    occupancy = df["occupancy"].to_numpy(dtype=np.float64) if "occupancy" in df else np.ones(len(df))
    bfactor = df["bfactor"].to_numpy(dtype=np.float64) if "bfactor" in df else np.full(len(df), np.nan)
    residue_numbers = df["residue"].to_numpy()

    # consecutive rows of one (structure, chain, hetero, residue, insertion code) form a residue
    residue_key = (
        structure_key + "\x00" + chain_col + "\x00" + hetero + "\x00" + df["residue"].astype(str) + "\x00" + icode
    )
    keys = residue_key.to_numpy()
    starts = [0] + [i for i in range(1, len(keys)) if keys[i] != keys[i - 1]]
    bounds = list(zip(starts, starts[1:] + [len(keys)], strict=True))

    chains: dict[tuple[str, str], list[dict[str, Any]]] = {}
    s_values, c_values, h_values, r_values = (
        structure_key.to_numpy(),
        chain_col.to_numpy(),
        hetero.to_numpy(),
        resname.to_numpy(),
    )
    for start, end in bounds:
        atoms: dict[str, int] = {}
        for row in range(start, end):
            name = names.iat[row]
            if name not in atoms or occupancy[row] > occupancy[atoms[name]]:
                atoms[name] = row
        name3 = r_values[start]
        letter = _one_letter(name3)
        has_backbone = all(atom in atoms for atom in ("N", "CA", "C"))
        if letter is None and not has_backbone:
            continue  # ligand, nucleotide, capping group
        backbone = np.full((len(BACKBONE_ATOMS), 3), np.nan)
        for j, atom in enumerate(BACKBONE_ATOMS):
            if atom in atoms:
                backbone[j] = coords[atoms[atom]]
        chains.setdefault((s_values[start], c_values[start].strip()), []).append(
            {
                "letter": letter or "X",
                "het": h_values[start].startswith("H"),
                "name": name3,
                "number": int(residue_numbers[start]),
                "icode": icode.iat[start],
                "backbone": backbone,
                "b_factor": bfactor[atoms["CA"]] if "CA" in atoms else np.nan,
            }
        )

    records = []
    for (structure, chain_id), residues in chains.items():
        residues = _polymer_residues(residues)
        if not residues:
            logger.info("%s: entry %s: chain %r has no amino-acid residues; skipped", source, entry_id, chain_id)
            continue
        if len(structures) > 1:
            record_id = f"{stem}_{_entry_stem(structure.rsplit(chr(0), 1)[-1])}_{chain_id or '_'}"
        else:
            record_id = f"{stem}_{chain_id or '_'}"
        records.append(_record(record_id, source, chain_id, residues))
    if not records:
        raise GeoplmError(f"{source}: entry {entry_id}: no protein chain")
    return records


def _polymer_residues(residues: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop HETATM amino acids that are neither between ATOM residues nor peptide-bonded."""
    atom_positions = [i for i, residue in enumerate(residues) if not residue["het"]]
    first = atom_positions[0] if atom_positions else None
    last = atom_positions[-1] if atom_positions else None
    n_coord = np.stack([residue["backbone"][0] for residue in residues])
    c_coord = np.stack([residue["backbone"][2] for residue in residues])
    kept = []
    for i, residue in enumerate(residues):
        if residue["het"] and not (first is not None and first < i < last):
            c_to_n = np.linalg.norm(n_coord - c_coord[i], axis=-1)
            n_to_c = np.linalg.norm(c_coord - n_coord[i], axis=-1)
            c_to_n[i] = n_to_c[i] = np.inf
            if not ((c_to_n <= _PEPTIDE_BOND_MAX).any() or (n_to_c <= _PEPTIDE_BOND_MAX).any()):
                continue
        kept.append(residue)
    return kept


def _record(record_id: str, source: str, chain_id: str, residues: list[dict[str, Any]]) -> dict[str, Any]:
    backbone = torch.from_numpy(np.stack([residue["backbone"] for residue in residues]).astype(np.float32))
    backbone_mask = ~torch.isnan(backbone).any(dim=-1)
    residue_mask = backbone_mask[:, :3].all(dim=-1)
    n_masked = int((~residue_mask).sum())
    if n_masked:
        logger.warning(
            "%s: %s: %d of %d residues lack backbone atoms (N, CA or C); kept with residue_mask False",
            source,
            record_id,
            n_masked,
            len(residues),
        )
    return {
        "id": record_id,
        "source": source,
        "chain": chain_id,
        "sequence": "".join(residue["letter"] for residue in residues),
        "residue_name": [residue["name"] for residue in residues],
        "residue_number": torch.tensor([residue["number"] for residue in residues], dtype=torch.long),
        "insertion_code": [residue["icode"] for residue in residues],
        "backbone": backbone,
        "backbone_mask": backbone_mask,
        "b_factor": torch.tensor([residue["b_factor"] for residue in residues], dtype=torch.float32),
        "residue_mask": residue_mask,
        "plddt": False,
    }


# --------------------------------------------------------------------------------------------------
# archives and shards


def _safe_members(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    members = []
    for member in tar.getmembers():
        path = PurePosixPath(member.name)
        if path.is_absolute() or ".." in path.parts or member.name.startswith(("/", "\\")):
            raise Atom3dError(archive, f"unsafe member path {member.name!r} in archive")
        if member.issym() or member.islnk():
            raise Atom3dError(archive, f"link member {member.name!r} in archive")
        if not (member.isfile() or member.isdir()):
            continue  # devices, fifos: never needed
        members.append(member)
    return members


def extract_archive(archive: str | os.PathLike) -> Path:
    """Extract a ``.tar``/``.tar.gz`` once into ``<archive>.extracted/`` and return that folder.

    Extraction goes to a temporary sibling folder that is renamed into place, so concurrent jobs
    and interrupted runs never see a partial folder; an existing folder is reused.

    Raises:
        Atom3dError: not a readable tar archive, or a member with an absolute path, ``..`` or a link.
    """
    archive = Path(archive)
    target = archive.with_name(archive.name + _EXTRACTED_SUFFIX)
    if target.is_dir():
        return target
    tmp = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", dir=archive.parent))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = _safe_members(tar, archive)
                for member in members:
                    dest = tmp.joinpath(*PurePosixPath(member.name).parts)
                    if member.isdir():
                        dest.mkdir(parents=True, exist_ok=True)
                        continue
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    source = tar.extractfile(member)
                    with source, open(dest, "wb") as out:
                        shutil.copyfileobj(source, out)
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise Atom3dError(archive, f"cannot extract archive: {type(exc).__name__}: {exc}") from exc
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # another job won the race otherwise
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _lmdb_dirs(root: Path) -> list[Path]:
    return sorted({path.parent for path in root.rglob("data.mdb")})


def find_lmdb(archive: str | os.PathLike, subset: str | None) -> Path:
    """The LMDB directory of a download: an LMDB folder itself, or the one named ``subset`` inside
    a folder or an archive (extracted with :func:`extract_archive`).

    Raises:
        Atom3dError: no LMDB, none named ``subset``, or several and no ``subset`` to choose.
    """
    archive = Path(archive)
    if archive.is_dir() and (archive / "data.mdb").is_file():
        return archive
    if archive.is_dir():
        root = archive
    elif archive.is_file():
        root = extract_archive(archive)
    else:
        raise Atom3dError(archive, "no such file or directory")
    found = _lmdb_dirs(root)
    if not found:
        raise Atom3dError(archive, "no LMDB (data.mdb) inside")
    if subset is not None:
        matching = [path for path in found if path.name == subset]
        if len(matching) == 1:
            return matching[0]
        listing = ", ".join(str(path.relative_to(root)) for path in found)
        if not matching:
            raise Atom3dError(archive, f"no LMDB folder named {subset!r} (LMDBs: {listing})")
        raise Atom3dError(archive, f"several LMDB folders named {subset!r} ({listing})")
    if len(found) > 1:
        listing = ", ".join(str(path.relative_to(root)) for path in found)
        raise Atom3dError(archive, f"several LMDBs and no subset to choose one ({listing})")
    return found[0]


def shard_bounds(total: int, shard_index: int, num_shards: int) -> tuple[int, int]:
    """Contiguous ``[start, end)`` of shard ``shard_index`` of ``num_shards`` over ``total`` items."""
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise GeoplmError(f"shard index {shard_index} out of range for {num_shards} shards")
    return total * shard_index // num_shards, total * (shard_index + 1) // num_shards


def read_lmdb_shard(
    archives: Sequence[str | os.PathLike],
    subset: str | None,
    shard_index: int,
    num_shards: int,
    on_error: str = "skip",
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Records of one contiguous shard of the entries of the downloads' ATOM3D LMDBs.

    Args:
        archives: downloaded files, each an LMDB folder, a folder holding LMDBs, or a tar(.gz)
            archive holding them (extracted once into ``<archive>.extracted/``).
        subset: the name of the folder holding ``data.mdb`` to read (e.g. ``"test"``); None when
            there is only one LMDB.
        shard_index, num_shards: the entries of all LMDBs, in order, are cut into ``num_shards``
            contiguous chunks; this reads chunk ``shard_index``.
        on_error: ``"skip"`` (bad entries become skipped rows) or ``"fail"`` (raise).

    Returns:
        (records, skipped rows with keys entry, source_file, reason). Record sources are
        ``f"{lmdb folder}#{index}"``.

    Raises:
        Atom3dError: an archive without the LMDB; with ``on_error == "fail"`` the first bad entry
            (the message names the LMDB and the entry).
    """

    def atoms(item: dict[str, Any], reader: LMDBReader, index: int, source: str) -> list[dict[str, Any]]:
        table = item.get("atoms")
        if not isinstance(table, pd.DataFrame):
            raise Atom3dError(reader.path, "no 'atoms' table", reader.entry_name(index))
        return atoms_to_records(table, str(item["id"]), source)

    return _read_items(archives, subset, shard_index, num_shards, on_error, atoms)


def _read_items(
    archives: Sequence[str | os.PathLike],
    subset: str | None,
    shard_index: int,
    num_shards: int,
    on_error: str,
    to_records: Callable[[dict[str, Any], LMDBReader, int, str], list[dict[str, Any]]],
    splits: dict[str, str] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """The shard loop of the ATOM3D readers: open the LMDBs, take this shard's contiguous chunk of
    their entries, turn each item into records with ``to_records(item, reader, index, source)``;
    a bad entry is a skipped row (or raises with ``on_error == "fail"``), named by LMDB and entry.
    With ``splits`` (split name -> LMDB folder, e.g. ``{"train": "train", "valid": "val", "test": "test"}``)
    the folders are read one after another and each record's ``split`` is its folder's split name."""
    folders = list(splits.items()) if splits else [(None, subset)]
    opened = [(open_lmdb(find_lmdb(archive, folder)), split) for split, folder in folders for archive in archives]
    readers = [reader for reader, _ in opened]
    split_of_reader = {id(reader): split for reader, split in opened}
    try:
        entries = [(reader, index) for reader in readers for index in range(len(reader))]
        start, end = shard_bounds(len(entries), shard_index, num_shards)
        records: list[dict[str, Any]] = []
        skipped: list[dict[str, str]] = []
        for reader, index in entries[start:end]:
            source = f"{reader.path}#{index}"
            try:
                item = read_entry(reader, index)
                try:
                    parsed = to_records(item, reader, index, source)
                except Atom3dError:
                    raise
                except GeoplmError as exc:
                    raise Atom3dError(reader.path, str(exc), reader.entry_name(index)) from exc
                except (KeyError, ValueError, TypeError) as exc:
                    raise Atom3dError(
                        reader.path, f"malformed atoms table: {type(exc).__name__}: {exc}", reader.entry_name(index)
                    ) from exc
            except Atom3dError as error:
                if on_error == "fail":
                    raise
                logger.warning("skipped %s", error)
                skipped.append(
                    {"entry": error.entry or str(index), "source_file": str(reader.path), "reason": error.reason}
                )
                continue
            if split_of_reader[id(reader)] is not None:
                for record in parsed:
                    record["split"] = split_of_reader[id(reader)]
            records.extend(parsed)
        return records, skipped
    finally:
        for reader in readers:
            reader.close()


#: ATOM3D task -> the item keys holding atom tables (Townshend et al. 2021, Sec. 4; atom3d
#: ``datasets/{psr,msp,ppi,lba,res}`` LMDB layouts). Each table becomes records with ``role`` = key.
ATOM_KEYS: dict[str, tuple[str, ...]] = {
    "res": ("atoms",),
    "psr": ("atoms",),
    "msp": ("original_atoms", "mutated_atoms"),
    "ppi": ("atoms_pairs",),
    "lba": ("atoms_pocket", "atoms_protein", "atoms_ligand"),
}

_READ_SHARD_OPTIONS = {"subset", "task", "atoms_keys", "splits"}


def ligand_from_atoms(table: pd.DataFrame, path: os.PathLike | str, entry: str) -> dict[str, Any]:
    """The ligand of an ATOM3D LBA item from its ``atoms_ligand`` table.

    ATOM3D writes the PDBbind SDF with its hydrogens (atom3d ``datasets.SDFDataset``: ``read_sdf(sanitize=False,
    remove_hs=False)``, then ``formats.mol_to_df(add_hs=True)``: every atom, residue name ``LIG``).

    Returns:
        The keys of :func:`geoplm.datasets.pdbbind.read_ligand` that a table gives: ``position`` (A, 3) Å and
        ``element`` (A) of the heavy atoms in table order, ``position_with_h`` (A + H, 3) Å and
        ``element_with_h`` of every row, ``source``.

    Raises:
        Atom3dError: the table is missing, lacks x / y / z / element, or has no heavy atom.
    """
    if not isinstance(table, pd.DataFrame):
        raise Atom3dError(path, "no 'atoms_ligand' atom table", entry)
    missing = [column for column in ("x", "y", "z", "element") if column not in table.columns]
    if missing:
        raise Atom3dError(path, f"'atoms_ligand' lacks columns {missing}", entry)
    element = [str(e).strip().capitalize() for e in table["element"]]
    position = torch.tensor(table[["x", "y", "z"]].to_numpy(dtype=np.float64), dtype=torch.float32)
    heavy = torch.tensor([e != "H" for e in element], dtype=torch.bool)
    if not bool(heavy.any()):
        raise Atom3dError(path, "'atoms_ligand' has no heavy atom", entry)
    return {
        "position": position[heavy],
        "element": [e for e, keep in zip(element, heavy.tolist(), strict=True) if keep],
        "position_with_h": position,
        "element_with_h": element,
        "source": f"{Path(str(path)).name}#{entry}",
    }


def lba_complex_record(
    item: dict[str, Any], item_id: str, labels: dict, source: str, path: os.PathLike | str, entry: str
) -> dict[str, Any]:
    """One record of an ATOM3D LBA item, as GGNN_Meets_PLM's ``LBADataset`` reads it (``atoms_pocket`` and
    ``atoms_ligand``; the whole protein ``atoms_protein`` is not read): the pocket's chains merged in table
    order (:func:`geoplm.datasets.pdbbind.merge_chain_records`, ``id`` = the item id), ``ligand``
    (:func:`ligand_from_atoms`), ``labels`` (``scores.neg_log_aff``), ``group`` = the item id, ``role`` =
    ``complex``; the same layout as the ``pdbbind`` reader's records.

    Raises:
        Atom3dError: no pocket table, no protein residue in it, or an unusable ligand table.
    """
    from geoplm.datasets.pdbbind import merge_chain_records

    pocket = item.get("atoms_pocket")
    if not isinstance(pocket, pd.DataFrame):
        raise Atom3dError(path, "no 'atoms_pocket' atom table", entry)
    chains = atoms_to_records(pocket, f"{item_id}_pocket", source)
    if not chains:
        raise Atom3dError(path, "no protein chain in 'atoms_pocket'", entry)
    record = merge_chain_records(chains, item_id, source)
    record.update(labels=labels, group=item_id, role="complex", split="", ligand=ligand_from_atoms(
        item.get("atoms_ligand"), path, entry))  # fmt: skip
    return record


def _plain(value: Any) -> Any:
    """A JSON-serialisable copy of an LMDB label (numpy scalars/arrays, tuples, nested dicts)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _lmdb_inputs(files: Sequence[os.PathLike]) -> list[Path]:
    """Downloads as LMDB inputs: an LMDB downloaded as its ``data.mdb`` (+ ``lock.mdb``) files is
    its folder (once); archives and folders pass through."""
    inputs: list[Path] = []
    for file in map(Path, files):
        path = file.parent if file.name in ("data.mdb", "lock.mdb") else file
        if path not in inputs:
            inputs.append(path)
    return inputs


def read_shard(
    files: Sequence[os.PathLike], shard: int, num_shards: int, options: dict, on_error: str = "skip"
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Reader ``atom3d_lmdb`` (see :mod:`geoplm.datasets`): records of one shard of ATOM3D LMDBs.

    Options:
        subset: the LMDB folder to read inside the archive (e.g. ``test``), or None. Splits are
            not taken from it: a dataset reads one folder and is split by the workflow's seed.
        splits: instead of ``subset``, the dataset's splits as LMDB folders, ``{split: folder}`` (ATOM3D's
            own splits, e.g. PSR split by year ``{train: train, valid: val, test: test}``): every folder is
            read, in this order, and each record carries its folder's split.
        task: ``res`` (default), ``psr``, ``msp``, ``ppi`` or ``lba`` -- which atom tables an item
            holds (:data:`ATOM_KEYS`); tables absent from an item are passed over.
        atoms_keys: explicit list of item keys holding atom tables (overrides ``task``).

    Every record carries ``labels`` = the item's ``scores`` (PSR: ``gdt_ts``, ``tm``, ...; LBA:
    ``neg_log_aff``) and/or ``label`` (MSP, RES versions with labels), ``group`` = the item id
    (a PSR target/model, an LBA complex, an MSP mutation) and ``role`` = the atom table's key.
    LBA (``task: lba`` without ``atoms_keys``) makes one record per complex instead
    (:func:`lba_complex_record`): the pocket's chains merged, ``role`` ``complex``, and the ligand.

    Raises:
        ConfigError: an unknown option or task. Atom3dError: see :func:`read_lmdb_shard`.
    """
    from geoplm.errors import ConfigError

    unknown = set(options) - _READ_SHARD_OPTIONS
    if unknown:
        raise ConfigError(f"atom3d_lmdb: unknown options {sorted(unknown)} (known: {sorted(_READ_SHARD_OPTIONS)})")
    task = options.get("task", "res")
    if task not in ATOM_KEYS:
        raise ConfigError(f"atom3d_lmdb: options.task '{task}' is not one of {sorted(ATOM_KEYS)}")
    keys = tuple(options.get("atoms_keys") or ATOM_KEYS[task])
    subset = options.get("subset")
    splits = options.get("splits")
    if splits is not None and (subset is not None or not isinstance(splits, dict) or not splits):
        raise ConfigError("atom3d_lmdb: options.splits is a non-empty {split: LMDB folder} mapping, not with subset")
    if task == "res" and keys == ("atoms",) and splits is None:
        records, skipped = read_lmdb_shard(_lmdb_inputs(files), subset, shard, num_shards, on_error)
        for record in records:
            record.update(split="", group=record["id"].rsplit("_", 1)[0], role="atoms")
        return records, skipped

    def tables(item: dict[str, Any], reader: LMDBReader, index: int, source: str) -> list[dict[str, Any]]:
        item_id = str(_plain(item.get("id", index)))
        labels = {k: _plain(item[k]) for k in ("scores", "label") if k in item}
        if task == "lba" and not options.get("atoms_keys"):
            return [lba_complex_record(item, item_id, labels, source, reader.path, reader.entry_name(index))]
        item_records = []
        for key in keys:
            table = item.get(key)
            if table is None:
                continue
            if not isinstance(table, pd.DataFrame):
                raise Atom3dError(reader.path, f"'{key}' is not an atom table", reader.entry_name(index))
            for record in atoms_to_records(table, f"{item_id}_{key}", source):
                record.update(labels=labels, group=item_id, role=key, split=record.get("split") or "")
                item_records.append(record)
        if not item_records:
            raise Atom3dError(reader.path, f"no protein chain in tables {list(keys)}", reader.entry_name(index))
        return item_records

    return _read_items(_lmdb_inputs(files), subset, shard, num_shards, on_error, tables, splits)
