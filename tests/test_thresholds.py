"""Probabilities, per-label thresholds and calibration: attrs["scores"] are sigmoid(a * s + b),
a span is predicted when its probability is above its label's threshold, threshold 0.5 is
the old logit-0 rule, and pipelines saved with a logit threshold keep their decisions."""
import json
import math
import re
import subprocess
import sys
import warnings

import numpy
import pytest
import spacy
import srsly
from spacy.cli.find_threshold import find_threshold
from spacy.tokens import DocBin

from spacy_globalpointer.model import SpanScores
from spacy_globalpointer.__main__ import main
from spacy_globalpointer.calibration import (
    Candidates,
    brier_score,
    calibration_report,
    collect_candidates,
    expected_calibration_error,
    fit_calibration,
    fit_platt,
    find_global_pointer,
    score,
    tune_thresholds,
)
from .tiny_pipeline import EN_DATA, SMALL_MODEL, build_tiny, make_examples, span_tuples

TEXTS = [text for text, _ in EN_DATA] + ["Carol and Bob visited the Bank of Paris", "", "York"]


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def raw_logits(nlp, texts):
    """{(start, end, label): logit} of every candidate of each text, read from each doc's
    (labels, n, band) scores (independent of the decoding under test)."""
    pipe = nlp.get_pipe("global_pointer")
    docs = [nlp.make_doc(text) for text in texts]
    ragged = pipe.predict(docs)
    found = []
    for b, doc in enumerate(docs):
        scores = pipe.model.ops.to_numpy(ragged.doc(b))
        found.append({
            (i, i + d + 1, pipe.labels[a]): float(scores[a, i, d])
            for a in range(scores.shape[0]) for i in range(len(doc)) for d in range(scores.shape[2])
            if i + d < len(doc)
        })
    return found


def old_rule(nlp, texts, logit_threshold):
    """The spans the component predicted before probabilities: float32 logit > threshold."""
    cut = numpy.float32(logit_threshold)
    return [
        sorted(span for span, s in logits.items() if numpy.float32(s) > cut)
        for logits in raw_logits(nlp, texts)
    ]


def predictions(nlp, texts):
    return [sorted(span_tuples(doc.spans["sc"])) for doc in nlp.pipe(texts)]


@pytest.fixture(scope="module")
def half_trained():
    """Trained a little: many candidates near the decision boundary."""
    nlp, examples, _ = build_tiny("en", steps=8, config={"write_ents": True})
    return nlp, examples


@pytest.fixture(scope="module")
def saved(half_trained, tmp_path_factory):
    nlp, examples = half_trained
    folder = tmp_path_factory.mktemp("thresholds")
    nlp.to_disk(folder / "pipeline")
    DocBin(docs=[eg.reference for eg in examples]).to_disk(folder / "dev.spacy")
    return folder


# Probabilities ----------------------------------------------------------------------


def _synthetic_pipe(**config):
    nlp = spacy.blank("zh")
    pipe = nlp.add_pipe("global_pointer", config={"model": SMALL_MODEL, "max_span_length": 3, **config})
    for label in ("A", "B"):
        pipe.add_label(label)
    return nlp, pipe


def _decode(nlp, pipe, scores):
    """set_annotations on a padded (docs, labels, n, band) array, as one group of SpanScores."""
    docs = [nlp.make_doc("一二三四五"), nlp.make_doc("六七")]
    pipe.set_annotations(docs, SpanScores([scores], [list(range(len(docs)))], [len(doc) for doc in docs]))
    return docs


def test_probabilities_are_the_sigmoid_of_the_logits_in_range_and_in_order():
    nlp, pipe = _synthetic_pipe(threshold=0.0)
    scores = (numpy.random.default_rng(0).normal(size=(2, 2, 5, 3)) * 12).astype("float32")
    with pytest.warns(UserWarning, match="every candidate"):
        docs = _decode(nlp, pipe, scores)
    logits, probs = [], []
    for b, doc in enumerate(docs):
        group = doc.spans["sc"]
        assert len(group) == 2 * sum(min(3, len(doc) - i) for i in range(len(doc)))  # all candidates
        for span, p in zip(group, group.attrs["scores"]):
            s = scores[b, pipe.labels.index(span.label_), span.start, len(span) - 1]
            assert p == pytest.approx(sigmoid(float(s)), rel=1e-6, abs=1e-30)
            logits.append(float(s))
            probs.append(float(p))
    probs = numpy.asarray(probs)
    assert ((probs > 0.0) & (probs <= 1.0)).all()  # float32 rounds sigmoid(s > 17) to 1.0
    assert probs.min() < 1e-6 and probs.max() > 1 - 1e-6  # the test covers both tails
    in_logit_order = probs[numpy.argsort(logits, kind="stable")]
    assert (numpy.diff(in_logit_order) >= 0).all()


