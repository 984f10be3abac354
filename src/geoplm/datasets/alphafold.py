"""AlphaFold DB models (reader ``alphafold``): proteome/Swiss-Prot tarballs and single entries.

GearNet's pretraining set (Zhang et al., ICLR 2023, pretraining on AlphaFold DB v2; DeepGraphLearning/GearNet
``config/pretrain/mc_gearnet_edge.yaml``, commit 28bf75f5dfb6cd7b9bf4394d153a87f69bddf1a6:
``AlphaFoldDB`` with ``species_start: 0``, ``species_end: 22``) is every model of the AFDB v2
tarballs of 21 model-organism proteomes plus Swiss-Prot, as torchdrug's ``datasets.AlphaFoldDB``
lists them (DeepGraphLearning/torchdrug, ``torchdrug/datasets/alphafolddb.py``, commit
c8155f40485ced8ffa81f5eace8792516678e3ec): :data:`AFDB_V2_TARBALLS` (URL and MD5 as listed there).
torchdrug extracts each tarball, takes every ``*.pdb.gz`` member (sorted by name; the ``.cif.gz``
beside each one is not read) and keeps every model, whatever its pLDDT; so does this reader by
default.

Inputs (``files``, any mix):

* **tarballs** (``.tar``, ``.tar.gz``, ``.tgz``): read as a stream (``tarfile`` mode ``r|*``), one
  member at a time, never extracted and never held whole in memory. Members are the gzipped
  ``AF-{UniProt}-F{n}-model_v{k}.pdb.gz`` / ``.cif.gz`` files of the AFDB layout; other members are
  ignored with a log line.
* **single entries**: ``AF-{UniProt}-F{n}-model_v{k}.pdb|.cif`` (optionally ``.gz``; the pattern may
  sit inside a longer name, as in ``alphafold.ebi.ac.uk_files_AF-P60713-F1-model_v4.pdb``), and files
  renamed by other repositories (``P04629.pdb``, ``Q7Z6M3.cif``, ``EF2_lokiarchaea.pdb``). For
  those, the UniProt accession and fragment are read from the header (mmCIF ``_entry.id
  AF-{acc}-F{n}`` / ``_ma_target_ref_db_details.db_accession``; PDB ``DBREF ... UNP {acc}`` with its
  first residue, fragment ``n`` starting at residue ``1 + 200 (n - 1)``), else the stem is used when
  it looks like a UniProt accession. Non-structure files (``.json`` PAE, ``.dssp``) are ignored.

One record per entry (the entry is ``AF-{acc}-F{n}``, or the file stem for renamed files): when
several files hold the same entry (a PDB/CIF pair of one model, or several AFDB versions), the one of
highest version is read and, among those, the first type of ``file_types`` (default PDB, then mmCIF,
as torchdrug reads the PDB files); the others are logged as duplicates.

Sharding (every entry in exactly one of ``num_shards`` shards, the same one on every run):

* single entries: sorted by entry key, entry ``i`` goes to shard ``i % num_shards``;
* tarballs (sorted by file name, ``T`` of them): if ``num_shards >= T``, shard ``k`` reads tarball
  ``k % T`` only, and that tarball's entries are split among its ``P = ceil((num_shards - t) / T)``
  shards: an entry goes to slot ``crc32("AF-{acc}-F{n}") % P`` and shard ``k`` takes slot ``k // T``.
  The slot is a hash of the entry key rather than a running member index so that the PDB and mmCIF
  members of one entry always share a shard, whatever their order in the archive. If
  ``num_shards < T``, shard ``k`` reads every tarball ``t`` with ``t % num_shards == k`` whole. Each
  shard therefore streams through one tarball (or ``ceil(T / num_shards)``) and parses only its own
  members.

Records are those of :func:`geoplm.structure.parse_structure` (``b_factor`` (L,) is the per-residue
pLDDT, 0-100, from the Cα atom; ``plddt`` True for AlphaFold models) with:

* ``id``: ``AF-{acc}-F{n}`` (the file stem for names without the AFDB pattern), ``_{chain}`` appended
  only if a file has several protein chains;
* ``group``: the UniProt accession (else the id), so the fragments F1, F2, ... of a long protein
  (AFDB splits proteins over 2,700 residues into 1,400-residue fragments with a 200-residue step)
  are recognised as one protein;
* ``role``: ``"protein"``; ``split``: ``""`` (assigned later);
* ``labels``: ``{"uniprot": acc or None, "fragment": n or None, "version": k or None,
  "mean_plddt": mean pLDDT over residues with a Cα, or None when the file is no AlphaFold model}``.

Options: ``min_mean_plddt`` (number or None, default None = keep every model, as GearNet): entries
whose mean pLDDT is below it, or that carry no pLDDT, become ``skipped`` rows with the reason
(whatever ``on_error``); ``file_types`` (list of ``"pdb"``/``"cif"``, default ``["pdb", "cif"]``):
the types read, in order of preference.

Bad input: a member or file that cannot be parsed becomes a ``skipped`` row (entry = member or file
name, source_file = the archive or file, reason = :class:`geoplm.errors.StructureError`'s reason); a
truncated or corrupt tarball becomes a row naming the archive (the members read before the damage
are kept). With ``on_error="fail"`` both raise :class:`~geoplm.errors.StructureError`.
"""

