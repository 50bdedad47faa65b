"""`inner_channel`: gold spans strictly inside another gold span get scores of their own."""
import numpy
import pytest
import spacy
from spacy.tokens import Span
from spacy.training import Example

from spacy_globalpointer.pipe import GlobalPointer, _strictly_inside_another

from .conftest import NESTED_ZH, make_examples
from .test_pipe import ARCHITECTURES, make_nlp, spans_of, train


def test_strictly_inside_means_contained_by_other_boundaries_whatever_the_label():
    doc = spacy.blank("zh")("北京大学位于北京市")
    spans = [
        Span(doc, 0, 4, "ORG"),  # contains 0-2: outer, not inner
        Span(doc, 0, 2, "LOC"),  # inside 0-4 (shares the start): inner
        Span(doc, 0, 2, "GPE"),  # same boundaries as the LOC: still inside 0-4
        Span(doc, 3, 6, "X"),    # crosses 0-4: neither
        Span(doc, 6, 9, "LOC"),  # alone
        Span(doc, 6, 9, "GPE"),  # same boundaries as the LOC above: not inside it
    ]
    assert _strictly_inside_another(spans) == [False, True, True, False, False, False]
    assert _strictly_inside_another([]) == []


def _pipe(**component):
    nlp = make_nlp(**component)
    examples = make_examples(nlp)
    nlp.initialize(lambda: examples)
    return nlp, nlp.get_pipe("global_pointer"), examples


def test_gold_goes_to_the_inner_channel_and_each_channel_ignores_the_others_gold():
    nlp, pipe, examples = _pipe(inner_channel=True)
    n = len(pipe.labels)
    assert pipe.model.get_dim("nO") == 2 * n
    # Find an example with a nested pair (NESTED_ZH has 北京大学 ORG around 北京 LOC).
    index = next(i for i, eg in enumerate(examples) if any(_strictly_inside_another(list(eg.reference.spans["sc"]))))
    eg = examples[index]
    gold = list(eg.reference.spans["sc"])
    inner = _strictly_inside_another(gold)
    channels = pipe._gold_candidates(eg, 0)
    label_ids = {label: i for i, label in enumerate(pipe.labels)}
    assert channels == [
        (label_ids[span.label_] + (n if is_inner else 0), span.start, len(span) - 1)
        for span, is_inner in zip(gold, inner)
    ]
    # The loss's gradient is zero exactly where the other channel has a gold span.
    scores, _ = pipe.model.begin_update([eg.predicted])
    _, d_scores = pipe.get_loss([eg], scores)
    d = pipe.model.ops.to_numpy(d_scores.doc(0))
    for (channel, start, offset) in channels:
        other = (channel + n) % (2 * n)
        assert d[other, start, offset] == 0.0
        assert d[channel, start, offset] < 0.0  # a positive: pushed up
    # Without inner_channel the same span is a positive of its label's one channel.
    _, plain, plain_examples = _pipe()
    assert all(c < len(plain.labels) for c, _, _ in plain._gold_candidates(plain_examples[index], 0))


def test_predict_merges_the_two_channels_with_max():
    nlp, pipe, examples = _pipe(inner_channel=True)
    docs = [nlp.make_doc(text) for text, _ in NESTED_ZH]
    raw = pipe.model.predict(docs)
    merged = pipe.predict(docs)
    n = len(pipe.labels)
    for i in range(len(docs)):
        r = pipe.model.ops.to_numpy(raw.doc(i))
        assert r.shape[0] == 2 * n
        numpy.testing.assert_array_equal(pipe.model.ops.to_numpy(merged.doc(i)), numpy.maximum(r[:n], r[n:]))


def test_scores_with_the_wrong_number_of_channels_are_refused():
    nlp, pipe, examples = _pipe(inner_channel=True)
    docs = [eg.predicted for eg in examples]
    with pytest.raises(ValueError, match=r"channels per span, expected 6: pass the model's output"):
        pipe.get_loss(examples, pipe.predict(docs))
    with pytest.raises(ValueError, match=r"expected 3: pass predict\(\)'s output"):
        pipe.set_annotations(docs, pipe.model.predict(docs))


def test_inner_channel_must_be_a_bool():
    # From a config, spaCy's validation names the setting; built in Python, the component does.
    with pytest.raises(ValueError, match=r"global_pointer -> inner_channel"):
        make_nlp(inner_channel="yes")
    model = make_nlp().get_pipe("global_pointer").model
    with pytest.raises(ValueError, match="inner_channel must be true or false, got 'yes'"):
        GlobalPointer(spacy.blank("zh").vocab, model, inner_channel="yes")


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_inner_channel_learns_nested_examples_and_survives_saving(arch, tmp_path):
    nlp = make_nlp(arch, inner_channel=True)
    train(nlp, make_examples(nlp))
    assert nlp.evaluate(make_examples(nlp))["spans_sc_f"] == 1.0
    texts = [t for t, _ in NESTED_ZH] + ["北京和上海", ""]
    before = list(nlp.pipe(texts))
    nlp.to_disk(tmp_path / "pipeline")
    loaded = spacy.load(tmp_path / "pipeline")
    assert loaded.get_pipe("global_pointer").inner_channel is True
    assert loaded.get_pipe("global_pointer").model.get_dim("nO") == 2 * len(nlp.get_pipe("global_pointer").labels)
    for doc_a, doc_b in zip(before, loaded.pipe(texts)):
        assert spans_of(doc_a) == spans_of(doc_b)
        numpy.testing.assert_allclose(doc_a.spans["sc"].attrs["scores"], doc_b.spans["sc"].attrs["scores"], rtol=1e-5)
    # The saved cfg wins over the config, as for thresholds: an untrained pipeline built
    # without inner_channel loads the component as it was trained ...
    data = nlp.get_pipe("global_pointer").to_bytes()
    fresh = make_nlp(arch).get_pipe("global_pointer").from_bytes(data)
    assert fresh.inner_channel is True and fresh.model.get_dim("nO") == 2 * len(fresh.labels)
    # ... but an initialized one has a head of the other size, and says what to check.
    plain = make_nlp(arch)
    plain.initialize(lambda: make_examples(plain))
    with pytest.raises(ValueError, match=r"twice that with inner_channel \(True\)"):
        plain.get_pipe("global_pointer").from_bytes(data)
