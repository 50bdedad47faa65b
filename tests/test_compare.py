"""benchmarks/compare.py: global_pointer against spaCy's ner and spancat, end to end on a tiny budget.

The end-to-end run uses the shipped demo data, so it never skips; the CLUENER tests check the data
preparation (the overlapping train spans that ner cannot take) and that every system's config
trains and reports the score its model-best is chosen by.
"""
import itertools
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import spacy
from spacy.training import Corpus
from spacy.util import load_config, load_model_from_config

from spacy_globalpointer.convert import read_cluener, read_jsonl, write_docbin

from .conftest import CONFIGS, REPO, load_benchmark, shared_data_dir

SCRIPT = REPO / "benchmarks" / "compare.py"
SYSTEMS = ["global_pointer", "efficient_global_pointer", "ner", "spancat", "span_finder"]
NARROW = ["--components.tok2vec.model.encode.width", "32", "--components.tok2vec.model.encode.depth", "1"]
MAX_STEPS, EVAL_FREQUENCY = 6, 3  # evaluations at steps 0, 3 and 6


compare = load_benchmark("compare")


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare_demo")
    for split, n in (("train", 100), ("dev", 30)):
        docs, report = read_jsonl(REPO / "assets" / "demo" / f"{split}.jsonl", "zh")
        report.raise_if(0)
        write_docbin(docs[:n], root / f"{split}.spacy")
        if split == "dev":  # the next 20 dev docs stand in for a test set
            write_docbin(docs[n : n + 20], root / "test.spacy")
    out = root / "out"
    cmd = [sys.executable, str(SCRIPT), "--train", str(root / "train.spacy"), "--dev", str(root / "dev.spacy"),
           "--test", str(root / "test.spacy"),
           "--config", str(CONFIGS / "cpu.cfg"), "--out", str(out), "--systems", ",".join(SYSTEMS),
           "--max-steps", str(MAX_STEPS), "--eval-frequency", str(EVAL_FREQUENCY), "--repeats", "1",
           "--patience", "100"] + NARROW
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    return out, result


