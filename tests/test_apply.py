"""Your own structures through a trained encoder (geoplm.apply, rule embed, geoplm embed-structures), on the real
structures of the shared data folder: the sheet, the output layout, equality with the encoder inside training,
incremental reruns, pretrained entries and the command line."""

from __future__ import annotations

import gzip
import json
import shutil

import pandas as pd
import pytest
import torch

from geoplm import apply, cli, structure, train
from geoplm.tasks import get_task
from geoplm.tasks.base import TaskModel

MODEL = {"type": "gearnet", "graph": "gearnet", "hidden_dims": [16, 16], "num_angle_bin": 8, "short_cut": True,
         "batch_norm": True, "concat_hidden": True, "readout": "sum"}  # fmt: skip
TASK = {"dataset": "mine", "kind": "multilabel", "epochs": 1, "batch_size": 2, "lr": 1e-3}
CONFIG = {"models": {"tiny_edge": MODEL}, "tasks": {"ec": TASK}, "graphs": {}, "datasets": {}, "plms": {},
          "pretrained": {"mine": {"pretraining": "my_pretraining"}}}  # fmt: skip
NAMES = ["1.1.1.1", "2.7.11.1", "3.2.1.17"]
TRAIN_FILES = ["pdb/103l.pdb", "pdb/1dix.pdb", "pdb/1o1z.pdb", "pdb/1lds.pdb"]


def _records(shared_data, files):
    return [structure.parse_structure(shared_data / f)[0] for f in files]


@pytest.fixture(scope="module")
def run_dir(shared_data, tmp_path_factory):
    """A fine-tuned run of a 3-term multilabel task (GearNet-Edge, 1 epoch) written by the training loop itself,
    at results/train/ec/tiny_edge/none/none/seed0; with the task and the network it trained."""
    results = tmp_path_factory.mktemp("results")
    out = results / "train" / "ec" / "tiny_edge" / "none" / "none" / "seed0"
    records = _records(shared_data, TRAIN_FILES)
    for i, record in enumerate(records):  # labels as the labelled_chains reader writes them
        terms = [i % 3, (i + 1) % 3]
        record["labels"] = {"ec": [NAMES[t] for t in terms], "target": terms, "num_classes": 3}
    task = get_task(TASK, "ec")
    split_of = {r["id"]: s for r, s in zip(records, ["train", "train", "valid", "test"], strict=True)}
    splits = task.build_examples(records, split_of, task.input_loader())
    train.fit(task, MODEL, splits, 0, out / "metrics.json", out / "model.pt", input_dim=21, model_name="tiny_edge")
    return results, out, task, splits


def _sheet(tmp_path, rows, name="sheet.tsv"):
    path = tmp_path / name
    path.write_text("id\tpath\tchain\n" + "".join("\t".join(row) + "\n" for row in rows))
    return path


def test_sheet_mixed_formats_chains_and_bad_rows(shared_data, tmp_path):
    garbage = tmp_path / "garbage.pdb"
    garbage.write_text("this is not a structure\n")
    truncated = tmp_path / "cut.pdb.gz"
    truncated.write_bytes(gzip.compress((shared_data / "pdb/103l.pdb").read_bytes())[:500])
    (tmp_path / "notes.txt").write_text("x")
    sheet = _sheet(tmp_path, [
        ("lys", str(shared_data / "pdb/103l.pdb"), ""),           # PDB
        ("lys_cif", str(shared_data / "pdb/103l.cif"), ""),       # mmCIF
        ("lys_gz", str(shared_data / "pdb/117e.pdb.gz"), "A"),    # gzipped PDB, one chain
        ("hb", str(shared_data / "pdb/4hhb.cif"), "A,B"),         # two chains of an mmCIF file
        ("asn", str(shared_data / "pdb/11as.pdb"), "Z"),          # a chain the file lacks
        ("gone", str(tmp_path / "missing.pdb"), ""),              # no such file
        ("garbage", str(garbage), ""),                            # not a structure
        ("cut", str(truncated), ""),                              # truncated gzip
        ("notes", "notes.txt", ""),                               # not a structure file name (relative path)
        ("lys", str(shared_data / "pdb/103l.pdb"), ""),           # an id given twice
        ("afdb", str(shared_data / "alphafold"), ""),             # a folder of AlphaFold DB models
    ])  # fmt: skip
    units, skipped = apply.read_sheet(sheet)
    reasons = {row["entry"]: row["reason"] for row in skipped}
    assert "no such file" in reasons["gone"]
    assert "not a PDB / mmCIF file" in reasons["notes"]
    assert "given twice" in reasons["lys"]
    keys = [u.key for u in units]
    assert keys[:7] == ["lys", "lys_cif", "lys_gz", "hb", "asn", "garbage", "cut"]
    # the folder: one unit per AFDB entry (PDB/mmCIF pairs and older versions read once), json / dssp ignored
    afdb = [u for u in units if u.entry == "afdb"]
    assert len({u.key for u in afdb}) == len(afdb) and "AF-Q5VSL9-F1" in {u.key for u in afdb}
    assert next(u for u in afdb if u.key == "AF-Q5VSL9-F1").path.name == "AF-Q5VSL9-F1-model_v4.cif"
    assert not any(u.path.suffix in (".json", ".dssp") for u in afdb)

    pairs, bad = apply._units_records([u for u in units if u.entry != "afdb"], 0, 1)
    ids = [record["id"] for record, _ in pairs]
    assert ids == ["lys", "lys_cif", "lys_gz", "hb_A", "hb_B"]
    assert {r["chain"] for r, _ in pairs if r["id"].startswith("hb")} == {"A", "B"}
    bad_reasons = {row["entry"]: row["reason"] for row in bad}
    assert "'Z'" in bad_reasons["asn"] and set(bad_reasons) == {"asn", "garbage", "cut"}