def test_per_label_thresholds_and_calibration_decide_on_the_probability():
    nlp, pipe = _synthetic_pipe(threshold=0.6, thresholds={"A": 0.3})
    pipe.calibration = {"B": {"scale": 0.5, "bias": 1.0}}
    scores = numpy.random.default_rng(1).normal(size=(2, 2, 5, 3)).astype("float32") * 3
    docs = _decode(nlp, pipe, scores)
    params = {"A": (1.0, 0.0, 0.3), "B": (0.5, 1.0, 0.6)}
    for b, doc in enumerate(docs):
        expected = {}
        for a, label in enumerate(pipe.labels):
            scale, bias, threshold = params[label]
            for i in range(len(doc)):
                for d in range(min(3, len(doc) - i)):
                    p = sigmoid(scale * float(scores[b, a, i, d]) + bias)
                    if p > threshold:
                        expected[(i, i + d + 1, label)] = p
        got = dict(zip(span_tuples(doc.spans["sc"]), doc.spans["sc"].attrs["scores"].tolist()))
        assert got == pytest.approx(expected, rel=1e-6)
    assert {s.label_ for doc in docs for s in doc.spans["sc"]} == {"A", "B"}


def test_nested_threshold_admits_only_candidates_nested_in_or_around_a_prediction():
    nlp, pipe = _synthetic_pipe(threshold=0.5, nested_threshold=0.2, max_span_length=5)
    logit = math.log(0.3 / 0.7)  # p = 0.3: between the two thresholds
    scores = numpy.full((2, 2, 5, 5), -20.0, dtype="float32")
    scores[0, 0, 1, 2] = 3.0  # A [1, 4): predicted
    scores[0, 1, 2, 0] = logit  # B [2, 3): inside it, another label: admitted
    scores[0, 0, 0, 4] = logit  # A [0, 5): around it: admitted
    scores[0, 1, 1, 2] = logit  # B [1, 4): the same boundaries: not nested
    scores[0, 0, 3, 1] = logit  # A [3, 5): crosses it: not admitted
    scores[1, 0, 0, 0] = logit  # doc 2 has no prediction to nest in
    scores[1, 1, 0, 1] = 0.1 * logit  # p about 0.48: still below 0.5
    docs = _decode(nlp, pipe, scores)
    assert span_tuples(docs[0].spans["sc"]) == [(0, 5, "A"), (1, 4, "A"), (2, 3, "B")]
    assert docs[0].spans["sc"].attrs["scores"].tolist() == pytest.approx([0.3, sigmoid(3.0), 0.3], rel=1e-6)
    assert span_tuples(docs[1].spans["sc"]) == []
    for off in (None, 0.35):  # off, and above the candidates' 0.3
        pipe.nested_threshold = off
        docs = _decode(nlp, pipe, scores)
        assert span_tuples(docs[0].spans["sc"]) == [(1, 4, "A")]


def test_nested_threshold_matches_a_brute_force_decode():
    nlp, pipe = _synthetic_pipe(threshold=0.6, thresholds={"A": 0.7}, nested_threshold=0.3)
    pipe.calibration = {"B": {"scale": 0.5, "bias": 0.5}}
    scores = numpy.random.default_rng(3).normal(size=(2, 2, 5, 3)).astype("float32") * 2
    docs = _decode(nlp, pipe, scores)
    params = {"A": (1.0, 0.0, 0.7), "B": (0.5, 0.5, 0.6)}
    n_admitted = 0
    for b, doc in enumerate(docs):
        probability = {
            (i, i + d + 1, label): sigmoid(params[label][0] * float(scores[b, a, i, d]) + params[label][1])
            for a, label in enumerate(pipe.labels) for i in range(len(doc)) for d in range(min(3, len(doc) - i))
        }
        predicted = {span for span, p in probability.items() if p > params[span[2]][2]}
        nested = {
            (i, j, label) for (i, j, label), p in probability.items()
            if 0.3 < p <= params[label][2]
            and any((k <= i and j <= l or i <= k and l <= j) and (k, l) != (i, j) for k, l, _ in predicted)
        }
        n_admitted += len(nested)
        assert span_tuples(doc.spans["sc"]) == sorted(predicted | nested)
    assert n_admitted > 0


