"""Parsing throughput (structures/s) and peak memory at 1x and 10x the same input.

The workflow parses in shards of a fixed number of files, one job each; here the shards of a
dataset are parsed one after another in one process, as a long-running worker would. Peak
resident memory must stay flat as the dataset grows (10x / 1x <= 1.2); throughput is reported.

    .venv/bin/python benchmarks/bench_parse.py [--data ../shared/data] [--factor 10]

Each size runs in a fresh subprocess so that its peak RSS (``ru_maxrss``) is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARD_SIZE = 46


def worker(data: Path, factor: int) -> dict:
    sys.path.insert(0, str(REPO / "src"))
    from geoplm import steps

    files = sorted(p for p in (data / "alphafold").iterdir() if p.suffix in (".pdb", ".cif", ".gz"))
    listing = [str(p) for p in files] * factor
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
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
        seconds = time.perf_counter() - start
    return {
        "factor": factor,
        "files": len(listing),
        "records": records,
        "seconds": round(seconds, 2),
        "structures_per_s": round(len(listing) / seconds, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--factor", type=int, default=10)
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.data, args.worker)))
        return 0
    results = []
    for factor in (1, args.factor):
        out = subprocess.run(
            [sys.executable, __file__, "--data", str(args.data), "--worker", str(factor)],
            capture_output=True,
            text=True,
            check=True,
        )
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    for r in results:
        print(
            f"{r['factor']:>3}x: {r['files']} files, {r['records']} records, {r['structures_per_s']} structures/s, "
            f"peak RSS {r['peak_rss_mb']} MB"
        )
    ratio = results[1]["peak_rss_mb"] / results[0]["peak_rss_mb"]
    print(f"peak RSS ratio {args.factor}x / 1x = {ratio:.2f} (target <= 1.2)")
    return 0 if ratio <= 1.2 else 1


if __name__ == "__main__":
    sys.exit(main())
