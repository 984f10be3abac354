"""The ``labelled_chains`` reader: PDB chains with function or fold labels (EC, GO, Fold, Reaction).

One record per *labelled* chain found among the structure files: the residue record of
:func:`geoplm.structure.parse_structure` with ``id`` set to the labelled chain (``1ABC-A``, or the
SCOPe domain id ``d1a8oa_`` for fold), ``split``, ``labels`` and ``group`` (the PDB entry, ``1ABC``).

Tasks (``options["task"]``) and their label files, found among ``files`` by their upstream names
(parsed with :mod:`geoplm.datasets.labels`; ``options["label_files"]`` maps a role to another name or
to a path ending, e.g. ``{"train": "fold_HomologyTAPE/training.txt"}``):

========== ======================================================================== ===================
task       label files (role: name)                                                 ``labels``
========== ======================================================================== ===================
ec         annotations ``nrPDB-EC_2020.04_annot.tsv`` (or ``nrPDB-EC_annot.tsv``),  ``{"ec": [...],
           train/valid/test ``nrPDB-EC_2020.04_{train,valid,test}.txt``, cutoffs     "target": [...],
           ``nrPDB-EC_2020.04_test.csv`` (or ``nrPDB-EC_test.csv``)                  "num_classes": 538}``
go_mf/bp/cc the same with ``nrPDB-GO_2019.06.18_*`` (or ``nrPDB-GO_*``); the label    ``{"go_mf": [...],
           column ``GO-terms (molecular_function|biological_process|                 "target": [...],
           cellular_component)``                                                     "num_classes": n}``
fold       class_map ``class_map.txt``; train ``training.txt`` (or ``train.txt``),   ``{"fold": "b.69",
           valid ``validation.txt`` (or ``valid.txt``), ``test_fold.txt``,            "target": 42,
           ``test_superfamily.txt``, ``test_family.txt``                             "coverage": ...}``
reaction   labels ``chain_functions.txt``, train ``training.txt``, valid              ``{"target": 17,
           ``validation.txt``, test ``testing.txt``; optional classes                 "ec": "3.4.21.4",
           ``unique_functions.txt`` (the EC number of each class)                    "num_classes": 384}``
========== ======================================================================== ===================

``target`` holds indices into the class list (the annotation file's term list for EC/GO, in its
order, as torchdrug's ``EnzymeCommission.load_annotation`` / ``GeneOntology.load_annotation`` build
``task2id``; the class map for fold, as IEConv's ``ProtClassHomologyDataSet`` and GearNet's ``Fold3D``
look up the last column of the list line; the ``chain_functions.txt`` class for reaction). Splits:
``train``/``valid``/``test`` (fold: ``train``/``valid``/``test_fold``/``test_superfamily``/
``test_family``). A missing label file raises :class:`~geoplm.errors.GeoplmError` naming it.

Test-set identity cutoffs (EC/GO): a test chain's labels carry ``"test_identity": {"30": bool, "40":
..., "95": ...}``, True where DeepFRI's ``nrPDB-*_test.csv`` flags the chain ``<30%`` (etc.)
sequence identity to the training set. torchdrug's ``EnzymeCommission(test_cutoff=0.95)`` and
``GeneOntology`` drop the test chains flagged 0 at the chosen cutoff (DeepGraphLearning/torchdrug,
``torchdrug/datasets/enzyme_commission.py`` and ``gene_ontology.py``, commit
2be5c851a70a9d24ccca4b712ad6783ee4c6dfa8); ``options["test_cutoff"]`` (0.3, 0.4, 0.5, 0.7, 0.95 or
30..95) does the same here; without it every test chain is kept with its flags.

Which PDB entry a structure file holds (first rule that applies):

1. ``options["chain_map"]``: ``{file name: "1AB8-A"}`` or a list of such ids (``1ab8.A`` and SCOPe
   domain ids are accepted); only the chains named there are taken from that file.
2. The file name: a SCOPe domain id (``d1a8oa_.ent``: the file *is* that domain, e.g. SCOPe ASTRAL
   pdbstyle files and the ``<domain>.pdb`` files of GearNet's Fold3D archive), else the first
   ``_``/``.``-separated token that is a PDB id, optionally with a chain (``1abc``, ``1ABC-A``,
   ``1abcA``, ``pdb1abc``); a chain in the token or in the next short token (``1qu9_A``,
   ``e2a-hpr_1GGR_A``) restricts the file to that chain when the file has it.
3. The ``HEADER`` idCode (PDB) or ``_entry.id`` / ``data_`` block name (mmCIF).

Selection: the chains of the entry named in the task's lists. Unlabelled chains are silently no
records (and files of unlabelled entries are not parsed at all). A labelled chain missing from its
file, a file that does not parse (:class:`~geoplm.errors.StructureError`), a file whose entry cannot
be identified, and a chain with no residue with a Cα atom become rows of ``skipped`` (or raise with
``on_error="fail"``).

Fold (SCOPe 1.75 domains): ``d1a8oa_`` is PDB 1A8O chain A (the chain letter is upper-cased by
SCOPe's convention; ``_`` is the blank or only chain). Where the file is the domain's own file the
record is that file's chain, ``coverage == "domain"``. Otherwise the record holds the *whole* PDB
chain: ``coverage == "chain"`` for ``_`` domains (the domain is the whole chain) and
``coverage == "whole_chain_of_partial_domain"`` for numbered domains (``d1b26a1``: one of several
domains of chain A; the HomologyTAPE lists do not give the domain's residue range, so it is not
cut out). Domains spanning several chains (chain character ``.``, SCOPe ``g`` genetic domains over
several chains) are skipped with that reason unless the file is the domain's own file.

Archives: a ``.zip`` among ``files`` is extracted once, atomically, into ``<name>.zip.extracted``
beside it (nested zips too; members with absolute paths, ``..`` or links are refused), and its files
join ``files``. This reads the archives torchdrug downloads: ``EnzymeCommission.zip`` /
``GeneOntology.zip`` (zenodo record 6622158: ``EnzymeCommission/nrPDB-EC_annot.tsv``,
``nrPDB-EC_test.csv``, ``{train,valid,test}.zip`` holding ``{split}/<PDB>-<chain>_*.pdb``) and the
``.pdb`` variant of GearNet's ``fold3d.zip`` (``fold3d/class_map.txt``, ``{split}.txt``,
``{split}_pdb.zip`` holding ``{split}/<domain>.pdb``; GearNet's released archive holds HDF5 files,
DeepGraphLearning/GearNet ``gearnet/dataset.py`` commit 00c194a115fbd3f0ea0f973edcfdeebe0ad37b78, which
are not read). When the EC/GO split lists are absent (torchdrug's archives have none), a structure
file's split is the name of its folder (``train``/``valid``/``test``), as torchdrug does.

Sharding: the structure files, sorted by (file name, path), are dealt round robin: file ``i`` goes to
shard ``i % num_shards``.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from geoplm.datasets import labels as label_io
from geoplm.errors import ConfigError, GeoplmError, StructureError
from geoplm.structure import parse_structure

logger = logging.getLogger(__name__)

TASKS: tuple[str, ...] = ("ec", "go_bp", "go_mf", "go_cc", "fold", "reaction")
OPTION_KEYS: tuple[str, ...] = ("task", "chain_map", "label_files", "test_cutoff")
STRUCTURE_SUFFIXES: frozenset[str] = frozenset({".pdb", ".ent", ".brk", ".cif", ".mmcif"})
FOLD_SPLIT_NAMES = {
    "train": "train",
    "valid": "valid",
    "test_fold": "test_fold",
    "test_superfamily": "test_superfamily",
    "test_family": "test_family",
}
_GO_COLUMNS = {
    "go_mf": "GO-terms (molecular_function)",
    "go_bp": "GO-terms (biological_process)",
    "go_cc": "GO-terms (cellular_component)",
}
_EXTRACTED_SUFFIX = ".extracted"
_COMPLETE_MARKER = ".geoplm_extracted"

# role -> accepted upstream names, first preferred
_DEEPFRI_ROLES = ("annotations", "train", "valid", "test", "cutoffs")
_LABEL_NAMES: dict[str, dict[str, tuple[str, ...]]] = {
    "ec": {
        "annotations": ("nrPDB-EC_2020.04_annot.tsv", "nrPDB-EC_annot.tsv"),
        "train": ("nrPDB-EC_2020.04_train.txt",),
        "valid": ("nrPDB-EC_2020.04_valid.txt",),
        "test": ("nrPDB-EC_2020.04_test.txt",),
        "cutoffs": ("nrPDB-EC_2020.04_test.csv", "nrPDB-EC_test.csv"),
    },
    "go": {
        "annotations": ("nrPDB-GO_2019.06.18_annot.tsv", "nrPDB-GO_annot.tsv"),
        "train": ("nrPDB-GO_2019.06.18_train.txt",),
        "valid": ("nrPDB-GO_2019.06.18_valid.txt",),
        "test": ("nrPDB-GO_2019.06.18_test.txt",),
        "cutoffs": ("nrPDB-GO_2019.06.18_test.csv", "nrPDB-GO_test.csv"),
    },
    "fold": {
        "class_map": ("class_map.txt",),
        "train": ("training.txt", "train.txt"),
        "valid": ("validation.txt", "valid.txt"),
        "test_fold": ("test_fold.txt",),
        "test_superfamily": ("test_superfamily.txt",),
        "test_family": ("test_family.txt",),
    },
    "reaction": {
        "labels": ("chain_functions.txt",),
        "classes": ("unique_functions.txt",),
        "train": ("training.txt",),
        "valid": ("validation.txt",),
        "test": ("testing.txt",),
    },
}
_OPTIONAL_ROLES = {("reaction", "classes")}
_REACTION_NUM_CLASSES = 384  # IEConv ProtFunct: 384 EC classes (unique_functions.txt)
_DEEPFRI_SPLIT_FOLDERS = ("train", "valid", "test")

_DEEPFRI_CHAIN = re.compile(r"^([0-9][0-9A-Za-z]{3})-([0-9A-Za-z]{1,4})$")
_REACTION_CHAIN = re.compile(r"^([0-9][0-9A-Za-z]{3})\.([0-9A-Za-z]{1,4})$")
_SCOP_DOMAIN = re.compile(r"^[dg]([0-9][0-9a-z]{3})([0-9a-zA-Z._])([0-9a-z_])$")
_PDB_TOKEN = re.compile(r"^(?:pdb)?([0-9][0-9a-z]{3})(?:-?([0-9a-z]{1,2}))?$", re.IGNORECASE)
_CHAIN_TOKEN = re.compile(r"^[0-9A-Za-z]{1,2}$")
_PDB_ID = re.compile(r"^[0-9][0-9A-Za-z]{3}$")


@dataclass
class _Label:
    """One labelled chain (or SCOPe domain) of an entry."""

    id: str
    chain: str  # PDB chain id; "" = blank or only chain; "." = several chains
    split: str
    labels: dict[str, Any]
    domain_suffix: str = ""  # SCOPe: "_" whole chain, "1".."9" partial; "" for chain tasks


@dataclass
class _Identity:
    """What a structure file holds: its entry, the chains to take (None: all), whether it is one domain."""

    entry: str | None
    how: str
    chains: list[str] | None = None
    chain_hint: str | None = None
    domain: str | None = None
    ids: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# reader


def read_shard(
    files: Sequence[str | os.PathLike],
    shard: int,
    num_shards: int,
    options: Mapping[str, Any],
    on_error: str,
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Read this shard's labelled chains (reader ``labelled_chains``; see the module docstring).

    Args:
        files: every file of the dataset's source: label files, structure files (PDB/mmCIF,
            optionally gzipped), zip archives, or folders (every file below them).
        shard: this shard's index, ``0 <= shard < num_shards``.
        num_shards: number of record shards; the structure files sorted by (name, path) are dealt
            round robin.
        options: ``task`` (required: ec, go_bp, go_mf, go_cc, fold, reaction); ``chain_map``
            (``{file name: "1ABC-A" | [ids]}``); ``label_files`` (``{role: file name or path
            ending}``); ``test_cutoff`` (EC/GO only: keep only test chains below that identity).
        on_error: ``"skip"`` or ``"fail"``.

    Returns:
        ``(records, skipped)``: records in shard file order, each a residue record (``backbone``
        (L, 4, 3) float32 in Å, ...) with ``id`` (the labelled chain or SCOPe domain), ``split``,
        ``labels`` and ``group`` (the PDB entry, upper case); ``skipped`` rows
        ``{"entry", "source_file", "reason"}``.

    Raises:
        ConfigError: a bad option (named ``options.<key>``), ``on_error`` or shard index.
        GeoplmError: a missing, ambiguous or malformed label file (named), an unsafe archive; with
            ``on_error="fail"`` also a bad structure file (:class:`StructureError`), a labelled chain
            missing from its file or without Cα atoms, or a file whose entry cannot be identified.
    """
    task, chain_map, overrides, cutoff = _check_options(options)
    if on_error not in ("skip", "fail"):
        raise ConfigError(f"on_error must be 'skip' or 'fail', got {on_error!r}")
    if not isinstance(num_shards, int) or isinstance(num_shards, bool) or num_shards < 1:
        raise ConfigError(f"num_shards must be a positive integer, got {num_shards!r}")
    if not isinstance(shard, int) or isinstance(shard, bool) or not 0 <= shard < num_shards:
        raise ConfigError(f"shard must be an integer in [0, {num_shards}), got {shard!r}")

    paths = _expand(files)
    label_paths = _find_label_files(task, paths, overrides)
    used = {path.resolve() for path in label_paths.values() if path is not None}
    structures = sorted(
        (p for p in paths if p.resolve() not in used and _is_structure(p)), key=lambda p: (p.name, str(p))
    )
    index = _load_labels(task, label_paths, structures, cutoff)
    mine = structures[shard::num_shards]

    records: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for path in mine:
        _read_file(path, task, index, chain_map, on_error, records, skipped)
    logger.info(
        "labelled_chains %s shard %d/%d: %d files, %d records, %d skipped",
        task,
        shard,
        num_shards,
        len(mine),
        len(records),
        len(skipped),
    )
    return records, skipped


