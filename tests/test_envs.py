"""Every rule's conda environment holds what its script imports.

For each rule of the workflow with a ``conda:`` env file and a ``script:``, the script's import closure is computed
statically: the script's imports, then every ``geoplm`` module it imports, transitively, with imports inside
functions counted (the lazy imports that keep RDKit or lmdb out of a module's import time) and with the modules
that registries name in strings (``"geoplm.datasets.pdbbind:read_shard"``, loaded by ``importlib``). Its
third-party top-level modules are mapped to conda-forge package names (``torch`` -> ``pytorch``, ``esm`` ->
``fair-esm`` from pip, ...) and must each be in the env file, pinned, at a version that satisfies
``pyproject.toml``'s requirement. A new import without its env entry fails here.

PyTorch: the CPU-only rules' envs pin conda-forge's CPU build; the GPU rules' envs (``envs/train.yaml``,
``envs/esm.yaml``) the CUDA build and their ``-cpu`` twins the CPU build (``GEOPLM_TORCH=cpu``, README).
"""

from __future__ import annotations

import ast
import os
import re
import sys
import textwrap
import tomllib
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"

#: import name -> (conda-forge package, installed from pip inside the env)
PACKAGES: dict[str, tuple[str, bool]] = {
    "torch": ("pytorch", False),
    "esm": ("fair-esm", True),  # conda-forge's fair-esm pulls in ESMFold's stack; the PyPI wheel has no deps
    "numpy": ("numpy", False),
    "pandas": ("pandas", False),
    "yaml": ("pyyaml", False),
    "scipy": ("scipy", False),
    "sklearn": ("scikit-learn", False),
    "Bio": ("biopython", False),
    "rdkit": ("rdkit", False),
    "lmdb": ("python-lmdb", False),
    "numba": ("numba", False),
    "tqdm": ("tqdm", False),
    "jsonschema": ("jsonschema", False),
    "openpyxl": ("openpyxl", False),
    "matplotlib": ("matplotlib-base", False),
    "pyarrow": ("pyarrow", False),
    "PIL": ("pillow", False),
    "msgpack": ("msgpack-python", False),  # optional (ATOM3D LMDBs in msgpack)
    "packaging": ("packaging", False),
}

#: pyproject distribution name -> conda-forge package name, where they differ
DIST_TO_CONDA = {"torch": "pytorch", "lmdb": "python-lmdb", "matplotlib": "matplotlib-base"}

#: the GPU rules' envs and their CPU twins: (CUDA env, CPU env)
TORCH_ENVS = {"envs/train.yaml": "envs/train-cpu.yaml", "envs/esm.yaml": "envs/esm-cpu.yaml"}

GEOPLM_STRING = re.compile(r"^geoplm(?:\.[A-Za-z_]\w*)+(?::[A-Za-z_]\w*)?$")


# --- import closure -----------------------------------------------------------------------------------------


