"""Speed ratio geoplm vs fair-esm's scripts/extract.py: ESM-2 per-residue embeddings of the same real chains.

Both run in one process, on the same checkpoint and the same chains, interleaved batch by batch, so the ratio
does not depend on the shared machine's load as much as absolute times do. From the repository root::

    .venv/bin/python benchmarks/bench_esm.py [--data ../shared/data] [--model 8M] [--chains 75] [--long 5] \\
        [--rounds 5] [--threads N] [--toks-per-batch 4096] [--layer -1] [--attention default] [--device cpu]

``make bench`` (benchmarks/run.py) runs a small setting (24 + 1 chains, 3 rounds); the defaults above are the
issue's 80 chains.

**Checkpoint.** Real ESM-2 weights are not available offline, so :func:`geoplm.esm.write_random_esm2_checkpoint`
writes a random ESM-2 of a real architecture in fair-esm's format (``--model 8M``: 6 layers, 320 wide, 20 heads;
``35M``: 12, 480, 20; seed 0); :func:`geoplm.esm.load_esm2` loads it into fair-esm's ``ESM2`` once, and both
sides use that model (fair-esm's own ``pretrained.load_model_and_alphabet`` cannot load it on torch >= 2.6,
whose ``torch.load`` refuses the ``argparse.Namespace`` in fair-esm checkpoints by default). Weights do not
change the arithmetic, so times are those of the real models of that size.

**Chains** (``--data``, the mirror): ``--chains N`` distinct sequences from ``chains/`` (the first chain not
seen before of N structure files evenly spaced over the sorted folder; default 75: 32-673 residues), plus
``--long K`` AlphaFold models of ``alphafold/`` longer than 1,022 residues, shortest first (default 5: 1,123,
1,138, 1,267, 1,400 and 2,699 residues). They are written to a FASTA file, which both sides read.

**extract.py's procedure** (facebookresearch/esm @ 2b36991, ``scripts/extract.py`` ``run``, ``--include
per_tok``, its defaults ``--toks_per_batch 4096 --truncation_seq_length 1022``), through fair-esm's own data
utilities: ``FastaBatchedDataset.from_file``, ``get_batch_indices(toks_per_batch, extra_toks_per_seq=1)``, a
``DataLoader`` with ``alphabet.get_batch_converter(1022)`` as ``collate_fn``, and under ``torch.no_grad()`` per
batch ``model(toks, repr_layers=[layer], return_contacts=False)``, logits and representations moved to the CPU,
each sequence's ``[1 : min(1022, len) + 1]`` cloned. Sequences longer than 1,022 residues are truncated there
(extract.py's output for them covers their first 1,022 residues). Not timed on either side: writing files
(extract.py's ``torch.save`` per sequence, geoplm's store).

**geoplm**: :func:`geoplm.esm.embed_sequences` on the same FASTA (read with the same ``from_file``), same layer
and ``toks_per_batch``: every residue embedded, long chains in overlapping windows of 1,022 (so it does more
work on them: 13 windows where extract.py runs 5 truncated sequences with the defaults). ``--attention``:
its ``fused_attention`` (``default``: None, fused on the CPU; ``fused``: True; ``exact``: False, fair-esm's
arithmetic).

**Interleaving.** geoplm's ``progress`` callback, called after each of its batches, pauses its clock and runs
extract.py's batches until extract.py has done the same fraction of its residues; so the two advance through
the lengths together, and a change of the machine's load hits both. A side's time is the sum of its own
stretches. One warm-up round on 4 short chains is not timed; garbage is collected before each round.

**Reported**, per round and as median (range) over rounds: each side's time and residues per second (residues
of its output: extract.py's truncated ones, geoplm's all), the residues/s ratio geoplm / extract.py (the
issue's goal: >= 1.5x) and the wall-time ratio. Then the largest absolute difference of geoplm's embeddings
to extract.py's on the chains of at most 1,022 residues, and to a windowed reference on all chains (each
window through fair-esm's ``model(...)`` alone, averaged as :func:`geoplm.esm.embed_sequences` documents:
what geoplm computed before its own forward pass). With ``--device cuda`` (when a GPU is visible): also
geoplm with half precision and fused attention, its time and largest difference to float32. Also printed:
the largest difference of the other attention variant.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from bench_ec_epoch import DATA, evenly_spaced, summary  # noqa: E402
from machine import machine_facts  # noqa: E402

ARCHITECTURES = {"8M": (6, 320, 20), "35M": (12, 480, 20)}  # layers, width, heads (fair-esm's ESM-2 models)
ATTENTION = {"default": {}, "fused": {"fused_attention": True}, "exact": {"fused_attention": False}}
TRUNCATION = 1022  # extract.py's default --truncation_seq_length
WARMUP_CHAINS = 4


# --- chains ---------------------------------------------------------------------------------------


def chains(data: Path, count: int, long: int) -> dict[str, str]:
    """``count`` distinct chain sequences of ``data/chains`` and ``long`` AlphaFold models over 1,022 residues."""
    from geoplm.structure import parse_structure

    files = sorted(p for p in (data / "chains").iterdir() if p.name != "CHAINS.tsv")
    sequences: dict[str, str] = {}
    for position in evenly_spaced(list(range(len(files))), count):
        for path in files[position:]:  # the next file with a new sequence
            new = [r for r in parse_structure(path) if r["sequence"] not in sequences.values()]
            if new:
                sequences[new[0]["id"]] = new[0]["sequence"]
                break
    models = []
    for path in sorted((data / "alphafold").iterdir()):
        if path.name.startswith("AF-") and path.name.endswith((".pdb", ".cif", ".cif.gz")):
            record = parse_structure(path)[0]
            if len(record["sequence"]) > TRUNCATION and record["sequence"] not in [s for _, s in models]:
                models.append((record["id"], record["sequence"]))
    for sid, sequence in sorted(models, key=lambda item: len(item[1]))[:long]:
        sequences[sid] = sequence
    return sequences


def write_fasta(sequences: dict[str, str], path: Path) -> Path:
    path.write_text("".join(f">{sid}\n{sequence}\n" for sid, sequence in sequences.items()))
    return path


# --- the two sides --------------------------------------------------------------------------------


def extract_steps(model, alphabet, fasta: Path, layer: int, toks_per_batch: int, device: str, results: dict):
    """extract.py's ``run`` (``--include per_tok``), one batch per step; yields the residues done so far and fills
    ``results`` (label -> (min(L, 1022), D) CPU tensor)."""
    from esm import FastaBatchedDataset

    dataset = FastaBatchedDataset.from_file(fasta)
    batches = dataset.get_batch_indices(toks_per_batch, extra_toks_per_seq=1)
    data_loader = torch.utils.data.DataLoader(
        dataset, collate_fn=alphabet.get_batch_converter(TRUNCATION), batch_sampler=batches
    )
    repr_layers = [(layer + model.num_layers + 1) % (model.num_layers + 1)]
    done = 0
    with torch.no_grad():
        for labels, strs, toks in data_loader:
            if device != "cpu":
                toks = toks.to(device=device, non_blocking=True)
            out = model(toks, repr_layers=repr_layers, return_contacts=False)
            out["logits"].to(device="cpu")
            representations = {k: t.to(device="cpu") for k, t in out["representations"].items()}
            for i, label in enumerate(labels):
                truncate_len = min(TRUNCATION, len(strs[i]))
                results[label] = representations[repr_layers[0]][i, 1 : truncate_len + 1].clone()
                done += truncate_len
            yield done


def geoplm_embed(model, alphabet, fasta: Path, layer: int, toks_per_batch: int, device: str, **options):
    from esm import FastaBatchedDataset

    from geoplm.esm import embed_sequences

    dataset = FastaBatchedDataset.from_file(fasta)
    sequences = dict(zip(dataset.sequence_labels, dataset.sequence_strs, strict=True))
    return embed_sequences(model, alphabet, sequences, layer, toks_per_batch, device=device, **options)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_round(model, alphabet, fasta: Path, sequences: dict[str, str], args, **options) -> dict:
    """One interleaved round: geoplm's batches drive, extract.py's catch up after each (see the docstring)."""
    extract_total = sum(min(TRUNCATION, len(s)) for s in sequences.values())
    extracted: dict[str, torch.Tensor] = {}
    steps = extract_steps(model, alphabet, fasta, args.layer, args.toks_per_batch, args.device, extracted)
    state = {"extract": 0.0, "geoplm": 0.0, "extract_done": 0, "mark": 0.0}

    def catch_up(fraction: float) -> None:
        while state["extract_done"] < fraction * extract_total:
            start = time.perf_counter()
            state["extract_done"] = next(steps, extract_total)
            synchronize(args.device)
            state["extract"] += time.perf_counter() - start

    def progress(done: int, total: int) -> None:
        synchronize(args.device)
        state["geoplm"] += time.perf_counter() - state["mark"]
        catch_up(done / total)
        state["mark"] = time.perf_counter()

    gc.collect()
    state["mark"] = time.perf_counter()
    embedded = geoplm_embed(
        model, alphabet, fasta, args.layer, args.toks_per_batch, args.device, progress=progress, **options
    )
    synchronize(args.device)
    state["geoplm"] += time.perf_counter() - state["mark"]
    catch_up(1.0)
    next(steps, None)  # extract.py's loop ends
    return {"extract": state["extract"], "geoplm": state["geoplm"], "extracted": extracted, "embedded": embedded}


def windowed_reference(model, alphabet, sequences: dict[str, str], layer: int, device: str) -> dict[str, torch.Tensor]:
    """Each window alone through fair-esm's ``model(...)``, averaged over the windows covering a residue."""
    from geoplm.esm import DEFAULT_STRIDE, DEFAULT_WINDOW, window_starts

    converter = alphabet.get_batch_converter()
    layer = (layer + model.num_layers + 1) % (model.num_layers + 1)
    reference = {}
    with torch.no_grad():
        for sid, sequence in sequences.items():
            total = torch.zeros(len(sequence), model.embed_dim)
            count = torch.zeros(len(sequence), 1)
            for start in window_starts(len(sequence), DEFAULT_WINDOW, DEFAULT_STRIDE):
                piece = sequence[start : start + DEFAULT_WINDOW]
                tokens = converter([(sid, piece)])[2].to(device)
                rep = model(tokens, repr_layers=[layer])["representations"][layer][0, 1 : len(piece) + 1].cpu()
                total[start : start + len(piece)] += rep
                count[start : start + len(piece)] += 1
            reference[sid] = total / count
    return reference


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], ids) -> float:
    return max((a[i].float() - b[i].float()).abs().max().item() for i in ids)


