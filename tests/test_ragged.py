"""Ragged span scores (one array per length group) give what the padded path gave:
the same scores, spans, loss and gradients, on random batches of mixed lengths.

The padded path is kept here as the reference: the forward pass as it was (each
group's scores copied into one (batch, labels, n_max, width) array), and
`set_annotations` and `get_loss` as they were on that array.
"""
import warnings

import numpy
import pytest
from spacy.tokens import Doc, Span
from spacy.training import Example
from thinc.api import set_dropout_rate

from spacy_globalpointer.loss import multilabel_categorical_crossentropy
from spacy_globalpointer.model import SpanScores
from spacy_globalpointer.pipe import select_non_overlapping, sigmoid
from spacy_globalpointer.torch_layers import length_groups

from .tiny_pipeline import build_tiny, span_tuples

FP32_MIN = numpy.finfo("float32").min
WORDS = "Alice Bob Carol lives works in at New York City Paris Acme Corp the Bank of hired is big".split()
BAND = 3
SEEDS = range(6)


# ---------------------------------------------------------------- the padded reference


def padded_forward(model, docs, is_train):
    """The forward pass before ragged scores: groups scored apart, then padded together."""
    ops = model.ops
    Xs, backprop_tok2vec = model.get_ref("tok2vec")(docs, is_train)
    lengths = [len(x) for x in Xs]
    n_max = max(lengths, default=0)
    band = model.attrs["max_span_length"]
    width = n_max if band is None else min(band, n_max)
    scores = numpy.full((len(docs), model.get_dim("nO"), n_max, width), FP32_MIN, dtype="float32")
    callbacks = []
    for group in length_groups(lengths):
        group_n = lengths[group[-1]]
        if group_n == 0:
            continue
        padded = ops.pad([Xs[i] for i in group])
        group_scores, backprop_head = model.get_ref("head")(
            (padded, ops.asarray1i([lengths[i] for i in group]), band), is_train
        )
        where = (numpy.asarray(group), slice(None), slice(0, group_n), slice(0, group_scores.shape[3]))
        scores[where] = group_scores
        callbacks.append((group, where, backprop_head))

    def backprop(d_scores):
        d_Xs = [ops.alloc2f(n, model.get_dim("nI")) for n in lengths]
        for group, where, backprop_head in callbacks:
            d_padded = backprop_head(numpy.ascontiguousarray(d_scores[where]))
            for i, d_X in zip(group, ops.unpad(d_padded, [lengths[i] for i in group])):
                d_Xs[i] = d_X
        return backprop_tok2vec(d_Xs)

    return scores, backprop


def padded_set_annotations(pipe, docs, scores):
    """`set_annotations` on the padded (batch, labels, n_max, band) array (uncalibrated: the
    probability is sigmoid of the logit, and ents are ranked by the logit)."""
    cuts = numpy.clip(pipe.decision_cuts(), numpy.finfo("float32").min, numpy.finfo("float32").max)
    found = [x for x in numpy.nonzero(scores > cuts.astype("float32").reshape(1, -1, 1, 1))]
    lengths = numpy.asarray([len(doc) for doc in docs])
    inside = found[2] + found[3] < lengths[found[0]]
    found = [x[inside] for x in found]
    found_scores = scores[tuple(found)]
    doc_ids, label_ids, starts, offsets = found
    order = numpy.lexsort((label_ids, starts + offsets, starts, doc_ids))
    bounds = numpy.searchsorted(doc_ids[order], numpy.arange(len(docs) + 1))
    for i, doc in enumerate(docs):
        rows = order[bounds[i] : bounds[i + 1]]
        spans = [
            Span(doc, int(s), int(s + o + 1), label=pipe.labels[label])
            for s, o, label in zip(starts[rows], offsets[rows], label_ids[rows])
        ]
        doc.spans[pipe.key] = spans
        doc.spans[pipe.key].attrs["scores"] = sigmoid(found_scores[rows])
        if pipe.cfg["write_ents"]:
            doc.set_ents(select_non_overlapping(spans, found_scores[rows]), default="outside")


def padded_get_loss(pipe, examples, scores):
    """`get_loss` on the padded array: targets and mask of the batch's whole shape."""
    targets = numpy.zeros(scores.shape, dtype="bool")
    label_ids = {label: i for i, label in enumerate(pipe.labels)}
    n_max, band = scores.shape[2], scores.shape[3]
    for i, eg in enumerate(examples):
        for span in eg.reference.spans.get(pipe.key, []):
            if len(span) - 1 < band and span.end <= n_max:
                targets[i, label_ids[span.label_], span.start, len(span) - 1] = True
    lengths = numpy.asarray([len(eg.predicted) for eg in examples])
    ends = numpy.arange(n_max)[:, None] + numpy.arange(band)[None, :]
    mask = numpy.broadcast_to((ends[None] < lengths[:, None, None])[:, None], scores.shape)
    return multilabel_categorical_crossentropy(scores, targets, mask)


# ---------------------------------------------------------------- random batches


