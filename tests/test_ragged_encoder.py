"""The whole pipeline costs the tokens present: the shipped tok2vecs predict in token-bounded
chunks with the same vectors, and (the guard) one long doc in a batch of short ones costs its
own tokens' memory, not batch x longest. That a trained pipeline writes the spans it wrote when
the attention padded every doc to the batch's longest is tested with the CLUENER run, in
test_cluener_training.py."""
import json
import subprocess
import sys
import textwrap

import numpy
import pytest
import spacy
from spacy.tokens import Span
from spacy.training import Example
from thinc.api import fix_random_seed

from spacy_globalpointer.tok2vec import token_chunks

from .conftest import CONFIGS, REPO


def test_token_chunks_bound_the_tokens_and_keep_the_order():
    assert token_chunks([3, 4, 0, 2, 9, 1, 1], 7) == [(0, 3), (3, 4), (4, 5), (5, 7)]
    assert token_chunks([], 5) == []
    assert token_chunks([0, 0], 1) == [(0, 2)]
    lengths = list(numpy.random.default_rng(0).integers(0, 50, size=200)) + [400]
    chunks = token_chunks(lengths, 64)
    assert [i for start, end in chunks for i in range(start, end)] == list(range(len(lengths)))
    for start, end in chunks:
        assert sum(lengths[start:end]) <= 64 or end - start == 1


@pytest.mark.parametrize("config", ["cpu.cfg", "genia.cfg"])
def test_chunked_tok2vec_predicts_what_the_whole_batch_gives(config):
    """Same vectors chunk by chunk as for the whole batch (spaCy's Tok2Vec.v2), and training
    still runs on the whole batch."""
    nlp = _pipeline(config, {"components.tok2vec.model.max_predict_tokens": 17})
    tok2vec = nlp.get_pipe("tok2vec").model
    assert tok2vec.get_dim("nO") == 96
    if nlp.lang == "zh":
        texts = ["北京大学位于北京", "", "上海" * 30, "今天", "张三在南京大学读书" * 5] * 3
    else:
        texts = ["IL-2 gene expression", "", "T cells " * 30, "NF-kappa B", "the human IL-2 promoter " * 5] * 3
    docs = [nlp.make_doc(text) for text in texts]
    embed, encode = tok2vec.get_ref("embed"), tok2vec.get_ref("encode")
    whole = encode.predict(embed.predict(docs))
    chunked = tok2vec.predict(docs)
    assert [x.shape for x in chunked] == [(len(doc), 96) for doc in docs]
    for got, expected in zip(chunked, whole):
        numpy.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    vectors, backprop = tok2vec.begin_update(docs)
    for got, expected in zip(vectors, whole):
        numpy.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    backprop([v * 0 for v in vectors])
    with pytest.raises(ValueError, match="no backprop from a prediction"):
        tok2vec(docs, is_train=False)[1](vectors)
    with pytest.raises(ValueError, match="max_predict_tokens must be an integer >= 1"):
        spacy.registry.architectures.get("spacy-globalpointer.Tok2Vec.v1")(
            embed, encode, max_predict_tokens=0
        )


