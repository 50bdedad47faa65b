"""NgramHashEmbed: hashed token n-gram features for character-level NER."""
import copy

import numpy
import pytest
import spacy
from spacy.attrs import NORM, PREFIX

from spacy_globalpointer.tok2vec import build_ngram_hash_embed, ngram_features

from .tiny_pipeline import SMALL_MODEL, ZH_DATA, build_tiny, pipe_predictions


@pytest.fixture(scope="module")
def zh():
    return spacy.blank("zh")


def _features(docs, attrs=("NORM",), sizes=(2,)):
    features, _ = ngram_features(list(attrs), ngram_sizes=list(sizes))(docs, False)
    return features


def test_columns_are_the_attrs_then_each_ngram_containing_the_token(zh):
    doc = zh.make_doc("北京大学在北京")
    (features,) = _features([doc], attrs=("NORM", "PREFIX"), sizes=(2, 3))
    assert features.dtype == numpy.uint64
    assert features.shape == (7, 2 + 2 + 3)
    numpy.testing.assert_array_equal(features[:, :2], doc.to_array([NORM, PREFIX]).astype("uint64"))
    left, right = features[:, 2], features[:, 3]
    # The bigram to a token's right is its right neighbour's left bigram.
    numpy.testing.assert_array_equal(right[:-1], left[1:])
    # "北京" at 0-1 and at 5-6 is one bigram; "京大" is another.
    assert right[0] == right[5] == left[6]
    assert right[0] != right[1]
    # The same character in another context gets other bigrams but the same NORM.
    assert features[0, 0] == features[5, 0] and left[0] != left[5]
    # Trigrams: the one starting at a token is the one in the middle for its neighbour
    # and the one ending at the token after that.
    tri = features[:, 4:]
    numpy.testing.assert_array_equal(tri[:-2, 2], tri[1:-1, 1])
    numpy.testing.assert_array_equal(tri[:-2, 2], tri[2:, 0])


def test_doc_boundaries_are_tokens_of_their_own(zh):
    alone, inside = _features([zh.make_doc("北"), zh.make_doc("南北京")])
    assert alone.shape == (1, 3)
    # Alone, "北" has a boundary on each side; inside, real neighbours on both.
    assert alone[0, 1] != inside[1, 1] and alone[0, 2] != inside[1, 2]
    # The start-of-doc and end-of-doc markers are different tokens.
    assert alone[0, 1] != alone[0, 2]


def test_empty_doc_and_ngram_size_errors(zh):
    (features,) = _features([zh.make_doc("")], sizes=(2, 3))
    assert features.shape == (0, 1 + 5)
    with pytest.raises(ValueError, match="ngram_sizes"):
        build_ngram_hash_embed(32, ["NORM"], [100], ngram_sizes=[1])
    with pytest.raises(ValueError, match="Mismatched"):
        build_ngram_hash_embed(32, ["NORM", "SHAPE"], [100], ngram_sizes=[2])


def test_embedding_width_and_context_sensitivity(zh):
    model = build_ngram_hash_embed(16, ["NORM"], [100], ngram_sizes=[2], ngram_rows=500)
    docs = [zh.make_doc("北京大学"), zh.make_doc("南北"), zh.make_doc("")]
    model.initialize(X=docs)
    vectors = model.predict(docs)
    assert [v.shape for v in vectors] == [(4, 16), (2, 16), (0, 16)]
    # Without n-grams "北" would embed the same in both docs; with them it does not.
    assert not numpy.allclose(vectors[0][0], vectors[1][1])


def test_pipeline_with_ngram_embed_learns_and_round_trips():
    model = copy.deepcopy(SMALL_MODEL)
    model["tok2vec"]["embed"] = {
        "@architectures": "spacy-globalpointer.NgramHashEmbed.v1",
        "width": 32,
        "attrs": ["NORM"],
        "rows": [500],
        "ngram_sizes": [2],
        "ngram_rows": 1000,
    }
    nlp, _, losses = build_tiny("zh", steps=40, config={"model": model})
    assert losses[-1] < losses[0] / 2
    texts = [text for text, _ in ZH_DATA]
    nlp2 = spacy.blank("zh")
    nlp2.add_pipe("global_pointer", config={"model": model})
    nlp2.from_bytes(nlp.to_bytes())
    assert pipe_predictions(nlp2, texts) == pipe_predictions(nlp, texts)
    assert any(p["spans"] for p in pipe_predictions(nlp, texts))
