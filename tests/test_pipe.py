import re
import subprocess
import sys

import numpy
import pytest
import spacy
from spacy.tokens import DocBin
from spacy.training import Example
from thinc.api import fix_random_seed

from spacy_globalpointer import model as gp_model
from spacy_globalpointer import SpanScores
from spacy_globalpointer.pipe import GlobalPointer

from .conftest import CONFIGS, NESTED_ZH, make_examples

ARCHITECTURES = ["spacy-globalpointer.GlobalPointer.v1", "spacy-globalpointer.EfficientGlobalPointer.v1"]
SMALL_TOK2VEC = {
    "@architectures": "spacy.HashEmbedCNN.v2",
    "width": 32,
    "depth": 2,
    "embed_size": 500,
    "window_size": 1,
    "maxout_pieces": 2,
    "subword_features": True,
    "pretrained_vectors": None,
}


def make_nlp(arch=ARCHITECTURES[0], **component):
    nlp = spacy.blank("zh")
    model = {"@architectures": arch, "head_size": 16, "tok2vec": SMALL_TOK2VEC}
    nlp.add_pipe("global_pointer", config={"model": model, **component})
    return nlp


def train(nlp, examples, steps=60):
    fix_random_seed(0)
    optimizer = nlp.initialize(lambda: examples)
    for _ in range(steps):
        losses = nlp.update(examples, sgd=optimizer)
    return losses


def spans_of(doc, key="sc"):
    return [(s.start, s.end, s.label_) for s in doc.spans[key]]


@pytest.fixture(scope="module", params=ARCHITECTURES)
def trained(request):
    nlp = make_nlp(request.param)
    train(nlp, make_examples(nlp))
    return nlp


def test_factory_is_registered_by_entry_point():
    assert "global_pointer" in spacy.registry.factories
    for name in ARCHITECTURES:
        assert name in spacy.registry.architectures
    assert "spacy-globalpointer.scorer.v1" in spacy.registry.scorers


def test_overfit_nested_examples_to_perfect_f1(trained):
    scores = trained.evaluate(make_examples(trained))
    assert scores["spans_sc_f"] == 1.0
    assert set(scores["spans_sc_per_type"]) == {"LOC", "ORG", "PER"}
    doc = trained("北京大学位于北京")
    assert ("北京大学", "ORG") in [(s.text, s.label_) for s in doc.spans["sc"]]
    assert ("北京", "LOC") in [(s.text, s.label_) for s in doc.spans["sc"]]
    scores_attr = doc.spans["sc"].attrs["scores"]
    assert len(scores_attr) == len(doc.spans["sc"])
    assert (scores_attr > trained.get_pipe("global_pointer").threshold).all()


def test_round_trips_give_identical_predictions(trained, tmp_path):
    texts = [t for t, _ in NESTED_ZH] + ["北京和上海", ""]
    before = list(trained.pipe(texts))
    trained.to_disk(tmp_path / "pipeline")
    from_disk = spacy.load(tmp_path / "pipeline")
    from_bytes = make_nlp(trained.config["components"]["global_pointer"]["model"]["@architectures"])
    from_bytes.from_bytes(trained.to_bytes())
    for other in (from_disk, from_bytes):
        assert other.get_pipe("global_pointer").labels == trained.get_pipe("global_pointer").labels
        for doc_a, doc_b in zip(before, other.pipe(texts)):
            assert spans_of(doc_a) == spans_of(doc_b)
            numpy.testing.assert_allclose(doc_a.spans["sc"].attrs["scores"], doc_b.spans["sc"].attrs["scores"], rtol=1e-5)


def test_pipe_equals_call(trained):
    texts = ["北京大学位于北京", "", "张", "李四去了广州和上海市政府", "今天天气很好"]
    piped = list(trained.pipe(texts, batch_size=2))
    for text, doc in zip(texts, piped):
        single = trained(text)
        assert spans_of(single) == spans_of(doc)
        numpy.testing.assert_allclose(single.spans["sc"].attrs["scores"], doc.spans["sc"].attrs["scores"], rtol=1e-4, atol=1e-4)


def test_empty_and_single_token_docs(trained):
    empty = trained("")
    assert len(empty) == 0 and len(empty.spans["sc"]) == 0
    assert len(empty.spans["sc"].attrs["scores"]) == 0
    single = trained("京")
    for span in single.spans["sc"]:
        assert (span.start, span.end) == (0, 1)
    docs = list(trained.pipe(["", "", ""]))
    assert all(len(d.spans["sc"]) == 0 for d in docs)


