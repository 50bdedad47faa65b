"""Tests for the generated demo data (spacy_globalpointer.demo) and the committed assets/demo files."""
import json
from pathlib import Path

import pytest

from spacy_globalpointer.__main__ import main
from spacy_globalpointer.convert import read_jsonl
from spacy_globalpointer.demo import CITIES, LABELS, TEMPLATES, generate_demo, write_demo

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "demo"


@pytest.fixture(scope="module")
def demo():
    return generate_demo()


def test_same_seed_same_data_other_seed_other_data(demo):
    assert generate_demo() == demo
    assert generate_demo(seed=1) != demo
    train, dev = demo
    assert (len(train), len(dev)) == (1500, 300)


def test_committed_assets_equal_a_fresh_generation(tmp_path):
    paths = write_demo(tmp_path)
    assert sorted(paths) == ["README.md", "dev.jsonl", "train.jsonl"]
    for name, path in paths.items():
        committed = ASSETS / name
        assert committed.read_bytes() == path.read_bytes(), (
            f"{committed} differs from a fresh generation; run `python -m spacy_globalpointer demo assets/demo`"
        )
    assert sum((ASSETS / name).stat().st_size for name in paths) < 600_000


def test_records_are_valid_nested_and_span_the_labels(demo):
    for records in demo:
        texts = [r["text"] for r in records]
        assert len(set(texts)) == len(texts)
        labels = set()
        n_nested = 0
        for record in records:
            spans = [(s["start"], s["end"], s["label"]) for s in record["spans"]]
            assert spans == sorted(set(spans))
            assert all(0 <= start < end <= len(record["text"]) for start, end, _ in spans)
            labels.update(label for _, _, label in spans)
            n_nested += sum(
                any((s2, e2) != (s, e) and s2 <= s and e <= e2 for s2, e2, _ in spans) for s, e, _ in spans
            )
        assert labels == set(LABELS)
        assert n_nested > 0.2 * sum(len(r["spans"]) for r in records)
    train, dev = demo
    assert not {r["text"] for r in train} & {r["text"] for r in dev}


def test_organisations_hold_their_city(demo):
    train, _ = demo
    found = 0
    for record in train:
        text, spans = record["text"], record["spans"]
        for org in (s for s in spans if s["label"] == "ORG" and text[s["start"] : s["end"]].endswith("大学")):
            inner = [s for s in spans if s["label"] == "LOC" and s["start"] == org["start"] and s["end"] < org["end"]]
            assert len(inner) == 1 and text[inner[0]["start"] : inner[0]["end"]] in CITIES.train
            found += 1
    assert found > 20


def test_dev_has_held_out_names_and_templates(demo):
    train, dev = demo

    def loc_texts(records):
        return {r["text"][s["start"] : s["end"]] for r in records for s in r["spans"] if s["label"] == "LOC"}

    assert not loc_texts(train) & set(CITIES.dev_only)
    assert len(loc_texts(dev) & set(CITIES.dev_only)) >= 5
    assert TEMPLATES.dev_only[0] == "{PER}向{ORG}提交了申请材料"
    assert any("提交了申请材料" in r["text"] for r in dev)
    assert not any("提交了申请材料" in r["text"] for r in train)


def test_committed_demo_converts_without_problems(tmp_path):
    for name, n_docs in (("train.jsonl", 1500), ("dev.jsonl", 300)):
        docs, report = read_jsonl(ASSETS / name, "zh")
        assert report.n_docs == len(docs) == n_docs
        assert report.n_problems == 0 and report.n_duplicates == 0
        n_lines = sum(len(json.loads(line)["spans"]) for line in (ASSETS / name).open(encoding="utf-8"))
        assert report.n_spans == n_lines


def test_cli_demo_writes_the_files(tmp_path, capsys):
    assert main(["demo", str(tmp_path / "demo"), "--seed", "3", "--n-train", "20", "--n-dev", "5"]) == 0
    assert "wrote" in capsys.readouterr().err
    train, dev = generate_demo(seed=3, n_train=20, n_dev=5)
    lines = (tmp_path / "demo" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == train
    assert "--seed 3" in (tmp_path / "demo" / "README.md").read_text(encoding="utf-8")