def test_compare_json(demo_run):
    out, _ = demo_run
    report = json.loads((out / "compare.json").read_text(encoding="utf8"))
    assert "compare.py" in report["command"] and report["date"]
    assert {"spacy", "thinc", "torch"} <= set(report["versions"]) and report["machine"]["nproc"] >= 1
    assert list(report["systems"]) == SYSTEMS
    data = report["data"]
    assert data["train"]["n_docs"] == 100 and data["dev"]["n_docs"] == 30
    # The demo data nests entities, so ner's gold loses the inner (or outer) ones.
    assert data["train"]["ner_dropped_overlapping"] > 0
    assert data["spancat_max_size"] == min(data["train"]["longest_span"], compare.DEFAULT_MAX_SPAN_CAP)
    for name, s in report["systems"].items():
        assert s["status"] == "ok", (name, s.get("error"))
        for part in (s["best"], s["last"], s["inference"]["all_gold"]):
            assert all(0.0 <= part[k] <= 1.0 for k in ("p", "r", "f")), (name, part)
        assert s["best"]["step"] in (0, 3, 6) and s["last"]["step"] == MAX_STEPS
        assert [c["step"] for c in s["curve"]] == [0, 3, 6]
        assert set(s["best"]["per_type"]) <= {"PER", "LOC", "ORG"}
        assert s["train"]["words_per_second"] > 0 and s["train"]["words_per_second_excl_eval"] > 0
        assert s["train"]["peak_rss_mb"] > 0 and s["inference"]["peak_rss_mb"] > 0
        assert s["inference"]["words_per_second"] > 0 and s["inference"]["n_texts"] == 30
        assert s["model_mb"] > 0
        components = s["inference"]["components"]
        task = {"span_finder", "spancat"} if name == "span_finder" else {s["component"]}
        assert set(components) == {"tokenizer", "tok2vec"} | task
        assert 0 < components[s["component"]]["share"] <= s["inference"]["task_share"] < 1
        # The demo data nests entities, so every kind of gold span is there to recall.
        by_kind = s["inference"]["all_gold"]["recall_by_kind"]
        # "long" (spans longer than the band) only where the component has a band (cpu.cfg's global_pointer).
        has_band = name in ("global_pointer", "efficient_global_pointer")
        assert set(by_kind) == {"nested", "flat", "inner", "outer"} | ({"long"} if has_band else set())
        # The demo's entities all fit the band: no long gold span, so its recall is None.
        assert all(0.0 <= by_kind[k] <= 1.0 for k in ("nested", "flat", "inner", "outer")), (name, by_kind)
        assert by_kind.get("long") is None
    sweep = report["systems"]["span_finder"]["inference"]["span_finder_threshold_sweep"]
    assert [row["threshold"] for row in sweep] == list(compare.SPAN_FINDER_SWEEP)
    assert report["systems"]["global_pointer"]["inference"]["span_finder_threshold_sweep"] is None
    assert report["systems"]["efficient_global_pointer"]["architecture"].endswith("EfficientGlobalPointer.v1")
    assert report["systems"]["ner"]["score_prefix"] == "ents"
    # --test: model-best scored once on the test docs; span_finder at its best dev threshold.
    for name, s in report["systems"].items():
        test = s["test"]
        assert test["path"].endswith("test.spacy") and test["n_texts"] == 20 and test["repeats"] == 1
        assert all(0.0 <= test["all_gold"][k] <= 1.0 for k in ("p", "r", "f")), (name, test)
        assert test["span_finder_threshold_sweep"] is None
    best_on_dev = max(sweep, key=lambda row: row["f"])["threshold"]
    assert report["systems"]["span_finder"]["test"]["span_finder_threshold"] == best_on_dev
    assert report["systems"]["global_pointer"]["test"]["span_finder_threshold"] is None
    # The span systems train on all gold spans, so model-best rescored on them gives its dev F again.
    for name in ("global_pointer", "efficient_global_pointer", "spancat", "span_finder"):
        s = report["systems"][name]
        assert s["inference"]["all_gold"]["f"] == pytest.approx(s["best"]["f"], abs=1e-6), name


def test_compare_markdown_and_png(demo_run):
    out, result = demo_run
    table = (out / "compare.md").read_text(encoding="utf8")
    assert table.startswith("| system | best F | P | R |")
    for name in SYSTEMS:
        assert f"\n| {name} | " in table
    assert "| type |" in table and "| LOC |" in table
    assert "| system | flat R | nested R | inner R | outer R | nested / flat |" in table
    assert "span_finder: span_finder threshold on dev (trained at 0.2): 0.05: F " in table
    assert "| system | test F | P | R | flat R | nested R | nested / flat | infer words/s |" in table
    assert "\n| span_finder (threshold " in table and "Per-type test F:" in table
    assert "| system | best F" in result.stdout  # the table is printed at the end
    width, height = _png_size(out / "compare.png")
    assert width > 100 and height > 100