def _check_options(options: Mapping[str, Any]) -> tuple[str, dict[str, list[str]], dict[str, str], int | None]:
    if not isinstance(options, Mapping):
        raise ConfigError(f"options must be a mapping, got {type(options).__name__}")
    unknown = sorted(set(options) - set(OPTION_KEYS))
    if unknown:
        raise ConfigError(f"options.{unknown[0]}: unknown option of reader labelled_chains (known: {OPTION_KEYS})")
    task = options.get("task")
    if task not in TASKS:
        raise ConfigError(f"options.task must be one of {', '.join(TASKS)}, got {task!r}")

    chain_map: dict[str, list[str]] = {}
    raw = options.get("chain_map") or {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"options.chain_map must map file names to chain ids, got {type(raw).__name__}")
    for name, ids in raw.items():
        ids = [ids] if isinstance(ids, str) else ids
        if not isinstance(ids, (list, tuple)) or not ids:
            raise ConfigError(f"options.chain_map.{name}: expected a chain id or a list of them, got {ids!r}")
        for chain_id in ids:
            if not isinstance(chain_id, str) or _split_chain_id(chain_id) is None:
                raise ConfigError(f"options.chain_map.{name}: malformed chain id {chain_id!r} (expected e.g. '1AB8-A')")
        chain_map[str(name)] = list(ids)

    overrides = options.get("label_files") or {}
    group = "go" if task.startswith("go_") else task
    if not isinstance(overrides, Mapping):
        raise ConfigError("options.label_files must map roles to file names")
    for role, name in overrides.items():
        if role not in _LABEL_NAMES[group]:
            raise ConfigError(
                f"options.label_files.{role}: unknown role for task {task} (known: {', '.join(_LABEL_NAMES[group])})"
            )
        if not isinstance(name, str) or not name:
            raise ConfigError(f"options.label_files.{role}: expected a file name, got {name!r}")

    cutoff = options.get("test_cutoff")
    if cutoff is not None:
        if group != "ec" and group != "go":
            raise ConfigError(f"options.test_cutoff: only for the EC and GO tasks, not {task}")
        value = cutoff * 100 if isinstance(cutoff, float) and cutoff <= 1 else cutoff
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or round(value) not in label_io.DEEPFRI_CUTOFFS:
            raise ConfigError(f"options.test_cutoff must be one of 0.3, 0.4, 0.5, 0.7, 0.95, got {cutoff!r}")
        cutoff = round(value)
    return task, chain_map, dict(overrides), cutoff


