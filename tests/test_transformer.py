"""The transformer path: configs/gpu_trf.cfg, wordpiece alignment, long docs, mixed precision.

Everything runs offline on a tiny random BERT written to a temporary folder, so no
model is downloaded. GPU tests are marked `gpu` and skip without CUDA.
"""
import os
import subprocess
import sys

# Never reach for the Hugging Face hub: every model here is a local folder. Set before
# transformers is imported, which reads these once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import numpy  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("spacy_transformers")
transformers = pytest.importorskip("transformers")

import spacy  # noqa: E402
import srsly  # noqa: E402
import torch  # noqa: E402
from spacy.tokens import DocBin  # noqa: E402
from spacy.training import Example  # noqa: E402
from thinc.api import Adam, fix_random_seed  # noqa: E402

import spacy_globalpointer  # noqa: E402,F401  (registers spacy-globalpointer.grad_scaler.v1)
from spacy_globalpointer.loss import multilabel_categorical_crossentropy  # noqa: E402
from spacy_globalpointer.torch_layers import (  # noqa: E402
    EfficientGlobalPointerHead,
    GlobalPointerHead,
)

CONFIG_PATH = Path(__file__).parent.parent / "configs" / "gpu_trf.cfg"
EN_CONFIG_PATH = Path(__file__).parent.parent / "configs" / "trf_en.cfg"
KEY = "sc"
FP32_MIN = torch.finfo(torch.float32).min

requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# (text, [(start_char, end_char, label)]): nested spans, as in CMeEE / CLUENER.
ZH_DATA = [
    ("北京大学在北京", [(0, 4, "ORG"), (0, 2, "LOC"), (5, 7, "LOC")]),
    ("上海交通大学位于上海", [(0, 6, "ORG"), (0, 2, "LOC"), (8, 10, "LOC")]),
    ("张三是北京大学的学生", [(0, 2, "PER"), (3, 7, "ORG"), (3, 5, "LOC")]),
    ("李四来自中国科学院", [(0, 2, "PER"), (4, 9, "ORG"), (4, 6, "LOC")]),
    ("张三来自上海", [(0, 2, "PER"), (4, 6, "LOC")]),
    ("李四在北京大学", [(0, 2, "PER"), (3, 7, "ORG"), (3, 5, "LOC")]),
]
# "globalpointer" is one spaCy token but three wordpieces: global ##point ##er.
EN_DATA = [
    ("I love globalpointer models", [(7, 20, "TOOL"), (7, 27, "THING")]),
    ("the globalpointer model is a tool", [(4, 17, "TOOL"), (4, 23, "THING")]),
    ("I love the model", []),
]
EN_WORDPIECES = ["i", "love", "the", "global", "##point", "##er", "##s", "model", "models", "is", "a", "tool"]


