"""SoftLexicon features (spacy_globalpointer/lexicon.py): the B/M/E/S sets on hand-made words,
the weights, the gradient, the dictionary readers and their errors, and a pipeline that trains,
saves and reloads with the feature in its embedding."""
import numpy
import pytest
import spacy
from thinc.api import Adam

from spacy_globalpointer.lexicon import (
    jieba_lexicon,
    match_sets,
    read_lexicon,
    soft_lexicon,
    soft_lexicon_features,
)

LEXICON = {"北京": 10.0, "北京大学": 5.0, "大学": 20.0, "学": 3.0}
B, M, E, S = range(4)


def test_match_sets_on_hand_made_words():
    matches = set(match_sets(list("北京大学好"), LEXICON, max_word_length=8))
    assert matches == {
        (0, B, "北京"), (1, E, "北京"),
        (0, B, "北京大学"), (1, M, "北京大学"), (2, M, "北京大学"), (3, E, "北京大学"),
        (2, B, "大学"), (3, E, "大学"),
        (3, S, "学"),
    }
    # max_word_length cuts the 4-character word, and a word is made of whole tokens only.
    assert (0, B, "北京大学") not in match_sets(list("北京大学"), LEXICON, max_word_length=3)
    # 北京 and 大学 cut through the token 北京大; 北京大学 is made of whole tokens.
    assert match_sets(["北京大", "学"], LEXICON, max_word_length=8) == [(0, B, "北京大学"), (1, E, "北京大学"),
                                                                       (1, S, "学")]


