"""spacy-globalpointer.cache_msgpack_decoders.v1: DocBins read the same with srsly's msgpack
registries' answers kept, the registries are asked once instead of once per doc, and a decoder
registered later is still seen."""
import numpy
import pytest
import spacy
import srsly.msgpack
from spacy.tokens import DocBin

from spacy_globalpointer.callbacks import _KeptGetAll, keep_msgpack_decoders

from .conftest import CONFIGS, NESTED_ZH, make_examples


@pytest.fixture
def fresh_registries(monkeypatch):
    """The msgpack registries as srsly made them, restored after the test."""
    for lookup in (srsly.msgpack.msgpack_decoders, srsly.msgpack.msgpack_encoders):
        monkeypatch.setattr(lookup, "get_all", type(lookup).get_all.__get__(lookup))
    return srsly.msgpack.msgpack_decoders


def read(path, nlp):
    return [(doc.text, [(s.start, s.end, s.label_) for s in doc.spans["sc"]])
            for doc in DocBin().from_disk(path).get_docs(nlp.vocab)]


def test_docbins_read_the_same_and_the_registry_is_asked_once(fresh_registries, tmp_path, monkeypatch):
    nlp = spacy.blank("zh")
    docs = [eg.reference for eg in make_examples(nlp, NESTED_ZH)] * 20
    DocBin(docs=docs).to_disk(tmp_path / "docs.spacy")
    before = read(tmp_path / "docs.spacy", nlp)
    asked = []
    original = fresh_registries.get_all

    def counting():
        asked.append(1)
        return original()

    monkeypatch.setattr(fresh_registries, "get_all", counting)
    keep_msgpack_decoders()
    keep_msgpack_decoders()  # once per process, however often it is called
    assert isinstance(fresh_registries.get_all, _KeptGetAll) and fresh_registries.get_all.get_all is counting
    after = read(tmp_path / "docs.spacy", nlp)
    assert after == before and len(after) == 100
    assert len(asked) == 1
    # A decoder registered afterwards is seen (and what it decodes round-trips).
    fresh_registries.register("test_decoder", func=lambda obj, chain=None: obj if chain is None else chain(obj))
    assert "test_decoder" in fresh_registries.get_all() and len(asked) == 2
    array = numpy.arange(6, dtype="float32").reshape(2, 3)
    numpy.testing.assert_array_equal(srsly.msgpack_loads(srsly.msgpack_dumps({"a": array}))["a"], array)


@pytest.mark.parametrize("config", ["gpu_trf.cfg", "trf_en.cfg"])
def test_the_transformer_configs_keep_the_decoders_when_the_pipeline_is_made(fresh_registries, config):
    pytest.importorskip("spacy_transformers")
    loaded = spacy.util.load_config(CONFIGS / config)
    assert loaded["nlp"]["before_creation"]["@callbacks"] == "spacy-globalpointer.cache_msgpack_decoders.v1"
    overrides = {"components": {"transformer": {"model": {"name": "bert-base-cased"}}}}
    with pytest.warns(UserWarning, match="mixed precision"):
        spacy.util.load_model_from_config(loaded.merge(overrides), auto_fill=True)
    assert isinstance(srsly.msgpack.msgpack_decoders.get_all, _KeptGetAll)