def test_nested_threshold_is_checked_saved_and_swept_by_find_threshold(half_trained, tmp_path):
    nlp, examples = half_trained
    pipe = nlp.get_pipe("global_pointer")
    with pytest.raises(ValueError, match=r"nested_threshold must be a probability in \[0, 1\], got 1.5"):
        pipe.nested_threshold = 1.5
    assert pipe.nested_threshold is None
    dev = [eg.reference for eg in examples]
    DocBin(docs=dev).to_disk(tmp_path / "dev.spacy")
    pipe.threshold = 0.95  # strict, so that recall has room to grow
    try:
        strict_recall = score(nlp, dev)["spans_sc_r"]
        pipe.nested_threshold = 0.1
        expected = [span_tuples(d.spans["sc"]) for d in nlp.pipe(TEXTS)]
        nlp.to_disk(tmp_path / "pipeline")
        pipe.nested_threshold = None
        assert expected != predictions(nlp, TEXTS)
    finally:
        pipe.threshold, pipe.nested_threshold = 0.5, None
    loaded = spacy.load(tmp_path / "pipeline")
    assert loaded.get_pipe("global_pointer").nested_threshold == 0.1
    assert [span_tuples(d.spans["sc"]) for d in loaded.pipe(TEXTS)] == expected
    _, _, swept = find_threshold(
        str(tmp_path / "pipeline"), tmp_path / "dev.spacy", "global_pointer", "nested_threshold", "spans_sc_r"
    )
    # Recall can only grow as the nested threshold falls; at or above 0.95 it changes nothing.
    recalls = [swept[t] for t in sorted(swept)]
    assert all(a >= b for a, b in zip(recalls, recalls[1:]))
    assert recalls[0] > recalls[-1] == pytest.approx(strict_recall)


def test_evaluate_command_decides_with_the_thresholds_it_is_given(saved, tmp_path, capsys):
    def evaluate(*options):
        out = tmp_path / f"eval{len(options)}.json"
        assert main(["evaluate", str(saved / "pipeline"), str(saved / "dev.spacy"), "--output", str(out), *options]) == 0
        return srsly.read_json(out)

    as_saved, strict = evaluate(), evaluate("--threshold", "0.95")
    nested = evaluate("--threshold", "0.95", "--nested-threshold", "0.0")
    assert (as_saved["threshold"], as_saved["nested_threshold"]) == (0.5, None)
    assert (nested["threshold"], nested["nested_threshold"]) == pytest.approx((0.95, 0.0))  # srsly rounds floats
    assert strict["r"] < as_saved["r"]
    assert nested["r"] > strict["r"] and nested["p"] < strict["p"]
    again = evaluate("--gpu-id", "-1")  # nothing was saved; -1 is the CPU, as in spacy evaluate
    assert {k: v for k, v in again.items() if k != "words_per_second"} == {
        k: v for k, v in as_saved.items() if k != "words_per_second"
    }


@pytest.mark.gpu
def test_evaluate_command_predicts_on_the_gpu_it_is_given(saved, tmp_path):
    """The same scores on GPU 0 as on the CPU (skipped without CUDA)."""
    outputs = []
    for gpu_id in ("-1", "0"):
        out = tmp_path / f"eval_gpu{gpu_id}.json"
        command = [sys.executable, "-m", "spacy_globalpointer", "evaluate", str(saved / "pipeline"),
                   str(saved / "dev.spacy"), "--output", str(out), "--gpu-id", gpu_id]
        assert subprocess.run(command, capture_output=True, text=True).returncode == 0
        outputs.append(srsly.read_json(out))
    assert outputs[0]["f"] == pytest.approx(outputs[1]["f"], abs=1e-4)


