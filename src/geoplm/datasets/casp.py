"""CASP server models (and natives) with their quality labels, for model quality assessment (MQA /
ATOM3D PSR: GDT-TS regression).

Files:

* **Models** in the CASP TS format (Prediction Center, "Format of prediction files", TS section):
  header records ``PFRMAT TS``, ``TARGET T0980s1``, ``AUTHOR``, ``METHOD`` (free text, repeated),
  ``MODEL n``, ``PARENT 1abc_A 2def_B`` (or ``N/A``), then PDB ``ATOM`` records (often without chain
  id, sometimes with hydrogens), ``TER`` and ``END``. Copies redistributed by MQA repositories (e.g.
  jianlin-cheng/DeepRank ``examples/T0980s1.tar.gz``, commit bb31ba956e21a18e00da2c4df94499d0877986a4)
  are stripped to the ATOM records. Model files have no extension (``QUARK_TS1``, ``T0980s1TS004_1``);
  :func:`read_ts` reads the header and detects truncated files; the residues are read with
  :func:`geoplm.structure.parse_structure` (hydrogens excluded, blank chain).
* **Natives**: ``{target}.pdb`` or domain files ``{target}-D{n}.pdb`` beside the models (role
  ``native``).
* **Labels**: tables read by :func:`read_label_table`, either

  - the TMscore-style table of the shared data (``T0980s1_TMscore_labels.tsv``: ``#`` comments, then a
    tab-separated header ``model  TM-score  GDT-TS  GDT-HA  RMSD  n_common``; GDT on a 0-1 scale), or
  - the Prediction Center's official results tables (``results/tables/{target}[-D{n}].txt``, one per
    target or domain): a header line ``#    Model  GR#  GDT_TS ... GDT_HA ... RMS_CA ... TMscore ...``,
    a blank line, then whitespace-separated rows, model ids ``{target}TS{group}_{n}[-D{n}]``, ``N/A``
    for missing values, GDT_TS/GDT_HA in percent (0-100). Layout as in the genuine CASP13 tables kept
    by tristanic/casp13-analysis (``results/tables/T0950-D1.txt``, commit
    d93af37070d2e569e1f2d45bf37d926d72267611) and read there by ``merge_with_casp_data``. Such rows
    name models by group *number*; they match model files named the Prediction Center's way
    (``T0950TS324_2``), not files renamed by group name (``QUARK_TS1``).

**GDT-TS scale**: labels are fractions in [0, 1] (as ATOM3D PSR, whose ``gdt_ts`` label is 0-1);
percentages (official tables, or any GDT column whose largest value exceeds 1) are divided by 100.
``tm_score`` is in [0, 1] and ``rmsd`` in Å (the official tables' RMS_CA, the Cα RMSD after LGA
superposition).
"""

from __future__ import annotations

import fnmatch
import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from geoplm.datasets.generic import check_on_error, check_shard, deal, expand_files
from geoplm.datasets.pdbbind import merge_chain_records
from geoplm.errors import ConfigError, GeoplmError, StructureError
from geoplm.structure import parse_structure

logger = logging.getLogger(__name__)

#: Keys of a model's ``labels`` dict (those the table has values for).
LABEL_KEYS: tuple[str, ...] = ("gdt_ts", "gdt_ha", "tm_score", "rmsd")
#: Columns of :func:`read_label_table`'s DataFrame.
LABEL_COLUMNS: tuple[str, ...] = ("target", "model", "domain", *LABEL_KEYS, "source", "line")
#: Default ``labels`` option of :func:`read_shard`: file-name patterns of label tables.
DEFAULT_LABEL_PATTERNS: tuple[str, ...] = ("*labels*.tsv", "*labels*.csv")

