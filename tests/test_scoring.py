"""Recall by kind of gold span (spacy_globalpointer.scoring) on hand-made nestings."""
import pytest
import spacy
from spacy.tokens import Span
from spacy.training import Example

from spacy_globalpointer.scoring import recall_by_kind, span_kinds


def test_span_kinds_on_hand_made_nestings():
    spans = [(0, 7), (0, 4), (0, 2), (8, 10), (9, 12), (13, 14), (13, 14)]
    kinds = span_kinds(spans)
    assert kinds[0] == {"nested", "outer"}  # contains (0, 4) and (0, 2)
    assert kinds[1] == {"nested", "inner", "outer"}  # a middle layer is both
    assert kinds[2] == {"nested", "inner"}
    assert kinds[3] == kinds[4] == {"flat"}  # crossing spans are not nested
    # The same offsets twice (two labels) do not nest each other.
    assert kinds[5] == kinds[6] == {"flat"}


def _example(nlp, text, gold, predicted):
    ref, pred = nlp.make_doc(text), nlp.make_doc(text)
    ref.spans["sc"] = [Span(ref, s, e, label=label) for s, e, label in gold]
    pred.spans["sc"] = [Span(pred, s, e, label=label) for s, e, label in predicted]
    return Example(pred, ref)


def test_recall_by_kind_counts_each_kind_and_the_band():
    nlp = spacy.blank("en")
    text = "the University of New York Medical School hired Alice Smith today"
    gold = [(1, 8, "ORG"), (1, 6, "ORG"), (4, 6, "LOC"), (9, 11, "PER")]
    # Found: the middle ORG (inner and outer), Alice Smith (flat); the outer ORG has the wrong label.
    predicted = [(1, 6, "ORG"), (9, 11, "PER"), (1, 8, "LOC")]
    scores = recall_by_kind([_example(nlp, text, gold, predicted)], "sc", max_span_length=5)
    assert scores["spans_sc_nested_r"] == pytest.approx(1 / 3)
    assert scores["spans_sc_flat_r"] == 1.0
    assert scores["spans_sc_inner_r"] == pytest.approx(1 / 2)  # (1, 6) and (4, 6) are inside one
    assert scores["spans_sc_outer_r"] == pytest.approx(1 / 2)  # (1, 8) and (1, 6) contain one
    assert scores["spans_sc_long_r"] == 0.0  # (1, 8) has 7 tokens > 5


def test_recall_by_kind_is_none_without_gold_of_a_kind_and_omits_long_without_a_band():
    nlp = spacy.blank("en")
    scores = recall_by_kind([_example(nlp, "Alice met Bob", [(0, 1, "PER"), (2, 3, "PER")], [(0, 1, "PER")])], "sc")
    assert scores == {"spans_sc_nested_r": None, "spans_sc_flat_r": 0.5,
                      "spans_sc_inner_r": None, "spans_sc_outer_r": None}


def test_the_component_scorer_reports_them():
    from spacy_globalpointer.pipe import global_pointer_score

    nlp = spacy.blank("en")
    eg = _example(nlp, "New York City", [(0, 3, "LOC"), (0, 2, "LOC")], [(0, 2, "LOC")])
    scores = global_pointer_score([eg], spans_key="sc", max_span_length=2)
    assert scores["spans_sc_r"] == 0.5
    assert (scores["spans_sc_inner_r"], scores["spans_sc_outer_r"], scores["spans_sc_long_r"]) == (1.0, 0.0, 0.0)