def test_configs_share_everything_but_the_task(demo_run):
    out, _ = demo_run
    configs = {name: load_config(out / name / "config.cfg", interpolate=False) for name in SYSTEMS}
    for name, config in configs.items():
        expected = 3 if name == "span_finder" else 2
        assert config["nlp"]["pipeline"][0] == "tok2vec" and len(config["nlp"]["pipeline"]) == expected
        assert config["training"]["patience"] == 100
        assert config["components"]["tok2vec"]["model"]["encode"]["width"] == 32
    for a, b in itertools.combinations(SYSTEMS, 2):
        ca, cb = configs[a], configs[b]
        assert ca["components"]["tok2vec"] == cb["components"]["tok2vec"]
        assert ca["system"] == cb["system"]
        for key in ("optimizer", "batcher", "max_steps", "eval_frequency", "seed", "dropout", "patience"):
            assert ca["training"][key] == cb["training"][key], key
    assert configs["ner"]["training"]["score_weights"]["ents_f"] == 1.0
    assert configs["spancat"]["training"]["score_weights"]["spans_sc_f"] == 1.0
    suggester = configs["spancat"]["components"]["spancat"]["suggester"]
    assert suggester["@misc"] == "spacy.ngram_range_suggester.v1" and suggester["min_size"] == 1
    # span_finder proposes, spancat classifies what it proposed, on the same tok2vec.
    finder = configs["span_finder"]
    assert finder["nlp"]["pipeline"] == ["tok2vec", "span_finder", "spancat"]
    assert finder["training"]["annotating_components"] == ["span_finder"]
    assert finder["components"]["span_finder"]["threshold"] == compare.SPAN_FINDER_THRESHOLD
    assert finder["components"]["spancat"]["suggester"] == {"@misc": "spacy.preset_spans_suggester.v1", "spans_key": "sc"}
    assert finder["components"]["span_finder"]["model"]["tok2vec"]["@architectures"] == "spacy.Tok2VecListener.v1"
    for name in SYSTEMS:
        component = configs[name]["nlp"]["pipeline"][-1]
        listener = configs[name]["components"][component]["model"]["tok2vec"]
        assert listener["@architectures"] == "spacy.Tok2VecListener.v1"
        lines = (out / name / "train_log.jsonl").read_text(encoding="utf8").splitlines()
        record = json.loads(lines[-1])
        assert {"step", "epoch", "elapsed", "words", "losses", "score", "scores", "eval_seconds"} <= set(record)


# ---------------------------------------------------------------------------------------------
# CLUENER: data preparation and per-system configs, in process


CLUENER_OVERLAP_LINE = 1506  # 《招商银行：投资永隆银行浮亏逾百亿港元》 (book) holds two companies


@pytest.fixture(scope="module")
def cluener_corpora(tmp_path_factory):
    source = shared_data_dir() / "cluener"
    if not (source / "train.json").exists():
        pytest.skip(f"CLUENER data not found at {source}")
    root = tmp_path_factory.mktemp("compare_cluener")
    lines = (source / "train.json").read_text(encoding="utf8").splitlines()
    (root / "train.json").write_text("\n".join(lines[:200] + [lines[CLUENER_OVERLAP_LINE]]) + "\n", encoding="utf8")
    dev_lines = (source / "dev.json").read_text(encoding="utf8").splitlines()[:60]
    (root / "dev.json").write_text("\n".join(dev_lines) + "\n", encoding="utf8")
    for split in ("train", "dev"):
        docs, report = read_cluener(root / f"{split}.json", "zh")
        report.raise_if(0)
        write_docbin(docs, root / f"{split}.spacy")
    data = compare.prepare_corpora(root / "train.spacy", root / "dev.spacy", root / "out", lang="zh", spans_key="sc")
    return root, data


def test_cluener_ner_corpus_drops_the_overlap(cluener_corpora):
    root, data = cluener_corpora
    assert data["train"]["n_docs"] == 201 and data["dev"]["n_docs"] == 60
    assert data["train"]["ner_dropped_overlapping"] == 2 and data["dev"]["ner_dropped_overlapping"] == 0
    nlp = spacy.blank("zh")
    docs = compare._read_docs(root / "out" / "corpus" / "ner_train.spacy", nlp.vocab, 0)
    assert [(e.label_, e.text) for e in docs[-1].ents] == [("book", "《招商银行：投资永隆银行浮亏逾百亿港元》")]
    assert len(docs[-1].spans["sc"]) == 3  # the span copy is untouched
    spans = compare._read_docs(root / "out" / "corpus" / "train.spacy", nlp.vocab, 0)
    assert sum(len(doc.spans["sc"]) for doc in spans) == data["train"]["n_spans"]


