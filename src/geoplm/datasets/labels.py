"""Readers of the label files of the function and fold tasks (EC, GO, Fold, Reaction).

Formats (files copied unchanged into ``shared/data/labels``; origins in ``SOURCES.tsv``):

DeepFRI EC/GO (flatironinstitute/DeepFRI, ``preprocessing/data/``, commit
3bd6c7eae67894ccedbe1117e33b3abe544bca71):

* ``nrPDB-EC_2020.04_annot.tsv`` (CRLF line ends): pairs of lines ``### <heading>`` + one
  tab-separated line of values (``### EC-numbers`` + the 538 EC numbers; the GO file has one pair
  per ontology, ``GO-terms (...)`` and ``GO-names (...)``), then the header
  ``### PDB-chain<TAB><label column>...`` and one line per chain, ``<PDB>-<chain><TAB>`` followed by
  each label column as comma-separated terms of the term list of the same heading.
* ``nrPDB-*_{train,valid,test}.txt``: one ``PDB-chain`` per line.
* ``nrPDB-*_test.csv``: ``PDB-chain,<30%,<40%,<50%,<70%,<95%``: 1 where the test chain is below that
  sequence identity to the training set. torchdrug's ``EnzymeCommission``/``GeneOntology``
  (``test_cutoff``) keep the test chains flagged 1 for the chosen cutoff.
* Not available here: the GO annotation file ``nrPDB-GO_2019.06.18_annot.tsv`` (GO labels), and
  the structures (DeepFRI's ``*.npz`` / torchdrug's ``.pdb`` archives); only the GO splits and cutoffs
  can be read.

SCOPe 1.75 fold classification (phermosilla/IEConv_proteins, ``Datasets/data/HomologyTAPE/``,
commit cc067a2f878f2c3918deae465371a7b708f3647c; reader ``Datasets/py/ProtClassHomologyDataSet.py``
at commit 91d12fe97980d62c55cb25e2f6af3b69d5e1e936):

* ``class_map.txt``: ``<fold><TAB><index>``, 1195 folds, indices 0..1194 (no newline at the end).
* ``training.txt``, ``validation.txt``, ``test_family.txt``: ``<domain><TAB><fold><TAB><fold>``;
  ``test_fold.txt``, ``test_superfamily.txt``: ``<domain><TAB><integer><TAB><fold><TAB><fold>``. The
  label is the *last* column looked up in the class map (as IEConv does); the integer column is not
  used by IEConv and its meaning is not documented (kept as ``number``).

Enzyme reaction (phermosilla/IEConv_proteins, ``Datasets/data/ProtFunct/``, same commits; reader
``Datasets/py/ProtFunctDataSet.py``):

* ``unique_functions.txt``: the 384 EC numbers, line i is class i;
* ``chain_functions.txt``: ``<pdb>.<chain>,<class index>``;
* ``training.txt``, ``validation.txt``, ``testing.txt``: one ``<pdb>.<chain>`` per line.

Every reader raises :class:`~geoplm.errors.GeoplmError` naming the file and the 1-based line number
of a malformed line.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from geoplm.errors import GeoplmError

DEEPFRI_CUTOFFS: tuple[int, ...] = (30, 40, 50, 70, 95)
EC_FILES = {
    "annotations": "nrPDB-EC_2020.04_annot.tsv",
    "train": "nrPDB-EC_2020.04_train.txt",
    "valid": "nrPDB-EC_2020.04_valid.txt",
    "test": "nrPDB-EC_2020.04_test.txt",
    "cutoffs": "nrPDB-EC_2020.04_test.csv",
}
GO_FILES = {
    "annotations": "nrPDB-GO_2019.06.18_annot.tsv",
    "train": "nrPDB-GO_2019.06.18_train.txt",
    "valid": "nrPDB-GO_2019.06.18_valid.txt",
    "test": "nrPDB-GO_2019.06.18_test.txt",
    "cutoffs": "nrPDB-GO_2019.06.18_test.csv",
}
FOLD_SPLITS: tuple[str, ...] = ("training", "validation", "test_fold", "test_superfamily", "test_family")
REACTION_SPLITS = {"training": "training.txt", "validation": "validation.txt", "test": "testing.txt"}

_DEEPFRI_CHAIN = re.compile(r"^[0-9A-Za-z]{4}-[0-9A-Za-z]+$")
_REACTION_CHAIN = re.compile(r"^[0-9A-Za-z]{4}\.[0-9A-Za-z]+$")
_SCOP_DOMAIN = re.compile(r"^[dg][0-9a-z]{4}[0-9A-Za-z._]{2}$")
_FOLD = re.compile(r"^[a-l]\.\d+$")
_EC = re.compile(r"^\d+\.(\d+|-)\.(\d+|-)\.(n?\d+|-)$")


def _error(path: Path, line: int | None, reason: str) -> GeoplmError:
    where = f"{path}:{line}" if line is not None else str(path)
    return GeoplmError(f"{where}: {reason}")


def _lines(path: str | os.PathLike) -> list[str]:
    """The file's lines without line ends (LF or CRLF)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _error(path, None, f"cannot read: {exc}") from exc
    return text.splitlines()