from __future__ import annotations

import gzip
import logging
import math
import re
import tarfile
import tempfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from tqdm import tqdm

from geoplm.datasets.generic import check_on_error, check_shard, expand_files, is_structure_file
from geoplm.errors import ConfigError, StructureError
from geoplm.structure import parse_structure

logger = logging.getLogger(__name__)

_FTP = "https://ftp.ebi.ac.uk/pub/databases/alphafold/latest/"
#: GearNet's pretraining tarballs: torchdrug ``AlphaFoldDB.urls[0:22]`` with ``md5s[0:22]``
#: (species 0-20: model-organism proteomes; 21: Swiss-Prot), AFDB v2.
AFDB_V2_TARBALLS: tuple[tuple[str, str], ...] = tuple(
    (_FTP + name, md5)
    for name, md5 in (
        ("UP000006548_3702_ARATH_v2.tar", "82b14d14404e39793cf73c1e0f083865"),
        ("UP000001940_6239_CAEEL_v2.tar", "9e26602ba2d9f233ef4fcf82703ddb59"),
        ("UP000000559_237561_CANAL_v2.tar", "60a09db1e1c47a98763d09879784f536"),
        ("UP000000437_7955_DANRE_v2.tar", "a0ab562b7372f149673c4518f949501f"),
        ("UP000002195_44689_DICDI_v2.tar", "6205138b14fb7e7ec09b366e3e4f294b"),
        ("UP000000803_7227_DROME_v2.tar", "31f31359cd7254f82304e3886440bdd3"),
        ("UP000000625_83333_ECOLI_v2.tar", "a590096e65461ed4eb092b2147b97f0b"),
        ("UP000008827_3847_SOYBN_v2.tar", "8f1e120f372995644a7101ad58e5b2ae"),
        ("UP000005640_9606_HUMAN_v2.tar", "9a659c4aed2a8b833478dcd5fffc5fd8"),
        ("UP000008153_5671_LEIIN_v2.tar", "95d775f2ae271cf50a101c73335cd250"),
        ("UP000000805_243232_METJA_v2.tar", "e5b12da43f5bd77298ca50e19706bdeb"),
        ("UP000000589_10090_MOUSE_v2.tar", "90e953abba9c8fe202e0adf825c0dfcc"),
        ("UP000001584_83332_MYCTU_v2.tar", "38a11553c7e2d00482281e74f7daf321"),
        ("UP000059680_39947_ORYSJ_v2.tar", "2bcdfe2c37154a355fe4e8150c279c13"),
        ("UP000001450_36329_PLAF7_v2.tar", "580a55e56a44fed935f0101c37a8c4ab"),
        ("UP000002494_10116_RAT_v2.tar", "b8d08a9033d111429fadb4e25820f9f7"),
        ("UP000002311_559292_YEAST_v2.tar", "59d1167f414a86cbccfb204791fea0eb"),
        ("UP000002485_284812_SCHPO_v2.tar", "dfde6b44026f19a88f1abc8ac2798ce6"),
        ("UP000008816_93061_STAA8_v2.tar", "a1c2047a16130d61cac4db23b2f5b560"),
        ("UP000002296_353153_TRYCC_v2.tar", "e4d4b72df8d075aeb607dcb095210304"),
        ("UP000007305_4577_MAIZE_v2.tar", "5cdad48c799ffd723636cae26433f1f9"),
        ("swissprot_pdb_v2.tar", "98a7c13987f578277bfb66ac48a1e242"),
    )
)