def _vocab_lines():
    chars = sorted({c for text, _ in ZH_DATA for c in text})
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + EN_WORDPIECES


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A random 2-layer BERT (hidden 32) and its fast tokenizer, saved like a hub model."""
    path = tmp_path_factory.mktemp("tiny_bert")
    (path / "vocab.txt").write_text("\n".join(_vocab_lines()) + "\n", encoding="utf8")
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(path / "vocab.txt"))
    assert tokenizer.tokenize("globalpointer") == ["global", "##point", "##er"]
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(_vocab_lines()),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=160,  # the config's 128-token window + [CLS], [SEP]
    )
    transformers.BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _doc(nlp, text, spans):
    doc = nlp.make_doc(text)
    doc.spans[KEY] = [doc.char_span(s, e, label=label) for s, e, label in spans]
    assert all(span is not None for span in doc.spans[KEY]), text
    return doc


def _examples(nlp, data):
    return [Example(nlp.make_doc(text), _doc(nlp, text, spans)) for text, spans in data]


def _span_tuples(doc):
    return [(s.start, s.end, s.label_) for s in doc.spans[KEY]]


def _trf_nlp(lang, model_dir, *, window=16, stride=12, head_size=16,
             architecture="spacy-globalpointer.GlobalPointer.v1"):
    """transformer + global_pointer built in Python, as gpu_trf.cfg builds them."""
    nlp = spacy.blank(lang)
    nlp.add_pipe(
        "transformer",
        config={
            "model": {
                "@architectures": "spacy-transformers.TransformerModel.v3",
                "name": str(model_dir),
                "tokenizer_config": {"use_fast": True},
                "get_spans": {
                    "@span_getters": "spacy-transformers.strided_spans.v1",
                    "window": window,
                    "stride": stride,
                },
            }
        },
    )
    nlp.add_pipe(
        "global_pointer",
        config={
            "model": {
                "@architectures": architecture,
                "head_size": head_size,
                "tok2vec": {
                    "@architectures": "spacy-transformers.TransformerListener.v1",
                    "grad_factor": 1.0,
                    "pooling": {"@layers": "reduce_mean.v1"},
                },
            }
        },
    )
    return nlp


def _assert_tokens_get_mean_of_wordpieces(nlp, doc):
    """The listener's vector for each token is the mean of its aligned wordpiece rows
    (from every strided window the token falls in)."""
    trf_data = doc._.trf_data
    hidden = trf_data.model_output.last_hidden_state
    rows = hidden.reshape(-1, hidden.shape[-1])
    tok2vec = nlp.get_pipe("global_pointer").model.get_ref("tok2vec")
    vectors = tok2vec.predict([doc])[0]
    assert vectors.shape == (len(doc), hidden.shape[-1])
    lengths = trf_data.align.lengths
    assert (lengths >= 1).all(), "every token must be covered by at least one wordpiece"
    starts = numpy.concatenate([[0], numpy.cumsum(lengths)[:-1]])
    for i in range(len(doc)):
        pieces = trf_data.align.dataXd[starts[i] : starts[i] + lengths[i]].ravel()
        numpy.testing.assert_allclose(vectors[i], rows[pieces].mean(axis=0), rtol=1e-5, atol=1e-6)
    return lengths


# -- configs/gpu_trf.cfg -----------------------------------------------------------


def test_gpu_trf_config_loads_and_validates(tiny_bert):
    overrides = {"components.transformer.model.name": str(tiny_bert)}
    config = spacy.util.load_config(CONFIG_PATH, overrides=overrides, interpolate=True)
    assert config["nlp"]["pipeline"] == ["transformer", "global_pointer"]
    trf = config["components"]["transformer"]["model"]
    assert trf["@architectures"] == "spacy-globalpointer.TransformerModel.v1"
    assert trf["get_spans"]["@span_getters"] == "spacy-transformers.strided_spans.v1"
    assert (trf["get_spans"]["window"], trf["get_spans"]["stride"]) == (128, 96)
    listener = config["components"]["global_pointer"]["model"]["tok2vec"]
    assert listener["@architectures"] == "spacy-transformers.TransformerListener.v1"
    assert listener["pooling"]["@layers"] == "reduce_mean.v1"
    assert config["system"]["gpu_allocator"] == "pytorch"
    assert config["training"]["batcher"]["@batchers"] == "spacy.batch_by_padded.v1"
    assert config["paths"]["train"] is None and config["paths"]["dev"] is None
    # The head learns with its own optimizer, 50x the transformer's peak rate.
    head_rate = config["components"]["global_pointer"]["head_optimizer"]["learn_rate"]
    assert head_rate["initial_rate"] == 50 * config["training"]["optimizer"]["learn_rate"]["initial_rate"]

    nlp = spacy.util.load_model_from_config(config, auto_fill=True, validate=True)
    assert nlp.lang == "zh" and nlp.pipe_names == ["transformer", "global_pointer"]
    assert nlp.get_pipe("global_pointer").key == "sc"
    assert nlp.get_pipe("global_pointer").head_optimizer is not None
    assert config["training"]["score_weights"]["spans_sc_f"] == 1.0
    # One switch asks for fp16 autocast and gradient scaling for both torch models.
    head = nlp.get_pipe("global_pointer").model
    assert head.attrs["mixed_precision"] is True
    assert head.attrs["grad_scaler"]._enabled is True


def _config_without_language(path: Path) -> dict:
    """A config with what is language-specific taken out: [nlp] lang and tokenizer, the
    transformer's name, [initialize.tokenizer] and the comments (not in the dict)."""
    config = spacy.util.load_config(path, interpolate=False).copy()
    config["nlp"] = {k: v for k, v in config["nlp"].items() if k not in ("lang", "tokenizer")}
    config["components"]["transformer"]["model"].pop("name")
    config["initialize"].pop("tokenizer")
    return config