def test_outputs_load_back_with_ids_shapes_and_named_predictions(run_dir, shared_data, tmp_path):
    results, out, _, _ = run_dir
    sheet = _sheet(tmp_path, [
        ("lys", str(shared_data / "pdb/103l.pdb"), ""),
        ("hb", str(shared_data / "pdb/4hhb.cif"), "A,B"),
        ("p53", str(shared_data / "alphafold/AF-P04637-F1-model_v4.pdb"), ""),
        ("gone", str(tmp_path / "missing.pdb"), ""),
    ])  # fmt: skip
    summary = apply.run(sheet, str(out), CONFIG, tmp_path / "emb", shards=2, threshold=0.0, top_k=2,
                        results=results, resources=tmp_path / "resources")  # fmt: skip
    assert summary["proteins"] == 4 and summary["skipped"] == 1
    frame = pd.read_parquet(tmp_path / "emb" / "proteins.parquet")
    assert sorted(frame["id"]) == ["hb_A", "hb_B", "lys", "p53"]
    seen = {}
    for path in sorted((tmp_path / "emb" / "shards").glob("*.pt")):
        shard = torch.load(path, weights_only=True)  # the one line a user writes
        d = shard["protein_features"].shape[1] if shard["ids"] else None
        for i, rid in enumerate(shard["ids"]):
            residues = shard["residue_features"][i]
            assert residues.shape == (len(shard["sequences"][i]), d) == (len(shard["residue_numbers"][i]), d)
            assert torch.isfinite(residues).all()
            row = frame[frame["id"] == rid].iloc[0]
            assert torch.allclose(torch.tensor(row["embedding"]), shard["protein_features"][i])
            assert shard["scores"][i].shape == (3,) and shard["class_names"] == NAMES
            seen[rid] = shard
    record = structure.parse_structure(shared_data / "pdb/103l.pdb")[0]
    lys = seen["lys"]
    assert torch.equal(lys["residue_numbers"][lys["ids"].index("lys")], record["residue_number"])
    predictions = pd.read_csv(tmp_path / "emb" / "predictions.tsv", sep="\t")
    assert len(predictions) == 8 and set(predictions["label"]) <= set(NAMES) and set(predictions["rank"]) == {1, 2}
    skipped = pd.read_csv(tmp_path / "emb" / "skipped.tsv", sep="\t")
    assert list(skipped["entry"]) == ["gone"]
    settings = json.loads((tmp_path / "emb" / "settings.json").read_text())
    assert settings["task"] == "ec" and settings["model"] == "tiny_edge" and settings["summary"]["proteins"] == 4
    loaded = apply.load_embeddings(tmp_path / "emb")
    assert set(loaded) == {"hb_A", "hb_B", "lys", "p53"}


