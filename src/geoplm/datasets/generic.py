"""The ``structures`` reader: plain PDB/mmCIF files (optionally gzipped), one record per protein chain.

This is the registry form (see :mod:`geoplm.datasets`) of :func:`geoplm.steps.parse_structure_files`,
which parses the files of one download manifest: here every file of the dataset is dealt to one of
``num_shards`` record shards, and each shard parses its own files with
:func:`geoplm.structure.parse_structure`.

Dealing: the structure files are sorted by file name (then full path, for equal names in different
folders) and file ``i`` of that order goes to shard ``i % num_shards``. Every file lands in exactly one
shard, always the same one for the same file list, and shard sizes differ by at most one file.

Which files are structures: names ending (after an optional ``.gz``) in ``.pdb``, ``.ent``, ``.brk``,
``.cif`` or ``.mmcif``, and names without any extension (CASP TS model files such as
``T0980TS004_1``). Every other file (``.json`` PAE files, ``.dssp``, ``.txt``, ``.fasta``, ...) is
ignored with a log line. A directory in ``files`` stands for every file below it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from geoplm.errors import ConfigError, StructureError
from geoplm.structure import parse_structure

logger = logging.getLogger(__name__)

#: Extensions (lower case, after removing ``.gz``) of the files the ``structures`` reader parses.
STRUCTURE_SUFFIXES: frozenset[str] = frozenset({".pdb", ".ent", ".brk", ".cif", ".mmcif"})
ON_ERROR_VALUES = ("skip", "fail")


def is_structure_file(path: str | Path) -> bool:
    """True if ``path``'s name marks a PDB/mmCIF file (see the module docstring), gzipped or not."""
    name = Path(path).name
    if name.lower().endswith(".gz"):
        name = name[:-3]
    suffix = Path(name).suffix.lower()
    return suffix in STRUCTURE_SUFFIXES or suffix == ""


def expand_files(files: Sequence[str | Path]) -> list[Path]:
    """The files of ``files`` with directories replaced by the files below them (recursively)."""
    expanded: list[Path] = []
    for item in files:
        path = Path(item)
        if path.is_dir():
            expanded.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        else:
            expanded.append(path)
    return expanded


def deal(items: Sequence[Any], shard: int, num_shards: int) -> list[Any]:
    """Items ``shard, shard + num_shards, shard + 2 num_shards, ...`` of ``items`` (round robin).

    Raises:
        ConfigError: ``num_shards < 1`` or ``shard`` outside ``[0, num_shards)``.
    """
    check_shard(shard, num_shards)
    return list(items[shard::num_shards])


def check_shard(shard: int, num_shards: int) -> None:
    """Validate a (shard, num_shards) pair.

    Raises:
        ConfigError: ``num_shards < 1`` or ``shard`` outside ``[0, num_shards)``.
    """
    if not isinstance(num_shards, int) or num_shards < 1:
        raise ConfigError(f"num_shards must be a positive integer, got {num_shards!r}")
    if not isinstance(shard, int) or not 0 <= shard < num_shards:
        raise ConfigError(f"shard must be an integer in [0, {num_shards}), got {shard!r}")


def check_on_error(on_error: str) -> None:
    """Raises ConfigError unless ``on_error`` is ``"skip"`` or ``"fail"``."""
    if on_error not in ON_ERROR_VALUES:
        raise ConfigError(f"on_error must be one of {', '.join(ON_ERROR_VALUES)}, got {on_error!r}")


def structure_files(files: Sequence[str | Path]) -> list[Path]:
    """The structure files among ``files`` (directories expanded), sorted by (file name, path).

    Files that are not structures are logged at INFO level and left out.
    """
    kept = []
    for path in expand_files(files):
        if is_structure_file(path):
            kept.append(path)
        else:
            logger.info("%s: not a structure file (by its extension); ignored", path)
    return sorted(kept, key=lambda p: (p.name, str(p)))


def read_structures_shard(
    files: Sequence[str | Path],
    shard: int,
    num_shards: int,
    options: Mapping[str, Any] | None = None,
    on_error: str = "skip",
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Parse this shard's structure files into residue records (reader ``structures``).

    Args:
        files: the dataset's downloaded files (``list[pathlib.Path]``); non-structure files are ignored
            with a log line, directories are expanded.
        shard: this shard's index, ``0 <= shard < num_shards``.
        num_shards: number of record shards; file ``i`` of the files sorted by name goes to shard
            ``i % num_shards``.
        options: must be empty (this reader has no options).
        on_error: ``"skip"``: a file :func:`geoplm.structure.parse_structure` rejects becomes a row
            ``{"entry": file name, "source_file": path, "reason": StructureError.reason}`` of
            ``skipped``; ``"fail"``: it raises.

    Returns:
        (records, skipped): one record per protein chain of each file, in shard file order, with the
        keys of :data:`geoplm.structure.RECORD_KEYS` (``backbone`` (L, 4, 3) in Å, ``b_factor`` (L,)
        in Å² or pLDDT, ...); ``skipped`` as above.

    Raises:
        StructureError: a bad file, when ``on_error == "fail"``.
        ConfigError: an option is given, a bad ``on_error``, or a bad shard index.

    Source: the same per-file loop as :func:`geoplm.steps.parse_structure_files`.
    """
    check_shard(shard, num_shards)
    check_on_error(on_error)
    for key in options or {}:
        raise ConfigError(f"options.{key}: the 'structures' reader takes no options")
    records: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    mine = deal(structure_files(files), shard, num_shards)
    for path in mine:
        try:
            parsed = parse_structure(path)
        except StructureError as error:
            if on_error == "fail":
                raise
            logger.warning("skipped %s", error)
            skipped.append({"entry": path.name, "source_file": str(path), "reason": error.reason})
            continue
        records.extend(parsed)
    logger.info(
        "structures shard %d/%d: %d files, %d records, %d skipped",
        shard,
        num_shards,
        len(mine),
        len(records),
        len(skipped),
    )
    return records, skipped