def test_trf_en_config_shares_every_choice_that_is_not_language_specific():
    assert _config_without_language(CONFIG_PATH) == _config_without_language(EN_CONFIG_PATH)
    en = spacy.util.load_config(EN_CONFIG_PATH, interpolate=False)
    assert en["nlp"]["lang"] == "en" and en["nlp"]["tokenizer"]["@tokenizers"] == "spacy.Tokenizer.v1"


def test_gpu_trf_config_one_override_turns_mixed_precision_off(tiny_bert, recwarn):
    overrides = {
        "components.transformer.model.name": str(tiny_bert),
        "components.transformer.model.mixed_precision": False,
    }
    config = spacy.util.load_config(CONFIG_PATH, overrides=overrides, interpolate=True)
    nlp = spacy.util.load_model_from_config(config, auto_fill=True, validate=True)
    head = nlp.get_pipe("global_pointer").model
    assert head.attrs["mixed_precision"] is False
    assert head.attrs["grad_scaler"]._enabled is False
    trf_shim = nlp.get_pipe("transformer").model.layers[0].shims[0]
    assert trf_shim._mixed_precision is False and trf_shim._grad_scaler._enabled is False
    assert not [w for w in recwarn if "mixed precision" in str(w.message)]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_gpu_trf_config_trains_on_cpu_as_written(tiny_bert):
    """mixed_precision = true in the config: on CPU it switches itself off with a warning
    (thinc's gradient scaler is CUDA-only), and training works without any override."""
    overrides = {
        "components.transformer.model.name": str(tiny_bert),
        "components.global_pointer.model.head_size": 16,
    }
    config = spacy.util.load_config(CONFIG_PATH, overrides=overrides, interpolate=True)
    with pytest.warns(UserWarning, match="mixed precision and gradient scaling need a CUDA GPU"):
        nlp = spacy.util.load_model_from_config(config, auto_fill=True, validate=True)
    trf_shim = nlp.get_pipe("transformer").model.layers[0].shims[0]
    assert trf_shim._mixed_precision is False and trf_shim._grad_scaler._enabled is False
    examples = _examples(nlp, ZH_DATA[:2])
    with pytest.warns(UserWarning, match="mixed precision"):
        optimizer = nlp.initialize(lambda: examples)
    head_shim = nlp.get_pipe("global_pointer").model.get_ref("head").shims[0]
    assert head_shim._mixed_precision is False and head_shim._grad_scaler._enabled is False
    losses = nlp.update(examples, sgd=optimizer)
    assert numpy.isfinite(losses["global_pointer"])


def _write_corpus(path: Path, lang: str = "zh") -> Path:
    nlp = spacy.blank(lang)
    data = ZH_DATA if lang == "zh" else EN_DATA
    DocBin(docs=[_doc(nlp, text, spans) for text, spans in data]).to_disk(path)
    return path


TRAIN_OVERRIDES = {
    "components.global_pointer.model.head_size": "16",
    "training.max_steps": "60",
    "training.eval_frequency": "10",
    # The tiny random model needs a far higher rate than a pretrained BERT.
    "training.optimizer.learn_rate.initial_rate": "3e-3",
    "training.optimizer.learn_rate.warmup_steps": "5",
    # ~2-3 docs per batch (batch_by_padded counts padded tokens).
    "training.batcher.size": "24",
    "training.batcher.buffer": "8",
    "training.logger.console_output": "false",
}


def _spacy_train(config_path: Path, model_dir: Path, workdir: Path, lang: str, *, gpu_id: int = -1, extra=()):
    """`python -m spacy train CONFIG` in a subprocess, as a user runs it, with no override
    but the data, the model folder and the tiny budget; returns (log rows, stderr)."""
    corpus = _write_corpus(workdir / "train.spacy", lang)
    log_path = workdir / "log.jsonl"
    overrides = {
        **TRAIN_OVERRIDES,
        "paths.train": str(corpus),
        "paths.dev": str(corpus),
        "components.transformer.model.name": str(model_dir),
        "training.logger.output_file": str(log_path),
    }
    cmd = [sys.executable, "-m", "spacy", "train", str(config_path), "--output", str(workdir / "output"),
           "--gpu-id", str(gpu_id)]
    for key, value in overrides.items():
        cmd += [f"--{key}", value]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd + list(extra), capture_output=True, text=True, env=env, cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [srsly.json_loads(line) for line in log_path.read_text().splitlines()], proc.stderr


