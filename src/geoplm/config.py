"""Workflow configuration: reading, validation, and the grids the rules expand.

:func:`check_config` is what the Snakefile and :func:`load_config` run on the merged config before anything else:

1. :func:`check_entries`: every ``models`` entry by its ``type``, ``tasks`` entry by its ``kind`` and ``graphs``
   entry by its ``kind`` has only the keys that type / kind takes -- the sets the code itself uses
   (:data:`geoplm.models.zoo.MODEL_KEYS`, :meth:`geoplm.tasks.base.Task.known_settings`,
   :data:`geoplm.graph.GRAPH_KINDS`) -- and every ``plms`` entry one of ``checkpoint`` / ``random_init``;
2. :func:`validate_schema`: ``config/schema.yaml`` (each key's type and range; no unknown key anywhere);
3. :func:`check_references`: what a schema cannot express -- that names refer to things that exist.

Every error is a :class:`~geoplm.errors.ConfigError` naming the key path and the reason, and, given the config
files, the file and line that set the key (:func:`locate`). :func:`read_yaml` names the file and line of a YAML
syntax error or a duplicate key. The rest of the module derives the shard lists and the (task, model, plm, seed)
grid of each table.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from geoplm.errors import ConfigError

NO_PLM = "none"
NO_PRETRAIN = "none"
SCHEMA = Path(__file__).resolve().parents[2] / "config" / "schema.yaml"
#: other names a graph kind accepts for one of its settings (``graphs`` entry key -> the builder's)
GRAPH_KEY_ALIASES: dict[str, dict[str, str]] = {"knn": {"knn_k": "k"}}

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _UniqueKeyLoader(_Loader):
    """YAML's safe loader that rejects a key given twice in one mapping (PyYAML keeps the last silently); keys
    that a ``<<`` merge brings in may be overridden, as YAML intends."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                    continue
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"the key '{key_node.value}' is given twice in one mapping (first at line "
                        f"{seen[key_node.value]}; only the last would count)",
                        key_node.start_mark,
                    )
                seen[key_node.value] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def display_path(path: str | Path) -> str:
    """``path`` relative to the working directory when it lies below it (Snakemake makes ``--configfile`` paths
    absolute; messages name them as the user typed them, mostly)."""
    path = str(path)
    if os.path.isabs(path):
        relative = os.path.relpath(path)
        if not relative.startswith(".."):
            return relative
    return path


def _char_at(path: str | Path, line: int, column: int) -> str:
    """The character at a 0-based line and column of a text file ("" where there is none)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        return lines[line][column] if line < len(lines) and column < len(lines[line]) else ""
    except (OSError, UnicodeDecodeError):
        return ""


def read_yaml(path: str | Path) -> dict:
    """One YAML config file as a dict.

    Raises:
        ConfigError: the file cannot be read, is not valid YAML (naming the file, line and column), has a key twice
            in one mapping, or is not a mapping.
    """
    name = str(path)
    try:
        with open(path, encoding="utf-8") as stream:
            data = yaml.load(stream, Loader=_UniqueKeyLoader)
    except OSError as error:
        raise ConfigError(f"{name}: cannot read config file: {error.strerror or error}") from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{name}, line {mark.line + 1}, column {mark.column + 1}" if mark else name
        reason = error.problem or "invalid YAML"
        context_mark = error.context_mark
        if error.context:
            context = error.context
            if context_mark is not None and (
                mark is None or (context_mark.line, context_mark.column) != (mark.line, mark.column)
            ):
                context += f" at line {context_mark.line + 1}, column {context_mark.column + 1}"
            reason += f" ({context})"
        if mark is not None and _char_at(path, mark.line, mark.column) == "\t":
            reason += "; YAML indents with spaces, not tabs"
        raise ConfigError(f"{where}: invalid YAML: {reason}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{name}: invalid YAML: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{name}: a config file is a mapping of keys (sources, models, ...), not {type(data).__name__}"
        )
    return data


def merge(base: dict, override: Mapping) -> dict:
    """Recursively update ``base`` with ``override`` (dicts merged, everything else replaced), as
    Snakemake merges ``--configfile`` files over the Snakefile's ``configfile``."""
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


#: the download catalogue (``sources``: URLs and checksums), kept apart from the settings as snakemake-workflows
#: keep sample sheets apart; read before ``config/config.yaml`` (by the Snakefile and :func:`load_config`)
CATALOGUE = "config/sources.yaml"