# --- main -----------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DATA, type=Path, help="the mirror ($GEOPLM_TEST_DATA, ../shared/data)")
    parser.add_argument("--model", default="8M", choices=sorted(ARCHITECTURES), help="ESM-2 architecture")
    parser.add_argument("--chains", default=75, type=int, help="distinct chains of chains/, evenly spaced")
    parser.add_argument("--long", default=5, type=int, help="AlphaFold models over 1,022 residues (at most 5)")
    parser.add_argument("--rounds", default=5, type=int)
    parser.add_argument("--threads", default=0, type=int, help="torch threads (0: torch's default)")
    parser.add_argument("--toks-per-batch", default=4096, type=int, help="extract.py's --toks_per_batch")
    parser.add_argument("--layer", default=-1, type=int, help="representation layer (extract.py's --repr_layers)")
    parser.add_argument("--attention", default="default", choices=sorted(ATTENTION), help="geoplm's fused_attention")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (then also half precision, fused attention)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no GPU is visible")
    for line in machine_facts(torch.get_num_threads()):
        print(line)
    import esm

    print(f"fair-esm {esm.__version__}; device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""))  # fmt: skip
    logging.getLogger("geoplm").setLevel(logging.ERROR)  # the reader's notes on the mirror's files
    with tempfile.TemporaryDirectory(prefix="bench_esm_") as folder:
        return benchmark(args, Path(folder))


def benchmark(args, folder: Path) -> int:
    from geoplm.esm import DEFAULT_STRIDE, DEFAULT_WINDOW, load_esm2, window_starts, write_random_esm2_checkpoint

    layers, width, heads = ARCHITECTURES[args.model]
    name = f"esm2_t{layers}_{args.model}_random"
    checkpoint, _ = write_random_esm2_checkpoint(folder / f"{name}.pt", layers, width, heads, seed=0)
    model, alphabet = load_esm2(checkpoint)
    model.to(args.device)
    sequences = chains(args.data, args.chains, args.long)
    fasta = write_fasta(sequences, folder / "chains.fasta")
    warmup = write_fasta(dict(list(sequences.items())[:WARMUP_CHAINS]), folder / "warmup.fasta")
    lengths = [len(s) for s in sequences.values()]
    short = [sid for sid, s in sequences.items() if len(s) <= TRUNCATION]
    extract_residues = sum(min(TRUNCATION, n) for n in lengths)
    geoplm_residues = sum(lengths)
    windows = sum(len(window_starts(n, DEFAULT_WINDOW, DEFAULT_STRIDE)) for n in lengths)
    print(f"checkpoint: random ESM-2 {args.model} ({layers} layers, {width} wide, {heads} heads, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters), layer {args.layer}, toks_per_batch "
          f"{args.toks_per_batch}, geoplm's attention: {args.attention}")  # fmt: skip
    print(f"chains: {len(sequences)} ({len(short)} of chains/, {len(sequences) - len(short)} AlphaFold models over "
          f"1,022), {min(lengths)}-{max(lengths)} residues, {geoplm_residues:,} in all; extract.py embeds "
          f"{extract_residues:,} (truncated at 1,022), geoplm {geoplm_residues:,} in {windows} windows")  # fmt: skip

    options = ATTENTION[args.attention]
    run_round(model, alphabet, warmup, dict(list(sequences.items())[:WARMUP_CHAINS]), args, **options)
    results = []
    for i in range(args.rounds):
        result = run_round(model, alphabet, fasta, sequences, args, **options)
        results.append(result)
        ext, geo = result["extract"], result["geoplm"]
        print(f"round {i + 1}: extract.py {ext:.2f} s ({extract_residues / ext:,.0f} residues/s), geoplm {geo:.2f} s "
              f"({geoplm_residues / geo:,.0f} residues/s); residues/s ratio "
              f"{(geoplm_residues / geo) / (extract_residues / ext):.2f}x, time ratio {ext / geo:.2f}x; "
              f"load {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip

    rate_ratios = [(geoplm_residues / r["geoplm"]) / (extract_residues / r["extract"]) for r in results]
    time_ratios = [r["extract"] / r["geoplm"] for r in results]
    for side, residues in (("extract", extract_residues), ("geoplm", geoplm_residues)):
        median = statistics.median(r[side] for r in results)
        print(f"{'extract.py' if side == 'extract' else side}: median {median:.2f} s = {residues / median:,.0f} "
              "residues/s")  # fmt: skip
    print(f"residues/s ratio geoplm / extract.py: {summary(rate_ratios)}; rounds "
          f"{', '.join(f'{r:.2f}' for r in rate_ratios)}")  # fmt: skip
    print(f"time ratio extract.py / geoplm (geoplm doing the long chains' extra windows): {summary(time_ratios)}")

    last = results[-1]
    print(f"max |geoplm - extract.py| over the {len(short)} chains of <= 1,022 residues: "
          f"{max_difference(last['embedded'], last['extracted'], short):.2e}")  # fmt: skip
    reference = windowed_reference(model, alphabet, sequences, args.layer, args.device)
    print(f"max |geoplm - windowed fair-esm forward| over all {len(sequences)} chains: "
          f"{max_difference(last['embedded'], reference, sequences):.2e}")  # fmt: skip
    used = args.attention if args.attention != "default" else "fused" if args.device == "cpu" else "exact"
    for variant in ("exact", "fused"):
        if variant != used:
            other = geoplm_embed(model, alphabet, fasta, args.layer, args.toks_per_batch, args.device,
                                 **ATTENTION[variant])  # fmt: skip
            to_extract = max_difference(other, last["extracted"], short)
            print(f"--attention {variant}: max |geoplm - extract.py| {to_extract:.2e}, "
                  f"max |geoplm - windowed forward| {max_difference(other, reference, sequences):.2e}")  # fmt: skip
    if args.device.startswith("cuda"):
        gpu_options(model, alphabet, fasta, sequences, args, last["embedded"], geoplm_residues)
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


def gpu_options(model, alphabet, fasta: Path, sequences, args, float32: dict, residues: int) -> None:
    """geoplm's GPU options: time (median of ``--rounds``) and largest difference to the float32 default."""
    variants = [
        ("float32", {}),
        ("float32, fused attention", {"fused_attention": True}),
        ("float16", {"precision": "float16"}),
        ("float16, fused attention", {"precision": "float16", "fused_attention": True}),
        ("bfloat16", {"precision": "bfloat16"}),
        ("bfloat16, fused attention", {"precision": "bfloat16", "fused_attention": True}),
    ]
    scale = max(rep.abs().max().item() for rep in float32.values())
    print(f"GPU options (largest |value| of the float32 embeddings: {scale:.2f}):")
    for label, options in variants:
        times = []
        for _ in range(max(1, args.rounds)):
            synchronize(args.device)
            start = time.perf_counter()
            embedded = geoplm_embed(model, alphabet, fasta, args.layer, args.toks_per_batch, args.device, **options)
            synchronize(args.device)
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        print(f"  {label}: median {median:.3f} s = {residues / median:,.0f} residues/s; max |difference to float32| "
              f"{max_difference(embedded, float32, sequences):.2e}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