def test_update_survives_batches_of_empty_docs(trained):
    examples = [Example(trained.make_doc(""), trained.make_doc("")) for _ in range(3)]
    losses = trained.update(examples, sgd=trained.create_optimizer())
    assert losses["global_pointer"] == 0.0


def test_no_labels_is_an_error():
    nlp = make_nlp()
    examples = make_examples(nlp, [("今天天气很好", [])])
    with pytest.raises(ValueError, match="no labels"):
        nlp.initialize(lambda: examples)


def test_missing_spans_key_in_every_example_is_an_error():
    nlp = make_nlp(spans_key="ner")
    examples = make_examples(nlp, key="sc")
    with pytest.raises(ValueError, match=r"doc.spans\['ner'\]"):
        nlp.initialize(lambda: examples)


def test_empty_training_set_is_an_error():
    nlp = make_nlp()
    with pytest.raises(ValueError, match="empty"):
        nlp.initialize(lambda: [])


def test_explicit_labels_and_label_validation():
    nlp = make_nlp()
    gp = nlp.get_pipe("global_pointer")
    examples = make_examples(nlp)
    nlp.initialize(lambda: examples)
    assert gp.labels == ("LOC", "ORG", "PER")  # inferred, sorted
    nlp = make_nlp()
    gp = nlp.get_pipe("global_pointer")
    with pytest.raises(ValueError, match="strings"):
        gp.add_label(3)
    nlp.get_pipe("global_pointer").initialize(lambda: examples, nlp=nlp, labels=["PER", "LOC", "ORG", "MISC"])
    assert gp.labels == ("PER", "LOC", "ORG", "MISC")
    with pytest.raises(ValueError, match="after the model is initialized"):
        gp.add_label("NEW")


def test_unknown_gold_label_names_the_span():
    nlp = make_nlp()
    gp = nlp.get_pipe("global_pointer")
    gp.initialize(lambda: make_examples(nlp), nlp=nlp, labels=["LOC", "ORG", "PER"])
    bad = make_examples(nlp, [("北京大学", [(0, 2, "CITY")])])
    with pytest.raises(ValueError, match="'北京'.*'CITY'"):
        nlp.update(bad)


@pytest.mark.parametrize("value", ["0.5", -0.1, 1.5, -2.0])
def test_threshold_must_be_a_probability(value):
    with pytest.raises(ValueError, match=r"threshold must be a probability in \[0, 1\], got " + re.escape(repr(value))):
        make_nlp(threshold=value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), None, True])
def test_threshold_must_be_a_finite_number(value):
    # spaCy's config refuses these before the component sees them; its message names the setting.
    with pytest.raises(ValueError, match="threshold"):
        make_nlp(threshold=value)
    with pytest.raises(ValueError, match=r"must be a probability in \[0, 1\], got " + re.escape(repr(value))):
        GlobalPointer(spacy.blank("zh").vocab, make_nlp().get_pipe("global_pointer").model, threshold=value)


@pytest.mark.parametrize("value", [0, -3, 2.5, True])
def test_max_span_length_range(value):
    with pytest.raises(ValueError, match="max_span_length"):
        make_nlp(max_span_length=value)


def test_decoding_returns_exactly_candidates_above_threshold():
    nlp = make_nlp(max_span_length=3, threshold=0.6)
    gp: GlobalPointer = nlp.get_pipe("global_pointer")
    for label in ("A", "B"):
        gp.add_label(label)
    docs = [nlp.make_doc("一二三四五"), nlp.make_doc("六七")]
    rng = numpy.random.default_rng(0)
    scores = rng.normal(size=(2, 2, 5, 3)).astype("float32")
    # One group holding both docs, padded to the longer one.
    gp.set_annotations(docs, SpanScores([scores], [[0, 1]], [5, 2]))
    for b, doc in enumerate(docs):
        expected = {
            (i, i + d + 1, gp.labels[a]): scores[b, a, i, d]
            for a in range(2) for i in range(5) for d in range(3)
            if i + d < len(doc) and 1 / (1 + numpy.exp(-float(scores[b, a, i, d]))) > 0.6
        }
        expected = {span: 1 / (1 + numpy.exp(-float(s))) for span, s in expected.items()}
        got = {(s.start, s.end, s.label_): score for s, score in zip(doc.spans["sc"], doc.spans["sc"].attrs["scores"])}
        assert got == pytest.approx(expected)
        for start, end, _ in got:
            assert start < end <= len(doc) and end - start <= 3
    assert len(docs[0].spans["sc"]) > 0