def module_file(name: str, src: Path = SRC) -> Path | None:
    """The source file of a ``geoplm`` module or package under ``src``, or None."""
    path = src.joinpath(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return None


def imported_names(path: Path, module: str | None) -> set[str]:
    """Dotted names a file imports anywhere (module level, functions, methods, ``try`` blocks), relative imports
    resolved against ``module``; ``from a import b`` gives ``a`` and ``a.b`` (``b`` may be a module); string
    constants naming a ``geoplm`` module (``"geoplm.x.y:func"``, ``"geoplm.x.func"``) count as imports of it."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    package = (module or "").split(".")
    if module and path.name != "__init__.py":
        package = package[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            names.add(source)
            names.update(f"{source}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and GEOPLM_STRING.match(node.value):
            names.add(node.value.replace(":", "."))
    return names


def import_closure(script: Path, src: Path = SRC) -> tuple[set[str], set[str]]:
    """(third-party top-level modules, geoplm modules) a script imports, transitively through ``geoplm``."""
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    todo: list[tuple[Path, str | None]] = [(script, None)]
    seen: set[str] = set()
    third_party: set[str] = set()
    while todo:
        path, module = todo.pop()
        for name in imported_names(path, module):
            top = name.split(".")[0]
            if not top or top in stdlib:
                continue
            if top != "geoplm":
                third_party.add(top)
                continue
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # each package on the way is imported too
                prefix = ".".join(parts[:i])
                file = module_file(prefix, src)
                if file is not None and prefix not in seen:
                    seen.add(prefix)
                    todo.append((file, prefix))
    return third_party, seen


# --- env files ----------------------------------------------------------------------------------------------


def parse_spec(spec: str) -> tuple[str, str | None, str | None]:
    """(name, version, build) of a conda match spec ``name=version=build`` or a pip ``name==version``."""
    spec = spec.split("#")[0].strip()
    if "==" in spec:
        name, version = spec.split("==", 1)
        return name.strip().lower(), version.strip(), None
    parts = [part.strip() for part in spec.split("=") if part.strip()]
    parts += [None] * (3 - len(parts))
    return parts[0].lower(), parts[1], parts[2]


@cache
def read_env(path: str, root: Path = REPO) -> dict[str, dict[str, tuple[str | None, str | None]]]:
    """An env file as ``{"conda": {name: (version, build)}, "pip": {name: (version, None)}}``."""
    data = yaml.safe_load((root / path).read_text())
    env: dict[str, dict] = {"conda": {}, "pip": {}}
    for dep in data.get("dependencies") or []:
        if isinstance(dep, dict):
            for spec in dep.get("pip") or []:
                name, version, _ = parse_spec(spec)
                env["pip"][name] = (version, None)
        else:
            name, version, build = parse_spec(str(dep))
            env["conda"][name] = (version, build)
    assert data.get("channels") == ["conda-forge", "nodefaults"], f"{path}: channels should be conda-forge only"
    return env


def missing_packages(third_party: Iterable[str], env: dict) -> list[str]:
    """What an env lacks of a closure's third-party modules (each as 'module -> package (conda|pip)')."""
    missing = []
    for module in sorted(third_party):
        if module not in PACKAGES:
            missing.append(f"{module} -> ? (add it to tests/test_envs.py PACKAGES and to the env)")
            continue
        package, pip = PACKAGES[module]
        if package not in env["pip" if pip else "conda"]:
            missing.append(f"{module} -> {package} ({'pip' if pip else 'conda'})")
    return missing


@cache
def pyproject_requirements() -> dict[str, Requirement]:
    """pyproject.toml's dependencies by conda package name, and ``python`` (requires-python)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = {"python": Requirement(f"python{project['requires-python']}")}
    for line in project["dependencies"]:
        requirement = Requirement(line)
        name = requirement.name.lower()
        requirements[DIST_TO_CONDA.get(name, name)] = requirement
    return requirements


def version_problems(path: str, root: Path = REPO) -> list[str]:
    """Unpinned packages and pins outside pyproject.toml's requirements in one env file."""
    problems = []
    env = read_env(path, root)
    for kind in ("conda", "pip"):
        for name, (version, _) in env[kind].items():
            if name == "pip":
                continue
            if not version or "*" in version:
                problems.append(f"{path}: {name} is not pinned to a version")
                continue
            requirement = pyproject_requirements().get(name)
            if requirement is not None and not requirement.specifier.contains(Version(version), prereleases=True):
                problems.append(f"{path}: {name}={version} does not satisfy pyproject.toml's {requirement}")
    return problems


# --- the workflow's rules -----------------------------------------------------------------------------------


def load_rules(torch_build: str | None = None) -> dict[str, tuple[str, Path]]:
    """Rule name -> (env file relative to the repository, script path) of every rule with ``conda:`` and
    ``script:``, read from the workflow as Snakemake parses it (``GEOPLM_TORCH`` set to ``torch_build``)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import (
        ConfigSettings,
        DeploymentSettings,
        OutputSettings,
        ResourceSettings,
        StorageSettings,
    )

    saved = os.environ.get("GEOPLM_TORCH")
    if torch_build is None:
        os.environ.pop("GEOPLM_TORCH", None)
    else:
        os.environ["GEOPLM_TORCH"] = torch_build
    saved_cwd = os.getcwd()
    try:
        with SnakemakeApi(OutputSettings(quiet=True)) as api:
            workflow_api = api.workflow(
                resource_settings=ResourceSettings(),
                config_settings=ConfigSettings(),
                storage_settings=StorageSettings(),
                deployment_settings=DeploymentSettings(),
                workdir=REPO,
                snakefile=REPO / "Snakefile",
            )
            rules = {}
            for rule in workflow_api._workflow.rules:
                if rule.script is None:
                    continue
                assert isinstance(rule.conda_env, str), f"rule {rule.name}: a script without a conda env file"
                base = Path(rule.snakefile).parent
                env = (base / rule.conda_env).resolve().relative_to(REPO)
                rules[rule.name] = (str(env), (base / rule.script).resolve())
            return rules
    finally:
        os.chdir(saved_cwd)
        if saved is None:
            os.environ.pop("GEOPLM_TORCH", None)
        else:
            os.environ["GEOPLM_TORCH"] = saved


@pytest.fixture(scope="module")
def rules() -> dict[str, tuple[str, Path]]:
    return load_rules()


@pytest.fixture(scope="module")
def cpu_rules() -> dict[str, tuple[str, Path]]:
    return load_rules("cpu")


# --- tests --------------------------------------------------------------------------------------------------


def test_every_rule_env_holds_its_import_closure(rules):
    assert len(rules) >= 12, sorted(rules)  # the workflow was read (download ... make_figure, the report rules)
    problems = []
    for name, (env, script) in sorted(rules.items()):
        third_party, _ = import_closure(script)
        problems += [f"rule {name} ({env}): {miss}" for miss in missing_packages(third_party, read_env(env))]
    assert not problems, "imports without their env entry:\n" + "\n".join(problems)


def test_cpu_switch_envs_hold_the_same_closure(rules, cpu_rules):
    """GEOPLM_TORCH=cpu swaps the GPU rules' envs for their CPU twins, which hold the same closure."""
    switched = {name for name in rules if rules[name][0] != cpu_rules[name][0]}
    assert {"train_model", "pretrain_model", "embed_esm"} <= switched
    problems = []
    for name in sorted(switched):
        assert TORCH_ENVS[rules[name][0]] == cpu_rules[name][0]
        third_party, _ = import_closure(cpu_rules[name][1])
        problems += [f"rule {name}: {miss}" for miss in missing_packages(third_party, read_env(cpu_rules[name][0]))]
    assert not problems, "\n".join(problems)


def test_closure_follows_lazy_and_registry_imports():
    """A script importing geoplm.steps reaches RDKit through a registry string and a lazy import, fair-esm through
    a function-level import, and torch through geoplm.esm."""
    third_party, modules = import_closure(REPO / "scripts" / "parse_structures.py")
    assert {"geoplm.steps", "geoplm.datasets", "geoplm.datasets.pdbbind", "geoplm.esm"} <= modules
    assert {"rdkit", "torch", "esm", "pandas", "lmdb", "openpyxl"} <= third_party
    _, train_modules = import_closure(REPO / "scripts" / "train_model.py")
    assert "geoplm.train" in train_modules  # distributed.launch("geoplm.train.train_run", ...)


def test_a_new_import_without_its_env_entry_fails(tmp_path):
    """A synthetic script and geoplm module: the closure finds the lazy third-party import, and an env without it
    is reported, one with it passes."""
    src = tmp_path / "src"
    (src / "geoplm" / "extra").mkdir(parents=True)
    (src / "geoplm" / "__init__.py").write_text("")
    (src / "geoplm" / "extra" / "__init__.py").write_text("from .plots import draw\n")
    (src / "geoplm" / "extra" / "plots.py").write_text(
        textwrap.dedent(
            """
            import json
            import numpy as np

            def draw():
                import matplotlib.pyplot as plt
                from sklearn.metrics import roc_auc_score
                return plt, roc_auc_score
            """
        )
    )
    script = tmp_path / "script.py"
    script.write_text("import sys\nfrom geoplm import extra\nimport yaml\n")
    third_party, modules = import_closure(script, src)
    assert third_party == {"numpy", "matplotlib", "sklearn", "yaml"}
    assert modules == {"geoplm", "geoplm.extra", "geoplm.extra.plots"}
    env = {"conda": {"numpy": ("2.2.6", None), "pyyaml": ("6.0.2", None), "matplotlib-base": ("3.10.0", None)},
           "pip": {}}  # fmt: skip
    assert missing_packages(third_party, env) == ["sklearn -> scikit-learn (conda)"]
    env["conda"]["scikit-learn"] = ("1.6.1", None)
    assert missing_packages(third_party, env) == []
    assert missing_packages({"brand_new_module"}, env) == [
        "brand_new_module -> ? (add it to tests/test_envs.py PACKAGES and to the env)"
    ]


def test_env_versions_pinned_and_agree_with_pyproject():
    envs = sorted(str(path.relative_to(REPO)) for path in (REPO / "envs").glob("*.yaml"))
    problems = [problem for env in envs for problem in version_problems(env)]
    assert not problems, "\n".join(problems)


def test_version_check_catches_a_pin_below_pyproject(tmp_path):
    (tmp_path / "bad.yaml").write_text(
        "channels: [conda-forge, nodefaults]\ndependencies:\n  - python=3.11\n  - pandas=2.1.0\n  - tqdm\n"
    )
    problems = version_problems("bad.yaml", tmp_path)
    assert any("pandas=2.1.0 does not satisfy" in p for p in problems)
    assert any("tqdm is not pinned" in p for p in problems)


def test_torch_builds_pinned():
    """conda-forge names PyTorch builds cpu_* / cuda<version>_*: the CPU-only rules' envs and the -cpu twins pin
    the CPU build, the GPU rules' envs the CUDA build; each pair agrees on every other package."""
    for path in sorted((REPO / "envs").glob("*.yaml")):
        env = str(path.relative_to(REPO))
        conda = read_env(env)["conda"]
        if "pytorch" not in conda:
            continue
        build = conda["pytorch"][1] or ""
        if env in TORCH_ENVS:
            assert build.startswith("cuda"), f"{env}: pytorch should pin a CUDA build (=cuda*), not {build!r}"
        else:
            assert build.startswith("cpu_"), f"{env}: pytorch should pin the CPU build (=cpu_*), not {build!r}"
    for cuda_env, cpu_env in TORCH_ENVS.items():
        cuda, cpu = read_env(cuda_env), read_env(cpu_env)
        assert {k: v for k, v in cuda["conda"].items() if k != "pytorch"} == {
            k: v for k, v in cpu["conda"].items() if k != "pytorch"
        }, f"{cuda_env} and {cpu_env} differ beyond the PyTorch build"
        assert cuda["pip"] == cpu["pip"]
        assert cuda["conda"]["pytorch"][0] == cpu["conda"]["pytorch"][0]