@pytest.fixture(scope="module")
def pipelines():
    """Trained a little, so that scores differ by span and label; one with a band."""
    full, _, _ = build_tiny("en", steps=5)
    with warnings.catch_warnings():  # a gold span is longer than the band
        warnings.simplefilter("ignore")
        banded, _, _ = build_tiny("en", steps=5, config={"max_span_length": BAND})
    return {"full": full, "banded": banded}


def random_lengths(rng):
    """Mostly short docs, some empty, now and then a long one."""
    lengths = list(rng.integers(0, 12, size=rng.integers(1, 9)))
    if rng.random() < 0.7:
        lengths.append(int(rng.integers(40, 90)))
    if rng.random() < 0.5:
        lengths.append(0)
    rng.shuffle(lengths)
    return lengths


def make_docs(nlp, lengths, rng):
    return [Doc(nlp.vocab, words=[str(w) for w in rng.choice(WORDS, size=n)]) for n in lengths]


def random_examples(nlp, pipe, docs, rng):
    """Examples with random gold spans, some longer than the band."""
    examples = []
    for doc in docs:
        reference = doc.copy()
        spans = []
        for _ in range(int(rng.integers(0, 4)) if len(doc) else 0):
            start = int(rng.integers(0, len(doc)))
            end = int(rng.integers(start + 1, min(len(doc), start + 6) + 1))
            spans.append(Span(reference, start, end, label=str(rng.choice(pipe.labels))))
        reference.spans[pipe.key] = spans
        examples.append(Example(doc, reference))
    return examples


def assert_scores_equal(ragged: SpanScores, padded, lengths, band):
    """Every doc's scores are the padded array's, which holds nothing else."""
    assert len(ragged) == len(lengths) and list(ragged.lengths) == lengths
    covered = numpy.zeros(padded.shape, dtype="bool")
    for i, n in enumerate(lengths):
        width = n if band is None else min(band, n)
        doc_scores = ragged.doc(i)
        assert doc_scores.shape == (padded.shape[1], n, width)
        numpy.testing.assert_array_equal(doc_scores, padded[i, :, :n, :width])
        covered[i, :, :n, :width] = True
    assert (padded[~covered] == FP32_MIN).all()


def batches():
    """(name, lengths) of the batches every test runs on."""
    for seed in SEEDS:
        yield f"random{seed}", random_lengths(numpy.random.default_rng(seed))
    yield "one_long_doc", [120]
    yield "empty_docs", [0, 0, 3, 0]
    yield "all_empty", [0, 0]


BATCHES = dict(batches())


@pytest.mark.parametrize("which", ["full", "banded"])
@pytest.mark.parametrize("batch", list(BATCHES))
def test_ragged_scores_are_the_padded_scores(pipelines, which, batch):
    nlp = pipelines[which]
    pipe = nlp.get_pipe("global_pointer")
    docs = make_docs(nlp, BATCHES[batch], numpy.random.default_rng(1))
    ragged = pipe.predict(docs)
    padded, _ = padded_forward(pipe.model, docs, is_train=False)
    assert_scores_equal(ragged, padded, BATCHES[batch], pipe.max_span_length)
    # Each group is padded to its own longest doc, not the batch's.
    for group, ids in zip(ragged.groups, ragged.doc_ids):
        assert group.shape[:3] == (len(ids), len(pipe.labels), max(ragged.lengths[i] for i in ids))
    assert sorted(i for ids in ragged.doc_ids for i in ids) == list(range(len(docs)))


@pytest.mark.parametrize("write_ents", [False, True])
@pytest.mark.parametrize("threshold", [0.5, 0.018])  # logits 0 and about -4
@pytest.mark.parametrize("which", ["full", "banded"])
@pytest.mark.parametrize("batch", list(BATCHES))
def test_ragged_set_annotations_writes_the_padded_spans(pipelines, which, batch, threshold, write_ents):
    nlp = pipelines[which]
    pipe = nlp.get_pipe("global_pointer")
    old = (pipe.threshold, pipe.cfg["write_ents"])
    pipe.threshold, pipe.cfg["write_ents"] = threshold, write_ents
    try:
        docs = make_docs(nlp, BATCHES[batch], numpy.random.default_rng(2))
        reference_docs = [doc.copy() for doc in docs]
        pipe.set_annotations(docs, pipe.predict(docs))
        padded_set_annotations(pipe, reference_docs, padded_forward(pipe.model, docs, False)[0])
    finally:
        pipe.threshold, pipe.cfg["write_ents"] = old
    for doc, reference in zip(docs, reference_docs):
        assert span_tuples(doc.spans[pipe.key]) == span_tuples(reference.spans[pipe.key])
        numpy.testing.assert_array_equal(
            doc.spans[pipe.key].attrs["scores"], reference.spans[pipe.key].attrs["scores"]
        )
        assert doc.spans[pipe.key].attrs["scores"].dtype == numpy.float32
        assert span_tuples(doc.ents) == span_tuples(reference.ents)
    if threshold < 0.5 and sum(BATCHES[batch]):
        assert sum(len(doc.spans[pipe.key]) for doc in docs) > 0  # the comparison saw spans