def _split_chain_id(chain_id: str) -> tuple[str, str, str | None] | None:
    """``(ENTRY, chain, domain)`` of ``1ABC-A``, ``1abc.A`` or a SCOPe domain id; None if malformed."""
    for pattern in (_DEEPFRI_CHAIN, _REACTION_CHAIN):
        match = pattern.match(chain_id)
        if match:
            return match.group(1).upper(), match.group(2), None
    match = _SCOP_DOMAIN.match(chain_id)
    if match:
        return match.group(1).upper(), _scop_chain(match.group(2)), chain_id
    return None


def _scop_chain(char: str) -> str:
    """PDB chain of a SCOPe domain id's chain character (``a`` -> ``A``; ``_`` -> ``""``)."""
    if char == "_":
        return ""
    if char == ".":
        return "."
    return char.upper()


# --------------------------------------------------------------------------------------------------
# files and archives


def _expand(files: Sequence[str | os.PathLike]) -> list[Path]:
    """Files with folders replaced by the files below them and zips by their extracted files."""
    out: list[Path] = []
    for item in files:
        path = Path(item)
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")))
        elif path.name.lower().endswith(".zip"):
            root = extract_zip(path)
            out.extend(
                sorted(
                    p
                    for p in root.rglob("*")
                    if p.is_file() and not p.name.lower().endswith(".zip") and p.name != _COMPLETE_MARKER
                )
            )
        else:
            out.append(path)
    return out


