"""A regression floor: a few CPU minutes of training on CLUENER must reach a measured dev F1;
and that trained pipeline writes the spans of the attention layer as it was (padded).

The floor was measured on this project's CI machine (see the closing note of the core issue)
and is asserted with a margin, so a change that breaks learning fails CI.
"""
import random

import numpy
import pytest
import spacy
from spacy.training import Example
from thinc.api import fix_random_seed

from spacy_globalpointer.convert import read_cluener

from .conftest import CONFIGS, shared_data_dir
from .test_attention import padded_encoder
from .tiny_pipeline import span_tuples

# configs/cpu.cfg trained on CLUENER once for both tests (seed 0, STEPS updates of BATCH_SIZE
# docs, dropout 0.1).
CLUENER_STEPS = 300
CLUENER_BATCH_SIZE = 32


def cluener_examples(nlp, split):
    path = shared_data_dir() / "cluener" / f"{split}.json"
    if not path.exists():
        pytest.skip(f"CLUENER data not found at {path}")
    docs, report = read_cluener(path, nlp)
    assert report.n_misaligned == 0
    return [Example(nlp.make_doc(doc.text), doc) for doc in docs]


@pytest.fixture(scope="module")
def cluener_cpu_training():
    """(nlp, optimizer, dev examples) after training configs/cpu.cfg on CLUENER train."""
    fix_random_seed(0)
    config = spacy.util.load_config(CONFIGS / "cpu.cfg")
    nlp = spacy.util.load_model_from_config(config, auto_fill=True, validate=True)
    train = cluener_examples(nlp, "train")
    dev = cluener_examples(nlp, "dev")
    optimizer = nlp.initialize(lambda: train)
    rng = random.Random(0)
    for _ in range(CLUENER_STEPS):
        nlp.update(rng.sample(train, CLUENER_BATCH_SIZE), sgd=optimizer, drop=0.1)
    return nlp, optimizer, dev


# Measured with configs/cpu.cfg (SoftLexicon, character bigrams, one attention layer, parameter
# averaging, head_size 32, max_span_length = 20, the span grid), seed 0, 300 steps of 32 docs,
# about 5 CPU minutes: 57.66 dev F1 (56.09 without the span grid, 52.91 with the CNN-only tok2vec
# before it, 47.64 before the bigram features). At
# 300 steps the curve is steep and runs differ by a few points between seeds, hence the margin.
F1_FLOOR = 0.51


@pytest.mark.slow
def test_cluener_dev_f1_floor(cluener_cpu_training):
    nlp, optimizer, dev = cluener_cpu_training
    # As `spacy train` does: score the averaged weights when the optimizer keeps them.
    with nlp.use_params(optimizer.averages):
        f1 = nlp.evaluate(dev)["spans_sc_f"]
    print(f"CLUENER dev F1 after {CLUENER_STEPS} steps of {CLUENER_BATCH_SIZE} docs: {f1 * 100:.2f}")
    assert f1 >= F1_FLOOR


@pytest.mark.slow
def test_trained_cluener_pipeline_writes_the_spans_of_the_padded_attention(cluener_cpu_training):
    """configs/cpu.cfg trained on CLUENER (the F1 floor's run): the spans, their scores and the
    vectors of the dev texts are those of the attention as it was (every doc padded to the
    batch's longest), in one batch of the whole dev set."""
    import torch

    nlp, _, dev = cluener_cpu_training
    texts = [eg.reference.text for eg in dev]
    tok2vec = nlp.get_pipe("tok2vec").model
    attention = tok2vec.get_ref("encode").layers[-1]
    encoder = attention.shims[0]._model
    docs = list(nlp.pipe(texts, batch_size=len(texts)))
    ragged_vectors = tok2vec.predict(docs)

    def padded_forward(module, inputs, lengths):
        xs = list(torch.split(inputs, lengths))
        return torch.cat(padded_encoder(module, xs)) if xs else inputs

    original = type(encoder).forward
    type(encoder).forward = padded_forward
    try:
        padded_docs = list(nlp.pipe(texts, batch_size=len(texts)))
        padded_vectors = tok2vec.predict(padded_docs)
    finally:
        type(encoder).forward = original
    for got, expected in zip(ragged_vectors, padded_vectors):
        numpy.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    n_spans = 0
    for doc, padded in zip(docs, padded_docs):
        assert span_tuples(doc.spans["sc"]) == span_tuples(padded.spans["sc"]), doc.text
        numpy.testing.assert_allclose(doc.spans["sc"].attrs["scores"], padded.spans["sc"].attrs["scores"], atol=1e-5)
        n_spans += len(doc.spans["sc"])
    assert n_spans > len(texts) // 2  # a trained pipeline: the comparison saw spans