def test_a_prepared_corpus_is_reused_until_its_source_changes(cluener_corpora, tmp_path):
    root, data = cluener_corpora
    folder = tmp_path / "shared"
    first = compare.prepare_corpora(root / "train.spacy", root / "dev.spacy", tmp_path, lang="zh", spans_key="sc",
                                    folder=folder)
    assert first["train"] == data["train"] and Path(first["paths"]["train"]).parent == folder
    assert compare.count_longer(first["train"], 0) == first["train"]["n_spans"]
    assert compare.count_longer(first["train"], first["train"]["longest_span"]) == 0
    written = (folder / "train.spacy").stat().st_mtime_ns
    again = compare.prepare_corpora(root / "train.spacy", root / "dev.spacy", tmp_path, lang="zh", spans_key="sc",
                                    folder=folder)
    assert again == first and (folder / "train.spacy").stat().st_mtime_ns == written
    sliced = compare.prepare_corpora(root / "train.spacy", root / "dev.spacy", tmp_path, lang="zh", spans_key="sc",
                                     folder=folder, limit_train=50)
    assert sliced["train"]["n_docs"] == 50
    # A rewritten source file is prepared again.
    from spacy.tokens import DocBin

    docs = compare._read_docs(root / "dev.spacy", spacy.blank("zh").vocab, 10)
    DocBin(docs=docs, store_user_data=True).to_disk(tmp_path / "dev10.spacy")
    other = compare.prepare_corpora(root / "train.spacy", tmp_path / "dev10.spacy", tmp_path, lang="zh",
                                    spans_key="sc", folder=folder, limit_train=50)
    assert other["dev"]["n_docs"] == 10
    (tmp_path / "dev10.spacy").write_bytes((root / "dev.spacy").read_bytes())
    assert compare.prepare_corpora(root / "train.spacy", tmp_path / "dev10.spacy", tmp_path, lang="zh",
                                   spans_key="sc", folder=folder, limit_train=50)["dev"]["n_docs"] == 60


@pytest.mark.parametrize("system", SYSTEMS)
def test_cluener_system_config_trains_and_reports_its_score(cluener_corpora, system, tmp_path):
    root, data = cluener_corpora
    base = load_config(CONFIGS / "cpu.cfg", overrides={"components.tok2vec.model.encode.depth": 1}, interpolate=False)
    ner = system == "ner"
    config = compare.build_config(
        base, system,
        train=data["paths"]["ner_train" if ner else "train"], dev=data["paths"]["ner_dev" if ner else "dev"],
        spans_key="sc", max_span_length=compare.resolve_max_span_length("auto", data["train"]["longest_span"], 25),
        max_steps=5, eval_frequency=5, seed=0, log_path=str(tmp_path / "log.jsonl"),
    )
    config.to_disk(tmp_path / "config.cfg", interpolate=False)
    nlp = load_model_from_config(load_config(tmp_path / "config.cfg"), auto_fill=True, validate=True)
    train = list(Corpus(data["paths"]["ner_train" if ner else "train"])(nlp))[:40]
    dev = list(Corpus(data["paths"]["ner_dev" if ner else "dev"])(nlp))[:20]
    optimizer = nlp.initialize(lambda: train)
    # As spacy train does: span_finder annotates the docs spancat's preset suggester reads.
    nlp.update(train[:16], sgd=optimizer, annotates=config["training"]["annotating_components"])
    scores = nlp.evaluate(dev)
    weights = config["training"]["score_weights"]
    main = next(key for key, value in weights.items() if value == 1.0)
    assert main == ("ents_f" if ner else "spans_sc_f")
    assert 0.0 <= scores[main] <= 1.0


# ---------------------------------------------------------------------------------------------
# Small pieces


def test_resolve_max_span_length():
    assert compare.resolve_max_span_length("auto", 44, 25) == 25
    assert compare.resolve_max_span_length("auto", 7, 25) == 7
    assert compare.resolve_max_span_length("12", 44, 25) == 12
    for bad in ("0", "long"):
        with pytest.raises(ValueError, match="--suggester-max-size"):
            compare.resolve_max_span_length(bad, 44, 25)


