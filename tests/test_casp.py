"""CASP reader on the real shared models, native and TMscore labels."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from geoplm.datasets import get_reader
from geoplm.datasets.casp import CaspError, read_label_table, read_shard, read_ts
from geoplm.errors import ConfigError
from geoplm.structure import RECORD_KEYS


@pytest.fixture(scope="module")
def casp(shared_data):
    return shared_data / "casp"


@pytest.fixture(scope="module")
def t0980(casp):
    records, skipped = read_shard([casp / "T0980s1"], 0, 1, {}, "fail")
    return {record["id"]: record for record in records}, skipped


def _tsv(casp):
    return pd.read_csv(casp / "T0980s1" / "T0980s1_TMscore_labels.tsv", sep="\t", comment="#").set_index("model")


def test_t0980s1_models_labels_and_native(casp, t0980):
    records, skipped = t0980
    assert skipped == []
    table = _tsv(casp)
    models = {r["id"]: r for r in records.values() if r["role"] == "model"}
    assert len(models) == 15 == len(table)
    for name, row in table.iterrows():
        record = models[f"T0980s1_{name}"]
        assert record["group"] == "T0980s1" and record["split"] == ""
        assert record["source"] == f"T0980s1/{name}"
        assert record["labels"] == {
            "gdt_ts": row["GDT-TS"],  # the TSV is already 0-1
            "gdt_ha": row["GDT-HA"],
            "tm_score": row["TM-score"],
            "rmsd": row["RMSD"],
        }
        assert all(key in record for key in RECORD_KEYS)
    natives = [r for r in records.values() if r["role"] == "native"]
    assert [r["id"] for r in natives] == ["T0980s1-D1"]
    assert natives[0]["labels"] == {} and natives[0]["group"] == "T0980s1"
    assert len(natives[0]["sequence"]) == 104  # the TSV's native length


def test_hydrogens_excluded(casp, t0980):
    path = casp / "T0980s1" / "models" / "QUARK_TS1"
    lines = [line for line in path.read_text().splitlines() if line.startswith("ATOM")]
    assert any(line[76:78].strip() == "H" for line in lines)
    record = t0980[0]["T0980s1_QUARK_TS1"]
    residues = list(dict.fromkeys(int(line[22:26]) for line in lines))
    assert record["residue_number"].tolist() == residues
    assert record["chain"] == "" and record["plddt"] is False
    assert bool(record["residue_mask"].all()) and not torch.isnan(record["backbone"]).any()
    first = {line[12:16].strip(): [float(line[30:38]), float(line[38:46]), float(line[46:54])] for line in lines[:8]}
    assert {"1H", "2H", "3H"} <= set(first)
    expected = torch.tensor([first["N"], first["CA"], first["C"], first["O"]])
    torch.testing.assert_close(record["backbone"][0], expected)
    header = read_ts(path)
    assert header["has_hydrogens"] is True and header["num_atoms"] == len(lines)
    assert header["pfrmat"] is None and header["target"] is None


def test_read_ts_header(casp):
    header = read_ts(casp / "T0865_CASP12" / "server01_TS1")
    assert header["pfrmat"] == "TS" and header["target"] == "T0865"
    assert header["model"] == 3 and header["parent"] == ["4dxe_I"] and header["num_models"] == 1
    assert header["has_hydrogens"] is False


def test_truncated_ts_names_file(casp, tmp_path):
    text = (casp / "T0865_CASP12" / "server01_TS1").read_text()
    cut = tmp_path / "T0865" / "server01_TS1"
    cut.parent.mkdir()
    cut.write_text(text[: len(text) // 2])  # the last ATOM record is cut mid-line
    with pytest.raises(CaspError, match=rf"{cut}: truncated or malformed coordinate record at line \d+"):
        read_ts(cut)
    lines = text.splitlines()
    cut.write_text("\n".join(lines[: len(lines) // 2]) + "\n")  # whole records, no END
    with pytest.raises(CaspError, match=rf"{cut}: truncated TS file: the last MODEL has no END record"):
        read_ts(cut)
    cut.write_text("\n".join(lines[:4]) + "\n")  # header only
    with pytest.raises(CaspError, match="header but no ATOM records"):
        read_ts(cut)
    records, skipped = read_shard([cut.parent], 0, 1, {"require_labels": False}, "skip")
    assert records == [] and skipped[0]["entry"] == "T0865/server01_TS1"
    assert skipped[0]["source_file"] == str(cut)
    with pytest.raises(CaspError, match="server01_TS1"):
        read_shard([cut.parent], 0, 1, {"require_labels": False}, "fail")


def test_unlabelled_targets(casp):
    folders = [casp / "T0865_CASP12", casp / "T0953s1_CASP13"]
    records, skipped = read_shard(folders, 0, 1, {}, "skip")
    assert records == [] and len(skipped) == 20 + 33
    assert {row["reason"] for row in skipped} == {"no label row for this model in the label tables"}
    records, skipped = read_shard(folders, 0, 1, {"require_labels": False}, "fail")
    assert skipped == [] and len(records) == 53
    groups = pd.Series([r["group"] for r in records]).value_counts().to_dict()
    assert groups == {"T0865": 20, "T0953s1": 33}  # T0865 from its TARGET records, T0953s1 from the folder
    assert all(r["labels"] == {} and r["role"] == "model" for r in records)
    t0865 = next(r for r in records if r["id"] == "T0865_server01_TS1")
    assert t0865["casp_model"] == 3 and t0865["casp_parent"] == ["4dxe_I"]


def test_sharding_deals_every_entry_once(casp, t0980):
    ids = []
    for shard in range(4):
        records, skipped = read_shard([casp / "T0980s1"], shard, 4, {}, "fail")
        assert skipped == []
        ids += [r["id"] for r in records]
    assert sorted(ids) == sorted(t0980[0]) and len(ids) == len(set(ids)) == 16
    first = read_shard([casp / "T0980s1"], 0, 4, {}, "fail")[0]
    assert first[0]["id"] == "T0980s1-D1"  # natives first, then models by name


def test_natives_option(casp):
    records, _ = read_shard([casp / "T0980s1"], 0, 1, {"natives": False}, "fail")
    assert len(records) == 15 and {r["role"] for r in records} == {"model"}


def test_official_results_table_layout(tmp_path):
    # Prediction Center results table layout (header, blank line, rows); the numbers are made up.
    path = tmp_path / "T0950-D1.txt"
    path.write_text(
        "#    Model               GR#     GDT_TS   NP_P    RANK  GDT_HA   RMS_CA   TMscore \n"
        "\n"
        "1    T0950TS324_2-D1     324s    38.52    100.00  1     22.44    11.871   0.59    \n"
        "2    T0950TS145_1-D1     145s    27.41    100.00  2     N/A      15.417   0.44    \n"
    )
    table = read_label_table(path).set_index("model")
    assert list(table.index) == ["T0950TS324_2", "T0950TS145_1"]
    row = table.loc["T0950TS324_2"]
    assert row["target"] == "T0950" and row["domain"] == "D1" and row["line"] == 3
    assert row["gdt_ts"] == pytest.approx(0.3852) and row["gdt_ha"] == pytest.approx(0.2244)
    assert row["rmsd"] == pytest.approx(11.871) and row["tm_score"] == pytest.approx(0.59)
    assert pd.isna(table.loc["T0950TS145_1", "gdt_ha"])


def test_percent_gdt_scaled_and_bad_table(casp, tmp_path):
    path = tmp_path / "T0980s1_labels.tsv"
    path.write_text("model\tGDT-TS\tRMSD\nQUARK_TS1\t53.37\t7.124\n")
    row = read_label_table(path).iloc[0]
    assert row["target"] == "T0980s1" and row["gdt_ts"] == pytest.approx(0.5337) and row["rmsd"] == 7.124
    path.write_text("model\tGDT-TS\nQUARK_TS1\tfifty\n")
    with pytest.raises(CaspError, match=r"T0980s1_labels.tsv: line 2: GDT-TS 'fifty' is not a number"):
        read_label_table(path)
    path.write_text("name\tscore\nQUARK_TS1\t0.5\n")
    with pytest.raises(CaspError, match="none of the columns GDT-TS"):
        read_label_table(path)


def test_options_validated(casp):
    reader = get_reader("casp")
    assert reader is read_shard
    with pytest.raises(ConfigError, match="options.gdt_scale"):
        reader([casp / "T0980s1"], 0, 1, {"gdt_scale": 100}, "skip")
    with pytest.raises(ConfigError, match="options.require_labels"):
        reader([casp / "T0980s1"], 0, 1, {"require_labels": "yes"}, "skip")
    with pytest.raises(ConfigError, match="options.labels: no file named 'T0980s1-D1.txt'"):
        reader([casp / "T0980s1"], 0, 1, {"labels": ["T0980s1-D1.txt"]}, "skip")


def test_model_without_target_is_skipped_not_fatal(shared_data, tmp_path):
    """A TS model moved out of its target folder and without a TARGET record cannot be assigned: it is
    skipped with the reason (raised with on_error='fail'); the others are read."""
    import shutil

    loose = tmp_path / "AWSEM-Suite_TS1"
    shutil.copy(shared_data / "casp" / "T0953s1_CASP13" / "AWSEM-Suite_TS1", loose)
    if "TARGET" in loose.read_text()[:2000]:
        pytest.skip("this model names its target")
    files = [loose, *sorted((shared_data / "casp" / "T0980s1").rglob("*"))]
    records, skipped = read_shard([f for f in files if f.is_file()], 0, 1, {}, "skip")
    assert [row["entry"] for row in skipped] == ["/AWSEM-Suite_TS1"]
    assert "cannot tell the CASP target" in skipped[0]["reason"] and len(records) == 16
    with pytest.raises(CaspError, match="cannot tell"):
        read_shard([loose], 0, 1, {}, "fail")