def test_threshold_half_is_the_old_logit_zero_rule(half_trained):
    nlp, _ = half_trained
    pipe = nlp.get_pipe("global_pointer")
    assert pipe.threshold == 0.5 and not pipe.thresholds and not pipe.calibration
    expected = old_rule(nlp, TEXTS, 0.0)
    assert predictions(nlp, TEXTS) == expected
    assert sum(map(len, expected)) > 0
    # Many candidates near 0, so that the equivalence is tested where it matters.
    near = sum(abs(s) < 2 for doc in raw_logits(nlp, TEXTS) for s in doc.values())
    assert near >= 5
    # doc.ents: greedy by the logit, as before (ties: longer, then earlier).
    for text, logits in zip(TEXTS, raw_logits(nlp, TEXTS)):
        doc = nlp(text)
        ranked = sorted(
            (span for span, s in logits.items() if numpy.float32(s) > 0),
            key=lambda span: (-logits[span], -(span[1] - span[0]), span[0]),
        )
        taken, chosen = set(), []
        for start, end, label in ranked:
            if not taken.intersection(range(start, end)):
                taken.update(range(start, end))
                chosen.append((start, end, label))
        assert span_tuples(doc.ents) == sorted(chosen)


@pytest.mark.parametrize("threshold", [0.1, 0.9])
def test_other_thresholds_are_the_logit_rule_at_their_logit(half_trained, threshold):
    nlp, _ = half_trained
    pipe = nlp.get_pipe("global_pointer")
    pipe.threshold = threshold
    try:
        got = predictions(nlp, TEXTS)
    finally:
        pipe.threshold = 0.5
    assert got == old_rule(nlp, TEXTS, math.log(threshold / (1 - threshold)))


# Bad input ---------------------------------------------------------------------------


def test_per_label_threshold_out_of_range_names_label_and_value():
    with pytest.raises(ValueError, match=r"thresholds\['LOC'\] must be a probability in \[0, 1\], got 1.2"):
        _synthetic_pipe(thresholds={"LOC": 1.2})


def test_per_label_threshold_for_unknown_label_names_it():
    nlp = spacy.blank("en")
    nlp.add_pipe("global_pointer", config={"model": SMALL_MODEL, "thresholds": {"PLACE": 0.3}})
    examples = make_examples(nlp, EN_DATA)
    with pytest.raises(ValueError, match=r"thresholds\['PLACE'\] = 0.3 names a label.*\['LOC', 'ORG', 'PER'\]"):
        nlp.initialize(lambda: examples)


def test_setters_check_labels_and_values(half_trained):
    nlp, _ = half_trained
    pipe = nlp.get_pipe("global_pointer")
    with pytest.raises(ValueError, match=r"thresholds\['CITY'\] = 0.4 names a label"):
        pipe.thresholds = {"CITY": 0.4}
    with pytest.raises(ValueError, match=r"thresholds\['LOC'\] must be a probability in \[0, 1\], got -0.1"):
        pipe.thresholds = {"LOC": -0.1}
    with pytest.raises(ValueError, match=r"threshold must be a probability in \[0, 1\], got 2"):
        pipe.threshold = 2
    with pytest.raises(ValueError, match=r"calibration\['LOC'\] must be .* got \{'scale': 0.0"):
        pipe.calibration = {"LOC": {"scale": 0.0, "bias": 0.0}}
    with pytest.raises(TypeError):
        pipe.thresholds["LOC"] = 0.3  # a read-only view: assign a new dict
    assert not pipe.thresholds and not pipe.calibration


def test_cfg_changed_directly_is_checked_when_decoding(half_trained):
    nlp, _ = half_trained
    pipe = nlp.get_pipe("global_pointer")
    pipe.cfg["thresholds"] = {"LOC": 7}
    try:
        with pytest.raises(ValueError, match=r"thresholds\['LOC'\] must be a probability.*got 7"):
            nlp("Alice")
    finally:
        pipe.cfg["thresholds"] = {}


# Saving and loading -----------------------------------------------------------------