def test_chunked_tok2vec_loads_the_weights_of_spacy_tok2vec_and_back():
    """Same layer tree as spaCy's Tok2Vec.v2: a tok2vec saved by either loads into the other
    (pipelines trained before the chunked tok2vec, `spacy pretrain` output)."""
    new = _pipeline("cpu.cfg")
    old = _pipeline("cpu.cfg", {"components.tok2vec.model": {
        "@architectures": "spacy.Tok2Vec.v2", "embed": new.config["components"]["tok2vec"]["model"]["embed"],
        "encode": new.config["components"]["tok2vec"]["model"]["encode"]}})
    assert old.config["components"]["tok2vec"]["model"]["@architectures"] == "spacy.Tok2Vec.v2"
    docs = [new.make_doc(text) for text in ["北京大学位于北京", "上海市政府发布通知" * 9]]
    new_model, old_model = new.get_pipe("tok2vec").model, old.get_pipe("tok2vec").model
    old_model.from_bytes(new_model.to_bytes())
    for got, expected in zip(old_model.predict(docs), new_model.predict(docs)):
        numpy.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    other = _pipeline("cpu.cfg", overrides={"components.tok2vec.model": old.config["components"]["tok2vec"]["model"]},
                      seed=1).get_pipe("tok2vec").model
    before = new_model.predict(docs)
    new_model.from_bytes(other.to_bytes())
    assert not numpy.allclose(new_model.predict(docs)[0], before[0])  # other weights now
    old_model.from_bytes(new_model.to_bytes())
    for got, expected in zip(old_model.predict(docs), new_model.predict(docs)):
        numpy.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def _pipeline(config: str, overrides=None, seed: int = 0):
    fix_random_seed(seed)
    loaded = spacy.util.load_config(CONFIGS / config, overrides=overrides or {})
    nlp = spacy.util.load_model_from_config(loaded, auto_fill=True, validate=True)
    examples = []
    for text in ["北京大学位于北京", "IL-2 gene expression"]:
        reference = nlp.make_doc(text)
        reference.spans["sc"] = [Span(reference, 0, 1, label="X")]
        examples.append(Example(nlp.make_doc(text), reference))
    nlp.initialize(lambda: examples)
    return nlp


# The guard (Linux: it resets the peak RSS through /proc): peak RSS of a shipped config's tok2vec predicting 64 short docs (2,176 tokens), then
# the same docs with one 2,004-token doc among them, in a fresh process. A layer that pads every
# doc to the longest of its batch (or chunk) makes the second batch cost some 33 x 2,004 tokens,
# about 1 GB more with the configs' attention; costing the tokens present, the long doc adds
# about what the short docs cost.
MEMORY_PROBE = textwrap.dedent(
    """
    import json, sys
    import spacy, torch
    from spacy.training import Example
    from thinc.api import fix_random_seed

    torch.set_num_threads(1)
    fix_random_seed(0)
    config = spacy.util.load_config(sys.argv[1])
    nlp = spacy.util.load_model_from_config(config, auto_fill=True)
    reference = nlp.make_doc("北京大学位于北京")
    reference.spans["sc"] = [spacy.tokens.Span(reference, 0, 1, label="X")]
    nlp.initialize(lambda: [Example(nlp.make_doc(reference.text), reference)])
    model = nlp.get_pipe("tok2vec").model
    # 34 tokens each, and one of 2,004, in both languages (Chinese: characters).
    sentence, long_text = ("张三在南京大学读书，李四去了广州。" * 2, "北京大学位于北京海淀区。" * 167)
    if nlp.lang != "zh":
        sentence, long_text = (" ".join(["x"] * 34), " ".join(["y"] * 2004))
    short = [nlp.make_doc(sentence) for _ in range(64)]
    long = nlp.make_doc(long_text)

    def rise(batch):
        # Peak RSS above the RSS before, in MB, over two predictions of the batch.
        with open("/proc/self/clear_refs", "w") as file_:
            file_.write("5")  # resets the peak (VmHWM) to the current RSS
        before = peak_mb()
        for _ in range(2):
            model.predict(batch)
        return peak_mb() - before

    def peak_mb():
        with open("/proc/self/status") as file_:
            return next(int(line.split()[1]) / 1024 for line in file_ if line.startswith("VmHWM"))

    model.predict(short[:8])
    short_rise = rise(short)
    mixed_rise = rise(short[:32] + [long] + short[32:])
    print(json.dumps({"short_tokens": sum(map(len, short)), "long_tokens": len(long),
                      "short_rise_mb": short_rise, "mixed_rise_mb": mixed_rise}))
    """
)


@pytest.mark.parametrize("config", ["cpu.cfg", "genia.cfg"])
def test_one_long_doc_costs_its_own_tokens_memory_not_batch_times_longest(config, tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(MEMORY_PROBE, encoding="utf8")
    env = {"OMP_NUM_THREADS": "1", "PATH": "", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, str(script), str(CONFIGS / config)], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    print(figures)
    assert figures["long_tokens"] >= 2000
    assert figures["mixed_rise_mb"] <= 2 * figures["short_rise_mb"] + 60, figures