#: AFDB fragments of long proteins: 1,400 residues, starting every 200 residues.
FRAGMENT_LENGTH = 1400
FRAGMENT_STEP = 200
FILE_TYPES = ("pdb", "cif")
OPTION_KEYS = ("min_mean_plddt", "file_types")

_AFDB_NAME = re.compile(r"AF-([A-Za-z0-9]+)-F(\d+)(?:-model_v(\d+))?")
# UniProt accession format (https://www.uniprot.org/help/accession_numbers)
_UNIPROT = re.compile(r"^(?:[OPQ][0-9][A-Z0-9]{3}[0-9]|[A-NR-Z][0-9](?:[A-Z][A-Z0-9]{2}[0-9]){1,2})$")
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
_TYPE_OF_SUFFIX = {".pdb": "pdb", ".ent": "pdb", ".brk": "pdb", "": "pdb", ".cif": "cif", ".mmcif": "cif"}
_CIF_ENTRY = re.compile(r"^_entry\.id\s+['\"]?AF-([A-Za-z0-9]+)-F(\d+)", re.M)
_CIF_ACCESSION = re.compile(r"^_ma_target_ref_db_details\.db_accession\s+(\S+)", re.M)
_CIF_BEGIN = re.compile(r"^_ma_target_ref_db_details\.seq_db_align_begin\s+(\d+)", re.M)


@dataclass(frozen=True)
class EntryName:
    """What a file or tar member name says about an AFDB entry.

    Attributes:
        key: the entry (``AF-{acc}-F{n}``, or the file stem when the name lacks the AFDB pattern).
        stem: the name without ``.gz`` and the structure extension.
        file_type: ``"pdb"`` or ``"cif"``.
        accession: UniProt accession from the name, or None.
        fragment: fragment number ``n`` from the name, or None.
        version: AFDB version ``k`` (``model_v{k}``) from the name, or None.
    """

    key: str
    stem: str
    file_type: str
    accession: str | None = None
    fragment: int | None = None
    version: int | None = None


def entry_name(name: str) -> EntryName:
    """Parse an AFDB file or member name (``AF-P04637-F1-model_v4.pdb.gz``, ``P04629.pdb``, ...).

    Returns:
        The :class:`EntryName`; names without ``AF-{acc}-F{n}`` have ``key == stem`` and no
        accession/fragment/version.
    """
    name = PurePosixPath(name).name
    base = name[:-3] if name.lower().endswith(".gz") else name
    suffix = PurePosixPath(base).suffix.lower()
    file_type = _TYPE_OF_SUFFIX.get(suffix, "pdb")
    stem = base[: -len(suffix)] if suffix in _TYPE_OF_SUFFIX and suffix else base
    match = _AFDB_NAME.search(stem)
    if not match:
        return EntryName(key=stem, stem=stem, file_type=file_type)
    accession, fragment, version = match.group(1), int(match.group(2)), match.group(3)
    return EntryName(
        key=f"AF-{accession}-F{fragment}",
        stem=stem,
        file_type=file_type,
        accession=accession,
        fragment=fragment,
        version=int(version) if version else None,
    )


def header_identity(text: str) -> tuple[str | None, int | None]:
    """UniProt accession and fragment number from an AFDB model's header, for renamed files.

    mmCIF: ``_entry.id AF-{acc}-F{n}``, else ``_ma_target_ref_db_details.db_accession`` and
    ``seq_db_align_begin``; PDB: the ``DBREF`` record to ``UNP`` (accession and first residue of the
    database segment, read as whitespace-separated fields because AFDB writes 10-character accessions
    past the 8 columns the PDB format gives them). A first residue ``b`` gives fragment ``(b - 1) / 200 + 1`` when
    ``(b - 1)`` is a multiple of 200 (the AFDB fragment step), else None.

    Returns:
        (accession or None, fragment or None).
    """
    match = _CIF_ENTRY.search(text)
    if match:
        return match.group(1), int(match.group(2))
    accession = begin = None
    match = _CIF_ACCESSION.search(text)
    if match:
        accession = match.group(1).strip("'\"")
        found = _CIF_BEGIN.search(text)
        begin = int(found.group(1)) if found else None
    else:
        for line in text.splitlines():
            if line.startswith(("ATOM", "HETATM", "MODEL")):
                break
            fields = line.split()
            if line.startswith("DBREF ") and len(fields) >= 9 and fields[5] == "UNP":
                accession = fields[6]
                begin = int(fields[8]) if fields[8].isdigit() else None
                break
    fragment = None
    if begin is not None and begin >= 1 and (begin - 1) % FRAGMENT_STEP == 0:
        fragment = (begin - 1) // FRAGMENT_STEP + 1
    return accession, fragment