def _assert_learned(log, min_score=0.5):
    # Each row sums the losses of the updates since the previous evaluation; the first
    # evaluation comes after the first update (step 0).
    steps = [row["step"] for row in log]
    n_updates = numpy.diff([-1] + steps)
    per_update = numpy.array([row["losses"]["global_pointer"] for row in log]) / n_updates
    assert len(per_update) >= 5 and numpy.isfinite(per_update).all()
    assert per_update[-1] < 0.2 * per_update[0], per_update
    assert max(row["score"] for row in log) > min_score, [row["score"] for row in log]


CONFIGS = {"gpu_trf": (CONFIG_PATH, "zh", ZH_DATA), "trf_en": (EN_CONFIG_PATH, "en", EN_DATA)}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def trained_dir(request, tiny_bert, tmp_path_factory):
    config_path, lang, data = CONFIGS[request.param]
    workdir = tmp_path_factory.mktemp(f"train_{request.param}")
    log, stderr = _spacy_train(config_path, tiny_bert, workdir, lang)
    return workdir / "output", log, stderr, data


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_spacy_train_with_trf_config_learns_on_cpu_with_one_warning(trained_dir):
    output, log, stderr, _ = trained_dir
    _assert_learned(log)
    assert stderr.count("mixed precision and gradient scaling need a CUDA GPU") == 1, stderr[-3000:]
    assert "Gradient scaling" not in stderr and "autocast" not in stderr
    assert (output / "model-best").is_dir() and (output / "model-last").is_dir()
    meta = srsly.read_json(output / "model-best" / "meta.json")
    assert meta["performance"]["spans_sc_f"] > 0.5


@pytest.mark.parametrize("which", ["model-best", "model-last"])
def test_trained_pipeline_reloads_with_identical_predictions(trained_dir, which):
    output, _, _, data = trained_dir
    texts = [text for text, _ in data] + [data[0][0] + " " + data[1][0]]
    first, second = spacy.load(output / which), spacy.load(output / which)
    docs1 = [first(text) for text in texts]
    docs2 = list(second.pipe(texts, batch_size=3))
    assert sum(len(doc.spans[KEY]) for doc in docs1) > 0
    for doc1, doc2 in zip(docs1, docs2):
        assert _span_tuples(doc1) == _span_tuples(doc2)
        numpy.testing.assert_allclose(
            doc1.spans[KEY].attrs["scores"], doc2.spans[KEY].attrs["scores"], rtol=1e-5, atol=1e-5
        )
    # The full score tensors, not only the decoded spans, survive the reload, and a
    # to_bytes/from_bytes round trip as well.
    third = spacy.util.load_model_from_config(first.config, auto_fill=False)
    third.from_bytes(first.to_bytes())
    docs3 = [third(text) for text in texts[:3]]
    expected = first.get_pipe("global_pointer").predict(docs1[:3])
    for docs, nlp in ((docs2, second), (docs3, third)):
        scores = nlp.get_pipe("global_pointer").predict(docs[:3])
        for i in range(3):
            numpy.testing.assert_allclose(scores.doc(i), expected.doc(i), rtol=1e-5, atol=1e-5)


# -- empty docs ---------------------------------------------------------------------

EMPTY_BATCHES = {"one_empty": [""], "empty_and_whitespace": ["", " ", "\n\n", "\t"], "all_empty": ["", "", ""]}


@pytest.mark.parametrize("which", ["model-best"])
def test_empty_and_whitespace_texts_through_a_trained_transformer_pipeline(trained_dir, which):
    """Blank lines are everyday input: nlp(""), batches of only empty or whitespace docs,
    and empty docs among others give no spans and no error (the listener cannot pool a
    batch without a token, so global_pointer does not call it then)."""
    output, _, _, data = trained_dir
    nlp = spacy.load(output / which)
    assert len(nlp("").spans[KEY]) == 0 and nlp("").spans[KEY].attrs["scores"].shape == (0,)
    for texts in EMPTY_BATCHES.values():
        docs = list(nlp.pipe(texts, batch_size=2))
        assert [doc.text for doc in docs] == texts and not any(len(doc.spans[KEY]) for doc in docs)
    mixed = ["", data[0][0], " ", data[1][0], ""]
    together = list(nlp.pipe(mixed, batch_size=5))
    for text, doc in zip(mixed, together):
        assert _span_tuples(doc) == _span_tuples(nlp(text))
    assert sum(len(doc.spans[KEY]) for doc in together) > 0