def extract_zip(archive: str | os.PathLike) -> Path:
    """Extract ``archive`` (and the zips inside it, recursively) once into ``<archive>.extracted``.

    The extraction goes to a temporary folder beside the archive that is renamed into place when
    complete, so a killed job leaves no half-extracted folder; a complete folder is reused. Nested
    ``x.zip`` members are extracted into ``x.zip.extracted`` beside them.

    Returns:
        The extraction folder.

    Raises:
        GeoplmError: the archive cannot be read, is not a zip file, or has a member with an absolute
            path, a ``..`` component or a symbolic link (the message names the archive and member).
    """
    archive = Path(archive)
    target = archive.with_name(archive.name + _EXTRACTED_SUFFIX)
    if (target / _COMPLETE_MARKER).is_file():
        return target
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", suffix=".part", dir=archive.parent))
    except OSError as exc:
        raise GeoplmError(f"{archive}: cannot create the extraction folder beside it: {exc}") from exc
    try:
        _extract_into(archive, tmp)
        (tmp / _COMPLETE_MARKER).write_text("complete\n", encoding="utf-8")
        if target.exists():  # an incomplete earlier attempt, or a concurrent job finished first
            if (target / _COMPLETE_MARKER).is_file():
                return target
            shutil.rmtree(target)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / _COMPLETE_MARKER).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _extract_into(archive: Path, folder: Path) -> None:
    try:
        handle = zipfile.ZipFile(archive)
    except (OSError, zipfile.BadZipFile) as exc:
        raise GeoplmError(f"{archive}: cannot open zip archive: {exc}") from exc
    with handle:
        for member in handle.infolist():
            parts = PurePosixPath(member.filename.replace("\\", "/")).parts
            mode = member.external_attr >> 16
            if member.filename.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                raise GeoplmError(f"{archive}: unsafe member path {member.filename!r}")
            if stat.S_ISLNK(mode):
                raise GeoplmError(f"{archive}: member {member.filename!r} is a symbolic link")
        try:
            handle.extractall(folder)
        except (OSError, zipfile.BadZipFile, EOFError) as exc:
            raise GeoplmError(f"{archive}: cannot extract: {exc}") from exc
    for nested in sorted(folder.rglob("*.zip")):
        inner = nested.with_name(nested.name + _EXTRACTED_SUFFIX)
        inner.mkdir()
        _extract_into(nested, inner)


