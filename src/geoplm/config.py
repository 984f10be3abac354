"""Workflow configuration: validation beyond the JSON schema, and the grids the rules expand.

``config/schema.yaml`` checks each key's type and range (Snakemake's ``validate()``); this module
checks what a schema cannot express -- that names refer to things that exist -- and derives the
shard lists and the (task, model, plm, seed) grid of each table. Every error is a
:class:`~geoplm.errors.ConfigError` naming the offending key.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from geoplm.errors import ConfigError

NO_PLM = "none"
NO_PRETRAIN = "none"
SCHEMA = Path(__file__).resolve().parents[2] / "config" / "schema.yaml"


def merge(base: dict, override: Mapping) -> dict:
    """Recursively update ``base`` with ``override`` (dicts merged, everything else replaced), as
    Snakemake merges ``--configfile`` files over the Snakefile's ``configfile``."""
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def load_config(*paths: str | Path) -> dict:
    """Read YAML config files, later ones merged over earlier ones; validate and check references.

    Raises:
        ConfigError: unreadable YAML, a schema violation (the message names the key path),
            or a dangling reference.
    """
    config: dict = {}
    for path in paths:
        try:
            merge(config, yaml.safe_load(Path(path).read_text()) or {})
        except (OSError, yaml.YAMLError, AttributeError) as error:
            raise ConfigError(f"{path}: cannot read config: {error}") from error
    source = " + ".join(str(path) for path in paths)
    validate_schema(config, source=source)
    check_references(config)
    return config


