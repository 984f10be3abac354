"""The workflow's steps as plain functions: what each Snakemake rule (and the ``geoplm`` CLI) runs.

Each function takes file paths and settings, never a Snakemake object, so it is tested without
Snakemake; ``scripts/*.py`` only unpack ``snakemake.input/params/output`` into these calls.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import random
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from geoplm import atomic
from geoplm.errors import GeoplmError

log = logging.getLogger("geoplm")

DOWNLOAD_COLUMNS = ["file", "url", "sha256", "bytes", "origin", "reason"]
MANIFEST_COLUMNS = [
    "id",
    "split",
    "group",
    "role",
    "source_file",
    "chain",
    "length",
    "num_masked",
    "shard",
    "labels",
    "sequence",
]
SKIPPED_COLUMNS = ["entry", "source_file", "reason"]


@contextlib.contextmanager
def logged(log_path: str | Path | None) -> Iterator[logging.Logger]:
    """Send geoplm's log records to ``log_path`` (and stderr) for the duration of a step.

    An exception escaping the step is logged with its message first, so the Snakemake log names
    the file or entry at fault; then it propagates and the job fails.
    """
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    old_level = root.level
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield log
    except GeoplmError as error:
        log.error("%s: %s", type(error).__name__, error)
        raise
    except Exception:
        log.exception("step failed")
        raise
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(old_level)


def write_tsv(path: str | Path, rows: Sequence[Mapping], columns: Sequence[str]) -> None:
    """Write ``rows`` as a tab-separated table with ``columns`` (header even when empty), atomically."""
    frame = pd.DataFrame(list(rows), columns=list(columns))
    with atomic.atomic_path(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=False, quoting=csv.QUOTE_MINIMAL)


def read_tsv(path: str | Path) -> pd.DataFrame:
    """Read a table written by :func:`write_tsv` (empty strings stay empty strings)."""
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


# --- download -------------------------------------------------------------------------------------


def missing_policy(missing_files: str, mirror_dir: Path | None) -> str:
    """``skip`` or ``fail``: what a file that neither the mirror nor the network provides does.

    ``auto`` (the default) skips when a mirror is in force -- a mirror usually holds samples of a
    dataset, and what it lacks is reported in the dataset's ``skipped.tsv`` -- and fails otherwise.
    """
    if missing_files == "auto":
        return "skip" if mirror_dir is not None else "fail"
    return missing_files


def download_files(
    files: Sequence[Mapping],
    directory: str | Path,
    manifest: str | Path,
    mirror: str | None,
    missing_files: str = "auto",
    manual: str | None = None,
    lock: str | Path | None = None,
) -> pd.DataFrame:
    """Fetch every file of a source shard into ``directory``; write the download manifest.

    Args:
        files: entries with ``url`` and optional ``checksum`` (``sha256:`` / ``md5:``) and ``name``
            (the upstream file name, when the URL's last segment is not it). A file without a checksum is
            pinned by ``lock``: checked against the digest recorded there, or, on its first download, its
            SHA-256 is recorded there.
        directory: where the files go (``resources/raw/{source}/files``).
        manifest: the TSV written last, listing file, url, sha256, bytes, origin (``cache``,
            ``mirror``, ``network`` or ``missing``) and, for missing files, the reason.
        mirror: the configured mirror directory (``$GEOPLM_MIRROR`` overrides it).
        missing_files: ``auto``, ``skip`` or ``fail`` (see :func:`missing_policy`).
        manual: how to obtain a licensed file by hand (added to the reason / error).
        lock: the checksum lock file (:class:`geoplm.sources.ChecksumLock`); None: unpinned files are
            accepted as found (their SHA-256 is still recorded in the manifest).

    Raises:
        ChecksumError: a mirror, cached or downloaded copy does not match its checksum (the published one,
            the config's, or the lock file's): always, whatever ``missing_files`` says -- a wrong file is
            never taken as missing. The message names the file and both digests.
        DownloadError: a file cannot be obtained and the policy is ``fail``. Files already
            fetched stay in place (with their recorded digests), so a rerun resumes.
    """
    from geoplm import sources
    from geoplm.errors import DownloadError

    mirror_dir = sources.resolve_mirror(mirror)
    policy = missing_policy(missing_files, mirror_dir)
    log.info("mirror: %s; missing files: %s", mirror_dir or "none (network only)", policy)
    checksum_lock = sources.ChecksumLock(lock) if lock else None
    fetch = checksum_lock.fetch if checksum_lock else sources.fetch
    rows = []
    for entry in tqdm(files, desc=f"download {Path(manifest).parent.name}", unit="file", disable=None, leave=False):
        name = entry.get("name") or sources.file_name(entry["url"])
        try:  # a ChecksumError is never a missing file: it stops the download
            got = fetch(entry["url"], Path(directory) / name, entry.get("checksum"), mirror_dir, name=name)
        except DownloadError as error:
            reason = f"{error}" + (f" Licensed file: {manual}" if manual else "")
            if policy == "fail":
                raise DownloadError(reason) from error
            log.warning("missing: %s", reason)
            rows.append(
                {"file": str(Path(directory) / name), "url": entry["url"], "origin": "missing", "reason": reason}
            )
            continue
        log.info("%s: %s (%d bytes, sha256 %s)", name, got.origin, got.bytes, got.sha256)
        rows.append(
            {"file": str(got.path), "url": got.url, "sha256": got.sha256, "bytes": got.bytes, "origin": got.origin}
        )
    if checksum_lock is not None and (pinned := checksum_lock.save()):
        log.info("pinned %d files without a published checksum in %s", pinned, checksum_lock.path)
    write_tsv(manifest, rows, DOWNLOAD_COLUMNS)
    missing = sum(row["origin"] == "missing" for row in rows)
    if missing:
        log.warning("%d of %d files missing (listed in %s)", missing, len(rows), manifest)
    return pd.DataFrame(rows, columns=DOWNLOAD_COLUMNS)


def downloaded_files(downloads: Sequence[str | Path]) -> tuple[list[Path], list[dict]]:
    """The files a dataset's download manifests provide, and skipped rows for the missing ones.

    Manifests written before the ``origin``/``reason`` columns existed are read as all present.
    """
    files, missing = [], []
    for download in downloads:
        frame = read_tsv(download)
        for row in frame.to_dict("records"):
            if row.get("origin") == "missing":
                missing.append(
                    {"entry": Path(row["file"]).name, "source_file": row["url"], "reason": row.get("reason", "missing")}
                )
            else:
                files.append(Path(row["file"]))
    return files, missing


def download_esm(
    name: str,
    model_path: str | Path,
    regression_path: str | Path,
    checksum: str | None,
    mirror: str | None,
    lock: str | Path | None = None,
) -> None:
    """Fetch a fair-esm ESM-2 checkpoint and its contact-regression file (fair-esm's own URLs); fair-esm
    publishes no checksums, so each is pinned by ``checksum`` (the plm's config entry) or the lock file
    (:class:`geoplm.sources.ChecksumLock`).

    Raises:
        ChecksumError, DownloadError: from :func:`geoplm.sources.fetch`.
    """
    from geoplm import esm, sources

    spec = esm.ESM2_MODELS[name]
    mirror_dir = sources.resolve_mirror(mirror)
    checksum_lock = sources.ChecksumLock(lock) if lock else None
    fetch = checksum_lock.fetch if checksum_lock else sources.fetch
    for url, dest, expected in ((spec["url"], model_path, checksum), (spec["regression_url"], regression_path, None)):
        got = fetch(url, dest, expected, mirror_dir)
        log.info("%s: %s (%d bytes, sha256 %s)", Path(dest).name, got.origin, got.bytes, got.sha256)
    if checksum_lock is not None:
        checksum_lock.save()


def download_published(file: str, dest: str | Path, mirror: str | None, lock: str | Path | None = None) -> None:
    """Fetch an authors' published pretrained checkpoint (:data:`geoplm.pretraining.published.PUBLISHED_CHECKPOINTS`,
    by file name) from its Zenodo URL or the mirror; no checksums are published, so the first download is pinned in
    the lock file (:class:`geoplm.sources.ChecksumLock`) and a later one that differs fails.

    Raises:
        GeoplmError: a file name that is not a published checkpoint. ChecksumError, DownloadError: from the fetch.
    """
    from geoplm import sources
    from geoplm.errors import GeoplmError
    from geoplm.pretraining.published import PUBLISHED_CHECKPOINTS

    entry = next((e for e in PUBLISHED_CHECKPOINTS.values() if e["file"] == file), None)
    if entry is None:
        known = ", ".join(sorted(e["file"] for e in PUBLISHED_CHECKPOINTS.values()))
        raise GeoplmError(f"{file}: not a published checkpoint (known: {known})")
    mirror_dir = sources.resolve_mirror(mirror)
    checksum_lock = sources.ChecksumLock(lock) if lock else None
    fetch = checksum_lock.fetch if checksum_lock else sources.fetch
    got = fetch(entry["url"], dest, entry.get("checksum"), mirror_dir)
    log.info("%s: %s (%d bytes, sha256 %s)", file, got.origin, got.bytes, got.sha256)
    if checksum_lock is not None:
        checksum_lock.save()


DEVICES = ("auto", "cuda", "cpu")


def device(setting: str = "auto") -> str:
    """The device a job computes on, from the ``device`` setting.

    Args:
        setting: ``auto`` (a usable GPU if there is one, else the CPU, with a warning when CUDA is visible but
            unusable), ``cuda`` (a usable GPU or an error: a GPU job must not train on the CPU unnoticed) or
            ``cpu``.

    Returns:
        ``"cuda"`` or ``"cpu"`` (recorded as ``device`` in each run's ``metrics.json``).

    Raises:
        GeoplmError: ``cuda`` without a usable GPU (the message gives torch's reason and CUDA_VISIBLE_DEVICES),
            or an unknown setting.
    """
    import torch

    from geoplm.errors import GeoplmError

    if setting not in DEVICES:
        raise GeoplmError(f"config key 'device': {setting!r} is not one of {', '.join(DEVICES)}")
    if setting == "cpu":
        return "cpu"
    reason = None
    if not torch.cuda.is_available():
        reason = f"torch {torch.__version__} sees no CUDA device (built for CUDA {torch.version.cuda})"
    else:
        try:
            (torch.ones(1, device="cuda") + 1).item()
        except Exception as error:  # driver / device errors surface on first use
            reason = f"the GPU is not usable: {type(error).__name__}: {error}"
    if reason is None:
        return "cuda"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
    if setting == "cuda":
        raise GeoplmError(f"device: cuda, but {reason} (CUDA_VISIBLE_DEVICES={visible}); set device: auto or cpu")
    if torch.cuda.is_available():
        log.warning("device auto: %s; computing on the CPU", reason)
    return "cpu"


# --- parse ----------------------------------------------------------------------------------------


def parse_dataset_shard(
    reader: str,
    downloads: Sequence[str | Path],
    records_path: str | Path,
    manifest_path: str | Path,
    skipped_path: str | Path,
    shard: str,
    shards: int = 1,
    subset: str | None = None,
    on_error: str = "skip",
    options: Mapping | None = None,
) -> tuple[int, int]:
    """Run the dataset's reader (:data:`geoplm.datasets.READERS`) on one record shard.

    Writes the records (``.pt``), the shard manifest (one row per record, :data:`MANIFEST_COLUMNS`;
    ``labels`` as JSON) and the skipped report (bad entries, and -- in shard 0 -- the files the
    downloads reported missing). ``structures`` datasets parse per source shard: ``downloads`` is
    that shard's manifest and the reader sees it whole.

    Returns:
        (records written, entries skipped).

    Raises:
        GeoplmError: an unknown reader; the reader's own errors when ``on_error == "fail"``.
    """
    from geoplm import datasets, structure

    read = datasets.get_reader(reader)
    files, missing = downloaded_files(downloads)
    options = dict(options or {})
    if subset is not None:
        options.setdefault("subset", subset)
    if reader == "structures":
        index, count = 0, 1
    else:
        index, count = int(shard), int(shards)
        if index != 0:
            missing = []  # reported once per dataset
    records, skipped = read(files, index, count, options, on_error)
    structure.save_shard(records, records_path)
    write_tsv(manifest_path, [manifest_row(record, shard) for record in records], MANIFEST_COLUMNS)
    write_tsv(skipped_path, [*missing, *skipped], SKIPPED_COLUMNS)
    log.info("shard %s: %d records, %d skipped, %d files missing", shard, len(records), len(skipped), len(missing))
    return len(records), len(skipped) + len(missing)


def parse_structure_files(
    downloads: Sequence[str | Path],
    records_path: str | Path,
    manifest_path: str | Path,
    skipped_path: str | Path,
    shard: str,
    on_error: str = "skip",
) -> tuple[int, int]:
    """Parse every structure file listed in download manifests into one record shard: the
    ``structures`` reader (:func:`geoplm.datasets.generic.read_structures_shard`) through
    :func:`parse_dataset_shard`, as the ``geoplm`` command runs it.

    Writes the shard (``.pt``, list of records, see :mod:`geoplm.structure`), its manifest (one
    row per chain) and its skipped report (one row per file that could not be used, with the
    reason). With ``on_error="fail"`` the first bad file raises instead.

    Returns:
        (records written, files skipped).

    Raises:
        StructureError: a bad file when ``on_error == "fail"``.
    """
    return parse_dataset_shard(
        "structures", downloads, records_path, manifest_path, skipped_path, shard, on_error=on_error
    )


def manifest_row(record: Mapping, shard: str) -> dict:
    """The manifest row of one record; an empty ``split`` is assigned by :func:`gather_records`."""
    import json

    mask = record["residue_mask"]
    return {
        "id": record["id"],
        "split": record.get("split") or "",
        "group": record.get("group") or "",
        "role": record.get("role") or "",
        "source_file": record["source"],
        "chain": record["chain"],
        "length": len(record["sequence"]),
        "num_masked": int((~mask).sum()),
        "shard": shard,
        "labels": json.dumps(record.get("labels") or {}, sort_keys=True),
        "sequence": record["sequence"],
    }


def assign_splits(ids: Sequence[str], fractions: Mapping[str, float], seed: int) -> dict[str, str]:
    """Seeded random split of ``ids`` into train/valid/test by ``fractions``.

    Like ATOM3D's ``split_randomly`` (used by Wu et al. for the toy tasks): shuffle once with the
    seed, then cut at the cumulative fractions. The order of ``ids`` does not matter (sorted first).
    """
    order = sorted(ids)
    random.Random(seed).shuffle(order)
    n = len(order)
    n_train = int(round(fractions["train"] * n))
    n_valid = int(round(fractions["valid"] * n))
    split = {}
    for i, entry in enumerate(order):
        split[entry] = "train" if i < n_train else "valid" if i < n_train + n_valid else "test"
    return split


def gather_records(
    manifests: Sequence[str | Path],
    skipped: Sequence[str | Path],
    manifest_path: str | Path,
    skipped_path: str | Path,
    split: Mapping,
) -> pd.DataFrame:
    """Join shard manifests into the dataset manifest, assigning splits; join skipped reports.

    Args:
        split: ``{"seed": int, "fractions": {"train", "valid", "test"}, "unit": "group" | "id", "override":
            bool}``; entries that already carry a split (from the dataset's own split files) keep it unless
            ``override``; the others are split by ``group`` (all records of a complex or CASP target on the same
            side), else by id (``unit: id``: always by id).

    Raises:
        GeoplmError: the same record id appears in two shards.
    """
    frame = pd.concat([read_tsv(path) for path in manifests], ignore_index=True)
    duplicated = frame["id"][frame["id"].duplicated()]
    if len(duplicated):
        raise GeoplmError(f"record ids appear twice across shards: {', '.join(duplicated[:5])}")
    for column in MANIFEST_COLUMNS:
        if column not in frame:
            frame[column] = "{}" if column == "labels" else ""
    todo = frame["split"] == ""
    if split.get("override"):  # e.g. a sample drawn from one split of its dataset
        todo[:] = True
    if todo.any():
        # the unit of a split is the group (a complex, a CASP target) where records have one, unless the
        # config splits by record (unit: id; e.g. the models of a single CASP target)
        unit = frame["id"] if split.get("unit") == "id" else frame["group"].where(frame["group"] != "", frame["id"])
        fractions = split.get("fractions", {"train": 0.8, "valid": 0.1, "test": 0.1})
        assigned = assign_splits(sorted(set(unit[todo])), fractions, int(split.get("seed", 0)))
        frame.loc[todo, "split"] = unit[todo].map(assigned)
    write_tsv(manifest_path, frame.to_dict("records"), MANIFEST_COLUMNS)
    skipped_rows = pd.concat([read_tsv(path) for path in skipped], ignore_index=True)
    write_tsv(skipped_path, skipped_rows.to_dict("records"), SKIPPED_COLUMNS)
    counts = frame["split"].value_counts().to_dict()
    log.info("%d records (%s), %d skipped", len(frame), counts, len(skipped_rows))
    return frame


# --- graphs ---------------------------------------------------------------------------------------


def build_graphs(records_path: str | Path, graphs_path: str | Path, settings: Mapping) -> int:
    """Build the residue graph of every record of a shard and save them (see ``geoplm.graph``).

    Returns:
        The number of graphs written (records without any Cα have none).
    """
    from geoplm import graph, structure

    records = structure.load_shard(records_path)
    graphs = graph.build_record_graphs(records, **settings)
    atomic.torch_save({"settings": dict(settings), "graphs": graphs}, graphs_path)
    edges = sum(len(g["edge_list"]) for g in graphs.values())
    log.info("%d graphs, %d edges (settings %s)", len(graphs), edges, dict(settings))
    return len(graphs)


# --- embeddings -----------------------------------------------------------------------------------


def build_random_esm(model_path: str | Path, random_init: Mapping) -> None:
    """Write a randomly initialised ESM-2 in fair-esm's checkpoint format (see :mod:`geoplm.esm`)."""
    from geoplm import esm

    model, regression = esm.write_random_esm2_checkpoint(
        model_path,
        num_layers=random_init["num_layers"],
        embed_dim=random_init["embed_dim"],
        attention_heads=random_init["attention_heads"],
        seed=random_init.get("seed", 0),
    )
    log.info("random ESM-2 written to %s and %s", model, regression)


def embed_records(
    records_path: str | Path,
    checkpoint: str | Path,
    index_path: str | Path,
    store_root: str | Path,
    plm: str,
    settings: Mapping,
    device: str = "cpu",
) -> pd.DataFrame:
    """Embed every record of a shard with ESM-2 into the shared store; write the shard's index.

    Only sequences the store lacks are embedded (a sequence shared by two datasets, or by two
    chains, is embedded once), and the checkpoint is loaded only when there is one: a rerun whose
    sequences are all cached loads no model (:func:`geoplm.esm.embed_to_store` with a loader). The index
    lists id, sequence hash, length and the store file. ``settings``: the plm's ``repr_layer``,
    ``toks_per_batch``, ``window``, ``stride``, ``checksum``, and the embedding options ``precision``
    (``float32``; half precision on CUDA only) and ``fused_attention`` (None: fused on the CPU).

    Raises:
        EmbeddingError, ChecksumError: from :mod:`geoplm.esm`.
    """
    from geoplm import esm, structure

    records = structure.load_shard(records_path)
    sequences = {record["id"]: record["sequence"] for record in records}
    store = esm.EmbeddingStore(store_root, plm, settings["repr_layer"])
    log.info("%d records, %d distinct sequences", len(sequences), len(set(sequences.values())))

    def load_model():
        model, alphabet = esm.load_esm2(checkpoint, settings.get("checksum"))
        return model.to(device), alphabet

    paths: dict = {}
    if sequences:
        paths = esm.embed_to_store(
            store,
            load_model,
            None,
            sequences,
            toks_per_batch=settings.get("toks_per_batch", 4096),
            window=settings.get("window", esm.DEFAULT_WINDOW),
            stride=settings.get("stride", esm.DEFAULT_STRIDE),
            device=device,
            precision=settings.get("precision", "float32"),
            fused_attention=settings.get("fused_attention"),
        )
    rows = [
        {"id": rid, "sequence_hash": esm.sequence_hash(seq), "length": len(seq), "path": str(paths[rid])}
        for rid, seq in sequences.items()
    ]
    write_tsv(index_path, rows, ["id", "sequence_hash", "length", "path"])
    return pd.DataFrame(rows)