def test_summarize_log_picks_the_best_that_model_best_holds():
    records = [
        {"step": s, "epoch": 0, "elapsed": 10.0 * (i + 1), "words": 100 * (i + 1), "eval_seconds": 2.0 * (i + 1),
         "score": f, "scores": {"ents_p": f, "ents_r": f, "ents_f": f}, "per_type": {"ents_per_type": {}}}
        for i, (s, f) in enumerate([(0, 0.1), (10, 0.5), (20, 0.5), (30, 0.4)])
    ]
    summary = compare.summarize_log(records, "ents")
    # A tie overwrites model-best, so the later of the two 0.5 evaluations is the one measured.
    assert summary["best"]["step"] == 20 and summary["best"]["f"] == 0.5 and summary["best"]["seconds"] == 30.0
    assert summary["last"]["step"] == 30 and len(summary["curve"]) == 4
    assert summary["throughput"]["words_per_second"] == pytest.approx(400 / 40)
    assert summary["throughput"]["words_per_second_excl_eval"] == pytest.approx(400 / 32)


def test_join_takes_finished_systems_from_another_lane(tmp_path):
    lane, out = tmp_path / "lane", tmp_path / "out"
    (lane / "spancat").mkdir(parents=True)
    (lane / "spancat" / "result.json").write_text(json.dumps({"status": "ok", "best": {"f": 0.5}}))
    (lane / "spancat" / "train.log").write_text("log")
    (lane / "ner").mkdir()
    (lane / "ner" / "result.json").write_text(json.dumps({"status": "failed"}))
    out.mkdir()
    assert compare._finished("spancat", out, [lane]) == {"status": "ok", "best": {"f": 0.5}}
    assert (out / "spancat" / "train.log").read_text() == "log"  # the lane's folder is copied in
    assert compare._finished("ner", out, [lane]) is None  # a failed run is trained again
    assert compare._finished("global_pointer", out, [lane]) is None


def test_join_takes_a_system_from_a_report_alone(tmp_path):
    """A committed compare.json whose run folders are gone: its finished entries join, if the data match."""
    data = {split: {"n_docs": 3, "n_words": 30, "n_spans": 4, "labels": {"A": 4}} for split in ("train", "dev")}
    entry = {"status": "ok", "best": {"f": 0.6}}
    report = {"command": "compare.py ...", "data": data,
              "systems": {"ner": entry, "spancat": {"status": "failed"}}}
    results, out = tmp_path / "results", tmp_path / "out"
    results.mkdir()
    (results / "compare.json").write_text(json.dumps(report))
    out.mkdir()
    joined = compare._finished("ner", out, [results], data=data)
    assert joined == {**entry, "joined_from": str(results / "compare.json")}
    assert (out / "ner").is_dir()  # where compare.py writes the system's result.json
    assert compare._finished("ner", out, [results / "compare.json"], data=data)["best"] == {"f": 0.6}
    assert compare._finished("spancat", out, [results], data=data) is None  # not finished there: train it
    assert compare._finished("global_pointer", out, [results], data=data) is None
    other = {**data, "dev": {**data["dev"], "n_spans": 5}}
    with pytest.raises(SystemExit, match="dev data differs from this run's \\(n_spans\\)"):
        compare._finished("ner", out, [results], data=other)


def test_join_of_a_committed_report_writes_the_joined_table_without_training(demo_run, tmp_path):
    out, _ = demo_run
    root = out.parent
    committed = tmp_path / "results"
    committed.mkdir()
    shutil.copy(out / "compare.json", committed / "compare.json")  # the report only, no run folders
    joined = tmp_path / "joined"
    cmd = [sys.executable, str(SCRIPT), "--train", str(root / "train.spacy"), "--dev", str(root / "dev.spacy"),
           "--test", str(root / "test.spacy"), "--config", str(CONFIGS / "cpu.cfg"), "--out", str(joined),
           "--systems", "ner,spancat", "--join", str(committed), "--repeats", "1"] + NARROW
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    assert "training" not in result.stdout
    before = json.loads((out / "compare.json").read_text(encoding="utf8"))["systems"]
    after = json.loads((joined / "compare.json").read_text(encoding="utf8"))["systems"]
    for system in ("ner", "spancat"):
        assert after[system]["best"] == before[system]["best"] and after[system]["test"] == before[system]["test"]
    table = (joined / "compare.md").read_text(encoding="utf8")
    assert f"ner from {committed / 'compare.json'}" in table and "| spancat |" in table
    # Other dev docs: the committed figures are not comparable, and the run says so instead of joining.
    cmd[cmd.index("--out") + 1] = str(tmp_path / "other")
    result = subprocess.run(cmd + ["--limit-dev", "10"], capture_output=True, text=True, timeout=600)
    assert result.returncode != 0 and "dev data differs from this run's" in result.stderr


