"""Banded scoring (max_span_length = w): inside the band it equals the full matrix,
outside it nothing is a candidate, and the pipeline honours the limit."""
import itertools
import warnings

import numpy
import pytest
import spacy
import torch
from .tiny_pipeline import EN_DATA, SMALL_MODEL, WIDE_TEXT, build_tiny, make_examples

from spacy_globalpointer.torch_layers import (
    EfficientGlobalPointerHead,
    GlobalPointerHead,
    RotaryPositionEmbedding,
    band_candidate_mask,
    band_scores,
)

NS = [1, 2, 5, 7, 16, 33]
WS = [1, 2, 3, 4, 8, 40]  # w == 1, n not a multiple of w, w > n
HEAD_CLASSES = [GlobalPointerHead, EfficientGlobalPointerHead]
ATOL = 1e-5


def full_diagonals(full: torch.Tensor, w: int) -> torch.Tensor:
    """(batch, heads, n, n) -> (batch, heads, n, w): out[..., i, d] = full[..., i, i + d], 0 past n."""
    n = full.shape[-1]
    out = torch.zeros(full.shape[:-1] + (w,), dtype=full.dtype)
    for i in range(n):
        for d in range(min(w, n - i)):
            out[..., i, d] = full[..., i, i + d]
    return out


@pytest.mark.parametrize("n,w", list(itertools.product(NS, WS)))
def test_band_scores_are_the_diagonals_of_the_full_matrix(n, w):
    generator = torch.Generator().manual_seed(n * 100 + w)
    q = torch.randn(2, 3, n, 8, generator=generator)
    k = torch.randn(2, 3, n, 8, generator=generator)
    full = q @ k.transpose(-1, -2)
    band = band_scores(q, k, w)
    assert band.shape == (2, 3, n, w)
    torch.testing.assert_close(band, full_diagonals(full, w), atol=ATOL, rtol=ATOL)


def test_rope_rotates_consecutive_pairs_by_position_times_frequency():
    """The pairing and the angles are part of what trained weights mean: pin them."""
    dim, base = 8, 10000.0
    rope = RotaryPositionEmbedding(dim, base)
    x = torch.randn(2, 3, 6, dim)
    expected = torch.empty_like(x)
    for pos in range(6):
        for m in range(dim // 2):
            angle = torch.tensor(pos * base ** (-2 * m / dim))
            even, odd = x[..., pos, 2 * m], x[..., pos, 2 * m + 1]
            expected[..., pos, 2 * m] = even * angle.cos() - odd * angle.sin()
            expected[..., pos, 2 * m + 1] = odd * angle.cos() + even * angle.sin()
    torch.testing.assert_close(rope(x), expected, atol=ATOL, rtol=ATOL)


def test_rope_offset_matches_a_slice_of_the_whole_sequence():
    rope = RotaryPositionEmbedding(16)
    x = torch.randn(2, 3, 50, 16)
    for start, stop in [(0, 7), (13, 29), (40, 50)]:
        assert torch.equal(rope(x[:, :, start:stop], start), rope(x)[:, :, start:stop])


def _head(head_class, width, n_types, seed):
    torch.manual_seed(seed)
    return head_class(width, n_types, head_size=8)


def _batch(n, width, seed):
    generator = torch.Generator().manual_seed(seed)
    X = torch.randn(3, n, width, generator=generator)
    lengths = torch.tensor([n, max(n - 3, 0), 1 if n else 0])
    return X, lengths


@pytest.mark.parametrize("head_class", HEAD_CLASSES)
@pytest.mark.parametrize("n,w", [(1, 1), (5, 1), (5, 2), (7, 3), (9, 4), (12, 5), (6, 6), (4, 10)])
def test_banded_head_equals_full_head_inside_the_band(head_class, n, w):
    head = _head(head_class, 12, 4, seed=n + w)
    X, lengths = _batch(n, 12, seed=n * w)
    band = min(w, n)
    X_band = X.clone().requires_grad_(True)
    X_full = X.clone().requires_grad_(True)
    banded = head(X_band, lengths, band=w)
    full = head(X_full, lengths, band=None)
    assert banded.shape == (3, 4, n, band)
    assert full.shape == (3, 4, n, n)
    mask = band_candidate_mask(lengths, n, band)[:, None].expand_as(banded)
    torch.testing.assert_close(banded[mask], full[..., :band][mask], atol=ATOL, rtol=ATOL)
    # Masked positions are exactly the non-candidates: (i, i + d) past the end of the doc.
    minimum = torch.finfo(banded.dtype).min
    assert torch.equal(banded == minimum, ~mask)
    assert torch.equal(full == minimum, ~band_candidate_mask(lengths, n, n)[:, None].expand_as(full))
    # Gradients w.r.t. the input through the band equal those of the full matrix
    # restricted to the band (and zero gradient flows from masked positions).
    weights = torch.randn(banded.shape, generator=torch.Generator().manual_seed(7))
    (banded * weights * mask).sum().backward()
    full_weights = torch.zeros(full.shape)
    full_weights[..., :band] = weights * mask
    (full * full_weights).sum().backward()
    torch.testing.assert_close(X_band.grad, X_full.grad, atol=1e-4, rtol=1e-4)
    assert torch.isfinite(X_band.grad).all()


@pytest.mark.parametrize("head_class", HEAD_CLASSES)
def test_banded_head_masked_positions_get_no_gradient(head_class):
    head = _head(head_class, 12, 2, seed=0)
    X, lengths = _batch(9, 12, seed=1)
    X = X.requires_grad_(True)
    scores = head(X, lengths, band=4)
    scores.retain_grad()
    mask = band_candidate_mask(lengths, 9, 4)[:, None].expand_as(scores)
    (scores * mask).sum().backward()
    assert torch.equal(scores.grad != 0, mask)
    # Padding tokens of the shorter docs receive no gradient at all.
    for b, length in enumerate(lengths.tolist()):
        assert torch.count_nonzero(X.grad[b, length:]) == 0


def _all_candidate_spans(nlp, texts):
    pipe = nlp.get_pipe("global_pointer")
    old = pipe.threshold
    pipe.threshold = 0.0  # every candidate clears it
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="global_pointer: a threshold of 0")
            return [nlp(text) for text in texts]
    finally:
        pipe.threshold = old