def _is_structure(path: Path) -> bool:
    name = path.name
    if name.lower().endswith(".gz"):
        name = name[:-3]
    return Path(name).suffix.lower() in STRUCTURE_SUFFIXES


class _LabelFiles(dict):
    """role -> label file (None where absent), with ``names``: role -> the names looked for."""

    names: dict[str, tuple[str, ...]]


def _find_label_files(task: str, paths: list[Path], overrides: Mapping[str, str]) -> _LabelFiles:
    group = "go" if task.startswith("go_") else task
    found = _LabelFiles()
    found.names = {}
    for role, names in _LABEL_NAMES[group].items():
        wanted = (overrides[role],) if role in overrides else names
        found.names[role] = wanted
        path = None
        for name in wanted:
            matches = [p for p in paths if p.name == name or p.as_posix().endswith("/" + name.lstrip("/"))]
            if len(matches) > 1:
                raise GeoplmError(
                    f"several label files match {name!r} for role {role!r} of task {task}: "
                    f"{', '.join(str(m) for m in matches[:4])}; name one with options.label_files.{role}"
                )
            if matches:
                path = matches[0]
                break
        found[role] = path
    return found


def _require(task: str, role: str, label_paths: _LabelFiles) -> Path:
    path = label_paths[role]
    if path is None:
        names = " or ".join(label_paths.names[role])
        raise GeoplmError(f"task {task}: label file {names} ({role}) is not among the dataset's files")
    return path


