"""profiles/slurm on a real Slurm: a demo table through `sbatch`, equal to the local run's.

Needs the one-node cluster of tests/cluster/slurm.sh (`make test-cluster` starts it, runs this file and
stops it; skipped anywhere else). Two copies of the workflow make ``table_toy_position`` with one model and
residue features only (download -> parse -> graphs -> train -> table, 11 jobs): one locally through
profiles/workstation, one through profiles/slurm as shipped plus the one override a cluster without
accounting needs (``--slurm-status-command squeue``). The test asserts that

* both tables are equal, number for number (each training run is seeded and deterministic on the CPU, and
  gets the same 2 threads in both runs: the rule's ``threads``, as ``--cpus-per-task`` on Slurm);
* every job of a non-local rule was submitted with ``sbatch`` once, and Slurm ran it to COMPLETED under
  that rule's name; the GPU rule (train_model) asked Slurm for its GPU, with the rule's memory and runtime;
* the localrules (downloads, gather_records, make_table, the table target) ran on the submitting machine.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import conftest  # tests/conftest.py (on sys.path as pytest loads it)
import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
TARGET = "table_toy_position"
# the table reduced to GearNet on residue one-hot features: a handful of jobs, all the stages
TEST_CONFIG = {"outdir": "out", "tables": {"toy_position": {"models": ["gearnet"], "plms": ["none"]}}}
OUT = TEST_CONFIG["outdir"]
# the README's command, with the override for a cluster without slurmdbd accounting
SLURM_ARGS = ["--profile", "profiles/slurm", "--slurm-status-command", "squeue"]
LOCAL_ARGS = ["--profile", "profiles/workstation", "--cores", "2"]
SLURM_RULES = {"parse_structures", "build_graphs", "train_model"}
LOCAL_RULES = {"download_structures", "gather_records", "make_table", TARGET}

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(not os.environ.get("GEOPLM_TEST_CLUSTER"), reason="needs the test cluster: make test-cluster"),
]


def copy_workflow(workdir: Path, mirror: Path) -> Path:
    workdir.mkdir(parents=True)
    conftest.copy_workflow(workdir)
    (workdir / "config" / "cluster_test.yaml").write_text(yaml.safe_dump({"mirror": str(mirror), **TEST_CONFIG}))
    return workdir


def snakemake(workdir: Path, *args: str) -> subprocess.Popen:
    command = [str(SNAKEMAKE), TARGET, "--configfile", "config/demo.yaml", "config/cluster_test.yaml", *args]
    env = {k: v for k, v in os.environ.items() if k != "GEOPLM_MIRROR"}
    output = open(workdir / "snakemake.out", "w")  # closed in finish()
    process = subprocess.Popen(command, cwd=workdir, stdout=output, stderr=subprocess.STDOUT, text=True, env=env)
    process.output = output
    return process


def finish(process: subprocess.Popen, workdir: Path, timeout: float) -> str:
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.terminate()
        process.wait(timeout=60)
    finally:
        process.output.close()
    text = (workdir / "snakemake.out").read_text()
    assert process.returncode == 0, f"snakemake in {workdir} failed ({process.returncode}):\n{text[-8000:]}"
    return text


def job_log(text: str) -> tuple[dict[int, tuple[str, bool]], dict[int, int]]:
    """Snakemake's log -> {job id: (rule, localrule)} and {job id: Slurm job id}."""
    jobs, rule, local = {}, None, False
    for line in text.splitlines():
        heading = re.match(r"^(localrule|rule) (\w+):$", line)
        if heading:
            rule, local = heading.group(2), heading.group(1) == "localrule"
            continue
        jobid = re.match(r"^\s+jobid: (\d+)$", line)
        if jobid and rule:
            jobs[int(jobid.group(1))] = (rule, local)
            rule = None
    submitted = Counter()
    slurm_ids = {}
    for job, slurm_id in re.findall(r"^Job (\d+) has been submitted with SLURM jobid (\d+)", text, re.M):
        submitted[int(job)] += 1
        slurm_ids[int(job)] = int(slurm_id)
    assert all(count == 1 for count in submitted.values()), f"jobs submitted more than once: {submitted}"
    return jobs, slurm_ids