@pytest.mark.filterwarnings("ignore:global_pointer.*longer than max_span_length")
@pytest.mark.parametrize("w", [1, 2, 3])
def test_pipeline_never_predicts_spans_longer_than_max_span_length(w):
    nlp = spacy.blank("en")
    pipe = nlp.add_pipe("global_pointer", config={"model": SMALL_MODEL, "max_span_length": w})
    nlp.initialize(lambda: make_examples(nlp, EN_DATA))
    texts = [WIDE_TEXT, "a", "", "one two"]
    docs = _all_candidate_spans(nlp, texts)
    for doc in docs:
        spans = doc.spans[pipe.key]
        n = len(doc)
        assert all(1 <= len(span) <= w for span in spans)
        # Every candidate of at most w tokens is there, once per label.
        expected = sum(min(w, n - i) for i in range(n)) * len(pipe.labels)
        assert len(spans) == expected
        assert len(spans.attrs["scores"]) == expected


def test_training_with_max_span_length_lowers_the_loss():
    nlp, examples, losses = build_tiny("en", config={"max_span_length": 4}, steps=25)
    assert nlp.get_pipe("global_pointer").model.attrs["max_span_length"] == 4
    assert all(numpy.isfinite(losses))
    assert losses[-1] < 0.2 * losses[0]
    # The gold spans (all <= 4 tokens) are learned.
    doc = nlp(EN_DATA[0][0])
    assert {(s.start, s.end, s.label_) for s in doc.spans["sc"]} == set(EN_DATA[0][1])


def test_initialize_warns_with_the_count_of_spans_longer_than_the_band():
    nlp = spacy.blank("en")
    nlp.add_pipe("global_pointer", config={"model": SMALL_MODEL, "max_span_length": 2})
    # EN_DATA has 10 spans; (3, 6) "New York City" and (1, 5) "Bank of New York" are longer than 2.
    examples = make_examples(nlp, EN_DATA)
    too_long = sum(
        1 for eg in examples for span in eg.reference.spans["sc"] if len(span) > 2
    )
    total = sum(len(eg.reference.spans["sc"]) for eg in examples)
    assert too_long == 2 and total == 10
    with pytest.warns(UserWarning, match=rf"{too_long} of {total} training spans are longer than max_span_length=2"):
        nlp.initialize(lambda: examples)