def test_per_label_thresholds_and_calibration_survive_save_and_load(half_trained, tmp_path):
    nlp, _ = half_trained
    pipe = nlp.get_pipe("global_pointer")
    pipe.thresholds = {"LOC": 0.2, "PER": 0.7}
    pipe.calibration = {"ORG": {"scale": 0.8, "bias": 0.3}}
    try:
        expected = [(span_tuples(d.spans["sc"]), d.spans["sc"].attrs["scores"].tolist()) for d in nlp.pipe(TEXTS)]
        nlp.to_disk(tmp_path / "pipeline")
        pipe_bytes = pipe.to_bytes()
    finally:
        pipe.thresholds, pipe.calibration = {}, {}
    assert expected != [(span_tuples(d.spans["sc"]), d.spans["sc"].attrs["scores"].tolist()) for d in nlp.pipe(TEXTS)]
    from_disk = spacy.load(tmp_path / "pipeline")
    from_bytes = spacy.blank("en")
    from_bytes.add_pipe("global_pointer", config={"model": SMALL_MODEL, "write_ents": True})
    from_bytes.get_pipe("global_pointer").from_bytes(pipe_bytes)
    for other in (from_disk, from_bytes):
        loaded = other.get_pipe("global_pointer")
        assert dict(loaded.thresholds) == {"LOC": 0.2, "PER": 0.7}
        assert dict(loaded.calibration) == {"ORG": {"scale": 0.8, "bias": 0.3}}
        got = [(span_tuples(d.spans["sc"]), d.spans["sc"].attrs["scores"].tolist()) for d in other.pipe(TEXTS)]
        assert got == expected


def _make_old_cfg(cfg, logit):
    old = {k: v for k, v in cfg.items() if k not in ("thresholds", "calibration", "score_scale")}
    old["threshold"] = logit
    return old


def _make_old_folder(folder, logit):
    """Rewrite a saved pipeline to look like one saved before thresholds were probabilities."""
    cfg_path = folder / "global_pointer" / "cfg"
    srsly.write_json(cfg_path, _make_old_cfg(srsly.read_json(cfg_path), logit))
    config = (folder / "config.cfg").read_text(encoding="utf8")
    config = re.sub(r"\nthreshold = [^\n]*", f"\nthreshold = {logit}", config)
    config = re.sub(r"\n\[components\.global_pointer\.thresholds\]\n", "\n", config)
    config = re.sub(r"\nthresholds = [^\n]*", "", config)
    assert "thresholds" not in config and f"threshold = {logit}" in config
    (folder / "config.cfg").write_text(config, encoding="utf8")


@pytest.mark.parametrize("logit", [0.0, 0.7, -2.0])
def test_pipeline_saved_with_a_logit_threshold_keeps_its_decisions(half_trained, tmp_path, logit):
    nlp, _ = half_trained
    folder = tmp_path / "old"
    nlp.to_disk(folder)
    _make_old_folder(folder, logit)
    expected = old_rule(nlp, TEXTS, logit)
    if 0.0 <= logit <= 1.0:
        with pytest.warns(UserWarning, match=rf"logit threshold {logit} is the probability threshold"):
            old = spacy.load(folder)
    else:
        # A logit outside [0, 1] in config.cfg is refused with what to do; doing it loads.
        with pytest.raises(ValueError, match=r"got -2.0 .*spacy\.load\(path, config="):
            spacy.load(folder)
        with pytest.warns(UserWarning, match=r"logit threshold -2.0 is the probability threshold"):
            old = spacy.load(folder, config={"components": {"global_pointer": {"threshold": 0.5}}})
    pipe = old.get_pipe("global_pointer")
    assert pipe.threshold == pytest.approx(sigmoid(logit))
    assert pipe.cfg["score_scale"] == "probability"
    assert predictions(old, TEXTS) == expected
    assert sum(map(len, expected)) > 0
    # Saved again, it is a pipeline of this version: no warning, same decisions.
    old.to_disk(tmp_path / "again")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = spacy.load(tmp_path / "again")
    assert predictions(again, TEXTS) == expected


def test_component_bytes_saved_with_a_logit_threshold_keep_their_decisions(half_trained):
    nlp, _ = half_trained
    msg = srsly.msgpack_loads(nlp.get_pipe("global_pointer").to_bytes())
    msg["cfg"] = srsly.json_dumps(_make_old_cfg(srsly.json_loads(msg["cfg"]), -1.5))
    fresh = spacy.blank("en")
    fresh.add_pipe("global_pointer", config={"model": SMALL_MODEL, "write_ents": True})
    with pytest.warns(UserWarning, match="logit threshold -1.5"):
        fresh.get_pipe("global_pointer").from_bytes(srsly.msgpack_dumps(msg))
    assert predictions(fresh, TEXTS) == old_rule(nlp, TEXTS, -1.5)