_TARGET = re.compile(r"^(?P<target>[THRN]\d{4}(?:s\d+)?)")
_OFFICIAL_MODEL = re.compile(r"^(?P<model>(?P<target>[THRN]\d{4}(?:s\d+)?)(?:TS|LG|QA)\d+_\d+)(?:-(?P<domain>D\d+))?$")
_NATIVE = re.compile(r"^(?P<target>[THRN]\d{4}(?:s\d+)?)(?:-(?P<domain>D\d+))?$")
_COLUMN_ALIASES = {
    "gdt_ts": ("gdtts",),
    "gdt_ha": ("gdtha",),
    "tm_score": ("tmscore",),
    "rmsd": ("rmsd", "rmsca"),
}
_GDT_KEYS = ("gdt_ts", "gdt_ha")
_OPTIONS = ("require_labels", "labels", "natives", "subset", "target")
_MISSING = ("N/A", "NA", "-", "", "nan", "NaN")


class CaspError(GeoplmError):
    """A CASP model, native or label table cannot be used.

    Args:
        path: the file concerned.
        reason: why, in words.
        entry: the model (``target/model``), where known.
    """

    def __init__(self, path, reason: str, entry: str | None = None):
        self.path = str(path)
        self.reason = reason
        self.entry = entry
        where = self.path if entry is None else f"{self.path} ({entry})"
        super().__init__(f"{where}: {reason}")


# --------------------------------------------------------------------------------------------------
# TS files