def test_max_span_length_limits_predictions_and_warns(nested_examples):
    nlp = make_nlp(max_span_length=2)
    with pytest.warns(UserWarning, match=r"4 of 10 training spans are longer than max_span_length=2"):
        train(nlp, nested_examples(nlp), steps=30)
    nlp.get_pipe("global_pointer").threshold = 0.0  # predict every candidate
    with pytest.warns(UserWarning, match="every candidate"):
        doc = nlp("北京大学位于北京")
    assert len(doc.spans["sc"]) == 3 * (8 + 7)
    assert max(len(s) for s in doc.spans["sc"]) == 2


def test_spans_key_flows_to_scores_and_score_weights(nested_examples):
    nlp = make_nlp(spans_key="nested")
    examples = nested_examples(nlp, key="nested")
    train(nlp, examples, steps=40)
    scores = nlp.evaluate(examples)
    assert "spans_nested_f" in scores and "spans_sc_f" not in scores
    weights = nlp.config["training"]["score_weights"]
    assert weights.get("spans_nested_f") == 1.0
    assert "spans_sc_f" not in weights


def test_write_ents_gives_flat_subset(trained):
    gp = trained.get_pipe("global_pointer")
    gp.cfg["write_ents"] = True
    try:
        doc = trained("北京大学位于北京")
    finally:
        gp.cfg["write_ents"] = False
    ents = [(e.start, e.end, e.label_) for e in doc.ents]
    assert ents and set(ents) <= set(spans_of(doc))
    assert all(a[1] <= b[0] for a, b in zip(ents, ents[1:]))


def test_doc_too_long_for_full_matrix_gets_clear_error(monkeypatch):
    nlp = make_nlp()
    nlp.initialize(lambda: make_examples(nlp))
    monkeypatch.setattr(gp_model, "MAX_FULL_SCORES", 100)
    with pytest.raises(ValueError, match="max_span_length"):
        nlp("一" * 20)
    nlp.get_pipe("global_pointer").model.attrs["max_span_length"] = 4
    assert len(nlp("一" * 20)) == 20


def test_spacy_train_cli_on_tiny_docbin(tmp_path):
    nlp = spacy.blank("zh")
    docs = [eg.reference for eg in make_examples(nlp)]
    DocBin(docs=docs * 4).to_disk(tmp_path / "train.spacy")
    DocBin(docs=docs).to_disk(tmp_path / "dev.spacy")
    cmd = [
        sys.executable, "-m", "spacy", "train", str(CONFIGS / "cpu.cfg"),
        "--output", str(tmp_path / "out"),
        "--paths.train", str(tmp_path / "train.spacy"),
        "--paths.dev", str(tmp_path / "dev.spacy"),
        "--training.max_steps", "40", "--training.eval_frequency", "20",
        "--components.tok2vec.model.encode.width", "32",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SPANS_SC_F" in result.stdout or "SPANS_SC_F" in result.stderr
    loaded = spacy.load(tmp_path / "out" / "model-best")
    doc = loaded("北京大学位于北京")
    assert "sc" in doc.spans and "scores" in doc.spans["sc"].attrs


def test_initialize_reads_the_training_examples_once():
    """Each pass over a DocBin corpus costs about 1 ms per doc in deserialisation (11 s over
    CLUENER train), and spaCy's validate_get_examples would be a pass of its own."""
    nlp = make_nlp()
    examples = make_examples(nlp)
    calls, yielded = [], []

    def get_examples():
        calls.append(1)
        for eg in examples:
            yielded.append(eg)
            yield eg

    nlp.get_pipe("global_pointer").initialize(get_examples, nlp=nlp)
    assert len(calls) == 1 and len(yielded) == len(examples)
    assert nlp.get_pipe("global_pointer").labels == ("LOC", "ORG", "PER")
    with pytest.raises(TypeError, match="list of Example objects"):
        make_nlp().get_pipe("global_pointer").initialize(lambda: [nlp.make_doc("北京")])