def parameter_grads(model):
    """Copies of every gradient in the model (Thinc layers and the torch head), then zeroed."""
    grads = {}
    for node in model.walk():
        for name in node.param_names:
            if node.has_grad(name):
                grads[node.id, name] = numpy.array(node.get_grad(name))
                node.set_grad(name, node.ops.alloc(node.get_grad(name).shape))
    head = model.get_ref("head").shims[0]._model
    for name, param in head.named_parameters():
        if param.grad is not None:
            grads["head", name] = param.grad.numpy().copy()
            param.grad = None
    return grads


@pytest.mark.parametrize("which", ["full", "banded"])
@pytest.mark.parametrize("batch", list(BATCHES))
def test_ragged_loss_and_gradients_are_the_padded_ones(pipelines, which, batch):
    nlp = pipelines[which]
    pipe = nlp.get_pipe("global_pointer")
    rng = numpy.random.default_rng(3)
    docs = make_docs(nlp, BATCHES[batch], rng)
    examples = random_examples(nlp, pipe, docs, rng)
    set_dropout_rate(pipe.model, 0.0)
    parameter_grads(pipe.model)  # start from zero

    scores, backprop = pipe.model.begin_update(docs)
    loss, d_scores = pipe.get_loss(examples, scores)
    padded, padded_backprop = padded_forward(pipe.model, docs, is_train=True)
    padded_loss, d_padded = padded_get_loss(pipe, examples, padded)

    assert loss == pytest.approx(padded_loss, rel=1e-6, abs=1e-9)
    assert isinstance(d_scores, SpanScores) and d_scores.doc_ids == scores.doc_ids
    assert [d.shape for d in d_scores.groups] == [s.shape for s in scores.groups]
    for i, n in enumerate(d_scores.lengths):
        d_doc = d_scores.doc(i)
        numpy.testing.assert_allclose(d_doc, d_padded[i, :, :n, : d_doc.shape[2]], rtol=1e-5, atol=1e-9)
    if not any(BATCHES[batch]):
        assert loss == 0.0  # update() skips such batches: nothing to backprop
        return
    backprop(d_scores)
    ragged_grads = parameter_grads(pipe.model)
    padded_backprop(d_padded)
    reference_grads = parameter_grads(pipe.model)
    assert ragged_grads.keys() == reference_grads.keys() and ragged_grads
    for key, grad in ragged_grads.items():
        numpy.testing.assert_allclose(grad, reference_grads[key], rtol=1e-4, atol=1e-7, err_msg=str(key))


def test_a_long_doc_does_not_pad_the_short_ones(pipelines):
    """Score memory follows the docs' own lengths: sum of n_i * band * labels, within
    the groups' padding, however long the longest doc."""
    nlp = pipelines["banded"]
    pipe = nlp.get_pipe("global_pointer")
    lengths = [5] * 40 + [400]
    scores = pipe.predict(make_docs(nlp, lengths, numpy.random.default_rng(4)))
    held = sum(group.size for group in scores.groups)
    assert held <= 1.25 * sum(lengths) * BAND * len(pipe.labels)
    assert held < 0.05 * len(lengths) * max(lengths) * BAND * len(pipe.labels)  # the padded size


def test_span_scores_doc_and_with_groups_check_their_input(pipelines):
    nlp = pipelines["full"]
    pipe = nlp.get_pipe("global_pointer")
    docs = make_docs(nlp, [3, 0, 7], numpy.random.default_rng(5))
    scores = pipe.predict(docs)
    with pytest.raises(IndexError, match="no doc 3 in a batch of 3 docs"):
        scores.doc(3)
    with pytest.raises(ValueError, match="expected"):
        scores.with_groups(scores.groups[:1])
    with pytest.raises(ValueError, match="the scores are for 3 docs of lengths \\[3, 0, 7\\]"):
        pipe.set_annotations(docs[:2], scores)
    with pytest.raises(TypeError, match="expected the SpanScores that predict\\(\\) returns, got ndarray"):
        pipe.set_annotations(docs, scores.groups[0])


def test_loss_over_groups_adds_up_to_the_batch_mean():
    """Rows are independent: summing per-group losses divided by the batch's row count
    gives the loss of the whole batch, and the same gradient."""
    rng = numpy.random.default_rng(6)
    scores = rng.normal(scale=3.0, size=(5, 3, 4, 2)).astype("float32")
    targets = rng.random(scores.shape) < 0.2
    mask = rng.random(scores.shape) < 0.8
    whole, d_whole = multilabel_categorical_crossentropy(scores, targets, mask)
    parts = [slice(0, 2), slice(2, 5)]
    pieces = [multilabel_categorical_crossentropy(scores[p], targets[p], mask[p], n_rows=15) for p in parts]
    assert sum(loss for loss, _ in pieces) == pytest.approx(whole, rel=1e-6)
    numpy.testing.assert_allclose(numpy.concatenate([d for _, d in pieces]), d_whole, rtol=1e-6)
