"""write_ents=True: doc.ents is a non-overlapping subset of doc.spans[key], chosen
greedily by score (highest first; ties go to the longer span, then the earlier one)."""
import pytest
import spacy
from spacy.tokens import Span
from .tiny_pipeline import EN_DATA, build_tiny, make_examples, span_tuples

from spacy_globalpointer.pipe import select_non_overlapping


@pytest.fixture(scope="module")
def trained():
    nlp, examples, _ = build_tiny("en", config={"write_ents": True})
    return nlp, examples


def greedy_reference(spans, scores):
    """The documented rule, written independently of the implementation."""
    candidates = sorted(
        zip(span_tuples(spans), scores), key=lambda c: (-c[1], -(c[0][1] - c[0][0]), c[0][0])
    )
    taken, chosen = set(), []
    for (start, end, label), _ in candidates:
        if not taken.intersection(range(start, end)):
            taken.update(range(start, end))
            chosen.append((start, end, label))
    return sorted(chosen)


def overlaps(spans):
    ordered = sorted(span_tuples(spans))
    return any(a[1] > b[0] for a, b in zip(ordered, ordered[1:]))


@pytest.mark.parametrize("threshold", [0.5, 0.12, 0.0005])
def test_ents_are_a_greedy_non_overlapping_subset_of_the_spans(trained, threshold):
    nlp, _ = trained
    pipe = nlp.get_pipe("global_pointer")
    texts = [text for text, _ in EN_DATA] + ["New York City and the Bank of New York", ""]
    pipe.threshold = threshold  # lower thresholds give more overlapping candidates
    try:
        docs = list(nlp.pipe(texts))
    finally:
        pipe.threshold = 0.5
    n_overlapping_groups = 0
    for doc in docs:
        group = doc.spans["sc"]
        scores = [float(s) for s in group.attrs["scores"]]
        ents = span_tuples(doc.ents)
        assert set(ents) <= set(span_tuples(group))
        assert not overlaps(doc.ents)
        assert ents == greedy_reference(group, scores)
        n_overlapping_groups += overlaps(group)
    if threshold < 0.5:
        assert n_overlapping_groups > 0, "the test should exercise overlapping candidates"


def test_nested_gold_gives_flat_ents_keeping_the_best_scored(trained):
    nlp, _ = trained
    doc = nlp(EN_DATA[0][0])  # "New York City" (LOC) contains "York City" (LOC)
    assert span_tuples(doc.spans["sc"]) == sorted(EN_DATA[0][1])
    assert span_tuples(doc.ents) == greedy_reference(doc.spans["sc"], doc.spans["sc"].attrs["scores"])
    assert len(doc.ents) == 2


def _spans(doc, specs):
    return [Span(doc, start, end, label=label) for start, end, label in specs]


def test_select_non_overlapping_rule():
    doc = spacy.blank("en")("a b c d e f g h")
    # Highest score wins even when it is the shorter, nested span.
    spans = _spans(doc, [(0, 4, "X"), (1, 2, "Y")])
    assert span_tuples(select_non_overlapping(spans, [1.0, 2.0])) == [(1, 2, "Y")]
    # Ties: the longer span first.
    assert span_tuples(select_non_overlapping(spans, [2.0, 2.0])) == [(0, 4, "X")]
    # Ties of score and length: the earlier span first.
    spans = _spans(doc, [(3, 5, "X"), (2, 4, "Y")])
    assert span_tuples(select_non_overlapping(spans, [1.0, 1.0])) == [(2, 4, "Y")]
    # Same span with two labels: the better label.
    spans = _spans(doc, [(5, 7, "X"), (5, 7, "Y")])
    assert span_tuples(select_non_overlapping(spans, [0.5, 3.0])) == [(5, 7, "Y")]
    # Touching spans do not overlap; the result is sorted by start.
    spans = _spans(doc, [(4, 6, "X"), (0, 2, "Y"), (2, 4, "Z")])
    assert span_tuples(select_non_overlapping(spans, [1.0, 2.0, 3.0])) == [
        (0, 2, "Y"), (2, 4, "Z"), (4, 6, "X")
    ]
    assert select_non_overlapping([], []) == []


def test_write_ents_replaces_previous_ents(trained):
    nlp, _ = trained
    doc = nlp.make_doc("Alice lives in New York City")
    doc.ents = [Span(doc, 2, 3, label="OLD")]
    doc = nlp(doc)
    assert "OLD" not in {ent.label_ for ent in doc.ents}
    assert all(token.ent_iob_ in ("B", "I", "O") for token in doc)


def test_evaluate_reports_ents_scores(trained):
    nlp, examples = trained
    scores = nlp.evaluate(examples)
    for key in ("ents_p", "ents_r", "ents_f", "spans_sc_p", "spans_sc_r", "spans_sc_f"):
        assert scores[key] is not None, key
    assert scores["spans_sc_f"] == 1.0
    # The gold is nested: 10 spans, of which at most 8 can be flat ents.
    assert scores["ents_p"] == 1.0
    assert scores["ents_r"] == pytest.approx(0.8)
    assert set(scores["ents_per_type"]) == {"PER", "LOC", "ORG"}


def test_evaluate_uses_reference_ents_when_present(trained):
    nlp, _ = trained
    predicted = span_tuples(nlp(EN_DATA[0][0]).ents)
    assert len(predicted) == 2
    examples = make_examples(nlp, EN_DATA[:1])
    reference = examples[0].reference
    # Against the spans (3 nested gold spans) recall would be 2/3; against ents it is 1.
    reference.ents = [Span(reference, s, e, label=label) for s, e, label in predicted]
    scores = nlp.evaluate(examples)
    assert (scores["ents_p"], scores["ents_r"]) == (1.0, 1.0)
    reference.ents = [Span(reference, 0, 1, label="PER")]
    scores = nlp.evaluate(examples)
    assert (scores["ents_p"], scores["ents_r"]) == (0.5, 1.0)


def test_without_write_ents_no_ents_scores_and_no_ents():
    nlp, examples, _ = build_tiny("en", steps=3)
    doc = nlp(EN_DATA[0][0])
    assert len(doc.ents) == 0
    assert "ents_f" not in nlp.evaluate(examples)