def slurm_jobs() -> dict[int, dict[str, str]]:
    """Every job the test cluster knows (MinJobAge keeps finished ones for an hour)."""
    fields = {
        "id": "JobID",
        "state": "State",
        "comment": "Comment",
        "tres": "tres-per-job",
        "memory": "MinMemory",
        "time": "TimeLimit",
        "cpus": "NumCPUs",
    }
    result = subprocess.run(
        ["squeue", "--states=all", "--noheader", "-O", ",".join(f"{field}:|" for field in fields.values())],
        capture_output=True,
        text=True,
        check=True,
    )
    jobs = {}
    for line in result.stdout.splitlines():
        row = dict(zip(fields, (value.strip() for value in line.split("|")[: len(fields)]), strict=True))
        jobs[int(row["id"])] = row
    return jobs


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    # the mirror of tests/conftest.py's shared_data, but missing it fails here: make test-cluster must not pass
    # on a skip
    mirror = Path(os.environ.get("GEOPLM_TEST_DATA") or REPO.parent / "shared" / "data")
    if not mirror.is_dir():
        pytest.fail(f"test data folder {mirror} not found: set GEOPLM_TEST_DATA")
    root = tmp_path_factory.mktemp("cluster")
    local = copy_workflow(root / "local", mirror)
    cluster = copy_workflow(root / "slurm", mirror)
    start = time.monotonic()
    # the Slurm run waits for its jobs most of the time: the local run shares the 2 cores meanwhile
    slurm_process = snakemake(cluster, *SLURM_ARGS)
    local_process = snakemake(local, *LOCAL_ARGS)
    finish(local_process, local, timeout=900)
    print(f"local run: {time.monotonic() - start:.0f} s")
    finish(slurm_process, cluster, timeout=900)
    print(f"Slurm run: {time.monotonic() - start:.0f} s")
    return {"local": local, "slurm": cluster}


def test_slurm_table_equals_the_local_table(runs):
    for suffix in ("csv", "md"):
        local = runs["local"] / OUT / "results" / "tables" / f"toy_position.{suffix}"
        cluster = runs["slurm"] / OUT / "results" / "tables" / f"toy_position.{suffix}"
        assert cluster.read_text() == local.read_text(), f"{cluster} differs from {local}"
    table = pd.read_csv(runs["slurm"] / OUT / "results" / "tables" / "toy_position.csv")
    assert list(table["model"]) == ["gearnet"] and table["toy_relative_position RMSE mean"].notna().all()


def test_every_cluster_job_went_through_sbatch(runs):
    text = (runs["slurm"] / "snakemake.out").read_text()
    jobs, slurm_ids = job_log(text)
    rules = {rule for rule, _ in jobs.values()}
    assert rules == SLURM_RULES | LOCAL_RULES, f"unexpected rules: {sorted(rules)}"
    cluster = slurm_jobs()
    for job, (rule, local) in sorted(jobs.items()):
        assert local == (rule in LOCAL_RULES), f"job {job} ({rule}) localrule={local}"
        if local:
            assert job not in slurm_ids, f"localrule job {job} ({rule}) was submitted to Slurm"
            continue
        assert job in slurm_ids, f"job {job} ({rule}) never went through sbatch"
        slurm_job = cluster.get(slurm_ids[job])
        assert slurm_job, f"Slurm does not know job {slurm_ids[job]} ({rule})"
        assert slurm_job["state"] == "COMPLETED", f"{rule}: Slurm job {slurm_job}"
        assert slurm_job["comment"].startswith(f"rule_{rule}"), slurm_job
    # the GPU rule: --gpus=1 from `resources: gpu=1`, the rule's 16 GB, 24 h and 2 threads
    train = [cluster[slurm_ids[job]] for job, (rule, _) in jobs.items() if rule == "train_model"]
    assert len(train) == 2
    for slurm_job in train:
        assert "gpu:1" in slurm_job["tres"], slurm_job
        assert slurm_job["memory"] == "16000M" and slurm_job["time"] == "1-00:00:00", slurm_job
        assert slurm_job["cpus"] == "2", slurm_job


def test_localrules_ran_on_the_submitting_machine(runs):
    text = (runs["slurm"] / "snakemake.out").read_text()
    jobs, slurm_ids = job_log(text)
    local = Counter(rule for job, (rule, is_local) in jobs.items() if is_local)
    assert local == Counter({"download_structures": 2, "gather_records": 1, "make_table": 1, TARGET: 1}), local
    # Snakemake reports a localrule finished without a Slurm job id in between
    for rule in local:
        assert re.search(rf"^localrule {rule}:$", text, re.M)
    downloads = runs["slurm"] / OUT / "resources" / "raw" / "demo_structures"
    assert len(list(downloads.glob("download_*.tsv"))) == 2
