"""Generate the ``sources:`` section of config/sources.yaml and the ``datasets:`` section of config/config.yaml.

Run from the repository root::

    .venv/bin/python config/catalogue/make_catalogue.py > /tmp/catalogue.yaml

Inputs: ``/work/shared/data/SOURCES.tsv`` and ``chains/CHAINS.tsv`` (sample sources, pinned by the
SHA-256 of the shared copy), torchdrug 0.2.1 ``datasets/alphafolddb.py`` (AFDB v2 URLs and MD5s), and
a git snapshot of octavian-ganea/equidock_public (full DB5.5 and EquiDock test sets, pinned by the
SHA-256 of the file at the commit). The output is pasted into config/sources.yaml and config/config.yaml by
hand (its comments are written here).
"""

from __future__ import annotations

import csv
import hashlib
import subprocess
import sys
from pathlib import Path

SHARED = Path("/work/shared/data")
EQUIDOCK_GIT = Path("/work/.mirror/octavian-ganea+equidock_public/repo")
EQUIDOCK_COMMIT = "ac2c754399bf20b50a27d86dbff4f6669788d47f"
TORCHDRUG_AFDB = Path("/work/tdenv/lib/python3.11/site-packages/torchdrug/datasets/alphafolddb.py")
IND = "  "


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def raw_url(repo: str, commit: str, path: str) -> str:
    return f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"


def rows() -> list[dict]:
    with open(SHARED / "SOURCES.tsv") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def entry(url: str, checksum: str | None, name: str | None = None, comment: str | None = None) -> str:
    parts = [f'url: "{url}"' if any(c in url for c in "?#,[]{}") else f"url: {url}"]
    if checksum:
        parts.append(f"checksum: {checksum}")
    if name and name != url.split("?")[0].rsplit("/", 1)[-1]:
        parts.append(f"name: {name}")
    line = f"{IND * 3}- {{{', '.join(parts)}}}"
    return line + (f"   # {comment}" if comment else "")


def shared_entries(selected: list[dict]) -> list[str]:
    out = []
    for row in selected:
        local = SHARED / row["category"] / row["file"]
        name = Path(row["file"]).name
        out.append(entry(raw_url(row["repo"], row["commit"], row["path"]), f"sha256:{sha256(local)}", name))
    return out


def source(name: str, files: list[str], shards: int = 1, comment: str = "", manual: str | None = None) -> str:
    lines = [f"{IND}# {c}" if c else f"{IND}#" for c in comment.strip("\n").split("\n")] if comment else []
    lines.append(f"{IND}{name}:")
    lines.append(f"{IND * 2}shards: {shards}")
    if manual:
        lines.append(f"{IND * 2}manual: >-")
        lines += [f"{IND * 3}{part}" for part in manual.strip().split("\n")]
    lines.append(f"{IND * 2}files:")
    return "\n".join(lines + files) + "\n"


