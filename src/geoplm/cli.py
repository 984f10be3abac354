"""``geoplm``: the workflow's steps from the command line, for use without Snakemake.

Each subcommand runs the same function as the corresponding Snakemake rule::

    geoplm download  --url URL [--url URL ...] --out-dir DIR --manifest download.tsv [--mirror DIR]
    geoplm parse     --downloads download.tsv --out records.pt [--on-error fail]
    geoplm graphs    --records records.pt --out graphs.pt
    geoplm random-esm --out esm2_tiny.pt --num-layers 2 --embed-dim 64 --attention-heads 4
    geoplm embed     --records records.pt --checkpoint esm2_t33_650M_UR50D.pt --repr-layer 33 \
                     --store DIR --index index.tsv
    geoplm train     --config config/config.yaml [config/demo.yaml] --task T --model M \
                     --records a.pt [b.pt ...] --manifest m.tsv --out DIR \
                     [--embeddings index.tsv ... | --esm-checkpoint esm2_t33_650M_UR50D.pt --plm P]
    geoplm embed-structures --structures my.tsv|FOLDER --encoder RUN_DIR|PRETRAINED [--model M] [--plm P] \
                     [--config config/config.yaml ...] [--out results/embed/NAME] [--shards N] [--shard K]
    geoplm check-config config/config.yaml [config/demo.yaml ...]

Errors on bad input print one line naming the file, entry or key and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from geoplm import steps
from geoplm.errors import GeoplmError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geoplm", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("download", help="fetch files by URL (mirror first), checksummed")
    p.add_argument("--url", action="append", required=True, help="canonical URL; repeat for several")
    p.add_argument("--checksum", action="append", default=[], help="sha256:/md5: digest per --url, in order")
    p.add_argument("--out-dir", required=True, help="directory the files go to")
    p.add_argument("--manifest", required=True, help="download manifest TSV written last (file, url, sha256, origin)")
    p.add_argument("--mirror", help="directory searched by file name before the network ($GEOPLM_MIRROR wins)")
    p.add_argument("--lock", help="checksum lock file pinning files given without --checksum (checksums.lock.tsv)")

    p = sub.add_parser("parse", help="structure files listed in download manifests -> record shard")
    p.add_argument("--downloads", nargs="+", required=True, help="download manifests whose files are parsed")
    p.add_argument("--out", required=True, help="record shard (.pt); manifest and skipped TSVs go beside it")
    p.add_argument("--on-error", choices=["skip", "fail"], default="skip",
                   help="skip: bad entries go to the skipped report; fail: the first stops the run")  # fmt: skip
    p.add_argument("--split-seed", type=int, default=0, help="seed of the 80/10/10 random split")

    p = sub.add_parser("graphs", help="GearNet residue graphs of a record shard")
    p.add_argument("--records", required=True, help="record shard (.pt) from parse")
    p.add_argument("--out", required=True, help="graph shard (.pt): each record's edge list")

    p = sub.add_parser("random-esm", help="a randomly initialised ESM-2 in fair-esm's checkpoint format")
    p.add_argument("--out", required=True, help="checkpoint path; its stem must start with 'esm2'")
    p.add_argument("--num-layers", type=int, default=2, help="transformer layers")
    p.add_argument("--embed-dim", type=int, default=64, help="embedding width")
    p.add_argument("--attention-heads", type=int, default=4, help="attention heads (dividing --embed-dim)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")

    p = sub.add_parser("embed", help="ESM-2 per-residue embeddings of a record shard into a store")
    p.add_argument("--records", required=True, help="record shard (.pt) whose sequences are embedded")
    p.add_argument("--checkpoint", required=True, help="fair-esm ESM-2 checkpoint (.pt)")
    p.add_argument("--checksum", help="sha256: digest the checkpoint must have")
    p.add_argument("--repr-layer", type=int, required=True, help="the layer whose output is stored")
    p.add_argument("--toks-per-batch", type=int, default=4096, help="tokens per ESM-2 batch")
    p.add_argument("--store", required=True, help="embedding store root (files keyed by sequence hash)")
    p.add_argument("--plm", help="store namespace (default: the checkpoint's stem)")
    p.add_argument("--index", required=True, help="index TSV written: record id -> embedding file")

    p = sub.add_parser("train", help="train and evaluate one run of a configured task and model")
    p.add_argument("--config", nargs="+", required=True, help="config files, later merged over earlier")
    p.add_argument("--task", required=True, help="a 'tasks' entry of the config")
    p.add_argument("--model", required=True, help="a 'models' entry of the config")
    p.add_argument("--manifest", required=True, help="the dataset manifest (id, split, ...)")
    p.add_argument("--records", nargs="+", required=True, help="the dataset's record shards")
    p.add_argument("--graphs", nargs="*", default=[], help="cached graph shards (none: graphs built per batch)")
    p.add_argument("--embeddings", nargs="*", default=[], help="embed index TSVs (none: residue one-hot)")
    p.add_argument(
        "--esm-checkpoint", help="ESM-2 checkpoint to fine-tune inside the model (esm_gearnet, freeze_esm: false)"
    )
    p.add_argument("--plm", help="the configured plm of --esm-checkpoint (its repr_layer, window, checksum)")
    p.add_argument("--seed", type=int, default=0, help="seeds Python, NumPy, torch and the batch order")
    p.add_argument("--out", required=True, help="directory for metrics.json and model.pt")

    p = sub.add_parser(
        "embed-structures",
        help="your structures through a trained encoder: embeddings (and predictions of a fine-tuned run)",
        description="Per-residue and per-protein features of the structures of a sheet (TSV: id, path, chain) or a "
        "folder, from a fine-tuned run (then its task's predictions too) or a 'pretrained' entry (geoplm.apply).",
    )
    p.add_argument("--structures", required=True, help="a TSV sheet (columns id, path, chain) or a folder")
    p.add_argument("--encoder", required=True,
                   help="a training run folder, task/model/plm/pretrain/seedN, or a 'pretrained' entry")  # fmt: skip
    p.add_argument("--model", help="the 'models' entry of a 'pretrained' encoder")
    p.add_argument("--plm", help="the 'plms' entry of a 'pretrained' encoder (default: none)")
    p.add_argument("--config", nargs="+", default=["config/config.yaml"], help="config files, merged in order")
    p.add_argument("--out", help="output folder (default: results/embed/<sheet>-<encoder>)")
    p.add_argument("--shards", type=int, default=1, help="structures dealt to this many shards by crc32(id)")
    p.add_argument("--shard", type=int, help="run this shard only (no gathering)")
    p.add_argument("--max-residues", type=int, default=4096, help="residues per batch")
    p.add_argument("--threshold", type=float, default=0.5, help="lowest score of a predicted class / term")
    p.add_argument("--top-k", type=int, default=10, help="most classes / terms predicted per protein")
    p.add_argument("--truncate", type=int, help="keep at most this many residues per protein (the first ones)")
    p.add_argument("--results", default="results", help="the workflow's results folder (runs, pretrainings)")
    p.add_argument("--resources", default="resources", help="the workflow's resources folder (checkpoints)")
    p.add_argument("--device", default="auto", choices=list(steps.DEVICES),
                   help="auto: a usable GPU, else the CPU; cuda: fail without one; cpu")  # fmt: skip

    p = sub.add_parser(
        "check-config",
        help="check config files as the workflow does (later merged over earlier, as --configfile)",
        description="Check config files as the workflow does: YAML syntax (file and line), every model, task and "
        "graph entry's keys by its type / kind, the schema, and the names entries refer to.",
    )
    p.add_argument("files", nargs="+", help="config files, e.g. config/config.yaml config/demo.yaml")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; return the exit status (2 on bad input)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "check-config":
            _check_config(args.files)
        else:
            with steps.logged(None):
                _run(args)
    except GeoplmError as error:
        print(f"geoplm {args.command}: {error}", file=sys.stderr)
        return 2
    return 0


def _check_config(files: list[str]) -> None:
    """``geoplm check-config``: load the files as the workflow does; print a line saying they are valid.

    Raises:
        ConfigError: naming the file, line and key path (:func:`geoplm.config.load_config`).
    """
    from geoplm import config as geoplm_config

    config = geoplm_config.load_config(*files)
    counts = ", ".join(f"{len(config.get(section) or {})} {section}" for section in ("models", "tasks", "tables"))
    print(f"{' + '.join(files)}: valid ({counts})")


def _run(args: argparse.Namespace) -> None:
    if args.command == "download":
        checksums = args.checksum + [None] * (len(args.url) - len(args.checksum))
        files = [{"url": url, "checksum": checksum} for url, checksum in zip(args.url, checksums, strict=True)]
        table = steps.download_files(files, args.out_dir, args.manifest, args.mirror, lock=args.lock)
        missing = table[table["origin"] == "missing"]
        if len(missing):
            raise GeoplmError(f"{len(missing)} of {len(table)} files missing: {'; '.join(missing['reason'])}")
    elif args.command == "parse":
        out = Path(args.out)
        stem = out.with_suffix("")
        manifest, skipped = f"{stem}.manifest.tsv", f"{stem}.skipped.tsv"
        steps.parse_structure_files(args.downloads, out, manifest, skipped, stem.name, args.on_error)
        steps.gather_records([manifest], [skipped], manifest, skipped, {"seed": args.split_seed})
    elif args.command == "graphs":
        steps.build_graphs(args.records, args.out, {})
    elif args.command == "random-esm":
        steps.build_random_esm(
            args.out,
            {
                "num_layers": args.num_layers,
                "embed_dim": args.embed_dim,
                "attention_heads": args.attention_heads,
                "seed": args.seed,
            },
        )
    elif args.command == "embed":
        settings = {"repr_layer": args.repr_layer, "toks_per_batch": args.toks_per_batch, "checksum": args.checksum}
        plm = args.plm or Path(args.checkpoint).stem
        steps.embed_records(args.records, args.checkpoint, args.index, args.store, plm, settings, steps.device())
    elif args.command == "embed-structures":
        from geoplm import apply
        from geoplm import config as geoplm_config

        config = geoplm_config.load_config(*args.config)
        out = args.out
        if out is None:
            spec = apply.resolve_encoder(config, args.encoder, args.model, args.plm, results=args.results)
            out = Path(args.results) / "embed" / apply.run_name(args.structures, spec)
        summary = apply.run(
            args.structures, args.encoder, config, out, model=args.model, plm=args.plm, shards=args.shards,
            only_shard=args.shard, max_residues=args.max_residues, threshold=args.threshold, top_k=args.top_k,
            truncate=args.truncate, device=steps.device(args.device), results=args.results, resources=args.resources,
        )  # fmt: skip
        if summary is not None:
            print(apply.describe(summary))
    elif args.command == "train":
        from geoplm import config as geoplm_config
        from geoplm import train

        config = geoplm_config.load_config(*args.config)
        for section, name in (("tasks", args.task), ("models", args.model), ("plms", args.plm)):
            if name is None:
                continue
            if name not in config[section]:
                raise GeoplmError(f"{args.config}: no entry '{name}' under '{section}'")
        model = config["models"][args.model]
        out = Path(args.out)
        train.run(
            config["tasks"][args.task],
            model,
            args.manifest,
            args.records,
            args.embeddings,
            seed=args.seed,
            metrics_path=out / "metrics.json",
            checkpoint_path=out / "model.pt",
            run_name=f"{args.task}/{args.model}",
            device=steps.device(),
            graphs=args.graphs,
            graph_settings=geoplm_config.graph_settings(config, model.get("graph", "gearnet")),
            esm_checkpoint=args.esm_checkpoint,
            esm_settings=config["plms"][args.plm] if args.plm else None,
            task_name=args.task,
            model_name=args.model,
        )


if __name__ == "__main__":
    sys.exit(main())