def test_embeddings_and_scores_equal_the_encoder_inside_training(run_dir, shared_data):
    results, out, task, splits = run_dir
    spec = apply.resolve_encoder(CONFIG, "ec/tiny_edge/none/none/seed0", results=results)
    assert spec.weights == out / "model.pt" and spec.task == "ec"
    loaded = apply.load_encoder(spec, CONFIG)
    # the trained network, as the loop left it (best weights), evaluated the way the loop evaluates
    state = torch.load(out / "model.pt", weights_only=True)
    net = task.build_model(MODEL, 21, False, name="tiny_edge")
    net.load_state_dict(state["model"])
    net.eval()
    examples = [e for split in splits.values() for e in split]
    with torch.no_grad():
        graph_feature = task.encode(net, [e.proteins[0] for e in examples])["graph_feature"]
        _, gathered = train.evaluate_split(task, net, examples)
    records = {r["id"]: r for r in _records(shared_data, TRAIN_FILES)}
    encoded, skipped = apply.encode_records(loaded, [records[e.id] for e in examples], max_residues=600)
    assert not skipped
    ours = torch.stack([encoded[e.id]["protein_features"] for e in examples])
    torch.testing.assert_close(ours, graph_feature, rtol=1e-5, atol=1e-4)
    scores = torch.stack([encoded[e.id]["scores"] for e in examples])
    torch.testing.assert_close(scores, torch.sigmoid(gathered["pred"]), rtol=1e-5, atol=1e-6)
    assert loaded.class_names == NAMES  # saved by the task (MultiLabelFunction.state)


def test_rerun_with_more_structures_encodes_only_the_new_ones(run_dir, shared_data, tmp_path, monkeypatch):
    results, out, _, _ = run_dir
    loaded = apply.load_encoder(apply.resolve_encoder(CONFIG, str(out)), CONFIG)
    rows = [("lys", str(shared_data / "pdb/103l.pdb"), ""),
            ("p53", str(shared_data / "alphafold/AF-P04637-F1-model_v4.pdb"), "")]  # fmt: skip
    shard, skipped = tmp_path / "emb" / "shards" / "0000.pt", tmp_path / "emb" / "shards" / "0000.skipped.tsv"
    first = apply.embed_shard(_sheet(tmp_path, rows), loaded, 0, 1, shard, skipped)
    assert first == {"records": 2, "reused": 0, "encoded": 2, "skipped": 0}
    before = torch.load(shard, weights_only=True)
    shard.unlink()  # Snakemake removes a job's outputs before it runs: the hard link in .previous/ keeps the rows
    rows.append(("hb", str(shared_data / "pdb/4hhb.cif"), "A"))
    encoded = []
    original = apply.encode_records
    monkeypatch.setattr(apply, "encode_records", lambda loaded, records, *a, **k: (
        encoded.extend(r["id"] for r in records), original(loaded, records, *a, **k))[1])  # fmt: skip
    second = apply.embed_shard(_sheet(tmp_path, rows), loaded, 0, 1, shard, skipped)
    assert second == {"records": 3, "reused": 2, "encoded": 1, "skipped": 0} and encoded == ["hb"]
    after = torch.load(shard, weights_only=True)
    for rid in ("lys", "p53"):
        i, j = before["ids"].index(rid), after["ids"].index(rid)
        assert torch.equal(before["protein_features"][i], after["protein_features"][j])
    # a file whose coordinates changed (the first Cα moved by 1 Å) is encoded again: its digest differs
    lines = (shared_data / "pdb/103l.pdb").read_text().splitlines(keepends=True)
    first_ca = next(i for i, line in enumerate(lines) if line.startswith("ATOM") and line[12:16] == " CA ")
    line = lines[first_ca]
    lines[first_ca] = f"{line[:30]}{float(line[30:38]) + 1.0:8.3f}{line[38:]}"
    changed = tmp_path / "103l_moved.pdb"
    changed.write_text("".join(lines))
    rows[0] = ("lys", str(changed), "")
    encoded.clear()
    third = apply.embed_shard(_sheet(tmp_path, rows), loaded, 0, 1, shard, skipped)
    assert encoded == ["lys"] and third["reused"] == 2