def load_config(*paths: str | Path, catalogue: bool = True) -> dict:
    """Read YAML config files, later ones merged over earlier ones (as Snakemake merges ``--configfile``), and
    check the result (:func:`check_config`). With ``catalogue``, the download catalogue beside the first file
    (``sources.yaml``, :data:`CATALOGUE`) is read first, as the Snakefile reads it.

    Raises:
        ConfigError: a file that is not valid YAML (naming the file and line), or an invalid config (naming the
            key path, and the file and line that set it).
    """
    files = [Path(path) for path in paths]
    if catalogue and files and (files[0].parent / Path(CATALOGUE).name).exists():
        files.insert(0, files[0].parent / Path(CATALOGUE).name)
    config: dict = {}
    for path in files:
        merge(config, read_yaml(path))
    check_config(config, files=files)
    return config


def key_path(key: Sequence) -> str:
    """A key path as config messages write it: ``tables.wu_mqa.rows.0.plm``."""
    return ".".join(str(part) for part in key) or "(top level)"


def check_config(config: Any, files: Sequence[str | Path] = ()) -> None:
    """Check a merged config: :func:`check_entries`, :func:`validate_schema`, :func:`check_references` (in that
    order; the first error is raised). The schema's defaults are not filled in (Snakemake's ``validate()`` does).

    Args:
        config: the merged config.
        files: the config files it was merged from, in order; an error names the last one that sets the key.

    Raises:
        ConfigError: ``<file>, line <n>: config key '<key path>': <reason>``.
    """
    try:
        check_entries(config)
        error = schema_error(config)
        if error is not None:
            raise error
        check_references(config)
    except ConfigError as error:
        if not files:
            raise
        where = locate(error.key, files) if error.key is not None else None
        where = where or " + ".join(str(path) for path in files)
        raise ConfigError(f"{where}: {error}", key=error.key) from None


@contextmanager
def exit_on_config_error(prefix: str = "geoplm: invalid config") -> Iterator[None]:
    """Turn a :class:`ConfigError` into ``SystemExit(message)``: under Snakemake the message alone reaches the
    user, without a traceback, and the workflow stops with status 1."""
    try:
        yield
    except ConfigError as error:
        raise SystemExit(f"{prefix}: {error}") from None


def locate(key: Sequence, files: Sequence[str | Path]) -> str | None:
    """``"<file>, line <n>"`` of ``key`` (a key path, as parts) in the last of ``files`` that sets it (the one
    whose value wins the merge), or None when none of them does (e.g. a key that is missing)."""
    for path in reversed(list(files)):
        try:
            with open(path, encoding="utf-8") as stream:
                node = yaml.compose(stream, Loader=_Loader)
        except (OSError, yaml.YAMLError):
            continue
        line = _find_line(node, list(key))
        if line is not None:
            return f"{path}, line {line}"
    return None


def _mapping_item(node: yaml.MappingNode, part: Any) -> tuple[yaml.Node, yaml.Node] | None:
    """The (key node, value node) of ``part`` in a YAML mapping node: its own key, else one a ``<<`` merge brings."""
    for key_node, value_node in reversed(node.value):
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE_TAG and key_node.value == str(part):
            return key_node, value_node
    for key_node, value_node in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag == _MERGE_TAG:
            merged = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for source in merged:
                if isinstance(source, yaml.MappingNode):
                    item = _mapping_item(source, part)
                    if item is not None:
                        return item
    return None