def test_plot_without_matplotlib_says_so(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert compare.plot({"systems": {}, "settings": {}}, tmp_path / "c.png") is False
    assert "matplotlib is not installed" in capsys.readouterr().err and not (tmp_path / "c.png").exists()


def test_base_config_without_global_pointer_is_refused():
    base = load_config(CONFIGS / "cpu.cfg", interpolate=False)
    del base["components"]["global_pointer"]
    with pytest.raises(ValueError, match="global_pointer"):
        compare.build_config(base, "ner", train="t", dev="d", spans_key="sc", max_span_length=5,
                             max_steps=1, eval_frequency=1, seed=0, log_path="l")


def test_reuse_adds_a_test_score_without_training_again(demo_run, tmp_path):
    out, _ = demo_run
    root = out.parent
    trained = (out / "global_pointer" / "train.log").stat().st_mtime
    cmd = [sys.executable, str(SCRIPT), "--train", str(root / "train.spacy"), "--dev", str(root / "dev.spacy"),
           "--test", str(root / "dev.spacy"), "--config", str(CONFIGS / "cpu.cfg"), "--out", str(out),
           "--systems", "global_pointer", "--reuse", "--repeats", "1"] + NARROW
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    assert "global_pointer: reusing" in result.stdout and "[global_pointer] training" not in result.stdout
    assert (out / "global_pointer" / "train.log").stat().st_mtime == trained
    saved = json.loads((out / "global_pointer" / "result.json").read_text(encoding="utf8"))
    # Scored on the dev docs, model-best gives the dev F it was chosen by.
    assert saved["test"]["path"] == str(root / "dev.spacy")
    assert saved["test"]["all_gold"]["f"] == pytest.approx(saved["best"]["f"], abs=1e-6)


def test_a_stopped_run_is_reported_with_its_best_so_far(demo_run, tmp_path):
    """A training run ended by a signal (a time budget) keeps what it learned; an error does not."""
    assert compare.was_stopped({"returncode": -15}) and not compare.was_stopped({"returncode": 1})
    out, _ = demo_run
    root = out.parent
    stopped = tmp_path / "stopped"
    shutil.copytree(out / "global_pointer", stopped / "global_pointer")
    saved = json.loads((stopped / "global_pointer" / "result.json").read_text(encoding="utf8"))
    best = saved["best"]
    # As an older compare.py recorded a run killed by SIGTERM: failed, no inference.
    for key in ("inference", "test", "model_mb"):
        saved.pop(key, None)
    saved.update({"status": "failed", "error": "spacy train exited with -15"})
    saved["train"]["returncode"] = -15
    (stopped / "global_pointer" / "result.json").write_text(json.dumps(saved), encoding="utf8")
    cmd = [sys.executable, str(SCRIPT), "--train", str(root / "train.spacy"), "--dev", str(root / "dev.spacy"),
           "--config", str(CONFIGS / "cpu.cfg"), "--out", str(stopped), "--systems", "global_pointer",
           "--reuse", "--repeats", "1"] + NARROW
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    assert "whose training was stopped" in result.stdout and "[global_pointer] training" not in result.stdout
    finished = json.loads((stopped / "global_pointer" / "result.json").read_text(encoding="utf8"))
    assert finished["status"] == "ok" and "error" not in finished
    assert finished["stopped"]["signal"] == 15 and finished["stopped"]["last_step"] == finished["last"]["step"]
    assert finished["best"] == best and finished["inference"]["words_per_second"] > 0
    table = (stopped / "compare.md").read_text(encoding="utf8")
    assert "| global_pointer (stopped) |" in table and "stopped by signal 15" in table
