"""Tests for feature-table ingestion and validation, on the study's real files and on small ones."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pandas as pd
import pytest

from conftest import FIXTURES
from pathreplay.errors import UserError
from pathreplay.features import CANONICAL, feature_name, parse_feature_name, read_feature_table, validate_feature_table
from pathreplay.sae.exact import SAESource

REAL = FIXTURES
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"real fixtures absent at {REAL}")
LLAMA_SCOPE = {layer: (4096, 32768) for layer in range(32)}
OVERRIDE = "features.allow_suspicious: true"


def write(tmp_path: Path, rows: list[dict], name: str = "feats.csv") -> Path:
    """Write rows as a CSV (or JSON by suffix) feature file and return its path."""
    path = tmp_path / name
    if name.endswith(".json"):
        path.write_text(json.dumps(rows))
    else:
        pd.DataFrame(rows).to_csv(path, index=False)
    return path


def row(layer: int = 25, fid: int = 10096, d: float = 1.0, safe: float = 0.1, risky: float = 0.9) -> dict:
    return {"layer": layer, "feature_id": fid, "cohens_d": d, "safe_mean": safe, "risky_mean": risky}


def refusal(tmp_path: Path, rows: list[dict], **kw) -> str:
    """Read + validate rows that must be refused; return the one-line message."""
    path = write(tmp_path, rows)
    with pytest.raises(UserError) as exc:
        validate_feature_table(read_feature_table(path), str(path), **kw)
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg
    return msg


# --- real files from the study -------------------------------------------------------------

@needs_real
def test_real_exp1_features() -> None:
    df = read_feature_table(REAL / "exp1_llama_sae_features.json")
    assert tuple(df.columns) == CANONICAL and len(df) == 1480
    assert df["layer"].dtype == "int64" and df["feature_id"].dtype == "int64"
    first = df.iloc[0]
    assert (first.layer, first.feature_id, first.label) == (30, 28337, "safe")
    assert first.cohen_d == pytest.approx(-7.065651136766775)
    assert first.risky_value == pytest.approx(0.031324051320552826)
    assert first.safe_value == pytest.approx(1.2906405925750732)
    assert first.p_value == 0.0 and first.source == "exp1_llama_sae_features.json"
    second = df.iloc[1]
    assert (second.layer, second.feature_id, second.label) == (25, 15514, "risky")
    assert df["layer"].value_counts().to_dict() == {30: 1210, 25: 270}
    assert df["label"].value_counts().to_dict() == {"risky": 746, "safe": 734}
    assert not df[["cohen_d", "p_value", "safe_value", "risky_value"]].isna().any().any()
    validate_feature_table(df, "exp1", sae_layers=LLAMA_SCOPE)


@needs_real
def test_real_exp2_candidates() -> None:
    df = read_feature_table(REAL / "features_for_exp2_patching_v2.json")
    assert len(df) == 20
    first = df.iloc[0]
    assert (first.layer, first.feature_id, first.label) == (30, 24167, "risky")
    assert first.cohen_d == pytest.approx(1.4232068517975436)
    assert first.p_value == pytest.approx(9.561677104649363e-45)
    assert first.safe_value == pytest.approx(0.8765887047182469)
    assert first.risky_value == pytest.approx(1.4165090460526315)
    eleventh = df.iloc[10]
    assert (eleventh.layer, eleventh.feature_id, eleventh.label) == (25, 17084, "safe")
    assert eleventh.risky_value == pytest.approx(0.064121, abs=1e-6)
    assert df["layer"].value_counts().to_dict() == {30: 17, 25: 3}
    assert df["label"].value_counts().to_dict() == {"risky": 10, "safe": 10}
    validate_feature_table(df, "candidates", sae_layers=LLAMA_SCOPE)


@needs_real
def test_real_exp2_group_summary_parses_feature_names() -> None:
    path = REAL / "exp2_feature_group_summary.csv"
    df = read_feature_table(path)
    assert len(df) == 1366
    assert (df.iloc[0].layer, df.iloc[0].feature_id, df.iloc[0].label) == (25, 10096, "neutral")
    assert (df.iloc[1].layer, df.iloc[1].feature_id) == (25, 10192)
    assert df["layer"].value_counts().sort_index().to_dict() == {
        25: 218, 26: 210, 27: 189, 28: 211, 29: 207, 30: 213, 31: 118}
    assert df["label"].value_counts().to_dict() == {"neutral": 925, "safe": 361, "risky": 80}
    assert df[["cohen_d", "p_value", "safe_value", "risky_value"]].isna().all().all()
    with pytest.raises(UserError) as exc:
        validate_feature_table(df, str(path), sae_layers=LLAMA_SCOPE)
    msg = str(exc.value)
    assert "cohen_d, safe_value, risky_value" in msg and "classified_as" in msg and "features.columns" in msg
    validate_feature_table(df, str(path), required=("layer", "feature_id"), sae_layers=LLAMA_SCOPE)
    with pytest.raises(UserError, match=r"row 219 \(L26-1010\).*SAEs exist for layers 25, 30.*saes\.layers"):
        validate_feature_table(df, str(path), required=(), sae_layers={25: (4096, 32768), 30: (4096, 32768)})


@needs_real
def test_real_exp2_binary_summary() -> None:
    df = read_feature_table(REAL / "exp2_binary_causality_summary.csv")
    assert len(df) == 392
    assert (df.iloc[0].layer, df.iloc[0].feature_id, df.iloc[0].label) == (25, 22423, "safe")
    assert df["layer"].value_counts().to_dict() == {30: 200, 25: 192}
    assert df["label"].value_counts().to_dict() == {"safe": 206, "risky": 186}
    # p_safe / p_risky are per-context tests, not one feature p-value: no adapter guesses between them.
    assert df["p_value"].isna().all()
    validate_feature_table(df, "binary", required=("layer", "feature_id", "label"), sae_layers=LLAMA_SCOPE)


@needs_real
def test_real_trial_log_is_refused() -> None:
    path = REAL / "exp2_dose_response_trials_sample.jsonl"
    with pytest.raises(UserError, match="per-trial records.*trial_index.*not a feature table.*features.table"):
        read_feature_table(path)


@needs_real
def test_every_real_file_is_covered() -> None:
    covered = {"exp1_llama_sae_features.json", "features_for_exp2_patching_v2.json",
               "exp2_feature_group_summary.csv", "exp2_binary_causality_summary.csv",
               "exp2_dose_response_trials_sample.jsonl"}
    assert covered <= {p.name for p in REAL.iterdir()}


# --- formats and adapters -------------------------------------------------------------------

def test_all_formats_give_the_same_table(tmp_path: Path) -> None:
    rows = [row(25, 10096, 1.5, 0.1, 0.9) | {"direction": "increases_risk"},
            row(30, 7, -2.0, 0.8, 0.2) | {"direction": "decreases_risk"}]
    frame = pd.DataFrame(rows)
    paths = [tmp_path / "a.csv", tmp_path / "a.tsv", tmp_path / "a.json", tmp_path / "b.json",
             tmp_path / "a.jsonl", tmp_path / "a.parquet"]
    frame.to_csv(paths[0], index=False)
    frame.to_csv(paths[1], sep="\t", index=False)
    paths[2].write_text(json.dumps(rows))
    paths[3].write_text(json.dumps({"meta": {"n": 2}, "features": rows}))
    paths[4].write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    frame.to_parquet(paths[5], index=False)
    tables = [read_feature_table(p).drop(columns="source") for p in paths]
    for t in tables[1:]:
        pd.testing.assert_frame_equal(tables[0], t)
    assert tables[0]["label"].tolist() == ["risky", "safe"]
    assert tables[0]["feature_id"].tolist() == [10096, 7]
    assert math.isnan(tables[0]["p_value"].iloc[0])
    assert read_feature_table(paths[3])["source"].iloc[0] == "b.json"


def test_synonyms_and_priority(tmp_path: Path) -> None:
    path = write(tmp_path, [{"Layer": 3, "feature_id": 4, "D": 0.5, "pvalue": 0.01,
                             "bankrupt_mean": 2.0, "safe_mean": 1.0, "classified_as": "Risky",
                             "direction": "decreases_risk"}])
    r = read_feature_table(path).iloc[0]
    assert (r.layer, r.feature_id, r.cohen_d, r.p_value, r.risky_value, r.safe_value) == (3, 4, 0.5, 0.01, 2.0, 1.0)
    assert r.label == "risky"  # classified_as outranks direction


def test_columns_mapping_overrides_adapters(tmp_path: Path) -> None:
    path = write(tmp_path, [row() | {"my_d": 9.0, "lyr": 7}])
    r = read_feature_table(path, columns={"cohen_d": "my_d", "layer": "lyr"}).iloc[0]
    assert (r.cohen_d, r.layer) == (9.0, 7)
    with pytest.raises(UserError, match=r"maps safe_value to 'nope'.*it has: layer.*fix features\.columns"):
        read_feature_table(path, columns={"safe_value": "nope"})
    with pytest.raises(UserError, match="unknown key.*bogus"):
        read_feature_table(path, columns={"bogus": "layer"})


@pytest.mark.parametrize("name,expected", [("L25-10096", (25, 10096)), ("L25/10096", (25, 10096)),
                                           ("l3:7", (3, 7)), ("25-10096", (25, 10096))])
def test_feature_name_forms(tmp_path: Path, name: str, expected: tuple[int, int]) -> None:
    df = read_feature_table(write(tmp_path, [{"feature": name, "d": 1.0}]))
    assert (df.iloc[0].layer, df.iloc[0].feature_id) == expected


def test_numeric_feature_column_is_the_id(tmp_path: Path) -> None:
    df = read_feature_table(write(tmp_path, [{"layer": 4, "feature": 11}]))
    assert (df.iloc[0].layer, df.iloc[0].feature_id) == (4, 11)


def test_label_can_be_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, [row() | {"direction": "up"}])
    assert read_feature_table(path, columns={"label": ""})["label"].tolist() == [""]


# --- refusals while reading -------------------------------------------------------------------

def read_refusal(path: Path, **kw) -> str:
    with pytest.raises(UserError) as exc:
        read_feature_table(path, **kw)
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_missing_file(tmp_path: Path) -> None:
    assert "check features.table" in read_refusal(tmp_path / "nope.csv")


@pytest.mark.parametrize("name,content,expected", [
    ("bad.json", "[{\"layer\": 1,", "cannot be parsed as JSON"),
    ("bad.parquet", "not parquet", "cannot be parsed as PARQUET"),
    ("bad.csv", "", "cannot be parsed as CSV"),
    ("bad.csv", "a,b\n1,2\n3,4,5,6\n", "cannot be parsed as CSV"),
    ("bad.jsonl", "{\"layer\": 1}\n{oops\n", "bad.jsonl line 2: not valid JSON"),
])
def test_unparseable_files(tmp_path: Path, name: str, content: str, expected: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    msg = read_refusal(path)
    assert expected in msg
    assert "line 2" in msg or "check the file's format matches its suffix" in msg


def test_unsupported_suffix(tmp_path: Path) -> None:
    path = tmp_path / "feats.xlsx"
    path.write_text("x")
    assert ".parquet" in read_refusal(path)


def test_json_shapes_refused(tmp_path: Path) -> None:
    two = tmp_path / "two.json"
    two.write_text(json.dumps({"a": [row()], "b": [row()]}))
    assert "exactly one list" in read_refusal(two)
    scalars = tmp_path / "scalars.json"
    scalars.write_text(json.dumps([1, 2, 3]))
    assert "one object per feature" in read_refusal(scalars)


def test_bad_feature_name(tmp_path: Path) -> None:
    msg = read_refusal(write(tmp_path, [{"feature": "L25-1"}, {"feature": "neuron 5"}]))
    assert "row 2" in msg and "'neuron 5'" in msg and "L{layer}-{id}" in msg


def test_feature_name_disagrees_with_layer(tmp_path: Path) -> None:
    msg = read_refusal(write(tmp_path, [{"feature": "L25-1", "layer": 26}]))
    assert "row 1" in msg and "disagrees with layer 26" in msg and "agree" in msg


def test_unknown_label(tmp_path: Path) -> None:
    msg = read_refusal(write(tmp_path, [row(), row(fid=5) | {"direction": "sideways"}]))
    assert "row 2 (L25-5)" in msg and "'sideways'" in msg and "features.columns.label: ''" in msg


def test_text_in_number_column(tmp_path: Path) -> None:
    msg = read_refusal(write(tmp_path, [row(), row(fid=5) | {"cohens_d": "big"}]))
    assert "row 2 (L25-5) column cohen_d" in msg and "'big' is not a number" in msg


def test_fractional_id(tmp_path: Path) -> None:
    msg = read_refusal(write(tmp_path, [row(fid=5) | {"feature_id": 5.5}]))
    assert "column feature_id" in msg and "give feature_id as an integer" in msg


# --- refusals while validating -------------------------------------------------------------

def test_valid_table_passes(tmp_path: Path) -> None:
    path = write(tmp_path, [row(25, 10096), row(30, 5)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        validate_feature_table(read_feature_table(path), str(path), sae_layers=LLAMA_SCOPE)


def test_required_columns_missing(tmp_path: Path) -> None:
    msg = refusal(tmp_path, [{"layer": 1, "feature_id": 5000, "cohens_d": 1.0, "stop": 0.3}])
    assert "missing required column(s) safe_value, risky_value" in msg
    assert "the file has: layer, feature_id, cohens_d, stop" in msg
    assert "features.columns.safe_value" in msg


def test_nan_in_required_column(tmp_path: Path) -> None:
    msg = refusal(tmp_path, [row(), row(fid=6, d=float("nan"))])
    assert "row 2 (L25-6) column cohen_d" in msg and "fill it in or drop" in msg


def test_nan_in_feature_id(tmp_path: Path) -> None:
    msg = refusal(tmp_path, [row(), row() | {"feature_id": None}])
    assert "row 2 column feature_id" in msg and "fill it in" in msg


def test_duplicate_feature(tmp_path: Path) -> None:
    msg = refusal(tmp_path, [row(fid=5000), row(fid=6000), row(fid=5000)])
    assert "row 3 (L25-5000)" in msg and "also row 1" in msg and "one row per (layer, feature_id)" in msg


@pytest.mark.parametrize("col,value", [("layer", -1), ("feature_id", -3)])
def test_negative_index(tmp_path: Path, col: str, value: int) -> None:
    msg = refusal(tmp_path, [row(fid=5000), row(fid=6000) | {col: value}])
    assert "row 2" in msg and f"column {col}" in msg and "is negative" in msg and "0-based" in msg


def test_feature_id_beyond_sae(tmp_path: Path) -> None:
    msg = refusal(tmp_path, [row(fid=5000), row(fid=32768)], sae_layers=LLAMA_SCOPE)
    assert "row 2 (L25-32768)" in msg and "d_sae 32768" in msg and "SAE width" in msg


def test_layer_without_sae(tmp_path: Path) -> None:
    msg = refusal(tmp_path, [row(25, 5000), row(31, 5000)], sae_layers={25: (4096, 32768), 30: (4096, 32768)})
    assert "row 2 (L31-5000)" in msg and "layers 25, 30" in msg and "saes.layers" in msg


def test_raw_dimension_ids_refused_then_allowed(tmp_path: Path) -> None:
    rows = [row(fid=12), row(fid=4095)]
    msg = refusal(tmp_path, rows, sae_layers=LLAMA_SCOPE)
    assert "below d_model (4096)" in msg and "raw hidden-state dimensions" in msg and OVERRIDE in msg
    df = read_feature_table(write(tmp_path, rows))
    with pytest.warns(UserWarning, match="raw hidden-state dimensions"):
        validate_feature_table(df, "f", sae_layers=LLAMA_SCOPE, allow_suspicious=True)
    # One row below d_model says nothing about the table.
    validate_feature_table(df.iloc[:1], "f", sae_layers=LLAMA_SCOPE)
    # One id at or above d_model is enough to show these are SAE features.
    validate_feature_table(read_feature_table(write(tmp_path, [row(fid=12), row(fid=4096)])), "f",
                           sae_layers=LLAMA_SCOPE)


def test_negative_means_refused_then_allowed(tmp_path: Path) -> None:
    rows = [row(fid=5000), row(fid=6000, risky=-0.4), row(fid=7000, safe=-0.1)]
    msg = refusal(tmp_path, rows)
    assert "row 3 (L25-7000) column safe_value" in msg and "ReLU-family" in msg
    assert "raw hidden-state dimensions" in msg and OVERRIDE in msg
    df = read_feature_table(write(tmp_path, rows))
    validate_feature_table(df, "f", relu_family=False)
    with pytest.warns(UserWarning, match=OVERRIDE):
        validate_feature_table(df, "f", allow_suspicious=True)


def test_empty_table(tmp_path: Path) -> None:
    path = tmp_path / "empty.json"
    path.write_text("[]")
    with pytest.raises(UserError, match="empty.json.*no rows.*at least one feature"):
        validate_feature_table(read_feature_table(path), str(path))


@pytest.mark.parametrize("text, want", [("L25-10096", (25, 10096)), ("l3:7", (3, 7)), ("L21_F2794", (21, 2794)),
                                        (" 4/11 ", (4, 11)), ("feature two", None), ("L25", None)])
def test_feature_names_parse_and_print_one_way(text: str, want: tuple[int, int] | None) -> None:
    assert parse_feature_name(text) == want
    if want:
        assert parse_feature_name(feature_name(*want)) == want and feature_name(*want) == f"L{want[0]}-{want[1]}"


def test_slices_of_a_broken_sae_are_refused(tmp_path: Path) -> None:
    from conftest import write_llamascope

    # the encoder row of feature 0 is orthogonal to its decoder row: a clamp along it moves nothing
    write_llamascope(tmp_path / "L0R", [[0.0, 1.0], [1.0, 0.0]], [0.0, 0.0], [[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0],
                     block=0, threshold=0.1, avg_norm=math.sqrt(2))
    src = SAESource(str(tmp_path / "L{layer}R"), "llamascope")
    table = pd.DataFrame({"layer": [0], "feature_id": [0]})
    with pytest.raises(UserError, match=r"feature L0-0's encoder reads its own decoder row at gain 0"):
        src.slices(table, "cpu")


def test_infinite_values_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, [row(), row(fid=11, risky=float("inf"))])
    with pytest.raises(UserError, match=r"row 2 \(L25-11\) column risky_value.*risky_value is inf") as err:
        validate_feature_table(read_feature_table(path), str(path))
    assert "finite" in str(err.value)


def test_non_utf8_table_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(b"layer,feature_id,cohen_d,label\n25,1,0.5,s\xe9\n")
    assert "cannot be parsed as CSV" in read_refusal(path)