def test_logit_threshold_without_an_exact_probability_is_refused(half_trained, tmp_path):
    nlp, _ = half_trained
    nlp.to_disk(tmp_path / "old")
    _make_old_folder(tmp_path / "old", 0.5)
    cfg_path = tmp_path / "old" / "global_pointer" / "cfg"
    srsly.write_json(cfg_path, {**srsly.read_json(cfg_path), "threshold": 45.0})
    with pytest.raises(ValueError, match=r"logit threshold 45.0 saved in .*cfg has no probability.*score_scale"):
        spacy.load(tmp_path / "old")


def test_unknown_score_scale_is_refused(half_trained, tmp_path):
    nlp, _ = half_trained
    nlp.to_disk(tmp_path / "p")
    cfg_path = tmp_path / "p" / "global_pointer" / "cfg"
    srsly.write_json(cfg_path, {**srsly.read_json(cfg_path), "score_scale": "log-odds-v9"})
    with pytest.raises(ValueError, match="score_scale 'log-odds-v9'"):
        spacy.load(tmp_path / "p")


# spacy find-threshold, tune-thresholds, calibrate -----------------------------------


def test_spacy_find_threshold_sweeps_probabilities(saved, half_trained):
    nlp, examples = half_trained
    dev = [eg.reference for eg in examples]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="global_pointer: a threshold of 0")
        best, best_f, scores = find_threshold(
            str(saved / "pipeline"), saved / "dev.spacy", "global_pointer", "threshold", "spans_sc_f"
        )
    assert len(scores) == 11
    assert scores[0.5] == pytest.approx(score(nlp, dev)["spans_sc_f"])
    assert scores[1.0] == 0.0  # nothing clears 1
    assert 0.0 < best < 1.0 and best_f == max(scores.values())
    assert best_f > scores[0.0]  # every candidate is no answer
    assert len(set(scores.values())) > 3


def test_tune_thresholds_command_writes_a_pipeline_that_uses_them(saved, tmp_path, capsys):
    out, report_path = tmp_path / "tuned", tmp_path / "tune.json"
    code = main([
        "tune-thresholds", str(saved / "pipeline"), str(saved / "dev.spacy"),
        "--output", str(out), "--report", str(report_path),
    ])
    assert code == 0, capsys.readouterr().err
    report = json.loads(report_path.read_text(encoding="utf8"))
    tuned = spacy.load(out)
    pipe = tuned.get_pipe("global_pointer")
    assert dict(pipe.thresholds) == report["thresholds"]
    assert set(report["thresholds"]) == set(pipe.labels)
    assert tuned.config["components"]["global_pointer"]["thresholds"] == report["thresholds"]
    dev = list(DocBin().from_disk(saved / "dev.spacy").get_docs(tuned.vocab))
    # The tuning's own F1 is what spaCy's Scorer gives, and no worse than before.
    assert score(tuned, dev)["spans_sc_f"] == pytest.approx(report["f"]) == pytest.approx(report["after"]["dev"])
    assert report["after"]["dev"] >= report["before"]["dev"]
    assert "dev spans_sc_f" in capsys.readouterr().out


def _separable_candidates(seed=0):
    """Label X's gold spans score above 1, label Y's above -2: each needs its own threshold."""
    rng = numpy.random.default_rng(seed)
    logits, label_ids, is_gold = [], [], []
    for label, (gold_low, other_high) in enumerate([(1.0, 0.5), (-2.0, -2.5)]):
        logits += list(rng.uniform(gold_low, 6, 40)) + list(rng.uniform(-6, other_high, 200))
        label_ids += [label] * 240
        is_gold += [True] * 40 + [False] * 200
    doc_ids = rng.integers(0, 40, len(logits))
    is_gold = numpy.asarray(is_gold)
    return Candidates(
        labels=("X", "Y"), doc_ids=doc_ids, label_ids=numpy.asarray(label_ids),
        logits=numpy.asarray(logits, dtype="float32"), is_gold=is_gold,
        n_gold_per_doc=numpy.bincount(doc_ids[is_gold], minlength=40),
    )