# --------------------------------------------------------------------------------------------------
# labels


def _load_labels(
    task: str, label_paths: dict[str, Path | None], structures: list[Path], cutoff: int | None
) -> dict[str, list[_Label]]:
    """PDB entry (upper case) -> its labelled chains/domains."""
    if task == "fold":
        labelled = _fold_labels(task, label_paths)
    elif task == "reaction":
        labelled = _reaction_labels(task, label_paths)
    else:
        labelled = _deepfri_labels(task, label_paths, structures, cutoff)
    index: dict[str, list[_Label]] = {}
    for entry, label in labelled:
        index.setdefault(entry, []).append(label)
    return index


def _deepfri_labels(task, label_paths, structures, cutoff):
    annotations_path = _require(task, "annotations", label_paths)
    cutoffs_path = _require(task, "cutoffs", label_paths)
    term_lists, table = label_io.read_deepfri_annotations(annotations_path)
    column = "EC-numbers" if task == "ec" else _GO_COLUMNS[task]
    if column not in table.columns:
        raise GeoplmError(f"{annotations_path}: no {column!r} label column (columns: {list(table.columns)[1:]})")
    terms = term_lists[column]
    annotated = dict(zip(table["pdb_chain"], table[column], strict=True))
    flags = {
        row["pdb_chain"]: {str(c): bool(row[f"below_{c}"]) for c in label_io.DEEPFRI_CUTOFFS}
        for row in label_io.read_deepfri_test_cutoffs(cutoffs_path).to_dict("records")
    }

    lists = {split: label_paths[split] for split in _DEEPFRI_SPLIT_FOLDERS}
    splits: dict[str, str] = {}
    if all(path is None for path in lists.values()) and any(
        p.parent.name in _DEEPFRI_SPLIT_FOLDERS for p in structures
    ):
        # torchdrug's archives: no split lists, the split is the folder (train/valid/test)
        folder_split = True
        for chain in annotated:
            splits[chain] = ""
    else:
        folder_split = False
        for split, path in lists.items():
            for chain in label_io.read_chain_list(_require(task, split, label_paths)):
                if chain in splits:
                    raise GeoplmError(f"{path}: chain {chain} is also in the {splits[chain]} list")
                splits[chain] = split

    key = "ec" if task == "ec" else task
    out = []
    for chain, split in splits.items():
        if chain not in annotated:
            raise GeoplmError(f"{annotations_path}: chain {chain} of the {split} list has no annotation")
        indices = list(annotated[chain])
        labels: dict[str, Any] = {key: [terms[i] for i in indices], "target": indices, "num_classes": len(terms)}
        if chain in flags:
            labels["test_identity"] = dict(flags[chain])
        elif split == "test":
            raise GeoplmError(f"{cutoffs_path}: test chain {chain} has no identity flags")
        entry, chain_id = chain.split("-", 1)  # validated by the label readers
        label = _Label(chain, chain_id, split, labels)
        label.labels["_folder_split"] = folder_split
        label.labels["_cutoff"] = cutoff
        out.append((entry.upper(), label))
    return out


def _fold_labels(task, label_paths):
    classes = label_io.read_class_map(_require(task, "class_map", label_paths))
    out = []
    for role, split in FOLD_SPLIT_NAMES.items():
        table = label_io.read_fold_list(_require(task, role, label_paths), classes)
        for domain, fold, target in zip(table["domain"], table["fold"], table["label"], strict=True):
            match = _SCOP_DOMAIN.match(domain)
            if match is None:  # read_fold_list accepts a wider pattern (upper-case ids)
                raise GeoplmError(f"{label_paths[role]}: SCOPe domain {domain!r} names no PDB entry")
            labels = {"fold": fold, "target": int(target), "num_classes": len(classes)}
            label = _Label(domain, _scop_chain(match.group(2)), split, labels, domain_suffix=match.group(3))
            out.append((match.group(1).upper(), label))
    return out