# --------------------------------------------------------------------------------------------------
# DeepFRI


def read_deepfri_annotations(path: str | os.PathLike) -> tuple[dict[str, list[str]], pd.DataFrame]:
    """Read a DeepFRI ``*_annot.tsv`` file.

    Returns:
        ``(term_lists, table)``: ``term_lists`` maps each ``###`` heading (``"EC-numbers"``,
        ``"GO-terms (molecular_function)"``, ...) to its values; ``table`` has a column ``pdb_chain``
        and, per label column of the header, a column of the same name holding the sorted list of
        term indices into the term list of that heading (an empty list where the field is empty).

    Raises:
        GeoplmError: a missing header, a line with too many fields, a malformed or duplicate chain,
            or a term absent from its list; the message names the file and line.
    """
    path = Path(path)
    lines = _lines(path)
    term_lists: dict[str, list[str]] = {}
    number = 0
    columns = None
    while number < len(lines):
        line = lines[number]
        number += 1
        if not line.startswith("### "):
            raise _error(path, number, f"expected a '### ' heading, found {line[:60]!r}")
        heading = line[4:].rstrip()
        if heading.startswith("PDB-chain"):
            columns = heading.split("\t")[1:]
            break
        if number >= len(lines):
            raise _error(path, number, f"heading {heading!r} without its list of values")
        values = lines[number].split("\t")
        number += 1
        if heading in term_lists:
            raise _error(path, number - 1, f"duplicate heading {heading!r}")
        if len(set(values)) != len(values):
            raise _error(path, number, f"duplicate values in the list of {heading!r}")
        term_lists[heading] = values
    if columns is None:
        raise _error(path, None, "no '### PDB-chain' header line")
    missing = [column for column in columns if column not in term_lists]
    if missing:
        raise _error(path, number, f"label columns {missing} have no term list heading")
    index = {column: {term: i for i, term in enumerate(term_lists[column])} for column in columns}

    rows = []
    seen: set[str] = set()
    for offset, line in enumerate(lines[number:], start=number + 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) > len(columns) + 1:
            raise _error(path, offset, f"{len(fields)} fields, expected at most {len(columns) + 1}")
        chain = fields[0].strip()
        if not _DEEPFRI_CHAIN.match(chain):
            raise _error(path, offset, f"malformed PDB-chain {chain!r} (expected e.g. '1ABC-A')")
        if chain in seen:
            raise _error(path, offset, f"duplicate chain {chain}")
        seen.add(chain)
        row: dict[str, object] = {"pdb_chain": chain}
        for column, field in zip(columns, fields[1:] + [""] * (len(columns) + 1 - len(fields)), strict=True):
            terms = [term.strip() for term in field.split(",") if term.strip()]
            unknown = [term for term in terms if term not in index[column]]
            if unknown:
                raise _error(path, offset, f"{chain}: {column} {unknown} not in the term list")
            row[column] = sorted(index[column][term] for term in set(terms))
        rows.append(row)
    return term_lists, pd.DataFrame(rows, columns=["pdb_chain", *columns])


