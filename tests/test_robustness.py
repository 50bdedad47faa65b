"""Hostile input: random texts never crash the pipeline and give well-formed spans;
random gold span sets give a finite loss and gradient; bad gold spans get a clear
error. Property tests run a fixed number of examples from a fixed seed."""
import warnings

import numpy
import pytest
import spacy
import torch
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from spacy.tokens import Doc, Span
from spacy.training import Example
from .tiny_pipeline import build_tiny, span_tuples

from spacy_globalpointer.loss import multilabel_categorical_crossentropy

SEED = 20240607
N_TEXT_BATCHES = 60
N_SPAN_SETS = 60
N_LOSS_ARRAYS = 200

PROPERTY_SETTINGS = settings(
    max_examples=N_TEXT_BATCHES,
    deadline=None,
    database=None,  # reproducible from SEED alone, nothing written to the repo
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

SPECIAL = [
    "\x00", "\x01", "\x08", "\x1b", "\x1f", "\x7f", "\x85", "\t", "\n", "\r\n", "\x0b", "\x0c",
    "\u00a0", "\u2028", "\u2029", "\u200b", "\u200d", "\u200e", "\u202e", "\ufeff", "\u3000",
    "\ufffd", "\U0010ffff", "\U000e0001",
    "😀", "👩\u200d👩\u200d👧", "🇫🇷", "🏳️\u200d🌈", "e\u0301", "\u0301\u0301\u0301",
    "中文", "北京大学", "،", "العربية", "עברית", "हिन्दी", "ภาษาไทย", "ß", "İ", "ﬁ", "𝔘𝔫𝔦",
    " ", "  ", ".", "...", "-", "'", '"', "(", ")", "http://example.com/a?b=c", "@user", "#tag",
    "$", "%", "U.S.", "don't", "New", "York", "Alice", "Paris", "0", "123,456.78",
]
WHITESPACE = [" ", "\t", "\n", "\r", "\x0b", "\x0c", "\u00a0", "\u2028", "\u3000", "\u200b"]

texts = st.one_of(
    st.just(""),
    st.text(alphabet=st.sampled_from(WHITESPACE), max_size=40),
    st.text(max_size=300),  # any code points except lone surrogates (see below)
    st.lists(st.sampled_from(SPECIAL), max_size=80).map("".join),
    st.lists(st.sampled_from(SPECIAL), max_size=60).map(" ".join),
    st.text(alphabet=st.characters(categories=["L", "N", "S", "M"]), min_size=60, max_size=300),
    st.lists(st.text(min_size=1, max_size=15), max_size=30).map(" ".join),
)
text_batches = st.lists(texts, min_size=1, max_size=5)


@pytest.fixture(scope="module")
def pipelines():
    """A full-matrix English pipeline writing ents and a banded Chinese one,
    both with a low threshold so that random text yields many spans."""
    en, _, _ = build_tiny("en", config={"write_ents": True, "threshold": 0.018})
    zh, _, _ = build_tiny("zh", config={"max_span_length": 5, "threshold": 0.018})
    return {"en": en, "zh": zh}


def check_doc(doc, text, pipe):
    assert doc.text == text
    group = doc.spans[pipe.key]
    scores = numpy.asarray(group.attrs["scores"])
    assert scores.shape == (len(group),)
    assert numpy.isfinite(scores).all()
    # Probabilities, at least the threshold (float32 rounding can make one equal to it).
    assert ((scores >= pipe.threshold) & (scores <= 1.0)).all()
    for span in group:
        assert span.doc is doc
        assert 0 <= span.start < span.end <= len(doc)
        assert span.label_ in pipe.labels
        if pipe.max_span_length is not None:
            assert len(span) <= pipe.max_span_length
    assert len(set(span_tuples(group))) == len(group)  # each (start, end, label) once
    if pipe.cfg["write_ents"]:
        ents = span_tuples(doc.ents)
        assert set(ents) <= set(span_tuples(group))
        assert all(a[1] <= b[0] for a, b in zip(ents, ents[1:]))
    return span_tuples(group), scores


@pytest.mark.parametrize("lang", ["en", "zh"])
@seed(SEED)
@PROPERTY_SETTINGS
@given(batch=text_batches)
def test_random_texts_never_crash_and_pipe_equals_call(pipelines, lang, batch):
    nlp = pipelines[lang]
    pipe = nlp.get_pipe("global_pointer")
    docs = list(nlp.pipe(batch, batch_size=3))
    assert len(docs) == len(batch)
    for text, doc in zip(batch, docs):
        spans, scores = check_doc(doc, text, pipe)
        alone = nlp(text)
        spans_alone, scores_alone = check_doc(alone, text, pipe)
        assert spans == spans_alone
        numpy.testing.assert_allclose(scores, scores_alone, rtol=1e-4, atol=1e-4)


def test_hostile_texts_predict_something(pipelines):
    """The property test is only meaningful if the pipelines write spans on odd input."""
    for nlp in pipelines.values():
        doc = nlp("\x00😀 New York\u202e 中文 " + "x" * 200)
        assert len(doc.spans["sc"]) > 0


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_lone_surrogates_fail_in_the_tokenizer_not_in_the_component(pipelines, lang):
    # A known limit of spaCy itself: its StringStore encodes to UTF-8.
    with pytest.raises(UnicodeEncodeError):
        pipelines[lang].make_doc("abc \ud800 def")


WORDS = ["a", "New", "York", "😀", "中", "\u200b", "the", "Bank", ".", "x" * 40]


@st.composite
def span_examples(draw, labels):
    """A batch of docs with random gold span sets: nested, duplicate, touching spans."""
    batch = []
    for _ in range(draw(st.integers(1, 3))):
        n = draw(st.integers(0, 25))
        words = draw(st.lists(st.sampled_from(WORDS), min_size=n, max_size=n))
        spans = []
        if n:
            for _ in range(draw(st.integers(0, 12))):
                start = draw(st.integers(0, n - 1))
                end = draw(st.integers(start + 1, n))
                spans.append((start, end, draw(st.sampled_from(labels))))
            if spans and draw(st.booleans()):
                spans.append(spans[0])  # exact duplicate
            if draw(st.booleans()) and n >= 2:
                cut = draw(st.integers(1, n - 1))  # two touching spans
                spans += [(0, cut, labels[0]), (cut, n, labels[-1])]
        batch.append((words, spans))
    return batch


def build_examples(vocab, batch, key="sc"):
    examples = []
    for words, spans in batch:
        predicted = Doc(vocab, words=words)
        reference = Doc(vocab, words=words)
        reference.spans[key] = [Span(reference, s, e, label=label) for s, e, label in spans]
        examples.append(Example(predicted, reference))
    return examples


def candidate_mask(lengths, shape):
    n_max, band = shape[2], shape[3]
    ends = numpy.arange(n_max)[:, None] + numpy.arange(band)[None, :]
    mask = ends[None] < numpy.asarray(lengths)[:, None, None]
    return numpy.broadcast_to(mask[:, None], shape)


@pytest.fixture(scope="module")
def loss_pipelines():
    """Separate pipelines (their gradients are touched) with and without a band."""
    full, _, _ = build_tiny("en", steps=3)
    with warnings.catch_warnings():  # one gold span is longer than 3 tokens
        warnings.simplefilter("ignore")
        banded, _, _ = build_tiny("en", steps=3, config={"max_span_length": 3})
    return {"full": full, "banded": banded}


@pytest.mark.parametrize("which", ["full", "banded"])
@seed(SEED)
@settings(PROPERTY_SETTINGS, max_examples=N_SPAN_SETS)
@given(data=st.data())
def test_random_gold_spans_give_finite_loss_and_gradients(loss_pipelines, which, data):
    nlp = loss_pipelines[which]
    pipe = nlp.get_pipe("global_pointer")
    examples = build_examples(nlp.vocab, data.draw(span_examples(list(pipe.labels))))
    docs = [eg.predicted for eg in examples]
    scores, backprop = pipe.model.begin_update(docs)
    loss, d_scores = pipe.get_loss(examples, scores)
    assert numpy.isfinite(loss) and loss >= 0
    assert [d.shape for d in d_scores.groups] == [s.shape for s in scores.groups]
    for d_group, ids in zip(d_scores.groups, d_scores.doc_ids):
        assert numpy.isfinite(d_group).all()
        mask = candidate_mask([len(docs[i]) for i in ids], d_group.shape)
        assert (d_group[~mask] == 0).all()
    # Gold spans inside the band get a negative gradient (their score should rise).
    label_ids = {label: i for i, label in enumerate(pipe.labels)}
    for i, eg in enumerate(examples):
        d_doc = d_scores.doc(i)
        for span in eg.reference.spans["sc"]:
            if len(span) <= d_doc.shape[2]:
                assert d_doc[label_ids[span.label_], span.start, len(span) - 1] < 0
    if not any(len(doc) for doc in docs):
        # update() skips such batches: Thinc's tok2vec cannot backprop zero tokens.
        assert loss == 0.0
        return
    backprop(d_scores)  # through the head and the tok2vec
    head = pipe.model.get_ref("head").shims[0]._model
    for name, param in head.named_parameters():
        if param.grad is not None:
            assert torch.isfinite(param.grad).all(), name
            param.grad = None
    for node in pipe.model.walk():
        for name in node.param_names:
            if node.has_grad(name):
                assert numpy.isfinite(node.get_grad(name)).all(), (node.name, name)
                node.set_grad(name, node.ops.alloc(node.get_grad(name).shape))


@seed(SEED)
@settings(PROPERTY_SETTINGS, max_examples=N_LOSS_ARRAYS)
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(0, 6), st.integers(1, 4)),
    data=st.data(),
)
def test_loss_is_finite_for_extreme_finite_scores(shape, data):
    size = int(numpy.prod(shape))
    # Far beyond any real logit; only |s| near float32's max (~1.7e38 and up) could
    # overflow the sum of the two log-sum-exp terms.
    values = st.one_of(
        st.floats(-1e4, 1e4, width=32),
        st.sampled_from([0.0, 88.0, -88.0, 89.0, -104.0, 1e30, -1e30]),
    )
    booleans = st.lists(st.booleans(), min_size=size, max_size=size)
    scores = numpy.asarray(data.draw(st.lists(values, min_size=size, max_size=size)), "f").reshape(shape)
    targets = numpy.asarray(data.draw(booleans), dtype=bool).reshape(shape)
    mask = numpy.asarray(data.draw(booleans), dtype=bool).reshape(shape)
    # Masked positions hold the dtype's min, as the heads write them.
    scores = numpy.where(mask, scores, numpy.finfo("f").min).astype("f")
    loss, grad = multilabel_categorical_crossentropy(scores, targets, mask)
    assert numpy.isfinite(loss) and loss >= 0
    assert numpy.isfinite(grad).all()
    assert (grad[~mask] == 0).all()
    assert (grad[mask & targets] <= 0).all() and (grad[mask & ~targets] >= 0).all()