def _reaction_labels(task, label_paths):
    classes = None
    if label_paths["classes"] is not None:
        classes = label_io.read_reaction_classes(label_paths["classes"])
    num_classes = len(classes) if classes else _REACTION_NUM_CLASSES
    chain_labels = label_io.read_reaction_labels(_require(task, "labels", label_paths), num_classes)
    out, seen = [], {}
    for split in ("train", "valid", "test"):
        path = _require(task, split, label_paths)
        for name in label_io.read_chain_list(path, _REACTION_CHAIN):
            if name in seen:
                raise GeoplmError(f"{path}: chain {name} is also in the {seen[name]} list")
            if name not in chain_labels:
                raise GeoplmError(f"{path}: chain {name} has no class in {label_paths['labels'].name}")
            seen[name] = split
            entry, chain = name.split(".", 1)  # validated by read_chain_list
            entry = entry.upper()
            labels: dict[str, Any] = {"target": chain_labels[name], "num_classes": num_classes}
            if classes:
                labels["ec"] = classes[chain_labels[name]]
            out.append((entry, _Label(f"{entry}-{chain}", chain, split, labels)))
    return out


# --------------------------------------------------------------------------------------------------
# structure files


def identify(path: str | os.PathLike, chain_map: Mapping[str, Any] | None = None) -> tuple[str | None, str]:
    """The PDB entry (upper case) a structure file holds and how it was found.

    Rules in order: ``chain_map[file name]``, the file name, the ``HEADER`` idCode (PDB) or the
    ``_entry.id`` / ``data_`` name (mmCIF); see the module docstring.

    Returns:
        ``(entry, how)`` with ``how`` one of ``"chain_map"``, ``"file name"``, ``"header"``; ``entry``
        is None (``how`` gives the reason) where no rule applies.
    """
    ident = _identify(Path(path), {k: [v] if isinstance(v, str) else list(v) for k, v in (chain_map or {}).items()})
    return ident.entry, ident.how


def _identify(path: Path, chain_map: Mapping[str, list[str]]) -> _Identity:
    if path.name in chain_map:
        parsed = [_split_chain_id(chain_id) for chain_id in chain_map[path.name]]
        entries = {entry for entry, _, _ in parsed}
        if len(entries) > 1:
            raise ConfigError(f"options.chain_map.{path.name}: chains of several PDB entries {sorted(entries)}")
        return _Identity(
            entries.pop(),
            "chain_map",
            chains=[chain for _, chain, _ in parsed],
            ids=list(chain_map[path.name]),
        )
    stem = path.name[:-3] if path.name.lower().endswith(".gz") else path.name
    suffix = Path(stem).suffix.lower()
    if suffix in STRUCTURE_SUFFIXES:
        stem = stem[: -len(suffix)]
    match = _SCOP_DOMAIN.match(stem)
    if match:
        return _Identity(match.group(1).upper(), "file name", domain=stem)
    tokens = re.split(r"[_.]", stem)
    for i, token in enumerate(tokens):
        match = _PDB_TOKEN.match(token)
        if match is None or (token.isdigit() and len(tokens) > 1):
            continue
        hint = match.group(2)
        if hint is None and i + 1 < len(tokens) and _CHAIN_TOKEN.match(tokens[i + 1]):
            hint = tokens[i + 1]
        return _Identity(match.group(1).upper(), "file name", chain_hint=hint)
    entry = _header_id(path)
    if entry:
        return _Identity(entry, "header")
    return _Identity(None, "no chain_map entry, no PDB id in the file name and no HEADER idCode")


def _header_id(path: Path) -> str | None:
    """The HEADER idCode / mmCIF entry id from the first lines of the file; None if absent or unreadable."""
    try:
        with open(path, "rb") as raw:
            magic = raw.read(2)
        opener = gzip.open if magic == b"\x1f\x8b" else open
        with opener(path, "rt", encoding="latin-1") as handle:
            for number, line in enumerate(handle):
                if number > 2000:
                    break
                if line.startswith("HEADER"):
                    code = line[62:66].strip()
                    return code.upper() if _PDB_ID.match(code) else None
                if line.startswith("data_"):
                    code = line[5:].strip()
                    if _PDB_ID.match(code):
                        return code.upper()
                elif line.startswith("_entry.id"):
                    code = line.split()[-1].strip("'\"") if len(line.split()) > 1 else ""
                    return code.upper() if _PDB_ID.match(code) else None
                elif line.startswith(("ATOM", "HETATM", "MODEL")):
                    break
    except (OSError, EOFError, ValueError):
        return None
    return None