@pytest.mark.parametrize("architecture", ["spacy-globalpointer.GlobalPointer.v1",
                                          "spacy-globalpointer.EfficientGlobalPointer.v1"])
def test_predict_and_update_on_only_empty_docs_leave_the_listener_alone(tiny_bert, architecture):
    nlp = _trf_nlp("zh", tiny_bert, architecture=architecture)
    optimizer = nlp.initialize(lambda: _examples(nlp, ZH_DATA))
    gp = nlp.get_pipe("global_pointer")
    for texts in EMPTY_BATCHES.values():
        docs = [nlp.make_doc(text) for text in texts]
        for _, proc in nlp.pipeline:  # the transformer runs, as in nlp.pipe
            proc.set_annotations(docs, proc.predict(docs))
        if not any(len(doc) for doc in docs):
            scores = gp.predict(docs)
            assert scores.lengths == [0] * len(docs) and all(group.size == 0 for group in scores.groups)
        examples = [Example(nlp.make_doc(text), nlp.make_doc(text)) for text in texts]
        losses = nlp.update(examples, sgd=optimizer)
        if any(len(doc) for doc in docs):  # whitespace is a token: its spans are negatives
            assert 0.0 <= losses["global_pointer"] < float("inf")
        else:
            assert losses["global_pointer"] == 0.0
    before = gp.model.get_ref("head").shims[0]._model.offset.detach().clone()
    losses = nlp.update(_examples(nlp, ZH_DATA), sgd=optimizer)  # and it still learns after
    assert losses["global_pointer"] > 0
    assert not torch.equal(gp.model.get_ref("head").shims[0]._model.offset, before)


def test_annotate_a_file_of_blank_lines_with_a_transformer_pipeline(trained_dir, tmp_path):
    from spacy_globalpointer.annotate import annotate

    output, _, _, data = trained_dir
    corpus = tmp_path / "blank.txt"
    corpus.write_text("\n\n  \n" + data[0][0] + "\n\n", encoding="utf8")
    summary = annotate(str(output / "model-best"), corpus, tmp_path / "out", progress=False, batch_size=2)
    records = [srsly.json_loads(line) for path in sorted((tmp_path / "out" / "shards").glob("*.jsonl"))
               for line in path.read_text(encoding="utf8").splitlines()]
    assert [record["text"] for record in records] == ["", "", "  ", data[0][0], ""]
    assert [record["spans"] for record in records[:3] + records[4:]] == [[]] * 4
    assert summary["docs"] == 5 and summary["errors"] == 0