def test_pretrained_entry_and_the_command_line(shared_data, tmp_path, capsys):
    from geoplm.models.zoo import build_encoder

    encoder, _ = build_encoder(MODEL, 21, name="tiny_edge")
    weights = tmp_path / "results" / "pretrain" / "tiny_edge" / "none" / "my_pretraining" / "encoder.pt"
    weights.parent.mkdir(parents=True)
    torch.save(encoder.state_dict(), weights)
    spec = apply.resolve_encoder(CONFIG, "mine", "tiny_edge", results=tmp_path / "results")
    assert (spec.weights, spec.part, spec.task) == (weights, "encoder_state", None)
    with pytest.raises(apply.ConfigError, match="name the models entry"):
        apply.resolve_encoder(CONFIG, "mine")
    with pytest.raises(apply.ConfigError, match="neither a training run"):
        apply.resolve_encoder(CONFIG, "nothing_of_that_name")
    loaded = apply.load_encoder(spec, CONFIG)
    record = structure.parse_structure(shared_data / "pdb/103l.pdb")[0]
    encoded, _ = apply.encode_records(loaded, [record])
    encoder.eval()
    net = TaskModel(encoder, torch.nn.Identity())
    task = get_task(TASK, "ec")
    with torch.no_grad():
        expected = task.encode(net, [task.input_loader()(record)])["graph_feature"][0]
    torch.testing.assert_close(encoded[record["id"]]["protein_features"], expected, rtol=1e-5, atol=1e-4)
    assert encoded[record["id"]]["scores"] is None

    # geoplm embed-structures on a folder, with the project's config: its `pretrained` entry mc (pretraining
    # gearnet_mc), here for the tiny model of a second config file
    extra = tmp_path / "extra.yaml"
    extra.write_text("models:\n  tiny_edge: " + json.dumps(MODEL) + "\n")
    mc = tmp_path / "results" / "pretrain" / "tiny_edge" / "none" / "gearnet_mc" / "encoder.pt"
    mc.parent.mkdir(parents=True)
    shutil.copy(weights, mc)
    folder = tmp_path / "mine"
    folder.mkdir()
    shutil.copy(shared_data / "pdb/103l.pdb", folder)
    shutil.copy(shared_data / "alphafold/AF-P04637-F1-model_v4.pdb", folder)
    status = cli.main(["embed-structures", "--structures", str(folder), "--encoder", "mc", "--model", "tiny_edge",
                       "--config", "config/config.yaml", str(extra), "--results", str(tmp_path / "results"),
                       "--out", str(tmp_path / "cli"), "--device", "cpu"])  # fmt: skip
    assert status == 0, capsys.readouterr().err
    assert "2 proteins embedded" in capsys.readouterr().out
    frame = pd.read_parquet(tmp_path / "cli" / "proteins.parquet")
    assert sorted(frame["id"]) == ["103l", "AF-P04637-F1"]
    assert pd.read_csv(tmp_path / "cli" / "predictions.tsv", sep="\t").empty


def test_a_fine_tuned_esm_gearnet_run_embeds_with_its_esm2_inside(shared_data, tmp_path):
    """ESM-GearNet with ESM-2 fine-tuned inside the model (a random tiny ESM-2 in fair-esm's format, loaded from the
    plm's checkpoint path as the workflow writes it): its embeddings equal the encoder's output inside training."""
    from geoplm.esm import load_esm2, write_random_esm2_checkpoint

    plm = {"random_init": {"num_layers": 1, "embed_dim": 16, "attention_heads": 2, "seed": 0}, "repr_layer": 1}
    checkpoint = tmp_path / "resources" / "esm" / "random_init" / "esm2_tiny.pt"
    checkpoint.parent.mkdir(parents=True)
    write_random_esm2_checkpoint(checkpoint, num_layers=1, embed_dim=16, attention_heads=2, seed=0)
    model = {"type": "esm_gearnet", "graph": "gearnet", "fusion": "serial", "freeze_esm": False, "hidden_dims": [8, 8],
             "short_cut": True, "batch_norm": True, "concat_hidden": True, "readout": "sum"}  # fmt: skip
    config = {**CONFIG, "models": {"tiny_esm": model}, "plms": {"esm2_tiny": plm}}
    records = _records(shared_data, TRAIN_FILES)
    for i, record in enumerate(records):
        record["labels"] = {"ec": [NAMES[i % 3]], "target": [i % 3], "num_classes": 3}
    task = get_task(TASK, "ec")
    esm = (*load_esm2(checkpoint), {"repr_layer": 1})
    split_of = {r["id"]: s for r, s in zip(records, ["train", "train", "valid", "test"], strict=True)}
    splits = task.build_examples(records, split_of, task.input_loader(esm_inputs=True))
    results = tmp_path / "results"
    out = results / "train" / "ec" / "tiny_esm" / "esm2_tiny" / "none" / "seed0"
    train.fit(task, model, splits, 0, out / "metrics.json", out / "model.pt", input_dim=21, plm=True, esm=esm,
              model_name="tiny_esm")  # fmt: skip
    spec = apply.resolve_encoder(config, "ec/tiny_esm/esm2_tiny/none/seed0", results=results)
    loaded = apply.load_encoder(spec, config, resources=tmp_path / "resources")
    net = task.build_model(model, 21, True, esm=(*load_esm2(checkpoint), {"repr_layer": 1}), name="tiny_esm")
    net.load_state_dict(torch.load(out / "model.pt", weights_only=True)["model"])
    net.eval()
    examples = [e for split in splits.values() for e in split]
    with torch.no_grad():
        expected = task.encode(net, [e.proteins[0] for e in examples])["graph_feature"]
    encoded, skipped = apply.encode_records(loaded, records, max_residues=600)
    assert not skipped
    ours = torch.stack([encoded[e.id]["protein_features"] for e in examples])
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-4)