def test_tune_thresholds_maximises_micro_f1_per_label():
    candidates = _separable_candidates()
    grid = numpy.round(numpy.arange(0.01, 1.0, 0.01), 2)
    result = tune_thresholds(candidates, numpy.ones(2), numpy.zeros(2), grid, folds=1)
    thresholds = result["thresholds"]
    assert result["f"] == 1.0 and result["weight"] == 1.0
    for label, name in enumerate(candidates.labels):
        mine = candidates.label_ids == label
        highest_other = candidates.logits[mine & ~candidates.is_gold].max()
        lowest_gold = candidates.logits[mine & candidates.is_gold].min()
        assert sigmoid(highest_other) <= thresholds[name] < sigmoid(lowest_gold)
    assert thresholds["X"] > 0.5 > thresholds["Y"]


def test_cross_validation_keeps_per_label_thresholds_that_generalise():
    candidates = _separable_candidates()
    grid = numpy.round(numpy.arange(0.05, 1.0, 0.05), 2)
    result = tune_thresholds(candidates, numpy.ones(2), numpy.zeros(2), grid, folds=5)
    assert set(result["cv_f"]) == {"0.0", "0.25", "0.5", "0.75", "1.0"}
    assert result["weight"] > 0.0
    assert result["cv_f"][str(result["weight"])] > result["cv_f"]["0.0"]  # better than one shared threshold
    fresh = _separable_candidates(seed=1)
    shared = [result["shared_threshold"]] * 2
    thresholds = [result["thresholds"][label] for label in fresh.labels]
    assert _f1(fresh, thresholds) > _f1(fresh, shared)


def _f1(candidates, thresholds):
    from spacy_globalpointer.calibration import _tp_fp, micro_f1

    tp, fp = _tp_fp(candidates, thresholds, numpy.ones(2), numpy.zeros(2))
    return micro_f1(tp, fp, candidates.n_gold)


def _synthetic_candidates(n, seed):
    """Logits whose true probability of gold is sigmoid(a * s + b) with (a, b) per label."""
    truth = {"X": (0.5, -1.0), "Y": (2.0, 1.0)}
    rng = numpy.random.default_rng(seed)
    label_ids = rng.integers(0, 2, n)
    logits = rng.normal(0.0, 3.0, n).astype("float32")
    a = numpy.where(label_ids == 0, truth["X"][0], truth["Y"][0])
    b = numpy.where(label_ids == 0, truth["X"][1], truth["Y"][1])
    p_true = 1.0 / (1.0 + numpy.exp(-(a * logits + b)))
    is_gold = rng.random(n) < p_true
    candidates = Candidates(
        labels=("X", "Y"), doc_ids=numpy.arange(n), label_ids=label_ids, logits=logits, is_gold=is_gold,
        n_gold_per_doc=is_gold.astype("int64"),
    )
    return candidates, truth


def test_calibration_recovers_the_truth_and_improves_ece_on_held_out_data():
    fit, truth = _synthetic_candidates(40000, seed=0)
    held, _ = _synthetic_candidates(40000, seed=1)
    params = fit_calibration(fit, min_probability=1e-9)
    for label, (a, b) in truth.items():
        assert params[label]["scale"] == pytest.approx(a, rel=0.1)
        assert params[label]["bias"] == pytest.approx(b, abs=0.15)
    identity = (numpy.ones(2), numpy.zeros(2))
    fitted = (numpy.asarray([params["X"]["scale"], params["Y"]["scale"]]),
              numpy.asarray([params["X"]["bias"], params["Y"]["bias"]]))
    report = calibration_report(held, identity, fitted, min_probability=1e-9)
    assert report["n_spans"] == 40000
    assert report["before"]["ece"] > 0.05
    assert report["after"]["ece"] < 0.02 < report["before"]["ece"] / 2
    assert report["after"]["brier"] < report["before"]["brier"]


def test_ece_and_brier_by_hand():
    p = numpy.asarray([0.1, 0.1, 0.9, 0.9])
    y = numpy.asarray([False, True, True, True])
    # Bins: {0.1, 0.1} with gold share 0.5 (gap 0.4), {0.9, 0.9} with 1.0 (gap 0.1).
    assert expected_calibration_error(p, y, n_bins=15) == pytest.approx(0.5 * 0.4 + 0.5 * 0.1)
    assert brier_score(p, y) == pytest.approx((0.01 + 0.81 + 0.01 + 0.01) / 4)
    assert fit_platt(numpy.asarray([-1.0, 1.0] * 50), numpy.asarray([False, True] * 50))[0] > 0