def read_chain_list(path: str | os.PathLike, pattern: re.Pattern = _DEEPFRI_CHAIN) -> list[str]:
    """One chain per line (DeepFRI ``PDB-chain`` by default); blank lines ignored.

    Raises:
        GeoplmError: a malformed or duplicate name (file and line named).
    """
    path = Path(path)
    chains, seen = [], set()
    for number, line in enumerate(_lines(path), start=1):
        name = line.strip()
        if not name:
            continue
        if not pattern.match(name):
            raise _error(path, number, f"malformed chain name {name!r}")
        if name in seen:
            raise _error(path, number, f"duplicate chain {name}")
        seen.add(name)
        chains.append(name)
    return chains


def read_deepfri_test_cutoffs(path: str | os.PathLike) -> pd.DataFrame:
    """A DeepFRI ``*_test.csv``: columns ``pdb_chain`` and ``below_{30,40,50,70,95}`` (bool).

    Raises:
        GeoplmError: a header other than ``PDB-chain,<30%,...,<95%``, a line with another field count,
            a flag other than 0/1, a malformed or duplicate chain (file and line named).
    """
    path = Path(path)
    lines = _lines(path)
    expected = ["PDB-chain", *(f"<{cutoff}%" for cutoff in DEEPFRI_CUTOFFS)]
    if not lines or lines[0].strip().split(",") != expected:
        raise _error(path, 1, f"header is not {','.join(expected)}")
    rows, seen = [], set()
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = [field.strip() for field in line.split(",")]
        if len(fields) != len(expected):
            raise _error(path, number, f"{len(fields)} fields, expected {len(expected)}")
        chain, flags = fields[0], fields[1:]
        if not _DEEPFRI_CHAIN.match(chain):
            raise _error(path, number, f"malformed PDB-chain {chain!r}")
        if chain in seen:
            raise _error(path, number, f"duplicate chain {chain}")
        if any(flag not in ("0", "1") for flag in flags):
            raise _error(path, number, f"flags must be 0 or 1, found {flags}")
        seen.add(chain)
        rows.append([chain, *(flag == "1" for flag in flags)])
    return pd.DataFrame(rows, columns=["pdb_chain", *(f"below_{cutoff}" for cutoff in DEEPFRI_CUTOFFS)])


def _deepfri_splits(folder: Path, files: dict[str, str]) -> pd.DataFrame:
    frames = []
    for split in ("train", "valid", "test"):
        chains = read_chain_list(folder / files[split])
        frames.append(pd.DataFrame({"pdb_chain": chains, "split": split}))
    table = pd.concat(frames, ignore_index=True)
    duplicated = table[table["pdb_chain"].duplicated(keep=False)]
    if not duplicated.empty:
        first = duplicated.iloc[0]["pdb_chain"]
        splits = sorted(duplicated[duplicated["pdb_chain"] == first]["split"])
        raise _error(folder, None, f"chain {first} is in several splits ({', '.join(splits)})")
    cutoffs = read_deepfri_test_cutoffs(folder / files["cutoffs"])
    test = set(table.loc[table["split"] == "test", "pdb_chain"])
    extra = sorted(set(cutoffs["pdb_chain"]) ^ test)
    if extra:
        raise _error(folder / files["cutoffs"], None, f"chains differ from the test list, e.g. {extra[:3]}")
    table = table.merge(cutoffs, on="pdb_chain", how="left")
    for cutoff in DEEPFRI_CUTOFFS:
        table[f"below_{cutoff}"] = table[f"below_{cutoff}"].astype("boolean")
    return table


