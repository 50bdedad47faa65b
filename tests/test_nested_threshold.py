"""benchmarks/nested_threshold.py: the sweep decodes as the pipeline does, and chooses on dev."""
import importlib.util
import json

import pytest
from spacy.tokens import DocBin

from spacy_globalpointer.evaluate import evaluate

from .conftest import REPO
from .tiny_pipeline import build_tiny

SCRIPT = REPO / "benchmarks" / "nested_threshold.py"
spec = importlib.util.spec_from_file_location("benchmarks_nested_threshold", SCRIPT)
nested_threshold = importlib.util.module_from_spec(spec)
spec.loader.exec_module(nested_threshold)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    nlp, examples, _ = build_tiny("en", steps=8)
    folder = tmp_path_factory.mktemp("nested_threshold")
    nlp.to_disk(folder / "pipeline")
    DocBin(docs=[eg.reference for eg in examples]).to_disk(folder / "dev.spacy")
    return folder


def test_sweep_scores_each_pair_as_evaluate_does_and_chooses_on_dev(saved):
    out = saved / "out"
    code = nested_threshold.main([
        str(saved / "pipeline"), str(saved / "dev.spacy"), "--test", str(saved / "dev.spacy"),
        "--thresholds", "0.9,0.5", "--nested", "none,0.6,0.1", "--min-ratio", "0.5", "--out", str(out),
    ])
    assert code == 0
    result = json.loads((out / "nested_threshold.json").read_text(encoding="utf8"))
    pairs = [(row["threshold"], row["nested_threshold"]) for row in result["dev_rows"]]
    # A nested threshold is paired only with the thresholds above it.
    assert pairs == [(0.9, None), (0.9, 0.6), (0.9, 0.1), (0.5, None), (0.5, 0.1)]
    rows = {pair: row for pair, row in zip(pairs, result["dev_rows"])}
    for (threshold, nested), row in rows.items():
        expected = evaluate(saved / "pipeline", saved / "dev.spacy", threshold=threshold, nested_threshold=nested)
        assert (row["p"], row["r"], row["f"]) == pytest.approx((expected["p"], expected["r"], expected["f"]))
        assert row["nested_r"] == pytest.approx(expected["recall_by_kind"]["nested"])
    # Recall only grows as the nested threshold falls.
    assert rows[(0.9, None)]["r"] <= rows[(0.9, 0.6)]["r"] <= rows[(0.9, 0.1)]["r"]
    chosen = result["chosen"]
    assert (chosen["as saved"]["threshold"], chosen["as saved"]["nested_threshold"]) == (0.5, None)
    assert chosen["best F"]["dev"]["f"] == max(row["f"] for row in result["dev_rows"])
    # The same data as test: each choice scores on test what it scored on dev.
    for entry in chosen.values():
        assert entry["test"]["f"] == pytest.approx(entry["dev"]["f"])
    if "best F with nested/flat >= 0.5" in chosen:
        assert chosen["best F with nested/flat >= 0.5"]["dev"]["ratio"] >= 0.5
    table = (out / "nested_threshold.md").read_text(encoding="utf8")
    assert "| as saved | 0.5 | off |" in table and "| 0.9 | 0.1 |" in table


def test_the_ratio_choice_is_the_best_f_among_pairs_that_reach_it():
    rows = [
        {"threshold": 0.5, "nested_threshold": None, "f": 0.74, "ratio": 0.78},
        {"threshold": 0.5, "nested_threshold": 0.3, "f": 0.73, "ratio": 0.87},
        {"threshold": 0.4, "nested_threshold": None, "f": 0.75, "ratio": 0.82},
        {"threshold": 0.3, "nested_threshold": None, "f": 0.745, "ratio": 0.86},
    ]
    chosen = nested_threshold.choose(rows, (0.5, None), 0.85)
    assert chosen["as saved"] is rows[0] and chosen["best F"] is rows[2]
    assert chosen["best F with nested/flat >= 0.85"] is rows[3]
    assert "best F with nested/flat >= 0.9" not in nested_threshold.choose(rows, (0.5, None), 0.9)