def is_tarball(path: str | Path) -> bool:
    """True if the name ends in ``.tar``, ``.tar.gz``, ``.tgz``, ``.tar.bz2`` or ``.tar.xz``."""
    return Path(path).name.lower().endswith(_TAR_SUFFIXES)


def tar_assignment(shard: int, num_shards: int, num_tarballs: int) -> list[tuple[int, int, int]]:
    """The tarballs shard ``shard`` reads and which slot of each: ``[(tarball index, slot, slots)]``.

    Shard ``shard`` takes the entries of tarball ``t`` with ``crc32(key) % slots == slot`` (see the
    module docstring). Over all shards, every (tarball, slot) pair appears exactly once.

    Raises:
        ConfigError: a bad shard index.
    """
    check_shard(shard, num_shards)
    if num_tarballs == 0:
        return []
    if num_shards < num_tarballs:
        return [(t, 0, 1) for t in range(shard, num_tarballs, num_shards)]
    tarball = shard % num_tarballs
    slots = math.ceil((num_shards - tarball) / num_tarballs)
    return [(tarball, shard // num_tarballs, slots)]


def entry_slot(key: str, slots: int) -> int:
    """The slot (``crc32(key) % slots``) of an entry key inside its tarball; stable across runs."""
    return zlib.crc32(key.encode()) % slots


def read_shard(
    files: Sequence[str | Path],
    shard: int,
    num_shards: int,
    options: Mapping[str, Any] | None = None,
    on_error: str = "skip",
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Read this shard's AlphaFold DB models (tarball members and single files) into records.

    Args:
        files: tarballs and/or single model files (``list[pathlib.Path]``; directories expanded).
        shard: this shard's index, ``0 <= shard < num_shards``.
        num_shards: number of record shards (dealing scheme in the module docstring).
        options: ``min_mean_plddt`` (float or None), ``file_types`` (list of ``"pdb"``/``"cif"``).
        on_error: ``"skip"`` or ``"fail"``.

    Returns:
        (records, skipped): records with the keys of :data:`geoplm.structure.RECORD_KEYS`
        (``backbone`` (L, 4, 3) in Å, ``b_factor`` (L,) = pLDDT) plus ``labels``, ``group``, ``role``,
        ``split``; ``skipped`` rows ``{"entry", "source_file", "reason"}``.

    Raises:
        StructureError: a bad file, member or tarball when ``on_error == "fail"``.
        ConfigError: bad options, ``on_error`` or shard index.
    """
    check_shard(shard, num_shards)
    check_on_error(on_error)
    min_mean_plddt, file_types = _options(options)
    reader = _Reader(min_mean_plddt, file_types, on_error)
    tarballs, singles = [], []
    for path in expand_files(files):
        if is_tarball(path):
            tarballs.append(path)
        elif is_structure_file(path):
            singles.append(path)
        else:
            logger.info("%s: not a structure file or tarball; ignored", path)
    tarballs.sort(key=lambda p: (p.name, str(p)))
    with tempfile.TemporaryDirectory(prefix="geoplm_afdb_") as scratch:
        reader.scratch = Path(scratch)
        for tarball, slot, slots in tar_assignment(shard, num_shards, len(tarballs)):
            reader.read_tarball(tarballs[tarball], slot, slots)
        mine = _deal_singles(singles, file_types, shard, num_shards)
        for path in tqdm(mine, desc=f"parse shard {shard}", unit="file", disable=None, leave=False):
            reader.read_file(path)
    logger.info(
        "alphafold shard %d/%d: %d records, %d skipped", shard, num_shards, len(reader.records), len(reader.skipped)
    )
    return reader.records, reader.skipped


# --------------------------------------------------------------------------------------------------


def _options(options: Mapping[str, Any] | None) -> tuple[float | None, tuple[str, ...]]:
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTION_KEYS))
    if unknown:
        raise ConfigError(
            f"options.{unknown[0]}: unknown option of the 'alphafold' reader (known: {', '.join(OPTION_KEYS)})"
        )
    min_mean_plddt = options.get("min_mean_plddt")
    if min_mean_plddt is not None:
        if isinstance(min_mean_plddt, bool) or not isinstance(min_mean_plddt, (int, float)):
            raise ConfigError(
                f"options.min_mean_plddt: must be a number (pLDDT, 0-100) or null, got {min_mean_plddt!r}"
            )
        if not 0 <= min_mean_plddt <= 100:
            raise ConfigError(f"options.min_mean_plddt: must lie in [0, 100], got {min_mean_plddt!r}")
        min_mean_plddt = float(min_mean_plddt)
    file_types = options.get("file_types", list(FILE_TYPES))
    if isinstance(file_types, str):
        file_types = [file_types]
    if (
        not isinstance(file_types, (list, tuple))
        or not file_types
        or any(t not in FILE_TYPES for t in file_types)
        or len(set(file_types)) != len(file_types)
    ):
        raise ConfigError(f"options.file_types: must be a non-empty list of distinct 'pdb'/'cif', got {file_types!r}")
    return min_mean_plddt, tuple(file_types)


def _preference(name: EntryName, path: Path, file_types: tuple[str, ...]) -> tuple:
    """Sort key: highest version first, then the order of ``file_types``, then the name."""
    return (-(name.version or 0), file_types.index(name.file_type), path.name, str(path))


def _deal_singles(singles: list[Path], file_types: tuple[str, ...], shard: int, num_shards: int) -> list[Path]:
    """This shard's single files: one per entry (the preferred one), entries dealt by sorted key."""
    entries: dict[str, list[tuple[EntryName, Path]]] = {}
    for path in singles:
        name = entry_name(path.name)
        if name.file_type not in file_types:
            logger.info("%s: %s file not among file_types %s; ignored", path, name.file_type, list(file_types))
            continue
        entries.setdefault(name.key, []).append((name, path))
    chosen = []
    for index, key in enumerate(sorted(entries)):
        if index % num_shards != shard:
            continue
        ranked = sorted(entries[key], key=lambda item: _preference(item[0], item[1], file_types))
        for _, other in ranked[1:]:
            logger.info("%s: entry %s is read from %s; duplicate ignored", other, key, ranked[0][1].name)
        chosen.append(ranked[0][1])
    return chosen


class _Reader:
    """Parses files and tar members into records, collecting skipped rows."""

    def __init__(self, min_mean_plddt: float | None, file_types: tuple[str, ...], on_error: str):
        self.min_mean_plddt = min_mean_plddt
        self.file_types = file_types
        self.on_error = on_error
        self.records: list[dict[str, Any]] = []
        self.skipped: list[dict[str, str]] = []
        self.scratch = Path(tempfile.gettempdir())

    def skip(self, entry: str, source_file: str, reason: str, always: bool = False) -> None:
        if self.on_error == "fail" and not always:
            raise StructureError(source_file if entry == Path(source_file).name else f"{source_file}:{entry}", reason)
        logger.warning("skipped %s (%s): %s", entry, source_file, reason)
        self.skipped.append({"entry": entry, "source_file": source_file, "reason": reason})

    # single files -------------------------------------------------------------------------------

    def read_file(self, path: Path) -> None:
        name = entry_name(path.name)
        try:
            parsed = parse_structure(path)
        except StructureError as error:
            self.skip(path.name, str(path), error.reason)
            return
        if name.accession is None:
            name = _with_header_identity(name, path)
        self.add(parsed, name, path.name, str(path))

    # tarballs -----------------------------------------------------------------------------------

    def read_tarball(self, archive: Path, slot: int, slots: int) -> None:
        """Stream ``archive``; parse the members of entries in ``slot`` (of ``slots``)."""
        pending: dict[str, tuple[EntryName, str, bytes]] = {}  # entries waiting for a preferred type
        done: set[str] = set()
        previous_key = None
        count = 0
        last = "(none)"
        try:
            members = _stream_members(archive, slot, slots, self.file_types)
            for member, data in tqdm(members, desc=f"parse {archive.name}", unit="member", disable=None, leave=False):
                count += 1
                last = member
                name = entry_name(member)
                if previous_key is not None and name.key != previous_key:
                    self._flush(pending, done, archive, keep=name.key)
                previous_key = name.key
                if name.key in done:
                    logger.info("%s: member %s: entry %s already read; duplicate ignored", archive, member, name.key)
                    continue
                rank = self.file_types.index(name.file_type)
                if rank == 0:
                    pending.pop(name.key, None)
                    done.add(name.key)
                    self._read_member(archive, member, name, data)
                else:
                    waiting = pending.get(name.key)
                    if waiting is None or self.file_types.index(waiting[0].file_type) > rank:
                        pending[name.key] = (name, member, data)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            self._flush(pending, done, archive, keep=None)
            self.skip(
                archive.name,
                str(archive),
                f"truncated or corrupt tar archive after {count} members of this shard (last: {last}): "
                f"{type(exc).__name__}: {exc}",
            )
            return
        self._flush(pending, done, archive, keep=None)

    def _flush(self, pending: dict, done: set[str], archive: Path, keep: str | None) -> None:
        for key in [k for k in pending if k != keep]:
            name, member, data = pending.pop(key)
            done.add(key)
            self._read_member(archive, member, name, data)

    def _read_member(self, archive: Path, member: str, name: EntryName, data: bytes) -> None:
        base = PurePosixPath(member).name
        tmp = self.scratch / base
        tmp.write_bytes(data)
        try:
            parsed = parse_structure(tmp, source=f"{archive.name}:{member}")
        except StructureError as error:
            self.skip(member, str(archive), error.reason)
            return
        finally:
            tmp.unlink(missing_ok=True)
        if name.accession is None:
            name = _with_header_identity(name, None, data)
        self.add(parsed, name, member, str(archive))

    # records ------------------------------------------------------------------------------------

    def add(self, parsed: list[dict[str, Any]], name: EntryName, entry: str, source_file: str) -> None:
        plddt = all(record["plddt"] for record in parsed)
        values = torch.cat([record["b_factor"] for record in parsed])
        mean_plddt = float(torch.nanmean(values)) if plddt and bool(torch.isfinite(values).any()) else None
        if self.min_mean_plddt is not None:
            if mean_plddt is None:
                self.skip(entry, source_file, "no pLDDT (not an AlphaFold model) but min_mean_plddt is set", True)
                return
            if mean_plddt < self.min_mean_plddt:
                self.skip(
                    entry, source_file, f"mean pLDDT {mean_plddt:.2f} < min_mean_plddt {self.min_mean_plddt:g}", True
                )
                return
        base_id = name.key
        labels = {
            "uniprot": name.accession,
            "fragment": name.fragment,
            "version": name.version,
            "mean_plddt": mean_plddt,
        }
        for record in parsed:
            record["id"] = base_id if len(parsed) == 1 else f"{base_id}_{record['chain'] or '_'}"
            record["group"] = name.accession or base_id
            record["role"] = "protein"
            record["split"] = ""
            record["labels"] = dict(labels)
            self.records.append(record)


def _with_header_identity(name: EntryName, path: Path | None, data: bytes | None = None) -> EntryName:
    """``name`` with the accession/fragment of the file's header (renamed files), or of its stem."""
    try:
        raw = path.read_bytes() if path is not None else data
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        text = raw.decode("utf-8", errors="replace")
    except (OSError, EOFError, zlib.error):
        text = ""
    end = text.find("\nATOM ")
    accession, fragment = header_identity(text if end < 0 else text[:end])
    if accession is None and _UNIPROT.match(name.stem):
        accession = name.stem
    return EntryName(
        key=name.key,
        stem=name.stem,
        file_type=name.file_type,
        accession=accession,
        fragment=fragment,
        version=name.version,
    )


def _stream_members(archive: Path, slot: int, slots: int, file_types: tuple[str, ...]) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) of the structure members of ``archive`` whose entry is in ``slot``.

    Streams with ``tarfile`` mode ``r|*``: the data of members of other slots is skipped, never held.

    Raises:
        tarfile.TarError, EOFError, OSError, zlib.error: a truncated or corrupt archive.
    """
    with tarfile.open(archive, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            base = PurePosixPath(member.name).name
            if not is_structure_file(base) or is_tarball(base):
                logger.info("%s: member %s is not a structure file; ignored", archive, member.name)
                continue
            name = entry_name(base)
            if name.file_type not in file_types:
                continue
            if entry_slot(name.key, slots) != slot:
                continue
            handle = tar.extractfile(member)
            data = handle.read() if handle is not None else b""
            if len(data) != member.size:
                raise tarfile.ReadError(f"unexpected end of data in member {member.name}")
            yield member.name, data
        # ``tarfile`` ends quietly at end of file where a header should be; a complete archive ends with
        # a zero block (read past ``tar.offset``), one cut at a member boundary does not.
        if tar.fileobj.tell() <= tar.offset:
            raise tarfile.ReadError(f"no end-of-archive marker: archive cut after {tar.offset} bytes")