def validate_schema(config: Any, source: str = "config", schema_path: Path = SCHEMA) -> None:
    """Validate ``config`` against ``config/schema.yaml``; fill in the schema's defaults.

    Raises:
        ConfigError: naming the key path (``tasks.toy.epochs``) and the violation.
    """
    import jsonschema

    schema = yaml.safe_load(schema_path.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        error = errors[0]
        key = ".".join(str(part) for part in error.absolute_path) or "(top level)"
        raise ConfigError(f"{source}: invalid config key '{key}': {error.message}")


def _require(config: Mapping, section: str, name: str, where: str) -> None:
    if name not in config.get(section, {}):
        known = ", ".join(sorted(config.get(section, {}))) or "none"
        singular = section[:-1] if section.endswith("s") else f"{section} entry"
        raise ConfigError(f"config key '{where}': no {singular} named '{name}' (known: {known})")


def check_references(config: Mapping) -> None:
    """Check that every name used in the config is defined.

    Raises:
        ConfigError: e.g. ``config key 'tasks.toy.dataset': no dataset named 'x' (known: ...)``.
    """
    for name, dataset in config["datasets"].items():
        _require(config, "sources", dataset["source"], f"datasets.{name}.source")
        if dataset["reader"] == "structures" and "shards" in dataset:
            shards = config["sources"][dataset["source"]].get("shards", 1)
            if dataset["shards"] != shards:
                raise ConfigError(
                    f"config key 'datasets.{name}.shards': a 'structures' dataset has its source's "
                    f"shards ({shards}); set sources.{dataset['source']}.shards instead"
                )
    for name, plm in config.get("plms", {}).items():
        if "random_init" in plm and not name.startswith("esm2"):
            raise ConfigError(
                f"config key 'plms.{name}': a random_init ESM-2 must be named 'esm2...' "
                "(fair-esm chooses the ESM-2 loader by that prefix)"
            )
    for name, model in config["models"].items():
        if "graph" in model:
            _require(config, "graphs", model["graph"], f"models.{name}.graph")
    for name, task in config["tasks"].items():
        _require(config, "datasets", task["dataset"], f"tasks.{name}.dataset")
    for name, entry in config.get("pretrained", {}).items():
        _require(config, "tasks", entry["task"], f"pretrained.{name}.task")
    for name, table in config["tables"].items():
        for model, plm, pretrain in table_rows(table):
            _require(config, "models", model, f"tables.{name}.models")
            if plm != NO_PLM:
                _require(config, "plms", plm, f"tables.{name}.plms")
            if pretrain != NO_PRETRAIN:
                _require(config, "pretrained", pretrain, f"tables.{name}.rows")
        for i, column in enumerate(table["columns"]):
            _require(config, "tasks", column["task"], f"tables.{name}.columns[{i}].task")
            for model, task in column.get("tasks", {}).items():
                _require(config, "tasks", task, f"tables.{name}.columns[{i}].tasks.{model}")


def graph_settings(config: Mapping, name: str) -> dict:
    """The settings of a ``graphs`` entry, the defaults of its kind (:data:`geoplm.graph.GRAPH_KINDS`) filled in.

    ``kind: gearnet`` (default): the keyword arguments of :func:`geoplm.graph.build_gearnet_graph`
    (no ``kind`` key, GearNet Sec. 3.1 defaults filled in). ``kind: radius`` / ``knn``: Wu et al.'s
    Cα graphs, ``{"kind", "radius", "max_num_neighbors"}`` (8 Å) or ``{"kind", "k"}`` (10).
    """
    from geoplm.graph import GRAPH_KINDS

    entry = dict(config.get("graphs", {}).get(name, {}))
    kind = entry.pop("kind", "gearnet")
    if kind == "knn" and "knn_k" in entry:  # the gearnet key name, accepted for a kNN graph's k
        entry.setdefault("k", entry.pop("knn_k"))
    defaults = GRAPH_KINDS[kind][1]
    settings = {**defaults, **{key: value for key, value in entry.items() if key in defaults}}
    return settings if kind == "gearnet" else {"kind": kind, **settings}


def cached_graph(config: Mapping, model: str) -> str | None:
    """The ``graphs`` entry whose edge lists are cached for ``model`` (GearNet graphs only; Wu et al.'s
    Cα graphs are built per batch), or None."""
    name = config["models"][model].get("graph")
    if not name or "kind" in graph_settings(config, name):
        return None
    return name


def shard_ids(count: int) -> list[str]:
    """Shard wildcard values ``["0000", "0001", ...]`` for ``count`` shards."""
    return [f"{i:04d}" for i in range(count)]


def chunk(items: list, count: int, index: int) -> list:
    """The ``index``-th of ``count`` contiguous, near-equal chunks of ``items`` (like numpy.array_split).

    Raises:
        ConfigError: ``index`` out of range.
    """
    if not 0 <= index < count:
        raise ConfigError(f"shard {index} out of range for {count} shards")
    size, extra = divmod(len(items), count)
    start = index * size + min(index, extra)
    return items[start : start + size + (index < extra)]


def source_shards(config: Mapping, source: str) -> list[str]:
    """Download shards of a source."""
    return shard_ids(config["sources"][source].get("shards", 1))


def source_shard_files(config: Mapping, source: str, shard: str) -> list[dict]:
    """The file entries (``url``, ``checksum``) downloaded by one shard of a source."""
    spec = config["sources"][source]
    return chunk(list(spec["files"]), spec.get("shards", 1), int(shard))


def dataset_shards(config: Mapping, dataset: str) -> list[str]:
    """Record shards of a dataset: its source's shards for structure files, else ``shards``."""
    spec = config["datasets"][dataset]
    if spec["reader"] == "structures":
        return source_shards(config, spec["source"])
    return shard_ids(spec.get("shards", 1))


def available_datasets(config: Mapping, raw_dir: str | Path = "resources/raw") -> list[str]:
    """The datasets the default target prepares.

    Without a mirror (``mirror`` key or ``$GEOPLM_MIRROR``): all of them. With one: those whose
    source has at least one file in the mirror (looked up by name, as downloads do) or already
    downloaded under ``raw_dir/<source>/files/`` -- the mirror "holds samples" of them.
    """
    from geoplm import sources

    mirror = sources.resolve_mirror(config.get("mirror"))
    if mirror is None:
        return list(config["datasets"])
    available = {}
    for spec in config["datasets"].values():
        source = spec["source"]
        if source not in available:
            files = config["sources"][source]["files"]
            available[source] = any(
                sources.find_in_mirror(
                    mirror, entry.get("name") or sources.file_name(entry["url"]), entry.get("checksum")
                )
                is not None
                or (Path(raw_dir) / source / "files" / (entry.get("name") or sources.file_name(entry["url"]))).exists()
                for entry in files
            )
    return [name for name, spec in config["datasets"].items() if available[spec["source"]]]


#: model types that hold an ESM-2 half (:class:`geoplm.models.fusion.ESMModule`): ESM-2 alone and the ESM
#: fusions. They accept ``freeze_esm`` (stored embeddings, or ESM-2 fine-tuned inside the model).
ESM_TYPES = ("esm", "esm_gearnet", "esm_cdconv", "esm_gvp")
#: model types that need ESM-2 features: no run with ``plm: none``
NEEDS_PLM = ESM_TYPES


def finetunes_esm(model: Mapping) -> bool:
    """Whether a ``models`` entry runs ESM-2 inside itself and fine-tunes it (a type of :data:`ESM_TYPES` with
    ``freeze_esm: false``): its training runs need the plm's checkpoint, not the stored embeddings."""
    return model.get("type") in ESM_TYPES and not model.get("freeze_esm", True)


def table_rows(spec: Mapping) -> list[tuple[str, str, str]]:
    """The (model, plm, pretrain) rows of a ``tables`` entry: its explicit ``rows`` (``pretrain``: a
    ``pretrained`` entry, :data:`NO_PRETRAIN` by default), else every model with every plm, trained from scratch."""
    if spec.get("rows"):
        return [(row["model"], row["plm"], row.get("pretrain", NO_PRETRAIN)) for row in spec["rows"]]
    return [(model, plm, NO_PRETRAIN) for model in spec["models"] for plm in spec["plms"]]


def pretrain_run(config: Mapping, job: Mapping) -> dict[str, Any] | None:
    """The run whose weights a training job starts from (its ``pretrain`` names a ``pretrained`` entry: the
    entry's task with the job's model, plm and seed, trained from scratch), or None for :data:`NO_PRETRAIN`.

    Raises:
        ConfigError: an unknown ``pretrained`` entry.
    """
    if job["pretrain"] == NO_PRETRAIN:
        return None
    entry = config.get("pretrained", {}).get(job["pretrain"])
    if entry is None:
        raise ConfigError(f"pretrain '{job['pretrain']}' is not an entry of 'pretrained' in the config")
    return {**job, "task": entry["task"], "pretrain": NO_PRETRAIN}


def column_task(column: Mapping, model: str) -> str:
    """The task a table column runs for a row's model: ``tasks[model]`` where the column maps the model to its
    own task entry (the reference trains that model family with other settings), else ``task``."""
    return str(column.get("tasks", {}).get(model, column["task"]))


def table_jobs(config: Mapping, table: str) -> list[dict[str, Any]]:
    """Every training run a table needs: dicts with task, model, plm, pretrain and seed.

    Combinations that do not exist are left out: an ESM model (:data:`NEEDS_PLM`) without a plm.
    """
    spec = config["tables"][table]
    jobs: dict[tuple, dict[str, Any]] = {}
    for model, plm, pretrain in table_rows(spec):
        if plm == NO_PLM and config["models"][model]["type"] in NEEDS_PLM:
            continue
        for column in spec["columns"]:
            task = column_task(column, model)
            for seed in config["seeds"]:
                job = {"task": task, "model": model, "plm": plm, "pretrain": pretrain, "seed": seed}
                jobs.setdefault(tuple(job.values()), job)
    return list(jobs.values())