def _find_line(node: yaml.Node | None, key: list) -> int | None:
    if node is None or not key:
        return None
    mark = None
    for part in key:
        if isinstance(node, yaml.MappingNode):
            item = _mapping_item(node, part)
            if item is None:
                return None
            mark, node = item[0].start_mark, item[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            mark = node.start_mark
        else:
            return None
    return mark.line + 1


def _entries(config: Any, section: str) -> list[tuple[str, Mapping]]:
    """The (name, entry) pairs of a section that are mappings (anything else is the schema's to report)."""
    entries = config.get(section) if isinstance(config, Mapping) else None
    if not isinstance(entries, Mapping):
        return []
    return [(str(name), entry) for name, entry in entries.items() if isinstance(entry, Mapping)]


def _check_known(entry: Mapping, known: set | frozenset, where: tuple, what: str) -> None:
    unknown = [key for key in entry if key not in known]
    if unknown:
        key = (*where, unknown[0])
        raise ConfigError(
            f"config key '{key_path(key)}': unknown key for {what} (known: {', '.join(sorted(known))})", key=key
        )


def graph_keys(kind: str) -> frozenset[str]:
    """Every key a ``graphs`` entry of ``kind`` may have: ``kind``, the settings of
    :data:`geoplm.graph.GRAPH_KINDS` (their defaults' keys) and :data:`GRAPH_KEY_ALIASES`."""
    from geoplm.graph import GRAPH_KINDS

    return frozenset({"kind", *GRAPH_KINDS[kind][1], *GRAPH_KEY_ALIASES.get(kind, {})})


def check_entries(config: Any) -> None:
    """Check every ``models`` entry's keys against its ``type`` (:data:`geoplm.models.zoo.MODEL_KEYS`), every
    ``tasks`` entry's against its ``kind`` (:func:`geoplm.tasks.task_settings`), every ``graphs`` entry's against
    its ``kind`` (:func:`graph_keys`), and that every ``plms`` entry has one of ``checkpoint`` / ``random_init``.
    Entries of an unknown or missing type / kind are left to the schema.

    Raises:
        ConfigError: e.g. ``config key 'models.gearnet.hiden_dims': unknown key for type 'gearnet' (known: ...)``.
    """
    from geoplm.graph import GRAPH_KINDS
    from geoplm.models.zoo import MODEL_KEYS
    from geoplm.tasks import TASKS, task_settings

    for name, entry in _entries(config, "models"):
        kind = entry.get("type")
        if isinstance(kind, str) and kind in MODEL_KEYS:
            _check_known(entry, MODEL_KEYS[kind], ("models", name), f"type '{kind}'")
    for name, entry in _entries(config, "tasks"):
        kind = entry.get("kind")
        if isinstance(kind, str) and kind in TASKS:
            _check_known(entry, task_settings(kind), ("tasks", name), f"task kind '{kind}'")
    from geoplm.pretraining import PRETRAINING_TASKS, pretraining_class

    for name, entry in _entries(config, "pretraining"):
        kind = entry.get("kind")
        if isinstance(kind, str) and kind in PRETRAINING_TASKS:
            known = (pretraining_class(kind).known_settings() - {"dataset"}) | {"model_settings"}
            _check_known({k: v for k, v in entry.items() if v is not None}, known, ("pretraining", name),
                         f"pretraining kind '{kind}'")  # fmt: skip
            for model, settings in (entry.get("model_settings") or {}).items():
                if isinstance(settings, Mapping):
                    where = ("pretraining", name, "model_settings", model)
                    _check_known(settings, known - {"model_settings", "kind"}, where, f"pretraining kind '{kind}'")
    for name, entry in _entries(config, "graphs"):
        kind = entry.get("kind", "gearnet")
        if isinstance(kind, str) and kind in GRAPH_KINDS:
            _check_known(entry, graph_keys(kind), ("graphs", name), f"graph kind '{kind}'")
    for name, entry in _entries(config, "plms"):
        given = [key for key in ("checkpoint", "random_init") if key in entry]
        if len(given) != 1:
            reason = "has both checkpoint and random_init" if given else "has neither checkpoint nor random_init"
            raise ConfigError(
                f"config key 'plms.{name}': {reason}; give one (checkpoint: a fair-esm ESM-2 name; random_init: "
                "a randomly initialised ESM-2 of num_layers, embed_dim, attention_heads)",
                key=("plms", name),
            )


def schema_error(config: Any, schema_path: Path = SCHEMA) -> ConfigError | None:
    """The first violation of ``config/schema.yaml`` as a :class:`ConfigError` naming the key path (an unknown key
    first: it is the likely cause of the others), or None. The schema's defaults are not filled in."""
    import jsonschema

    schema = yaml.load(schema_path.read_text(), Loader=_Loader)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(
        validator.iter_errors(config),
        key=lambda e: (e.validator != "additionalProperties", [str(part) for part in e.absolute_path]),
    )
    if not errors:
        return None
    error = errors[0]
    key = list(error.absolute_path)
    message = error.message
    if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
        known = error.schema.get("properties", {})
        patterns = error.schema.get("patternProperties", {})
        unexpected = [k for k in error.instance if k not in known and not any(re.search(p, str(k)) for p in patterns)]
        if unexpected:
            key.append(unexpected[0])
            message = f"unknown key (known: {', '.join(sorted(known)) or 'none'})"
    return ConfigError(f"config key '{key_path(key)}': {message}", key=tuple(key))


def validate_schema(config: Any, source: str = "config", schema_path: Path = SCHEMA) -> None:
    """Validate ``config`` against ``config/schema.yaml`` (:func:`schema_error`); the schema's defaults are not
    filled in.

    Raises:
        ConfigError: ``<source>: config key '<key path>': <violation>`` (``tasks.toy.epochs``).
    """
    error = schema_error(config, schema_path)
    if error is not None:
        raise ConfigError(f"{source}: {error}", key=error.key)


def _require(config: Mapping, section: str, name: str, where: tuple) -> None:
    if name not in config.get(section, {}):
        known = ", ".join(sorted(config.get(section, {}))) or "none"
        singular = section[:-1] if section.endswith("s") else f"{section} entry"
        raise ConfigError(f"config key '{key_path(where)}': no {singular} named '{name}' (known: {known})", key=where)


def check_references(config: Mapping) -> None:
    """Check that every name used in the config is defined.

    Raises:
        ConfigError: e.g. ``config key 'tasks.toy.dataset': no dataset named 'x' (known: ...)``.
    """
    for name, dataset in config["datasets"].items():
        _require(config, "sources", dataset["source"], ("datasets", name, "source"))
        if dataset["reader"] == "structures" and "shards" in dataset:
            shards = config["sources"][dataset["source"]].get("shards", 1)
            if dataset["shards"] != shards:
                raise ConfigError(
                    f"config key 'datasets.{name}.shards': a 'structures' dataset has its source's "
                    f"shards ({shards}); set sources.{dataset['source']}.shards instead",
                    key=("datasets", name, "shards"),
                )
    for name, plm in config.get("plms", {}).items():
        if "random_init" in plm and not name.startswith("esm2"):
            raise ConfigError(
                f"config key 'plms.{name}': a random_init ESM-2 must be named 'esm2...' "
                "(fair-esm chooses the ESM-2 loader by that prefix)",
                key=("plms", name),
            )
    for name, model in config["models"].items():
        if "graph" in model:
            _require(config, "graphs", model["graph"], ("models", name, "graph"))
    for name, task in config["tasks"].items():
        _require(config, "datasets", task["dataset"], ("tasks", name, "dataset"))
    for name, entry in config.get("pretrained", {}).items():
        if "task" in entry:
            _require(config, "tasks", entry["task"], ("pretrained", name, "task"))
        elif "pretraining" in entry:
            _require(config, "pretraining", entry["pretraining"], ("pretrained", name, "pretraining"))
        else:
            from geoplm.pretraining.published import PUBLISHED_CHECKPOINTS

            if entry["published"] not in PUBLISHED_CHECKPOINTS:
                raise ConfigError(
                    f"config key 'pretrained.{name}.published': no published checkpoint named '{entry['published']}' "
                    f"(known: {', '.join(PUBLISHED_CHECKPOINTS)})",
                    key=("pretrained", name, "published"),
                )
    for name, entry in config.get("pretraining", {}).items():
        for i, dataset in enumerate(entry["corpus"]):
            _require(config, "datasets", dataset, ("pretraining", name, "corpus", i))
    for name, table in config["tables"].items():
        if table.get("rows"):  # as table_rows reads a table
            for i, row in enumerate(table["rows"]):
                _require(config, "models", row["model"], ("tables", name, "rows", i, "model"))
                if row["plm"] != NO_PLM:
                    _require(config, "plms", row["plm"], ("tables", name, "rows", i, "plm"))
                if row.get("pretrain", NO_PRETRAIN) != NO_PRETRAIN:
                    _require(config, "pretrained", row["pretrain"], ("tables", name, "rows", i, "pretrain"))
        else:
            for i, model in enumerate(table["models"]):
                _require(config, "models", model, ("tables", name, "models", i))
            for i, plm in enumerate(table["plms"]):
                if plm != NO_PLM:
                    _require(config, "plms", plm, ("tables", name, "plms", i))
        for i, column in enumerate(table["columns"]):
            _require(config, "tasks", column["task"], ("tables", name, "columns", i, "task"))
            for model, task in column.get("tasks", {}).items():
                _require(config, "tasks", task, ("tables", name, "columns", i, "tasks", model))


def graph_settings(config: Mapping, name: str) -> dict:
    """The settings of a ``graphs`` entry, the defaults of its kind (:data:`geoplm.graph.GRAPH_KINDS`) filled in.

    ``kind: gearnet`` (default): the keyword arguments of :func:`geoplm.graph.build_gearnet_graph`
    (no ``kind`` key, GearNet Sec. 3.1 defaults filled in). ``kind: radius`` / ``knn``: Wu et al.'s
    Cα graphs, ``{"kind", "radius", "max_num_neighbors"}`` (8 Å) or ``{"kind", "k"}`` (10).
    """
    from geoplm.graph import GRAPH_KINDS

    entry = dict(config.get("graphs", {}).get(name, {}))
    kind = entry.pop("kind", "gearnet")
    for alias, key in GRAPH_KEY_ALIASES.get(kind, {}).items():  # knn: gearnet's knn_k, accepted for k
        if alias in entry:
            entry.setdefault(key, entry.pop(alias))
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
    entry = _pretrained_entry(config, job)
    if entry is None or "task" not in entry:
        return None
    return {**job, "task": entry["task"], "pretrain": NO_PRETRAIN}


def _pretrained_entry(config: Mapping, job: Mapping) -> Mapping | None:
    """The ``pretrained`` entry a job's ``pretrain`` names (None for :data:`NO_PRETRAIN`).

    Raises:
        ConfigError: an unknown entry.
    """
    if job["pretrain"] == NO_PRETRAIN:
        return None
    entry = config.get("pretrained", {}).get(job["pretrain"])
    if entry is None:
        raise ConfigError(f"pretrain '{job['pretrain']}' is not an entry of 'pretrained' in the config")
    return entry


def pretrain_start(config: Mapping, job: Mapping) -> dict[str, Any] | None:
    """Where a training job's starting weights come from (its ``pretrain`` names a ``pretrained`` entry), or None
    for :data:`NO_PRETRAIN`:

    * ``{"from": "task", "run": <job>, "part": "model" | "encoder"}``: a finished run of the entry's ``task``
      (:func:`pretrain_run`);
    * ``{"from": "pretraining", "pretraining": <name>, "part": "encoder_state"}``: the encoder a ``pretraining``
      entry trained for the job's model and plm (``results/pretrain/{model}/{plm}/{name}/encoder.pt``);
    * ``{"from": "published", "checkpoint": <file>, "part": "published"}``: an authors' published checkpoint
      (:data:`geoplm.pretraining.published.PUBLISHED_CHECKPOINTS`).

    Raises:
        ConfigError: an unknown ``pretrained`` entry.
    """
    entry = _pretrained_entry(config, job)
    if entry is None:
        return None
    if "pretraining" in entry:
        return {"from": "pretraining", "pretraining": entry["pretraining"], "part": "encoder_state"}
    if "published" in entry:
        from geoplm.pretraining.published import PUBLISHED_CHECKPOINTS

        return {
            "from": "published",
            "checkpoint": PUBLISHED_CHECKPOINTS[entry["published"]]["file"],
            "part": "published",
        }
    return {"from": "task", "run": pretrain_run(config, job), "part": entry.get("part", "model")}


def output_prefix(config: Mapping) -> str:
    """The prefix of every workflow output path: ``""`` for ``outdir`` empty or ``.`` (the workflow's folder), else
    ``"<outdir>/"`` (config/demo.yaml: ``demo/``, so the demo's resources, results, logs and benchmarks never mix
    with a full run's).

    Raises:
        ConfigError: an absolute ``outdir`` or one that leaves the workflow's folder.
    """
    outdir = str(config.get("outdir") or "").strip().rstrip("/")
    if outdir in ("", "."):
        return ""
    path = Path(outdir)
    if path.is_absolute() or ".." in path.parts:
        raise ConfigError(
            f"config key 'outdir': {outdir!r} must be a relative folder inside the workflow", key=("outdir",)
        )
    return f"{path.as_posix()}/"


def pretraining_spec(config: Mapping, name: str, model: str) -> dict[str, Any]:
    """The settings of ``pretraining`` entry ``name`` for ``model``: the entry, with its ``model_settings[model]``
    applied and null settings (an anchor's keys a kind does not take) dropped.

    Raises:
        ConfigError: no such entry.
    """
    entry = config.get("pretraining", {}).get(name)
    if entry is None:
        raise ConfigError(f"no pretraining entry named '{name}' (known: {', '.join(config.get('pretraining', {}))})")
    spec = {k: v for k, v in entry.items() if k != "model_settings"}
    spec.update(entry.get("model_settings", {}).get(model, {}))
    return {k: v for k, v in spec.items() if v is not None}


def column_applies(column: Mapping, model: str) -> bool:
    """Whether a table column runs for a row's model (its ``models``, every model when absent)."""
    return "models" not in column or model in column["models"]


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
            if not column_applies(column, model):
                continue
            task = column_task(column, model)
            for seed in config["seeds"]:
                job = {"task": task, "model": model, "plm": plm, "pretrain": pretrain, "seed": seed}
                jobs.setdefault(tuple(job.values()), job)
    return list(jobs.values())
