"""benchmarks/nested_threshold.py: the sweep decodes as the pipeline does, and chooses on dev."""
import json

import pytest
from spacy.tokens import DocBin

from spacy_globalpointer.evaluate import evaluate

from .conftest import REPO, load_benchmark
from .tiny_pipeline import build_tiny

SCRIPT = REPO / "benchmarks" / "nested_threshold.py"
nested_threshold = load_benchmark("nested_threshold")


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


def test_a_spancat_pipeline_gets_its_threshold_swept_and_nested_recall_reported(tmp_path):
    """A peer's threshold is chosen on dev the same way: spaCy's spancat, threshold only."""
    import spacy
    from spacy.scorer import Scorer
    from spacy.training import Example
    from thinc.api import fix_random_seed

    from spacy_globalpointer.scoring import recall_by_kind

    from .tiny_pipeline import EN_DATA, SMALL_MODEL, make_examples

    fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("spancat", config={
        "suggester": {"@misc": "spacy.ngram_suggester.v1", "sizes": [1, 2, 3, 4]},
        "model": {"@architectures": "spacy.SpanCategorizer.v1",
                  "tok2vec": SMALL_MODEL["tok2vec"],
                  "reducer": {"@layers": "spacy.mean_max_reducer.v1", "hidden_size": 32},
                  "scorer": {"@layers": "spacy.LinearLogistic.v1"}},
    })
    examples = make_examples(nlp, EN_DATA)
    optimizer = nlp.initialize(lambda: examples)
    for _ in range(20):
        nlp.update(examples, sgd=optimizer)
    nlp.to_disk(tmp_path / "pipeline")
    DocBin(docs=[eg.reference for eg in examples]).to_disk(tmp_path / "dev.spacy")

    code = nested_threshold.main([
        str(tmp_path / "pipeline"), str(tmp_path / "dev.spacy"), "--thresholds", "0.9,0.3,0.1",
        "--nested", "none,0.2", "--out", str(tmp_path / "out"),
    ])
    assert code == 0
    result = json.loads((tmp_path / "out" / "nested_threshold.json").read_text(encoding="utf8"))
    assert result["component"] == "spancat"
    # spancat has no nested_threshold: one row per threshold, the saved 0.5 among them.
    assert [(row["threshold"], row["nested_threshold"]) for row in result["dev_rows"]] == [
        (0.9, None), (0.5, None), (0.3, None), (0.1, None)]
    spancat = nlp.get_pipe("spancat")
    for row in result["dev_rows"]:
        spancat.cfg["threshold"] = row["threshold"]
        predicted = [Example(nlp(eg.reference.text), eg.reference) for eg in examples]
        expected = Scorer.score_spans(predicted, "spans_sc", getter=lambda doc, attr: doc.spans.get("sc", []),
                                      allow_overlap=True)
        assert (row["p"], row["r"], row["f"]) == pytest.approx(
            (expected["spans_sc_p"], expected["spans_sc_r"], expected["spans_sc_f"]))
        assert row["nested_r"] == pytest.approx(recall_by_kind(predicted, "sc")["spans_sc_nested_r"])
    recalls = [row["r"] for row in result["dev_rows"]]
    assert recalls == sorted(recalls) and recalls[-1] > recalls[0]
