"""The download catalogue (config/sources.yaml, read before config/config.yaml): schema, URLs, checksums, and the
samples held by the shared data folder (the mirror), each found by file name and matching its pinned checksum."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from geoplm.config import load_config, validate_schema
from geoplm.errors import ConfigError
from geoplm.sources import file_name, find_in_mirror, hash_file, parse_checksum

CONFIG = Path(__file__).resolve().parents[1] / "config" / "config.yaml"
CHECKSUM = re.compile(r"^(sha256:[0-9a-f]{64}|md5:[0-9a-f]{32})$")
#: sources whose every file the shared data folder holds, pinned by the SHA-256 of that copy
MIRRORED = "_sample"


@pytest.fixture(scope="module")
def config() -> dict:
    return load_config(CONFIG)


def _local_name(entry: dict) -> str:
    return entry.get("name") or file_name(entry["url"])


def _mirrored_sources(config: dict) -> dict[str, dict]:
    return {
        name: spec for name, spec in config["sources"].items() if name.endswith(MIRRORED) or name == "afdb_v4_entries"
    }


def test_full_config_validates_against_schema(config):
    validate_schema(copy.deepcopy(config), source=str(CONFIG))
    assert "toy_res" in config["datasets"] and config["datasets"]["toy_res"]["source"] == "atom3d_res_cath"
    assert config["sources"]["atom3d_res_cath"]["files"][0]["checksum"] == "md5:c93125eb93d89e3b5898d5781c538662"


def test_schema_rejects_a_malformed_checksum(config):
    broken = copy.deepcopy(config)
    broken["sources"]["fold3d"]["files"][0]["checksum"] = "md5:xyz"
    with pytest.raises(ConfigError, match="sources.fold3d.files.0.checksum"):
        validate_schema(broken, source="broken")


def test_urls_are_https_and_unique_within_each_source(config):
    for name, spec in config["sources"].items():
        urls = [entry["url"] for entry in spec["files"]]
        assert len(urls) == len(set(urls)), f"{name}: a URL is listed twice"
        names = [_local_name(entry) for entry in spec["files"]]
        assert len(names) == len(set(names)), f"{name}: two files share a local name"
        for url in urls:
            parsed = urlparse(url)
            if parsed.scheme == "file":
                # only files without any upstream URL of their own (tarball members, labels computed
                # for the shared data) are named by their path in the shared data folder
                assert name == "casp_sample" and "/shared/data/casp/T0980s1/" in parsed.path, url
            else:
                assert parsed.scheme == "https" and parsed.netloc, f"{name}: {url}"


def test_a_url_listed_twice_has_one_checksum(config):
    """Samples are subsets of full sources: the same URL must be pinned to the same digest."""
    seen: dict[str, tuple[str, str]] = {}
    repeated = 0
    for name, spec in config["sources"].items():
        for entry in spec["files"]:
            checksum = entry.get("checksum")
            if entry["url"] in seen and checksum and seen[entry["url"]][1]:
                repeated += 1
                assert checksum == seen[entry["url"]][1], f"{entry['url']}: {name} vs {seen[entry['url']][0]}"
            seen.setdefault(entry["url"], (name, checksum))
    assert repeated >= 60  # db5_sample/dips_sample/chains_sample repeat EquiDock files of the full sources


def test_checksums_are_well_formed(config):
    count = 0
    for name, spec in config["sources"].items():
        for entry in spec["files"]:
            if "checksum" in entry:
                assert CHECKSUM.match(entry["checksum"]), f"{name}: {entry['checksum']!r}"
                assert parse_checksum(entry["checksum"]) is not None
                count += 1
    assert count > 2000


def test_sample_files_are_in_the_mirror_and_match(config, shared_data):
    mirrored = _mirrored_sources(config)
    assert {"chains_sample", "db5_sample", "dips_sample", "pdbbind_sample", "casp_sample"} <= set(mirrored)
    total = 0
    for name, spec in mirrored.items():
        assert 1 <= spec.get("shards", 1) <= 4, name
        for entry in spec["files"]:
            algorithm, expected = parse_checksum(entry["checksum"])
            assert algorithm == "sha256", f"{name}: {entry['url']}"
            found = find_in_mirror(shared_data, _local_name(entry), entry["checksum"])
            assert found is not None, f"{name}: {_local_name(entry)} not in {shared_data}"
            assert hash_file(found, algorithm) == expected, f"{name}: {found} does not match {entry['url']}"
            total += 1
    assert total > 400


def test_sample_datasets_read_their_sample_sources(config):
    for name, spec in config["datasets"].items():
        if name.endswith("_sample"):
            assert spec["source"] in _mirrored_sources(config), name
            assert 1 <= spec.get("shards", 1) <= 4, name


def test_chain_map_names_chain_files_held_by_the_sample(config, shared_data):
    chain_map = config["datasets"]["ec_sample"]["options"]["chain_map"]
    assert chain_map["1AZS_r_u.pdb"] == "1AB8-A"  # a DB5.5 unbound file is another PDB entry
    assert config["datasets"]["fold_sample"]["options"]["chain_map"] == chain_map
    names = {_local_name(entry) for entry in config["sources"]["chains_sample"]["files"]}
    assert set(chain_map) <= names
    assert all(re.fullmatch(r"[0-9A-Z]{4}-[0-9A-Za-z]+", chain) for chain in chain_map.values())


def test_afdb_sources_cover_the_proteomes_and_swissprot(config):
    tarballs = [
        entry
        for name, spec in config["sources"].items()
        if name.startswith("afdb_")
        for entry in spec["files"]
        if entry["url"].endswith(".tar")
    ]
    assert len(tarballs) >= 21 + 1
    assert all(entry["url"].startswith("https://ftp.ebi.ac.uk/pub/databases/alphafold/v2/") for entry in tarballs)
    assert all(entry["checksum"].startswith("md5:") for entry in tarballs)
    afdb_shards = sum(
        spec.get("shards", 1) for name, spec in config["datasets"].items() if spec["reader"] == "alphafold"
    )
    assert afdb_shards >= 200


def test_v4_entries_are_what_their_urls_name(config, shared_data):
    for entry in config["sources"]["afdb_v4_entries"]["files"]:
        match = re.fullmatch(
            r"https://alphafold\.ebi\.ac\.uk/files/AF-([0-9A-Z]+)-F(\d+)-model_v4\.(pdb|cif|cif\.gz)", entry["url"]
        )
        assert match, entry["url"]
        assert _local_name(entry).endswith(file_name(entry["url"]))
        path = find_in_mirror(shared_data, _local_name(entry), entry["checksum"])
        opener = __import__("gzip").open if path.name.endswith(".gz") else open
        with opener(path, "rt") as handle:
            head = handle.read(4000)
        assert match.group(1) in head, f"{path} does not name {match.group(1)}"


def test_config_yaml_is_plain_yaml():
    # the anchors used for the shared chain_map resolve to one mapping
    raw = yaml.safe_load(CONFIG.read_text())
    assert (
        raw["datasets"]["fold_sample"]["options"]["chain_map"] is raw["datasets"]["ec_sample"]["options"]["chain_map"]
    )