def test_weights_are_normalised_over_the_four_sets_and_empty_sets_get_none():
    nlp = spacy.blank("zh")
    doc = nlp("北京大学好")
    rows, ids, weights = soft_lexicon_features([doc], LEXICON, 8, "frequency")
    # Token 3 (学) ends 北京大学 (5) and 大学 (20) and is 学 (3): Z = 28, weights 4 z / Z.
    token3 = {int(r) % 4: [] for r in rows if r // 4 == 3}
    for r, w in zip(rows, weights):
        if r // 4 == 3:
            token3[int(r) % 4].append(float(w))
    assert sorted(token3[E]) == pytest.approx(sorted([4 * 5 / 28, 4 * 20 / 28]))
    assert token3[S] == pytest.approx([4 * 3 / 28])
    assert token3[M] == [1.0] and token3[B] == [1.0]  # empty: the NONE word, weight 1
    # Every (token, set) pair is covered, token 4 (好) by four NONE words.
    assert set(int(r) for r in rows) == set(range(5 * 4))
    assert sorted(int(r) for r in rows if r // 4 == 4) == [16, 17, 18, 19]
    none_ids = {int(i) for r, i in zip(rows, ids) if r // 4 == 4}
    assert len(none_ids) == 4  # one NONE word per set
    # log weighting: log(1 + f) in place of f.
    _, _, logged = soft_lexicon_features([doc], LEXICON, 8, "log")
    z = numpy.log1p([5.0, 20.0, 3.0])
    assert sorted(w for r, w in zip(rows, logged) if r // 4 == 3 and r % 4 in (E, S)) == pytest.approx(
        sorted(4 * z / z.sum()))


def test_set_vectors_are_weighted_means_and_the_gradient_reaches_the_table():
    nlp = spacy.blank("zh")
    docs = [nlp("北京大学好"), nlp("学")]
    model = soft_lexicon(4, lambda: LEXICON, rows=64, weighting="uniform")
    model.initialize()
    outputs, backprop = model(docs, is_train=True)
    assert [o.shape for o in outputs] == [(5, 16), (1, 16)]
    embed = model.layers[0]
    rows, ids, weights = soft_lexicon_features(docs, LEXICON, 8, "uniform")
    vectors = embed.predict(ids.reshape(-1, 1))
    # Token 3's E vector: the mean of 北京大学 and 大学 times 4 / 3 (three words in its sets).
    e = [vectors[k] * weights[k] for k, r in enumerate(rows) if r == 3 * 4 + E]
    assert len(e) == 2 and outputs[0][3, 4 * E : 4 * E + 4] == pytest.approx(sum(e), abs=1e-6)
    table = embed.layers[-1]  # HashEmbed: a column getter, then the table
    before = table.get_param("E").copy()
    backprop([numpy.ones_like(o) for o in outputs])
    model.finish_update(Adam(0.1))
    assert not numpy.allclose(before, table.get_param("E"))


def test_read_lexicon_formats_and_errors(tmp_path):
    path = tmp_path / "dict.txt"
    path.write_text("北京 10 ns\n大学\n\n北京 2\n很长很长很长很长很长 5\n", encoding="utf8")
    assert read_lexicon(path, max_word_length=8) == {"北京": 12.0, "大学": 1.0}
    assert read_lexicon(path, min_frequency=2) == {"北京": 12.0}
    path.write_text("北京 10\n大学 many\n", encoding="utf8")
    with pytest.raises(ValueError, match=r"dict.txt, line 2: the frequency of '大学' is not a number: 'many'"):
        read_lexicon(path)
    with pytest.raises(ValueError, match="Lexicon file not found"):
        read_lexicon(tmp_path / "missing.txt")


def test_jieba_lexicon_reads_the_installed_package_or_says_what_to_install(monkeypatch):
    import sys

    pytest.importorskip("jieba")
    words = jieba_lexicon(max_word_length=4)()
    assert len(words) > 100_000 and "北京大学" in words and all(len(w) <= 4 for w in words)
    monkeypatch.setitem(sys.modules, "jieba", None)
    with pytest.raises(ImportError, match=r"pip install 'spacy-globalpointer\[lexicon\]'"):
        jieba_lexicon(max_word_length=3)()


def _nlp(lexicon_path):
    nlp = spacy.blank("zh")
    nlp.add_pipe("tok2vec", config={"model": {
        "@architectures": "spacy.Tok2Vec.v2",
        "embed": {
            "@architectures": "spacy-globalpointer.SoftLexiconEmbed.v1", "width": 32, "lexicon_width": 8,
            "lexicon_rows": 1000,
            "embed": {"@architectures": "spacy-globalpointer.NgramHashEmbed.v1", "width": 32, "attrs": ["NORM"],
                      "rows": [500], "ngram_sizes": [2], "ngram_rows": 500},
            "lexicon": {"@misc": "spacy-globalpointer.lexicon_file.v1", "path": str(lexicon_path)},
        },
        "encode": {"@architectures": "spacy.MaxoutWindowEncoder.v2", "width": 32, "depth": 1,
                   "window_size": 1, "maxout_pieces": 2},
    }})
    nlp.add_pipe("global_pointer", config={"model": {"head_size": 16, "tok2vec": {
        "@architectures": "spacy.Tok2VecListener.v1", "width": 32, "upstream": "*"}}})
    return nlp


def test_pipeline_with_soft_lexicon_trains_saves_and_reloads(tmp_path, nested_examples):
    lexicon_path = tmp_path / "words.txt"
    lexicon_path.write_text("北京 10\n北京大学 5\n大学 20\n上海 8\n交通大学 3\n", encoding="utf8")
    nlp = _nlp(lexicon_path)
    examples = nested_examples(nlp)
    optimizer = nlp.initialize(lambda: examples)
    losses = []
    for _ in range(30):
        step = {}
        nlp.update(examples, sgd=optimizer, losses=step)
        losses.append(step["global_pointer"])
    assert losses[-1] < losses[0] / 2
    texts = [eg.reference.text for eg in examples]
    before = [[(s.start, s.end, s.label_) for s in doc.spans["sc"]] for doc in nlp.pipe(texts)]
    nlp.to_disk(tmp_path / "model")
    reloaded = spacy.load(tmp_path / "model")
    after = [[(s.start, s.end, s.label_) for s in doc.spans["sc"]] for doc in reloaded.pipe(texts)]
    assert after == before and any(before)
    scores = [doc.spans["sc"].attrs["scores"] for doc in reloaded.pipe(texts)]
    assert numpy.allclose(numpy.concatenate(scores), numpy.concatenate(
        [doc.spans["sc"].attrs["scores"] for doc in nlp.pipe(texts)]))