def read_ts(path: str | Path) -> dict[str, Any]:
    """Header of a CASP TS prediction file, with a check that the file is complete.

    Args:
        path: a TS file (``PFRMAT TS`` header or bare ATOM records).

    Returns:
        ``{"pfrmat": "TS" or None, "target": str or None, "author": str or None, "method": str (METHOD
        lines joined by spaces, "" if none), "model": int or None (the first MODEL), "parent": list[str]
        (the first PARENT's templates; ``[]`` for ``N/A`` or none), "num_models": int (MODEL records, at
        least 1), "num_atoms": int (ATOM/HETATM records), "has_hydrogens": bool}``.

    Raises:
        CaspError: the file cannot be read, is empty, is another PFRMAT than TS, has a MODEL value that
            is no integer, has no ATOM records, or is truncated: a coordinate record cut short (fewer
            than 54 columns or non-numeric x, y, z), a MODEL block without END while the header says
            ``PFRMAT``, or a header without coordinates. The message names the file.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        raise CaspError(path, f"cannot read TS file: {exc.strerror or exc}") from exc
    if not text.strip():
        raise CaspError(path, "empty TS file")
    header: dict[str, Any] = {
        "pfrmat": None,
        "target": None,
        "author": None,
        "method": "",
        "model": None,
        "parent": [],
        "num_models": 0,
        "num_atoms": 0,
        "has_hydrogens": False,
    }
    methods: list[str] = []
    ended = False
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        record = line[:6].strip().upper()
        words = line.split()
        if record == "PFRMAT":
            header["pfrmat"] = words[1].upper() if len(words) > 1 else ""
            if header["pfrmat"] != "TS":
                raise CaspError(path, f"PFRMAT {header['pfrmat']!r} at line {number}: not a TS (3D model) file")
        elif record == "TARGET" and header["target"] is None:
            header["target"] = words[1] if len(words) > 1 else None
        elif record == "AUTHOR" and header["author"] is None:
            header["author"] = " ".join(words[1:]) or None
        elif record == "METHOD":
            methods.append(line[6:].strip())
        elif record == "MODEL":
            try:
                value = int(words[1])
            except (IndexError, ValueError):
                raise CaspError(path, f"MODEL record at line {number} has no integer model number: {line!r}") from None
            if header["model"] is None:
                header["model"] = value
            header["num_models"] += 1
            ended = False
        elif record == "PARENT" and not header["parent"]:
            header["parent"] = [word for word in words[1:] if word.upper() != "N/A"]
        elif record in ("ATOM", "HETATM"):
            try:
                if len(line.rstrip()) < 54:
                    raise ValueError
                float(line[30:38]), float(line[38:46]), float(line[46:54])
            except ValueError:
                raise CaspError(
                    path, f"truncated or malformed coordinate record at line {number}: {line.rstrip()!r}"
                ) from None
            header["num_atoms"] += 1
            element = line[76:78].strip().upper() if len(line) >= 78 else ""
            name = line[12:16].strip().upper()
            if element in ("H", "D") or (not element and name.lstrip("0123456789").startswith("H")):
                header["has_hydrogens"] = True
        elif record in ("END", "ENDMDL"):
            ended = True
    header["method"] = " ".join(m for m in methods if m)
    if header["num_atoms"] == 0:
        reason = "header but no ATOM records (truncated)" if header["pfrmat"] else "no ATOM records"
        raise CaspError(path, f"not a TS model: {reason}")
    if header["pfrmat"] is not None and header["num_models"] and not ended:
        raise CaspError(path, "truncated TS file: the last MODEL has no END record")
    header["num_models"] = max(header["num_models"], 1)
    return header


# --------------------------------------------------------------------------------------------------
# labels


def _normalise(column: str) -> str:
    return re.sub(r"[^a-z0-9]", "", column.lower())


def _to_float(value: str) -> float:
    value = str(value).strip()
    if value in _MISSING:
        return math.nan
    return float(value)


def _is_official(lines: list[str]) -> bool:
    for line in lines:
        if line.strip():
            words = line.lstrip("#").split()
            return line.startswith("#") and "Model" in words and "GR#" in words
    return False


def _read_official(path: Path, lines: list[str]) -> pd.DataFrame:
    header: list[str] | None = None
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if header is None:
            header = ["#", *line.lstrip("#").split()]
            columns = {name: i for i, name in enumerate(header)}
            needed = ("Model", "GDT_TS")
            missing = [name for name in needed if name not in columns]
            if missing:
                raise CaspError(path, f"official results table lacks columns {missing}")
            continue
        words = line.split()
        if len(words) < len(header):
            raise CaspError(path, f"line {number}: {len(words)} fields, the header has {len(header)}")
        match = _OFFICIAL_MODEL.match(words[columns["Model"]])
        if match is None:
            raise CaspError(path, f"line {number}: model id {words[columns['Model']]!r} is not <target>TS<group>_<n>")

        def value(name: str, scale: float = 1.0, words=words, number=number, columns=columns) -> float:
            if name not in columns:
                return math.nan
            try:
                return _to_float(words[columns[name]]) / scale
            except ValueError:
                raise CaspError(path, f"line {number}: {name} {words[columns[name]]!r} is not a number") from None

        rows.append(
            {
                "target": match["target"],
                "model": match["model"],
                "domain": match["domain"] or "",
                "gdt_ts": value("GDT_TS", 100.0),
                "gdt_ha": value("GDT_HA", 100.0),
                "tm_score": value("TMscore"),
                "rmsd": value("RMS_CA"),
                "source": str(path),
                "line": number,
            }
        )
    return pd.DataFrame(rows, columns=list(LABEL_COLUMNS))


def _read_delimited(path: Path, lines: list[str], target: str | None) -> pd.DataFrame:
    body = [(number, line) for number, line in enumerate(lines, start=1) if line.strip() and not line.startswith("#")]
    if not body:
        raise CaspError(path, "label table has no header and no rows")
    sep = "\t" if "\t" in body[0][1] else ("," if "," in body[0][1] else None)

    def split(line: str) -> list[str]:
        return [field.strip() for field in (line.split(sep) if sep else line.split())]

    header = split(body[0][1])
    normalised = [_normalise(name) for name in header]
    model_column = next((i for i, n in enumerate(normalised) if n in ("model", "modelname", "decoy", "name")), None)
    if model_column is None:
        raise CaspError(path, f"label table has no model column (model); header {header}")
    target_column = next((i for i, n in enumerate(normalised) if n == "target"), None)
    key_columns = {
        key: next((i for i, n in enumerate(normalised) if n in aliases), None)
        for key, aliases in _COLUMN_ALIASES.items()
    }
    if all(i is None for i in key_columns.values()):
        raise CaspError(path, f"label table has none of the columns GDT-TS, GDT-HA, TM-score, RMSD; header {header}")
    file_target = _TARGET.match(path.name)
    rows = []
    for number, line in body[1:]:
        fields = split(line)
        if len(fields) != len(header):
            raise CaspError(path, f"line {number}: {len(fields)} fields, the header has {len(header)}")
        row_target = fields[target_column] if target_column is not None else None
        row_target = row_target or target or (file_target["target"] if file_target else None)
        if not row_target:
            raise CaspError(path, f"line {number}: no target (no target column, and none from the file name or folder)")
        row: dict[str, Any] = {"target": row_target, "model": fields[model_column], "domain": ""}
        for key, index in key_columns.items():
            try:
                row[key] = _to_float(fields[index]) if index is not None else math.nan
            except ValueError:
                raise CaspError(path, f"line {number}: {header[index]} {fields[index]!r} is not a number") from None
        row["source"], row["line"] = str(path), number
        rows.append(row)
    table = pd.DataFrame(rows, columns=list(LABEL_COLUMNS))
    for key in _GDT_KEYS:  # percentages -> fractions
        if table[key].max(skipna=True) > 1.0:
            table[key] = table[key] / 100.0
    return table


def read_label_table(path: str | Path, target: str | None = None) -> pd.DataFrame:
    """Quality labels of CASP models from a TMscore-style table or an official results table (see
    the module docstring for both layouts).

    Args:
        path: the table.
        target: the target of rows without a target column, when the file name does not start with
            one (e.g. the target folder's id).

    Returns:
        DataFrame with the columns :data:`LABEL_COLUMNS`: ``target``, ``model`` (the model file name,
        e.g. ``QUARK_TS1`` or ``T0950TS324_2``), ``domain`` (``D1`` for a domain row of an official
        table, else ``""``), ``gdt_ts`` and ``gdt_ha`` as fractions in [0, 1], ``tm_score`` in [0, 1],
        ``rmsd`` in Å; NaN where the table has no value. ``source``, ``line`` (1-based) locate the row.

    Raises:
        CaspError: unreadable file, no model column, none of the score columns, a row of the wrong
            length, a non-numeric score, or no target for a row; the message names the file and line.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise CaspError(path, f"cannot read label table: {exc.strerror or exc}") from exc
    if _is_official(lines):
        return _read_official(path, lines)
    return _read_delimited(path, lines, target)


# --------------------------------------------------------------------------------------------------
# finding targets


def _target_from_path(path: Path) -> str | None:
    """The target named by the file name or the nearest enclosing folder (``T0865_CASP12`` -> T0865)."""
    for part in (path.name, *(parent.name for parent in path.parents)):
        match = _TARGET.match(part)
        if match:
            return match["target"]
    return None


def _is_model_file(path: Path) -> bool:
    return "." not in path.name and not path.name.startswith(".")


def _is_native_file(path: Path) -> bool:
    return path.suffix.lower() == ".pdb" and _NATIVE.match(path.stem) is not None


def _options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    options = dict(options or {})
    for key in options:
        if key not in _OPTIONS:
            raise ConfigError(f"options.{key}: unknown option of the 'casp' reader (known: {', '.join(_OPTIONS)})")
    require = options.get("require_labels", True)
    natives = options.get("natives", True)
    for key, value in (("require_labels", require), ("natives", natives)):
        if not isinstance(value, bool):
            raise ConfigError(f"options.{key}: true or false, got {value!r}")
    labels = options.get("labels", list(DEFAULT_LABEL_PATTERNS))
    if isinstance(labels, str):
        labels = [labels]
    if not isinstance(labels, list | tuple) or not all(isinstance(p, str) for p in labels):
        raise ConfigError(f"options.labels: a list of file names or patterns, got {labels!r}")
    target = options.get("target")
    if target is not None and not (isinstance(target, str) and _NATIVE.fullmatch(target) and "-" not in target):
        raise ConfigError(f"options.target: a CASP target id such as T0980s1, got {target!r}")
    return {"require_labels": require, "natives": natives, "labels": list(labels), "target": target}


def _label_files(paths: Sequence[Path], patterns: Sequence[str]) -> list[Path]:
    matched: list[Path] = []
    for pattern in patterns:
        hits = [p for p in paths if fnmatch.fnmatch(p.name, pattern)]
        if not hits and not any(ch in pattern for ch in "*?["):
            raise ConfigError(f"options.labels: no file named {pattern!r} among the dataset's files")
        matched.extend(p for p in hits if p not in matched)
    return matched


def read_labels(paths: Sequence[Path]) -> dict[tuple[str, str], dict[str, Any]]:
    """``{(target, model): row}`` from label tables (:func:`read_label_table`).

    Raises:
        CaspError: from the reader, or one model labelled twice (e.g. two domain tables of one target):
            the message names both files and lines.
    """
    labels: dict[tuple[str, str], dict[str, Any]] = {}
    for path in paths:
        for row in read_label_table(path, _target_from_path(path.parent)).to_dict("records"):
            key = (row["target"], row["model"])
            if key in labels:
                first = labels[key]
                raise CaspError(
                    path,
                    f"line {row['line']}: model {row['model']} of {row['target']} already labelled at "
                    f"{first['source']}:{first['line']} (give one table per target in options.labels)",
                )
            labels[key] = row
    return labels


def find_entries(
    paths: Sequence[Path], natives: bool = True, default_target: str | None = None
) -> list[tuple[str, str, str, Path]]:
    """The models and natives among ``paths`` as sorted ``(target, role, name, path)`` tuples.

    Models are files without extension; their target is the TS header's TARGET, else the file name or
    nearest folder that starts with a target id (``T0980s1/models/QUARK_TS1`` -> T0980s1), else
    ``default_target`` (reader option ``target``: a folder of one target's models). Natives are
    ``{target}.pdb`` / ``{target}-D{n}.pdb``. Sorted by target, then natives before models, then name.

    Raises:
        CaspError: two files giving one (target, name). A model whose target cannot be told gets
            target ``""`` (:func:`read_shard` skips it with the reason).
    """
    entries: dict[tuple[str, str], tuple[str, str, str, Path]] = {}
    for path in sorted(paths, key=lambda p: (p.name, str(p))):
        if _is_native_file(path):
            if not natives:
                continue
            role, target, name = "native", _NATIVE.match(path.stem)["target"], path.stem
        elif _is_model_file(path):
            role, name = "model", path.name
            target = _header_target(path) or _target_from_path(path) or default_target
            if target is None:
                target = ""  # read_shard reports it (skipped, or raised with on_error="fail")
        else:
            continue
        key = (target, name)
        if key in entries:
            raise CaspError(path, f"{target}/{name} also at {entries[key][3]}")
        entries[key] = (target, role, name, path)
    return sorted(entries.values(), key=lambda e: (e[0], e[1] != "native", e[2], str(e[3])))


def _header_target(path: Path) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for _, line in zip(range(50), handle, strict=False):
                if line.startswith("TARGET"):
                    words = line.split()
                    return words[1] if len(words) > 1 else None
                if line.startswith(("ATOM", "HETATM")):
                    return None
    except OSError:
        return None
    return None


# --------------------------------------------------------------------------------------------------
# records


def _labels_of(row: Mapping[str, Any] | None) -> dict[str, float]:
    if row is None:
        return {}
    return {key: float(row[key]) for key in LABEL_KEYS if row[key] is not None and not math.isnan(row[key])}


def read_entry(target: str, role: str, name: str, path: Path, label_row: Mapping[str, Any] | None) -> dict[str, Any]:
    """The record of one model or native (see :func:`read_shard`).

    Raises:
        CaspError: the model fails :func:`read_ts` or :func:`geoplm.structure.parse_structure`.
    """
    entry = f"{target}/{name}"
    header = read_ts(path) if role == "model" else None
    try:
        chains = parse_structure(path)
    except StructureError as exc:
        raise CaspError(path, exc.reason, entry) from exc
    record_id = name if name.startswith(target) else f"{target}_{name}"
    record = merge_chain_records(chains, record_id, entry)
    record.update({"split": "", "labels": _labels_of(label_row), "group": target, "role": role})
    if header is not None:
        record["casp_model"] = header["model"] if header["model"] is not None else -1
        record["casp_method"] = header["method"]
        record["casp_parent"] = header["parent"]
    return record


def read_shard(
    files: Sequence[str | Path],
    shard: int,
    num_shards: int,
    options: Mapping[str, Any] | None = None,
    on_error: str = "skip",
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Records of one shard of the CASP models and natives among ``files`` (reader ``casp``).

    Args:
        files: target folders (models, natives, label tables, FASTA), folders holding them, or files.
        shard, num_shards: the entries of :func:`find_entries` (sorted by target, natives first, then
            model name) are dealt round robin: entry ``i`` goes to shard ``i % num_shards``.
        options:
            ``require_labels`` (default true): a model without a label row is skipped with the reason;
            false keeps it with ``labels = {}``. Natives never need labels.
            ``labels``: file names or glob patterns of the label tables among ``files`` (default
            ``["*labels*.tsv", "*labels*.csv"]``; official tables must be named, e.g.
            ``["T0950-D1.txt"]``).
            ``natives`` (default true): also make records of the natives.
        on_error: ``"skip"`` or ``"fail"``.

    Returns:
        (records, skipped). One record per model (``role = "model"``) or native (``role = "native"``),
        its chains merged by :func:`geoplm.datasets.pdbbind.merge_chain_records` (every key of
        :data:`geoplm.structure.RECORD_KEYS`; ``backbone`` (L, 4, 3) Å; hydrogens excluded), with
        ``id`` = the model file name, prefixed by ``{target}_`` unless it starts with the target;
        ``source`` = ``"{target}/{name}"``; ``group`` = target; ``split`` = ``""``; ``labels`` =
        ``{"gdt_ts", "gdt_ha", "tm_score", "rmsd"}`` (GDT-TS/HA fractions in [0, 1], TM-score in
        [0, 1], RMSD in Å; only the values the table has; ``{}`` for natives); models also carry
        ``casp_model`` (int, -1 if no MODEL record), ``casp_method`` (str) and ``casp_parent``
        (list[str]) from the TS header. Skipped rows: ``{"entry": "target/name", "source_file",
        "reason"}``.

    Raises:
        ConfigError: bad options, shard or on_error, or a named label table absent.
        CaspError: bad label tables or ambiguous files (always); a bad model when ``on_error == "fail"``.
    """
    check_shard(shard, num_shards)
    check_on_error(on_error)
    opts = _options(options)
    paths = expand_files(files)
    labels = read_labels(_label_files(paths, opts["labels"]))
    entries = find_entries(paths, opts["natives"], opts["target"])
    records: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for target, role, name, path in deal(entries, shard, num_shards):
        try:
            if not target:
                raise CaspError(path, "cannot tell the CASP target (no TARGET record, no target id in the path)")
            row = labels.get((target, name))
            if role == "model" and row is None and opts["require_labels"]:
                raise CaspError(path, "no label row for this model in the label tables", f"{target}/{name}")
            records.append(read_entry(target, role, name, path, row))
        except CaspError as error:
            if on_error == "fail":
                raise
            logger.warning("skipped %s", error)
            skipped.append({"entry": f"{target}/{name}", "source_file": error.path, "reason": error.reason})
    logger.info("casp shard %d/%d: %d records, %d skipped", shard, num_shards, len(records), len(skipped))
    return records, skipped
