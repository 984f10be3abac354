"""Readers of the three papers' datasets, one module per dataset family.

Every reader is a function with one signature, named in :data:`READERS` and chosen by a dataset's
``reader`` key in the config::

    read_shard(files, shard, num_shards, options, on_error) -> (records, skipped)

Args:
    files: ``list[pathlib.Path]``, every file the dataset's source downloaded (all source shards, in
        the order of the source's ``files`` list; files the mirror lacked are not in it).
    shard: this record shard's index, ``0 <= shard < num_shards``.
    num_shards: the dataset's number of record shards; entries are dealt to shards
        deterministically (the same entry always lands in the same shard), every entry exactly once.
    options: the dataset's ``options`` mapping from the config (reader-specific; unknown or bad keys
        raise :class:`geoplm.errors.ConfigError` naming ``datasets.<name>.options.<key>``).
    on_error: ``"skip"`` (a bad entry becomes a row of ``skipped``) or ``"fail"`` (it raises).

Returns:
    records: residue-level records as :func:`geoplm.structure.parse_structure` makes them (every key
        of :data:`geoplm.structure.RECORD_KEYS`), plus, where the dataset has them:
        ``split`` (str: train/valid/test or a named test set; ``""`` = assigned later by seed),
        ``labels`` (a JSON-serialisable dict, e.g. ``{"ec": [...]}``, ``{"gdt_ts": 0.71}``,
        ``{"neg_log_affinity": 6.2}``), ``group`` (str: the complex, pair or CASP target the record
        belongs to), ``role`` (str: ``receptor``/``ligand``/``complex``/``model``/``native``/
        ``protein``), and extra tensors (``ligand`` for PDBbind, ``interface`` masks for docking).
        Extra values must be tensors, str, int, float, bool, None or lists/dicts of them so that
        ``torch.load(weights_only=True)`` reads the shard.
    skipped: one dict per bad entry: ``{"entry": ..., "source_file": ..., "reason": ...}``.

Raises:
    GeoplmError subclasses naming the file/entry and the reason, when ``on_error == "fail"``;
    ConfigError for bad options always.
"""

from __future__ import annotations

from collections.abc import Callable

from geoplm.registry import registered

#: reader name -> "module:function" (imported on first use, so that RDKit or lmdb load only when needed)
READERS: dict[str, str] = {
    "structures": "geoplm.datasets.generic:read_structures_shard",
    "atom3d_lmdb": "geoplm.datasets.atom3d:read_shard",
    "labelled_chains": "geoplm.datasets.chains:read_shard",
    "db5": "geoplm.datasets.docking:read_db5_shard",
    "dips": "geoplm.datasets.docking:read_dips_shard",
    "pdbbind": "geoplm.datasets.pdbbind:read_shard",
    "casp": "geoplm.datasets.casp:read_shard",
    "alphafold": "geoplm.datasets.alphafold:read_shard",
}


def get_reader(name: str) -> Callable:
    """The reader function registered as ``name`` in :data:`READERS`.

    Raises:
        GeoplmError: an unknown reader name.
    """
    from geoplm.errors import GeoplmError

    return registered(READERS, name, "dataset reader", GeoplmError, sort_known=True)