def _read_file(path, task, index, chain_map, on_error, records, skipped) -> None:
    def skip(entry: str, reason: str, exc: Exception | None = None) -> None:
        if on_error == "fail":
            if exc is not None:
                raise exc
            raise GeoplmError(f"{path}: {entry}: {reason}")
        logger.warning("%s: %s: %s; skipped", path, entry, reason)
        skipped.append({"entry": entry, "source_file": str(path), "reason": reason})

    ident = _identify(path, chain_map)
    if ident.entry is None:
        try:
            parse_structure(path)
        except StructureError as exc:
            skip(path.name, exc.reason, exc)
            return
        skip(path.name, f"cannot identify the PDB entry ({ident.how})")
        return
    candidates = _candidates(ident, index.get(ident.entry, []))
    if not candidates:
        logger.debug("%s: entry %s has no labelled chain for task %s", path, ident.entry, task)
        return
    try:
        parsed = parse_structure(path)
    except StructureError as exc:
        for label in candidates:
            skip(label.id, exc.reason, exc)
        return
    by_chain = {record["chain"]: record for record in parsed}
    present = ", ".join(repr(c) for c in by_chain) or "none"
    if ident.chain_hint is not None and ident.chain_hint in by_chain and ident.domain is None:
        candidates = [label for label in candidates if label.chain in (ident.chain_hint, "")]

    for label in candidates:
        record, coverage, reason = _select(ident, label, by_chain)
        if record is None:
            skip(label.id, reason.format(present=present))
            continue
        if not bool(record["backbone_mask"][:, 1].any()):
            skip(label.id, f"chain {record['chain']!r} has no residue with a Cα atom")
            continue
        labels = {k: v for k, v in label.labels.items() if not k.startswith("_")}
        split = label.split
        if label.labels.get("_folder_split"):
            split = path.parent.name
            if split not in _DEEPFRI_SPLIT_FOLDERS:
                skip(label.id, f"no split lists and the folder {split!r} is not train/valid/test")
                continue
        cutoff = label.labels.get("_cutoff")
        if "_cutoff" in label.labels and split == "test" and "test_identity" not in labels:
            skip(label.id, "test chain without identity flags in the test .csv")
            continue
        if cutoff is not None and split == "test" and not labels["test_identity"][str(cutoff)]:
            logger.debug("%s: test chain %s at or above %d%% identity; dropped", path, label.id, cutoff)
            continue
        if coverage is not None:
            labels["coverage"] = coverage
        out = dict(record)
        out.update(id=label.id, split=split, labels=labels, group=ident.entry)
        records.append(out)


def _candidates(ident: _Identity, labelled: list[_Label]) -> list[_Label]:
    if ident.domain is not None:
        own = [label for label in labelled if label.id == ident.domain]
        if own:  # a SCOPe domain file in the fold task: that domain only
            return own
        chain = _scop_chain(ident.domain[5])
        return [label for label in labelled if label.chain == chain and not label.domain_suffix]
    if ident.ids:
        wanted_ids = set(ident.ids)
        chains = set(ident.chains or [])
        return [label for label in labelled if label.id in wanted_ids or label.chain in chains]
    return list(labelled)


def _select(ident: _Identity, label: _Label, by_chain: dict[str, dict]) -> tuple[dict | None, str | None, str]:
    """The record of ``label`` among the file's chains, its fold coverage, or a reason (``{present}``)."""
    if ident.domain is not None and ident.domain == label.id:
        if label.chain in by_chain:
            return by_chain[label.chain], "domain", ""
        if len(by_chain) == 1:
            return next(iter(by_chain.values())), "domain", ""
        return None, None, f"domain file with several chains ({{present}}) and none is {label.chain!r}"
    if label.chain == ".":
        return None, None, "SCOPe domain spans several chains; only its own domain file can be read"
    coverage = None
    if label.domain_suffix:
        coverage = "chain" if label.domain_suffix == "_" else "whole_chain_of_partial_domain"
    if label.chain in by_chain:
        return by_chain[label.chain], coverage, ""
    if label.chain == "" and len(by_chain) == 1:
        return next(iter(by_chain.values())), coverage, ""
    return None, None, f"labelled chain {label.chain!r} not in the file (protein chains present: {{present}})"