def test_initialize_does_not_warn_when_all_spans_fit(recwarn):
    nlp = spacy.blank("en")
    nlp.add_pipe("global_pointer", config={"model": SMALL_MODEL, "max_span_length": 4})
    nlp.initialize(lambda: make_examples(nlp, EN_DATA))
    assert not [w for w in recwarn if "max_span_length" in str(w.message)]


def test_length_groups_cover_every_doc_once_and_bound_the_padding():
    from spacy_globalpointer.torch_layers import MAX_GROUP_PADDING, length_groups

    rng = numpy.random.default_rng(0)
    lengths = [int(n) for n in rng.integers(0, 60, size=300)] + [400, 0, 1]
    groups = length_groups(lengths)
    assert sorted(i for group in groups for i in group) == list(range(len(lengths)))
    for group in groups:
        group_lengths = [lengths[i] for i in group]
        assert group_lengths == sorted(group_lengths)
        padded = max(group_lengths) * len(group)
        # A group of one doc wastes nothing; otherwise the bound holds.
        assert padded <= (1 + MAX_GROUP_PADDING) * sum(group_lengths) or len(group) == 1
    # The long doc does not pad the short ones.
    assert [400] in [[lengths[i] for i in group] for group in groups]


@pytest.mark.parametrize("max_span_length", [3, None])
def test_scores_of_a_doc_do_not_depend_on_the_rest_of_its_batch(max_span_length):
    nlp, _, _ = build_tiny("en", steps=5, config={"max_span_length": max_span_length})
    model = nlp.get_pipe("global_pointer").model
    texts = ["a", "New York", "", WIDE_TEXT * 5, "Alice lives in New York City", "Bob"]
    docs = [nlp.make_doc(text) for text in texts]
    batch = model.predict(docs)
    assert len(batch) == len(docs)
    for i, doc in enumerate(docs):
        n = len(doc)
        alone = model.predict([doc])
        assert len(alone.groups) == 1 and alone.groups[0].shape[2] == n
        width = alone.groups[0].shape[3]
        assert batch.doc(i).shape == alone.doc(0).shape == (3, n, width)  # PER, LOC, ORG
        numpy.testing.assert_allclose(batch.doc(i), alone.doc(0), rtol=1e-5, atol=1e-5)
        # In its group, beyond the doc's own width and length nothing is a candidate.
        for group, ids in zip(batch.groups, batch.doc_ids):
            if i in ids:
                row = group[ids.index(i)]
                assert (row[:, n:] == numpy.finfo("float32").min).all()
                assert (row[:, :, width:] == numpy.finfo("float32").min).all()


@pytest.mark.parametrize("n,w", [(1, 1), (7, 3), (16, 4), (33, 8), (5, 40)])
def test_band_scores_rotate_block_by_block_like_the_whole_sequence(n, w):
    rope = RotaryPositionEmbedding(8)
    generator = torch.Generator().manual_seed(n + w)
    q = torch.randn(1, 2, n, 8, generator=generator)
    k = torch.randn(1, 2, n, 8, generator=generator)
    phases = rope.phases(n)
    torch.testing.assert_close(
        band_scores(q, k, w, phases * 0.5, phases),
        band_scores(rope(q) * 0.5, rope(k), w),
        atol=ATOL, rtol=ATOL,
    )


@pytest.mark.parametrize("head_class", HEAD_CLASSES)
def test_head_scores_are_the_same_with_and_without_gradients(head_class):
    """Training rotates q and k whole, inference block by block: the scores agree."""
    head = _head(head_class, 12, 3, seed=5)
    X, lengths = _batch(23, 12, seed=5)
    with torch.no_grad():
        inference = head(X, lengths, band=4)
    training = head(X.requires_grad_(), lengths, band=4)
    torch.testing.assert_close(inference, training.detach(), atol=ATOL, rtol=ATOL)