def load_deepfri_ec(folder: str | os.PathLike) -> tuple[pd.DataFrame, list[str]]:
    """DeepFRI's EC dataset: ``(table, terms)``.

    ``table`` has one row per chain of the train/valid/test lists (in that order) with columns
    ``pdb_chain``, ``split`` (train/valid/test), ``labels`` (sorted indices into ``terms``),
    ``below_30`` .. ``below_95`` (nullable bool: the test-set identity cutoffs; NA outside test).
    ``terms`` is the annotation file's ``EC-numbers`` list (538 terms, the class order).

    Raises:
        GeoplmError: a malformed file (named with the line), a chain in several splits, or a split
            chain without annotation.
    """
    folder = Path(folder)
    term_lists, annotations = read_deepfri_annotations(folder / EC_FILES["annotations"])
    if "EC-numbers" not in annotations.columns:
        raise _error(folder / EC_FILES["annotations"], None, "no EC-numbers column")
    table = _deepfri_splits(folder, EC_FILES)
    labels = dict(zip(annotations["pdb_chain"], annotations["EC-numbers"], strict=True))
    missing = [chain for chain in table["pdb_chain"] if chain not in labels]
    if missing:
        raise _error(
            folder / EC_FILES["annotations"], None, f"{len(missing)} split chains unannotated, e.g. {missing[:3]}"
        )
    table.insert(2, "labels", [labels[chain] for chain in table["pdb_chain"]])
    return table, term_lists["EC-numbers"]


def load_deepfri_go_splits(folder: str | os.PathLike) -> pd.DataFrame:
    """DeepFRI's GO splits and test cutoffs (columns as :func:`load_deepfri_ec`, without labels).

    The GO annotation file (``nrPDB-GO_2019.06.18_annot.tsv``) is not part of the data here; where it
    is present, read it with :func:`read_deepfri_annotations`.
    """
    return _deepfri_splits(Path(folder), GO_FILES)


# --------------------------------------------------------------------------------------------------
# SCOPe 1.75 fold (HomologyTAPE)


def read_class_map(path: str | os.PathLike) -> dict[str, int]:
    """``class_map.txt``: fold -> class index; indices must be 0..n-1, each once.

    Raises:
        GeoplmError: a malformed line, duplicate fold or index, or missing index (file and line).
    """
    path = Path(path)
    classes: dict[str, int] = {}
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2 or not _FOLD.match(fields[0].strip()) or not fields[1].strip().isdigit():
            raise _error(path, number, f"expected '<fold><TAB><index>', found {line[:60]!r}")
        fold, index = fields[0].strip(), int(fields[1])
        if fold in classes:
            raise _error(path, number, f"duplicate fold {fold}")
        if index in classes.values():
            raise _error(path, number, f"duplicate class index {index}")
        classes[fold] = index
    if sorted(classes.values()) != list(range(len(classes))):
        raise _error(path, None, "class indices are not 0..n-1")
    return classes


def read_fold_list(path: str | os.PathLike, classes: dict[str, int]) -> pd.DataFrame:
    """A HomologyTAPE split list: columns ``domain``, ``number`` (Int64, NA for 3-field files),
    ``fold`` (the last column), ``label`` (its class index).

    Raises:
        GeoplmError: a line of other than 3 or 4 fields, a malformed domain, a non-integer second
            field, or a fold absent from the class map (file and line named).
    """
    path = Path(path)
    rows, seen = [], set()
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        fields = [field.strip() for field in line.split("\t")]
        if len(fields) not in (3, 4):
            raise _error(path, number, f"{len(fields)} fields, expected 3 or 4")
        domain, fold = fields[0], fields[-1]
        if not _SCOP_DOMAIN.match(domain):
            raise _error(path, number, f"malformed SCOPe domain {domain!r}")
        if domain in seen:
            raise _error(path, number, f"duplicate domain {domain}")
        if len(fields) == 4 and not fields[1].isdigit():
            raise _error(path, number, f"second field {fields[1]!r} is not an integer")
        if fold not in classes:
            raise _error(path, number, f"fold {fold!r} not in the class map")
        seen.add(domain)
        rows.append([domain, int(fields[1]) if len(fields) == 4 else None, fold, classes[fold]])
    table = pd.DataFrame(rows, columns=["domain", "number", "fold", "label"])
    table["number"] = table["number"].astype("Int64")
    return table


