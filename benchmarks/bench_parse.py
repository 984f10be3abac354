"""Parsing throughput (structures/s) and peak memory at 1x and 10x the same input, per reader path.

The workflow parses in shards of a fixed number of files, one job each; here the shards of a
dataset are parsed one after another in one process, as a long-running worker would. Peak
resident memory must stay flat as the dataset grows (10x / 1x <= 1.2, PASS/FAIL per path);
throughput is reported. Three paths, all on the real AlphaFold DB models of ``shared/data/alphafold``:

* ``steps``: :func:`geoplm.steps.parse_structure_files` (one download manifest per shard);
* ``structures``: the ``structures`` reader, :func:`geoplm.datasets.generic.read_structures_shard`
  (the listing repeated ``factor`` times, dealt to shards of about 46 files);
* ``afdb_tar``: the ``alphafold`` reader, :func:`geoplm.datasets.alphafold.read_shard`, on AFDB-style
  tarballs of gzipped members built from the same files (1x: one tarball; 10x: ten copies under
  other names, as ten proteomes), two shards per tarball, so every shard streams one whole tarball.

    .venv/bin/python benchmarks/bench_parse.py [--data ../shared/data] [--factor 10] [--paths steps structures afdb_tar]

Each (path, size) runs in a fresh subprocess so that its peak RSS (``ru_maxrss``) is its own.
Exit status 1 if any path's ratio exceeds 1.2.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import math
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARD_SIZE = 46
SLOTS_PER_TARBALL = 2
PATHS = ("steps", "structures", "afdb_tar")
MAX_RATIO = 1.2


def structure_files(data: Path) -> list[Path]:
    return sorted(p for p in (data / "alphafold").iterdir() if p.suffix in (".pdb", ".cif", ".gz"))


def run_steps(files: list[Path], factor: int, tmp: Path) -> int:
    from geoplm import steps

    listing = [str(p) for p in files] * factor
    records = 0
    for index in range(0, len(listing), SHARD_SIZE):
        shard = f"{index // SHARD_SIZE:04d}"
        manifest = tmp / f"download_{shard}.tsv"
        rows = [
            {"file": f, "url": "", "sha256": "", "bytes": 0, "origin": "mirror"}
            for f in listing[index : index + SHARD_SIZE]
        ]
        steps.write_tsv(manifest, rows, steps.DOWNLOAD_COLUMNS)
        n, _ = steps.parse_structure_files(
            [manifest], tmp / f"{shard}.pt", tmp / f"{shard}.m.tsv", tmp / f"{shard}.s.tsv", shard
        )
        records += n
    return records


def run_structures(files: list[Path], factor: int, tmp: Path) -> int:
    from geoplm import structure
    from geoplm.datasets.generic import read_structures_shard

    listing = list(files) * factor
    num_shards = math.ceil(len(listing) / SHARD_SIZE)
    records = 0
    for shard in range(num_shards):
        parsed, _ = read_structures_shard(listing, shard, num_shards, {}, "skip")
        structure.save_shard(parsed, tmp / f"{shard:04d}.pt")
        records += len(parsed)
    return records


def build_tarball(files: list[Path], path: Path) -> Path:
    """An AFDB-style tarball: each model gzipped, named ``AF-{acc}-F{n}-model_v{k}.{pdb,cif}.gz``."""
    sys.path.insert(0, str(REPO / "src"))
    from geoplm.datasets.alphafold import entry_name

    with tarfile.open(path, "w") as tar:
        for file in files:
            name = entry_name(file.name)
            key = name.key if name.accession else f"AF-{name.stem}-F1"
            member = f"{key}-model_v{name.version or 2}.{name.file_type}.gz"
            data = file.read_bytes()
            if data[:2] != b"\x1f\x8b":
                data = gzip.compress(data, mtime=0)
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def run_afdb_tar(tarballs: list[Path], factor: int, tmp: Path) -> int:
    from geoplm import structure
    from geoplm.datasets.alphafold import read_shard

    chosen = tarballs[:factor]
    num_shards = SLOTS_PER_TARBALL * len(chosen)
    records = 0
    for shard in range(num_shards):
        parsed, _ = read_shard(chosen, shard, num_shards, {}, "skip")
        structure.save_shard(parsed, tmp / f"{shard:04d}.pt")
        records += len(parsed)
    return records


def worker(data: Path, path: str, factor: int, tar_dir: Path | None) -> dict:
    sys.path.insert(0, str(REPO / "src"))
    files = structure_files(data)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        if path == "steps":
            records = run_steps(files, factor, tmp)
        elif path == "structures":
            records = run_structures(files, factor, tmp)
        else:
            records = run_afdb_tar(sorted(tar_dir.glob("*.tar")), factor, tmp)
        seconds = time.perf_counter() - start
    return {
        "path": path,
        "factor": factor,
        "files": len(files) * factor,
        "records": records,
        "seconds": round(seconds, 2),
        "structures_per_s": round(records / seconds, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def measure(args, path: str, tar_dir: Path | None) -> list[dict]:
    results = []
    for factor in (1, args.factor):
        command = [sys.executable, __file__, "--data", str(args.data), "--worker", str(factor), "--paths", path]
        if tar_dir is not None:
            command += ["--tar-dir", str(tar_dir)]
        out = subprocess.run(command, capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--factor", type=int, default=10)
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tar-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.data, args.paths[0], args.worker, args.tar_dir)))
        return 0
    failed = False
    with tempfile.TemporaryDirectory(prefix="bench_parse_") as scratch:
        tar_dir = None
        if "afdb_tar" in args.paths:
            tar_dir = Path(scratch)
            first = build_tarball(structure_files(args.data), tar_dir / "UP000000000_0_BENCH00_v2.tar")
            for copy in range(1, args.factor):
                shutil.copy(first, tar_dir / f"UP{copy:09d}_{copy}_BENCH{copy:02d}_v2.tar")
        for path in args.paths:
            results = measure(args, path, tar_dir if path == "afdb_tar" else None)
            for r in results:
                print(
                    f"{path:>10} {r['factor']:>3}x: {r['files']} files, {r['records']} records, "
                    f"{r['structures_per_s']} structures/s, peak RSS {r['peak_rss_mb']} MB"
                )
            ratio = results[1]["peak_rss_mb"] / results[0]["peak_rss_mb"]
            verdict = "PASS" if ratio <= MAX_RATIO else "FAIL"
            failed |= verdict == "FAIL"
            print(f"{path:>10} peak RSS ratio {args.factor}x / 1x = {ratio:.2f} (target <= {MAX_RATIO}): {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