def test_calibrate_command_writes_the_calibrated_pipeline(saved, tmp_path, capsys):
    out, report_path = tmp_path / "calibrated", tmp_path / "calibrate.json"
    code = main([
        "calibrate", str(saved / "pipeline"), str(saved / "dev.spacy"),
        "--output", str(out), "--heldout", str(saved / "dev.spacy"), "--report", str(report_path),
    ])
    assert code == 0, capsys.readouterr().err
    report = json.loads(report_path.read_text(encoding="utf8"))
    calibrated = spacy.load(out)
    pipe = calibrated.get_pipe("global_pointer")
    assert dict(pipe.calibration) == report["calibration"] and report["calibration"]
    assert {"ece", "brier", "bins"} <= set(report["before"]) and len(report["after"]["bins"]) == 15
    # The written probabilities are sigmoid(a * s + b) of the raw logits.
    for logits, doc in zip(raw_logits(calibrated, TEXTS), calibrated.pipe(TEXTS)):
        for span, p in zip(span_tuples(doc.spans["sc"]), doc.spans["sc"].attrs["scores"]):
            params = pipe.calibration.get(span[2], {"scale": 1.0, "bias": 0.0})
            assert p == pytest.approx(sigmoid(params["scale"] * logits[span] + params["bias"]), rel=1e-5)
            assert p > 0.5 - 1e-7


def test_calibration_set_without_gold_spans_is_refused(saved, tmp_path, capsys):
    nlp = spacy.blank("en")
    DocBin(docs=[nlp.make_doc(text) for text in TEXTS]).to_disk(tmp_path / "plain.spacy")
    for command in ("calibrate", "tune-thresholds"):
        code = main([command, str(saved / "pipeline"), str(tmp_path / "plain.spacy"), "--output", str(tmp_path / "x")])
        assert code == 2
        assert re.search(r"has no gold spans under doc\.spans\['sc'\]", capsys.readouterr().err)
    assert not (tmp_path / "x").exists()


def test_gold_tokens_tune_on_the_data_own_tokens(saved, tmp_path, capsys):
    """GENIA-style data converted with its own tokens: `CD69` is a token of the data but sits inside
    the tokenizer's token `AIM)/CD69`. With --gold-tokens the pipeline predicts on the data's tokens,
    so that gold span can be a candidate; on the tokenizer's tokens it never can."""
    from spacy.tokens import Doc, Span

    from spacy_globalpointer.pipe import logit_cuts

    nlp = spacy.load(saved / "pipeline")
    name, pipe = find_global_pointer(nlp)
    words = ["Activation", "of", "AIM", ")", "/", "CD69", "needs", "NF-kappa", "B", "."]
    spaces = [True, True, False, False, False, True, True, True, False, False]
    doc = Doc(nlp.vocab, words=words, spaces=spaces)
    doc.spans["sc"] = [Span(doc, 5, 6, label=pipe.labels[0])]
    assert "CD69" not in [t.text for t in nlp.make_doc(doc.text)]
    everything = logit_cuts([1e-6] * len(pipe.labels), *pipe.calibration_arrays())
    own = collect_candidates(nlp, name, [doc], everything, gold_tokens=True)
    retokenized = collect_candidates(nlp, name, [doc], everything, gold_tokens=False)
    assert own.n_gold == retokenized.n_gold == 1
    assert int(own.is_gold.sum()) == 1 and int(retokenized.is_gold.sum()) == 0
    # The command takes the flag and scores on the same tokens before and after tuning.
    DocBin(docs=[doc]).to_disk(tmp_path / "own.spacy")
    report_path = tmp_path / "tune.json"
    code = main(["tune-thresholds", str(saved / "pipeline"), str(tmp_path / "own.spacy"), "--gold-tokens",
                 "--output", str(tmp_path / "tuned"), "--report", str(report_path), "--folds", "1"])
    assert code == 0, capsys.readouterr().err
    report = json.loads(report_path.read_text(encoding="utf8"))
    tuned = spacy.load(tmp_path / "tuned")
    assert score(tuned, [doc], gold_tokens=True)["spans_sc_f"] == pytest.approx(report["after"]["dev"])
    assert report["after"]["dev"] >= report["before"]["dev"]