def test_spacy_refuses_out_of_bounds_and_reversed_spans():
    doc = spacy.blank("en")("a b c d")
    for start, end in [(0, 10), (3, 1), (-1, 2), (5, 6)]:
        with pytest.raises(IndexError):
            Span(doc, start, end, label="X")


@pytest.mark.parametrize("stage", ["update", "initialize"])
def test_zero_length_gold_span_gets_a_clear_error(stage):
    nlp, examples, _ = build_tiny("en", steps=0)
    reference = examples[1].reference
    reference.spans["sc"] = list(reference.spans["sc"]) + [Span(reference, 4, 4, label="LOC")]
    expected = (
        r"gold span \(4, 4\) with label 'LOC' in doc.spans\['sc'\] of "
        + (r"doc 1 of the batch" if stage == "update" else r"training example 1")
        + r" \('Bob works at Acme Corp in Paris', 7 tokens\) is empty"
    )
    with pytest.raises(ValueError, match=expected):
        if stage == "update":
            nlp.update(examples)
        else:
            nlp.initialize(lambda: examples)


def test_unknown_gold_label_gets_a_clear_error():
    nlp, examples, _ = build_tiny("en", steps=0)
    reference = examples[0].reference
    reference.spans["sc"] = [Span(reference, 0, 1, label="ALIEN")]
    with pytest.raises(ValueError, match=r"'Alice' \(0, 1\) in doc 0 of the batch has label 'ALIEN'"):
        nlp.update(examples)


def test_misaligned_reference_tokenization_is_handled():
    """Gold spans whose tokens do not align with the predicted doc are dropped, not crashed on."""
    nlp, _, _ = build_tiny("en", steps=0)
    predicted = Doc(nlp.vocab, words=["NewYork", "City", "rocks"])
    reference = Doc(nlp.vocab, words=["New", "York", "City", "rocks"], spaces=[False, True, True, False])
    reference.spans["sc"] = [Span(reference, 1, 3, label="LOC"), Span(reference, 0, 3, label="LOC")]
    example = Example(predicted, reference)
    losses = nlp.update([example])
    assert numpy.isfinite(losses["global_pointer"])


def test_empty_and_whitespace_batches(pipelines):
    for nlp in pipelines.values():
        docs = list(nlp.pipe(["", " ", "\n\n", ""]))
        assert [len(doc.spans["sc"]) for doc in docs if len(doc) == 0] == [0] * sum(
            len(doc) == 0 for doc in docs
        )
        losses = nlp.update([Example(nlp.make_doc(""), nlp.make_doc(""))])
        assert losses["global_pointer"] == 0.0