def equidock_entries(prefix: str) -> list[str]:
    listing = subprocess.run(
        ["git", "-C", str(EQUIDOCK_GIT), "ls-tree", "-r", "--name-only", EQUIDOCK_COMMIT, prefix],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    out = []
    for path in sorted(listing):
        blob = subprocess.run(
            ["git", "-C", str(EQUIDOCK_GIT), "cat-file", "blob", f"{EQUIDOCK_COMMIT}:{path}"],
            check=True,
            capture_output=True,
        ).stdout
        name = path.rsplit("/", 1)[-1]
        if "/cv/" in path:  # data/benchmark5.5/cv/cv_3/train.txt -> cv_3_train.txt
            name = f"{path.split('/')[-2]}_{name}"
        out.append(
            entry(
                raw_url("octavian-ganea/equidock_public", EQUIDOCK_COMMIT, path),
                f"sha256:{hashlib.sha256(blob).hexdigest()}",
                name,
            )
        )
    return out


def afdb() -> tuple[list[str], list[str]]:
    text = TORCHDRUG_AFDB.read_text()
    namespace: dict = {}
    start = text.index("    urls = [")
    end = text.index("    species_nsplit")
    exec("class _A:\n" + text[start:end], namespace)  # noqa: S102 - our own copy of two literal lists
    urls, md5s = namespace["_A"].urls, namespace["_A"].md5s
    proteomes = [entry(u, f"md5:{m}") for u, m in zip(urls[:21], md5s[:21], strict=True)]
    swissprot = [entry(urls[21], f"md5:{md5s[21]}")]
    assert urls[21].endswith("swissprot_pdb_v2.tar")
    return proteomes, swissprot


def main() -> None:
    table = rows()
    by_cat = lambda *cats: [r for r in table if r["category"] in cats]  # noqa: E731
    out = []
    w = out.append

    # ---- full reproduction --------------------------------------------------------------------
    proteomes, swissprot = afdb()
    w(
        source(
            "afdb_v2_proteomes",
            proteomes,
            shards=21,
            comment="""
AlphaFold DB v2 model-organism proteomes, species 0-20 in the order of torchdrug's
datasets.AlphaFoldDB (torchdrug 0.2.1, torchdrug/datasets/alphafolddb.py; GearNet Sec. 4 pre-trains
on AlphaFold DB). MD5s as published there. One download shard per tarball.""",
        )
    )
    w(
        source(
            "afdb_swissprot",
            swissprot,
            shards=1,
            comment="""
AlphaFold DB v2 Swiss-Prot (species 21 of torchdrug's datasets.AlphaFoldDB; MD5 as published there).""",
        )
    )
    v4 = [r for r in by_cat("alphafold") if r["file"].endswith(("-model_v4.pdb", "-model_v4.cif", "-model_v4.cif.gz"))]
    v4_lines = []
    for r in v4:
        local = SHARED / "alphafold" / r["file"]
        upstream = r["file"].split("alphafold.ebi.ac.uk_files_")[-1]
        v4_lines.append(entry(f"https://alphafold.ebi.ac.uk/files/{upstream}", f"sha256:{sha256(local)}", r["file"]))
    w(
        source(
            "afdb_v4_entries",
            v4_lines,
            shards=1,
            comment="""
Single AlphaFold DB v4 entries by UniProt accession, at their canonical URLs. Only files that are
that entry and version: named AF-{acc}-F{n}-model_v4 by their source repositories, or saved
responses of that exact URL (ProteinCartography's alphafold.ebi.ac.uk_files_* files, kept under
that local name). Bare-accession and renamed copies (P04629.pdb is a v2 model, O05012.cif, ...) are
left out: their AFDB version is not recorded. Pinned by the SHA-256 of the shared copy (AFDB
publishes no per-file checksum; v4 files are not changed in place).""",
        )
    )

    w(
        source(
            "ec_go_zenodo",
            [
                entry(
                    "https://zenodo.org/record/6622158/files/EnzymeCommission.zip",
                    "md5:33f799065f8ad75f87b709a87293bc65",
                ),
                entry(
                    "https://zenodo.org/record/6622158/files/GeneOntology.zip", "md5:376be1f088cd1fe720e1eaafb701b5cb"
                ),
            ],
            shards=2,
            comment="""
DeepFRI EC and GO datasets as packaged for GearNet (torchdrug 0.2.1 datasets.EnzymeCommission and
datasets.GeneOntology; MD5s as published there).""",
        )
    )
    w(
        source(
            "fold3d",
            [
                entry("https://zenodo.org/record/7593591/files/fold3d.zip", "md5:7b052a94afa4c66f9bebeb9efd769186"),
            ],
            comment="""
SCOPe 1.75 fold classification with 3D structures (GearNet gearnet/dataset.py Fold3D, commit
58ffd58bdeebce541a2ca8b5dd28f61e41c04a47; MD5 as published there).""",
        )
    )
    react = [r for r in by_cat("labels/reaction_ProtFunct")]
    w(
        source(
            "reaction",
            shared_entries(react),
            comment="""
Enzyme reaction (Hermosilla et al. 2021, ProtFunct; GearNet's Reaction task): the label and split
files of phermosilla/IEConv_proteins at a pinned commit (SHA-256 of the shared copy; the files are
immutable at that commit). The structures are IEConv's preprocessed archive, published only as a
Google Drive link without a file name or checksum
(https://drive.google.com/uc?export=download&id=1udP6_90WYkwkvL1LwqIAzf9ibegBJ8rI, IEConv README):
it is not listed here; place it in the mirror by hand to use this dataset in full.""",
        )
    )

    atom3d = [
        (
            "atom3d_psr_year",
            "https://zenodo.org/record/4915648/files/PSR-split-by-year.tar.gz",
            "md5:8647b9d10d0a79dff81d1d83c825e74c",
            "ATOM3D PSR split by year (ESM-GearNet gearnet/dataset.py PSRDataset, commit\n"
            "12aa855d058079b3e6c02e47a250c16cb1e3f784; MD5 as published there).",
        ),
        (
            "atom3d_msp",
            "https://zenodo.org/record/4962515/files/MSP-split-by-sequence-identity-30.tar.gz",
            "md5:6628e8efac12648d3b78bb0fc0d8860c",
            "ATOM3D MSP, 30% sequence identity split (ESM-GearNet MSPDataset; MD5 as published there).",
        ),
        (
            "atom3d_ppi_dips",
            "https://zenodo.org/record/4911102/files/PPI-DIPS-split.tar.gz",
            None,
            "ATOM3D PPI (PIP) DIPS split (atom3d/datasets/datasets.py download_dataset). No checksum:\n"
            "neither ATOM3D nor torchdrug publishes one; the SHA-256 found is recorded on download.",
        ),
        (
            "atom3d_lba_30",
            "https://zenodo.org/record/4914718/files/LBA-split-by-sequence-identity-30.tar.gz",
            "md5:578ef179947bc5e3621bb24db89cbd55",
            "ATOM3D LBA, 30% sequence identity split (atom3d download_dataset). MD5: Zenodo's listing for\n"
            "record 4914718 as quoted (and checked on download) by a third-party project; ATOM3D itself\n"
            "publishes none.",
        ),
        (
            "atom3d_lba_60",
            "https://zenodo.org/record/4914718/files/LBA-split-by-sequence-identity-60.tar.gz",
            None,
            "ATOM3D LBA, 60% sequence identity split (atom3d download_dataset). No published checksum found.",
        ),
    ]
    for name, url, checksum, comment in atom3d:
        w(source(name, [entry(url, checksum)], comment=comment))

    db5_full = [e for e in equidock_entries("data/benchmark5.5")]
    w(
        source(
            "db5_equidock",
            db5_full,
            shards=8,
            comment=f"""
Docking Benchmark 5.5 as distributed with EquiDock (octavian-ganea/equidock_public at commit
{EQUIDOCK_COMMIT}): bound/unbound structures, tables, difficulty lists and the 10 CV
splits (local names cv_<k>_<split>.txt). Pinned by the SHA-256 of each file at that commit (computed
from the git objects; files at a commit are immutable).""",
        )
    )
    w(
        source(
            "db5_test_equidock",
            equidock_entries("test_sets_pdb/db5_test_random_transformed"),
            shards=2,
            comment="""
EquiDock's DB5.5 test set: randomly rotated/translated inputs and ground-truth complexes (same commit;
SHA-256 of the file at the commit).""",
        )
    )
    dips_lists = [r for r in by_cat("dips") if r["file"].startswith("pairs-postprocessed")]
    w(
        source(
            "dips_equidock",
            [
                entry("https://www.dropbox.com/s/sqknqofy58nlosh/DIPS.zip?dl=1", None),
            ]
            + shared_entries(dips_lists),
            comment="""
DIPS as used by EquiDock: the pruned pairs (.dill files) from the Dropbox link of the EquiDock README
(published with ?dl=0, the page; ?dl=1 serves the file; no checksum published) and EquiDock's split
lists (pinned commit, SHA-256 of the shared copy).""",
        )
    )
    w(
        source(
            "dips_test_equidock",
            equidock_entries("test_sets_pdb/dips_test_random_transformed"),
            shards=4,
            comment="""
EquiDock's DIPS test set (100 pairs): randomly transformed inputs and ground-truth complexes (same
commit; SHA-256 of the file at the commit).""",
        )
    )

    w(
        source(
            "casp13_targets",
            [
                entry(
                    "https://predictioncenter.org/download_area/CASP13/targets/casp13.targets.T.4public.tar.gz", None
                ),
            ],
            comment="""
CASP13 target structures (Prediction Center download area; no checksums published). The server
models are per-target tarballs under download_area/CASP13/server_predictions/ (file names such as
<target>.stage2.3D.srv.tar.gz appear in DeepRank's scripts); they are not listed because the target
list and exact file names could not be verified here. Model quality is reproduced on ATOM3D PSR.""",
        )
    )

    gign = [r for r in by_cat("pdbbind") if r["file"].startswith("GIGN_") and r["file"] != "GIGN_toy_examples.csv"]
    w(
        source(
            "pdbbind",
            [
                entry("https://www.pdbbind.org.cn/download/PDBbind_v2020_refined.tar.gz", None),
            ]
            + shared_entries(gign),
            manual="""
PDBbind is licensed: register at http://www.pdbbind.org.cn/, download PDBbind_v2020_refined.tar.gz
(no checksum is published) and place it in the mirror directory (config key 'mirror' or
$GEOPLM_MIRROR) under that name. GIGN's -logK split tables are fetched from GitHub.""",
            comment="""
PDBbind refined set (download name as on pdbbind.org.cn) and GIGN's train/valid/test2013/2016/2019
tables (guaguabujianle/GIGN, pinned commit, SHA-256 of the shared copy).""",
        )
    )

    # ---- samples held by the shared mirror -----------------------------------------------------
    chain_rows = by_cat("chains") + [r for r in by_cat("pdb") if r["repo"] == "flatironinstitute/DeepFRI"]
    labels = by_cat("labels/deepfri_EC_GO", "labels/fold_HomologyTAPE")
    w(
        source(
            "chains_sample",
            shared_entries(chain_rows + labels),
            shards=2,
            comment="""
Real PDB chains (shared chains/ and DeepFRI's example chains) with the DeepFRI EC/GO label and split
files, and SCOPe 1.75 fold lists (IEConv HomologyTAPE), each at its repository's pinned commit (SHA-256 of the
shared copy).""",
        )
    )
    w(
        source(
            "reaction_sample",
            shared_entries(chain_rows + react),
            shards=2,
            comment="""
The chains of chains_sample with the ProtFunct reaction lists (a source of its own: ProtFunct's
training.txt/validation.txt share their names with HomologyTAPE's).""",
        )
    )
    db5_rows = [r for r in by_cat("db5")]
    w(
        source(
            "db5_sample",
            shared_entries(db5_rows),
            comment="""
12 DB5.5 complexes, the benchmark tables and EquiDock's cv_0 split (subset of db5_equidock).""",
        )
    )
    w(
        source(
            "db5_test_sample",
            shared_entries(by_cat("db5/test_random_transformed")),
            comment="""
3 pairs of EquiDock's DB5.5 test set (subset of db5_test_equidock).""",
        )
    )
    w(
        source(
            "dips_sample",
            shared_entries(by_cat("dips/test_random_transformed")),
            comment="""
8 pairs of EquiDock's DIPS test set (subset of dips_test_equidock).""",
        )
    )
    pdbbind_rows = [r for r in table if r["category"].startswith("pdbbind/") and "oddt" not in r["category"]]
    sample_labels = ("GIGN_toy_examples.csv", "GIGN_train.csv", "GIGN_test2016.csv", "GIGN_test2019.csv")
    pdbbind_rows += [r for r in by_cat("pdbbind") if r["file"] in sample_labels]
    w(
        source(
            "pdbbind_sample",
            shared_entries(pdbbind_rows),
            comment="""
13 complexes in PDBbind layout (GIGN toy set, EquiBind, DiffDock), GIGN's toy -logK table and the GIGN
tables that label all 13 (train, test2016, test2019).""",
        )
    )
    w(
        source(
            "pdbbind_index_sample",
            shared_entries(by_cat("pdbbind/oddt_mini_pdbbind")),
            comment="""
ODDT's mini PDBbind: genuine INDEX files (2007/2013/2016 formats, trimmed) with matching complexes.""",
        )
    )
    casp = by_cat("casp/T0980s1")
    casp_lines = [
        entry(
            raw_url(r["repo"], r["commit"], r["path"]),
            f"sha256:{sha256(SHARED / r['category'] / r['file'])}",
            r["file"],
        )
        for r in casp
        if r["repo"] != "(generated here)"
    ]
    for r in by_cat("casp/T0980s1/models"):
        tar_path, member = r["path"].split("::")
        local = SHARED / r["category"] / r["file"]
        casp_lines.append(entry(f"file://{local}", f"sha256:{sha256(local)}", comment=f"member {member}"))
    for r in casp:
        if r["repo"] == "(generated here)" and (SHARED / r["category"] / r["file"]).exists():
            local = SHARED / r["category"] / r["file"]
            casp_lines.append(entry(f"file://{local}", f"sha256:{sha256(local)}", comment="generated locally"))
    deeprank = [r for r in by_cat("casp/T0980s1/models")][0]
    w(
        source(
            "casp_sample",
            casp_lines,
            comment=f"""
CASP13 T0980s1: native domain (jianlin-cheng/DeepRank3) and target FASTA (jianlin-cheng/DeepRank) at
pinned commits, SHA-256 of the shared copy. The 15 server models are members of
{raw_url(deeprank["repo"], deeprank["commit"], deeprank["path"].split("::")[0])}
-- no URL serves a member alone -- and the GDT-TS/TM-score labels were computed for the shared data
with TMscore (USalign), not taken from CASP. Both are therefore named by file:// URLs of their copies
in the shared data folder (mirror only; they cannot be downloaded), pinned by SHA-256.""",
        )
    )
    for sub, cat in (
        ("", "atom3d_lmdb"),
        ("_label", "atom3d_lmdb/extra/test_lmdb_with_label"),
        ("_old", "atom3d_lmdb/extra/test_lmdb_old"),
    ):
        w(
            source(
                f"atom3d_lmdb{sub}_sample",
                shared_entries(by_cat(cat)),
                comment=f"""
ATOM3D test LMDB ({by_cat(cat)[0]["path"].rsplit("/", 1)[0]} of drorlab/atom3d).""",
            )
        )
    sys.stdout.write("sources:\n" + "\n".join(out) + "\n" + datasets())


def chain_map() -> dict[str, str]:
    """Chain file name -> PDB chain ("1AB8-A") for files not named by their chain (CHAINS.tsv)."""
    with open(SHARED / "chains" / "CHAINS.tsv") as handle:
        table = list(csv.DictReader(handle, delimiter="\t"))
    out = {}
    for row in table:
        stem = row["file"]
        for suffix in (".gz", ".pdb", ".ent", ".cif"):
            stem = stem.removesuffix(suffix)
        if stem != row["pdb_chain"]:
            out[row["file"]] = row["pdb_chain"]
    return out


def dataset(
    name: str,
    source_name: str,
    reader: str,
    shards: int,
    options: dict | None = None,
    comment: str = "",
    subset: str | None = None,
) -> str:
    lines = [f"{IND}# {c}" for c in comment.strip().split("\n")] if comment else []
    lines += [f"{IND}{name}:", f"{IND * 2}source: {source_name}", f"{IND * 2}reader: {reader}"]
    if subset:
        lines.append(f"{IND * 2}subset: {subset}")
    lines.append(f"{IND * 2}shards: {shards}")
    if options:
        lines.append(f"{IND * 2}options:")
        for key, value in options.items():
            if isinstance(value, dict):
                lines.append(f"{IND * 3}{key}:")
                lines += [f"{IND * 4}{k}: {v}" for k, v in value.items()]
            else:
                text = str(value).lower() if isinstance(value, bool) else value
                lines.append(f"{IND * 3}{key}: {text}")
    return "\n".join(lines) + "\n"


def datasets() -> str:
    out = ["datasets:"]
    w = out.append
    w(
        dataset(
            "toy_res",
            "atom3d_res_cath",
            "atom3d_lmdb",
            64,
            subset="test",
            comment=("Wu et al. toy tasks: the ATOM3D RES test LMDB, split at random (atom3d split_randomly)."),
        ).replace(
            "    shards: 64\n", "    shards: 64\n    split: {seed: 0, fractions: {train: 0.8, valid: 0.1, test: 0.1}}\n"
        )
    )
    w(
        dataset(
            "afdb_v2",
            "afdb_v2_proteomes",
            "alphafold",
            256,
            {"min_mean_plddt": 0.0},
            comment=(
                "GearNet pre-training structures: every model of the 21 proteomes (no pLDDT filter in\n"
                "torchdrug's AlphaFoldDB)"
            ),
        )
    )
    w(dataset("afdb_swissprot", "afdb_swissprot", "alphafold", 256, {"min_mean_plddt": 0.0}))
    w(dataset("afdb_v4_sample", "afdb_v4_entries", "alphafold", 2, {"min_mean_plddt": 0.0}))
    for task, shards in (("ec", 64), ("go_bp", 128), ("go_mf", 128), ("go_cc", 128)):
        w(dataset(task, "ec_go_zenodo", "labelled_chains", shards, {"task": task}))
    w(dataset("fold", "fold3d", "labelled_chains", 32, {"task": "fold"}))
    w(
        dataset(
            "reaction",
            "reaction",
            "labelled_chains",
            64,
            {"task": "reaction"},
            comment=("Needs IEConv's ProtFunct structures placed in the mirror by hand (see sources.reaction)."),
        )
    )
    atom3d = (
        ("psr", "atom3d_psr_year", {"train": 64, "val": 8, "test": 16}),
        ("msp", "atom3d_msp", {"train": 16, "val": 4, "test": 4}),
        ("ppi", "atom3d_ppi_dips", {"train": 256, "val": 32, "test": 32}),
    )
    for name, source_name, splits in atom3d:
        task = name.split("_")[0]
        for split, shards in splits.items():
            w(dataset(f"{name}_{split}", source_name, "atom3d_lmdb", shards, {"task": task, "subset": split}))
    # LBA: the three folders as one dataset's splits (one record per complex)
    for name in ("lba_30", "lba_60"):
        splits = {"train": "train", "valid": "val", "test": "test"}
        w(dataset(name, f"atom3d_{name}", "atom3d_lmdb", 12, {"task": "lba", "splits": splits}))
    w(dataset("db5", "db5_equidock", "db5", 8))
    w(dataset("db5_test", "db5_test_equidock", "db5", 2))
    w(
        dataset(
            "dips",
            "dips_equidock",
            "dips",
            128,
            comment=("No per-.dill checksums are published (options.checksums left empty)."),
        )
    )
    w(dataset("dips_test", "dips_test_equidock", "dips", 4))
    gign = {
        "train": "GIGN_train.csv",
        "valid": "GIGN_valid.csv",
        "test": "GIGN_test2016.csv",  # one split per complex: test2013 (CASF-2013) overlaps CASF-2016
    }
    w(dataset("pdbbind", "pdbbind", "pdbbind", 16, {"protein": "pocket", "splits": gign}))
    mapping = chain_map()
    # no GO samples: the shared mirror lacks DeepFRI's GO annotation file (nrPDB-GO_2019.06.18_annot.tsv)
    for task in ("ec", "fold", "reaction"):
        w(
            dataset(
                f"{task}_sample",
                "reaction_sample" if task == "reaction" else "chains_sample",
                "labelled_chains",
                2,
                {"task": task, "chain_map": "*chain_map" if task != "ec" else "&chain_map"},
            )
        )
    w(dataset("db5_sample", "db5_sample", "db5", 1))
    w(dataset("db5_test_sample", "db5_test_sample", "db5", 1))
    w(dataset("dips_sample", "dips_sample", "dips", 1))
    w(
        dataset(
            "pdbbind_sample",
            "pdbbind_sample",
            "pdbbind",
            1,
            # -logK of all 13 complexes (12 with a pocket file); splits drawn by seed
            {"protein": "pocket", "labels": ["GIGN_train.csv", "GIGN_test2016.csv", "GIGN_test2019.csv"]},
        )
    )
    w(dataset("pdbbind_index_sample", "pdbbind_index_sample", "pdbbind", 1, {"protein": "pocket"}))
    # the labelled target's models carry no TARGET record and download into one folder
    w(dataset("casp_sample", "casp_sample", "casp", 1, {"require_labels": True, "target": "T0980s1"}))
    for sub in ("", "_label", "_old"):
        w(dataset(f"atom3d_lmdb{sub}_sample", f"atom3d_lmdb{sub}_sample", "atom3d_lmdb", 1, {"task": "res"}))
    text = "\n".join(out)
    anchor = "\n".join(f'{IND * 4}{k}: "{v}"' for k, v in sorted(mapping.items()))
    return text.replace("chain_map: &chain_map\n", "chain_map: &chain_map\n" + anchor + "\n").replace(
        "chain_map: &chain_map", "chain_map: &chain_map"
    )


if __name__ == "__main__":
    main()