def test_step_profile_times_two_steps_on_a_tiny_model(tiny_bert, tmp_path):
    """benchmarks/step_profile.py end to end (in its own process: it wraps spaCy's classes)."""
    corpus = _write_corpus(tmp_path / "train.spacy")
    script = Path(__file__).parent.parent / "benchmarks" / "step_profile.py"
    out = tmp_path / "profile"
    command = [sys.executable, str(script), str(CONFIG_PATH), "--train", str(corpus), "--dev", str(corpus),
               "--model", str(tiny_bert), "--steps", "2", "--eval-frequency", "1", "--infer-batches", "2",
               "--batch-size", "3", "--threads", "1", "--out", str(out), "--training.batcher.size", "24"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = srsly.read_json(out / "step_profile.json")
    marks = report["marks_s"]
    assert marks["imports"] < marks["initialized"] < marks["first step"] <= marks["first evaluation"]
    assert report["evaluations"] >= 2 and report["infer_words"] == sum(
        len(text) for text, _ in (ZH_DATA * 2)[:6])
    steady = report["steady_steps"]["stages"]
    for stage in ("trf: torch forward", "trf: torch backward", "trf: tokenize+align", "listener pooling",
                  "gp: head forward", "gp: head backward", "gp: targets+loss", "optimizer"):
        assert steady[stage]["seconds"] > 0, stage
    assert sum(stage["share"] for stage in steady.values()) == pytest.approx(1.0)
    inference = report["inference"]["stages"]
    assert {"trf: torch forward", "gp: head forward", "gp: decode+set_annotations"} <= set(inference)
    assert 0 < report["inference"]["project_share"] < 1 and 0 < report["steady_steps"]["project_share"] < 1
    assert report["initialization"]["stages"]["corpus reading"]["seconds"] > 0
    markdown = (out / "step_profile.md").read_text(encoding="utf8")
    assert "| first evaluation |" in markdown and "**Training steps after the first**" in markdown


# -- wordpiece alignment and long docs -------------------------------------------


def test_english_multi_wordpiece_entity_is_recovered(tiny_bert):
    fix_random_seed(0)
    nlp = _trf_nlp("en", tiny_bert)
    examples = _examples(nlp, EN_DATA)
    nlp.initialize(lambda: examples)
    optimizer = Adam(1e-3)
    for _ in range(100):
        losses = {}
        nlp.update(examples, sgd=optimizer, losses=losses)
    assert losses["global_pointer"] < 0.1, losses

    doc = nlp("I love globalpointer models")
    assert [t.text for t in doc] == ["I", "love", "globalpointer", "models"]
    lengths = _assert_tokens_get_mean_of_wordpieces(nlp, doc)
    assert lengths[2] == 3  # global ##point ##er
    assert sorted(_span_tuples(doc)) == [(2, 3, "TOOL"), (2, 4, "THING")]
    doc = nlp("the globalpointer model is a tool")
    assert sorted(_span_tuples(doc)) == [(1, 2, "TOOL"), (1, 3, "THING")]


def test_long_doc_is_covered_by_strided_windows(tiny_bert):
    fix_random_seed(0)
    window, stride = 16, 12
    nlp = _trf_nlp("zh", tiny_bert, window=window, stride=stride)
    examples = _examples(nlp, ZH_DATA)
    nlp.initialize(lambda: examples)
    long_text = "".join(text for text, _ in ZH_DATA)  # 49 characters
    long_gold = []
    offset = 0
    for text, spans in ZH_DATA:
        long_gold += [(s + offset, e + offset, label) for s, e, label in spans]
        offset += len(text)
    long_example = _examples(nlp, [(long_text, long_gold)])
    assert len(long_example[0].predicted) > 3 * window

    # Training on the long doc backpropagates through all its windows.
    optimizer = Adam(1e-3)
    for _ in range(3):
        losses = {}
        nlp.update(examples + long_example, sgd=optimizer, losses=losses)
        assert numpy.isfinite(losses["global_pointer"])

    doc = nlp(long_text)
    hidden = doc._.trf_data.model_output.last_hidden_state
    assert hidden.shape[0] >= 4  # several windows
    lengths = _assert_tokens_get_mean_of_wordpieces(nlp, doc)
    assert lengths.max() == 2  # tokens in the overlaps get a wordpiece from each window
    scores = nlp.get_pipe("global_pointer").predict([doc]).doc(0)
    n = len(doc)
    assert scores.shape[1] == n and scores.shape[2] == n
    # Band layout (start, width): every span (i, i + d) inside the doc is a candidate
    # with a finite score, including those that start or end in the last window.
    candidates = numpy.arange(n)[:, None] + numpy.arange(n)[None, :] < n
    assert numpy.isfinite(scores[:, candidates]).all()
    assert (scores[:, ~candidates] == FP32_MIN).all()
    assert isinstance(doc.spans[KEY].attrs["scores"], numpy.ndarray)


# -- mixed precision ----------------------------------------------------------------

# Largest error relative to the largest score magnitude: bf16 keeps 8 bits of mantissa.
TOLERANCE = {torch.bfloat16: 0.05, torch.float16: 0.01}


@pytest.mark.parametrize("head_class", [GlobalPointerHead, EfficientGlobalPointerHead])
@pytest.mark.parametrize("band", [None, 3])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_head_under_cpu_autocast_matches_fp32_and_stays_finite(head_class, band, dtype):
    torch.manual_seed(0)
    head = head_class(32, 3, head_size=16)
    X = torch.randn(3, 7, 32) * 2
    lengths = torch.tensor([7, 0, 1])  # a full row, a fully padded row, a one-token row
    with torch.no_grad():
        reference = head(X, lengths, band)
    X_amp = X.clone().requires_grad_(True)
    with torch.autocast(device_type="cpu", dtype=dtype):
        scores = head(X_amp, lengths, band)
        # Autocast really ran the projections in low precision.
        assert head.proj(X_amp).dtype == dtype

    assert scores.dtype == torch.float32
    candidates = reference > FP32_MIN
    assert torch.equal(scores > FP32_MIN, candidates)
    assert (scores[~candidates] == FP32_MIN).all()
    assert not candidates[1].any()  # the empty row has no candidate at all
    assert candidates[2].sum() == 3  # the one-token row has one per type
    assert torch.isfinite(scores[candidates]).all()
    rel_err = (scores - reference).abs()[candidates].max() / reference.abs()[candidates].max()
    assert rel_err < TOLERANCE[dtype], float(rel_err)

    targets = numpy.zeros(scores.shape, dtype=bool)
    targets[0, 0, 1, 0] = targets[0, 2, 2, 1] = targets[2, 1, 0, 0] = True
    loss, d_scores = multilabel_categorical_crossentropy(
        scores.detach().numpy(), targets, candidates.numpy()
    )
    assert numpy.isfinite(loss) and loss > 0
    assert d_scores.dtype == numpy.float32 and numpy.isfinite(d_scores).all()
    assert (d_scores[~candidates.numpy()] == 0).all()
    scores.backward(torch.from_numpy(d_scores))
    assert torch.isfinite(X_amp.grad).all() and X_amp.grad[0].abs().sum() > 0
    assert (X_amp.grad[1] == 0).all()  # padding gets no gradient
    for name, param in head.named_parameters():
        assert torch.isfinite(param.grad).all(), name


def test_pipeline_trains_under_cpu_bf16_autocast():
    """The Thinc wrapper path (padding, xp2torch, backprop, torch2xp) with the head in bf16."""
    fix_random_seed(0)
    nlp = spacy.blank("zh")
    nlp.add_pipe("global_pointer", config={"model": {"head_size": 16}})
    examples = _examples(nlp, ZH_DATA + [("", [])])
    optimizer = nlp.initialize(lambda: examples[:-1])
    history = []
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        for _ in range(15):
            losses = {}
            nlp.update(examples, sgd=optimizer, losses=losses)
            history.append(losses["global_pointer"])
        scores = nlp.get_pipe("global_pointer").predict([eg.predicted for eg in examples])
    assert numpy.isfinite(history).all() and history[-1] < history[0]
    for group in scores.groups:
        assert group.dtype == numpy.float32
        assert numpy.isfinite(group[group > FP32_MIN]).all()


# -- GPU ------------------------------------------------------------------------------


@pytest.mark.gpu
@requires_gpu
def test_spacy_train_on_gpu_with_mixed_precision(tiny_bert, tmp_path):
    log, stderr = _spacy_train(CONFIG_PATH, tiny_bert, tmp_path, "zh", gpu_id=0)
    _assert_learned(log)
    assert "need a CUDA GPU" not in stderr  # mixed precision stays on with a GPU
    nlp = spacy.load(tmp_path / "output" / "model-last")
    doc = nlp(ZH_DATA[0][0])
    assert numpy.isfinite(doc.spans[KEY].attrs["scores"]).all()


@pytest.mark.gpu
@requires_gpu
def test_trained_pipeline_scores_match_on_cpu_and_gpu(trained_dir):
    output, _, _, data = trained_dir
    texts = [text for text, _ in data]
    nlp_cpu = spacy.load(output / "model-last")
    docs_cpu = list(nlp_cpu.pipe(texts))
    ragged_cpu = nlp_cpu.get_pipe("global_pointer").predict(docs_cpu)
    scores_cpu = numpy.concatenate([ragged_cpu.doc(i).ravel() for i in range(len(docs_cpu))])
    try:
        spacy.require_gpu(0)
        nlp_gpu = spacy.load(output / "model-last")
        head = nlp_gpu.get_pipe("global_pointer").model.get_ref("head")
        assert head.shims[0].device.type == "cuda"
        docs_gpu = list(nlp_gpu.pipe(texts))
        ragged_gpu = nlp_gpu.get_pipe("global_pointer").predict(docs_gpu)
        ops = nlp_gpu.get_pipe("global_pointer").model.ops
        scores_gpu = numpy.concatenate([ops.to_numpy(ragged_gpu.doc(i)).ravel() for i in range(len(docs_gpu))])
    finally:
        spacy.require_cpu()
    valid = scores_cpu > FP32_MIN
    assert numpy.array_equal(valid, scores_gpu > FP32_MIN)
    scale = numpy.abs(scores_cpu[valid]).max()
    assert numpy.abs(scores_gpu[valid] - scores_cpu[valid]).max() < 1e-3 * scale
    for doc_cpu, doc_gpu in zip(docs_cpu, docs_gpu):
        assert _span_tuples(doc_cpu) == _span_tuples(doc_gpu)