def load_fold(folder: str | os.PathLike) -> tuple[pd.DataFrame, list[str]]:
    """The SCOPe 1.75 fold dataset: ``(table, folds)``.

    ``table``: columns ``domain``, ``split`` (one of :data:`FOLD_SPLITS`), ``number``, ``fold``,
    ``label``; ``folds[label]`` is the fold of class ``label`` (1195 folds).
    """
    folder = Path(folder)
    classes = read_class_map(folder / "class_map.txt")
    frames = []
    for split in FOLD_SPLITS:
        frame = read_fold_list(folder / f"{split}.txt", classes)
        frame.insert(1, "split", split)
        frames.append(frame)
    folds = [""] * len(classes)
    for fold, index in classes.items():
        folds[index] = fold
    return pd.concat(frames, ignore_index=True), folds


# --------------------------------------------------------------------------------------------------
# Enzyme reaction (ProtFunct)


def read_reaction_classes(path: str | os.PathLike) -> list[str]:
    """``unique_functions.txt``: the EC number of each class, in class order."""
    path = Path(path)
    classes = []
    for number, line in enumerate(_lines(path), start=1):
        ec = line.strip()
        if not ec:
            continue
        if not _EC.match(ec):
            raise _error(path, number, f"malformed EC number {ec!r}")
        if ec in classes:
            raise _error(path, number, f"duplicate EC number {ec}")
        classes.append(ec)
    return classes


def read_reaction_labels(path: str | os.PathLike, num_classes: int) -> dict[str, int]:
    """``chain_functions.txt``: ``<pdb>.<chain>,<class>`` -> {chain: class}."""
    path = Path(path)
    labels: dict[str, int] = {}
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        fields = [field.strip() for field in line.split(",")]
        if len(fields) != 2 or not _REACTION_CHAIN.match(fields[0]) or not fields[1].isdigit():
            raise _error(path, number, f"expected '<pdb>.<chain>,<class>', found {line[:60]!r}")
        chain, label = fields[0], int(fields[1])
        if label >= num_classes:
            raise _error(path, number, f"class {label} out of range (0..{num_classes - 1})")
        if chain in labels:
            raise _error(path, number, f"duplicate chain {chain}")
        labels[chain] = label
    return labels


def load_reaction(folder: str | os.PathLike) -> tuple[pd.DataFrame, list[str]]:
    """The enzyme reaction dataset: ``(table, classes)``.

    ``table``: columns ``name`` (as in the files, ``4fae.B``), ``pdb_chain`` (DeepFRI style,
    ``4FAE-B``), ``split`` (training/validation/test), ``label`` (class index), ``ec`` (its EC
    number). ``classes``: the 384 EC numbers in class order.

    Raises:
        GeoplmError: a malformed file (with the line), a chain in several splits, or a split chain
            without a label.
    """
    folder = Path(folder)
    classes = read_reaction_classes(folder / "unique_functions.txt")
    labels = read_reaction_labels(folder / "chain_functions.txt", len(classes))
    rows, seen = [], {}
    for split, file_name in REACTION_SPLITS.items():
        path = folder / file_name
        for name in read_chain_list(path, _REACTION_CHAIN):
            if name in seen:
                raise _error(path, None, f"chain {name} is in both {seen[name]} and {split}")
            if name not in labels:
                raise _error(path, None, f"chain {name} has no label in chain_functions.txt")
            seen[name] = split
            pdb, chain = name.split(".", 1)
            rows.append([name, f"{pdb.upper()}-{chain}", split, labels[name], classes[labels[name]]])
    return pd.DataFrame(rows, columns=["name", "pdb_chain", "split", "label", "ec"]), classes
