"""The benchmark scripts (long_docs.py, mixed_lengths.py, thresholds.py) run end to end on tiny sizes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import load_benchmark

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "long_docs.py"
ROW_FIELDS = {"kind", "mode", "n", "band", "status", "time_s", "times", "peak_mb", "baseline_mb", "delta_mb"}
PIPELINE_FIELDS = {"predict_s", "predict_times", "n_spans"}


def test_long_docs_smoke(tmp_path):
    out = tmp_path / "long_docs"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    command = [
        sys.executable, str(SCRIPT), "--out", str(out), "--sizes", "64", "256",
        "--full-sizes", "64", "256", "--pipeline-sizes", "64", "--band", "8", "--repeats", "1",
    ]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "long_docs.json").read_text())
    assert report["config"]["band"] == 8
    rows = report["results"]
    assert {(r["kind"], r["mode"], r["n"]) for r in rows} == {
        ("head", "band", 64), ("head", "band", 256), ("head", "full", 64), ("head", "full", 256),
        ("pipeline", "band", 64), ("pipeline", "full", 64),
    }
    for row in rows:
        assert row["status"] == "ok", row
        assert ROW_FIELDS <= set(row), row
        assert row["time_s"] > 0 and row["peak_mb"] > 0
        if row["kind"] == "pipeline":
            assert PIPELINE_FIELDS <= set(row), row
            assert 0 < row["predict_s"] <= row["time_s"]
    head_band = [r for r in rows if r["kind"] == "head" and r["mode"] == "band"]
    assert head_band[0]["shape"] == [1, 10, 64, 8] and head_band[0]["finite"]
    assert "time_ratio" in head_band[1] and "peak_ratio" in head_band[1]
    check = report["pipeline_check"]
    assert check["n"] == 64 and check["passed"] is True
    markdown = (out / "long_docs.md").read_text()
    assert "| kind | mode | n | time s | peak MB |" in markdown and "| spans written |" in markdown
    assert "| head | w=8 | 256 |" in markdown and "| head | full | 256 |" in markdown
    png = (out / "long_docs.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000


def test_mixed_lengths_smoke(tmp_path, monkeypatch):
    """Every corpus and kind of measurement, end to end on tiny sizes. To keep it short, the
    measurements run in this process (one runs in its own, as the benchmark does) on a tiny
    trained pipeline, and `spacy train` runs for two steps."""
    from .tiny_pipeline import ZH_DATA, build_tiny

    module = load_benchmark("mixed_lengths")
    out, work = tmp_path / "out", tmp_path / "work"
    nlp, examples, _ = build_tiny("zh", data=ZH_DATA, steps=10)
    work.mkdir()
    nlp.to_disk(work / "model")
    demo = ROOT / "assets" / "demo"

    def in_process(spec, code, log):
        result = module.CHILDREN[spec["kind"]](spec)
        return {**result, "wait4_peak_mb": result["peak_mb"], "load_average": [0.0, 0.0]}

    real_run_child = module.run_child
    monkeypatch.setattr(module, "run_child", in_process)
    report = module.main([
        "--config", str(ROOT / "configs" / "cpu.cfg"), "--dev", str(demo / "dev.jsonl"),
        "--train", str(demo / "train.jsonl"), "--format", "jsonl", "--model", str(work / "model"),
        "--work", str(work), "--out", str(out), "--n-docs", "20", "--long-share", "0.1",
        "--long-chars", "200", "--tail", "0.2:60:90", "0.05:150:200", "--batch-sizes", "16", "4",
        "--sweep", "2", "--rounds", "1", "--repeats", "1", "--labels", "2", "--train-batch-words", "40",
        "--spacy-train-steps", "2", "--spacy-train-eval", "1",
    ])
    corpora = report["corpora"]
    assert corpora["uniform"]["over_300"] == 0 and corpora["uniform"]["longest"] < 200
    assert corpora["mixed"]["longest"] == 200
    assert corpora["long_tail"]["longest"] >= 150
    assert len(report["labels"]) == 2
    expected = {("infer", corpus, size, "new") for corpus in ("uniform", "mixed", "long_tail") for size in (16, 4)}
    expected |= {("infer", corpus, 2, "new") for corpus in ("mixed", "long_tail")}
    expected |= {(kind, corpus, size, "new") for kind, size in (("stages", 16), ("train", 0))
                 for corpus in ("uniform", "mixed", "long_tail")}
    expected |= {("spacy_train", corpus, 0, "new") for corpus in ("uniform", "mixed")}
    assert {(r["kind"], r["corpus"], r["batch_size"], r["code"]) for r in report["runs"]} == expected
    for run in report["runs"]:
        result = run["result"]
        assert result["peak_mb"] > 0
        if run["kind"] in ("infer", "train"):
            assert result["peak_mb"] >= result["baseline_mb"] > 0 and result["words_per_s"] > 0
    infer = report["summary"]["infer"]["new"]
    assert infer["mixed"]["16"]["words"] > infer["uniform"]["16"]["words"]
    assert 0 < infer["uniform"]["16"]["share"] < 1 and "share" not in infer["mixed"]["2"]
    checks = report["targets"]["new"]
    assert set(checks) == {"mixed_speed", "mixed_memory", "long_tail_sweep", "spacy_train_memory"}
    assert checks["mixed_memory"]["limit_mb"] >= 50
    stages = report["summary"]["stages"]["new"]["mixed"]["16"]
    assert set(stages["rises_mb"]) == {"warm-up", "tokenizer", "global_pointer"}
    assert stages["words"] == infer["mixed"]["16"]["words"]
    assert stages["largest_batch_tokens"] < stages["words"]  # 20 docs in batches of 16
    assert report["scores"]["new"]["spans"] > 0
    markdown = (out / "mixed_lengths.md").read_text()
    assert "| code | corpus | batch size | words/s |" in markdown and "| new | mixed | 16 |" in markdown
    assert "| long_tail | 2 |" in markdown and "spacy train peak RSS mixed <= 1.5x uniform" in markdown
    # One measurement as the benchmark makes it, in a fresh process importing this checkout.
    spec = {**report["runs"][0], "kind": "infer", "corpus": str(work / "mixed.spacy"), "model": str(work / "model"),
            "batch_size": 8, "repeats": 1, "profile": False}
    result = real_run_child(spec, ROOT, tmp_path / "child.log")
    assert result["words"] == infer["mixed"]["16"]["words"] and result["wait4_peak_mb"] >= result["baseline_mb"]


def test_mixed_lengths_targets_compare_corpora_batch_sizes_and_checkouts():
    module = load_benchmark("mixed_lengths")

    def infer(words_per_s, above_mb, peak_mb=1000.0):
        return {"words_per_s": words_per_s, "words_per_cpu_s": 2 * words_per_s, "above_baseline_mb": above_mb,
                "peak_mb": peak_mb}

    summary = {
        "infer": {
            "old": {"uniform": {"1000": infer(1000, 600)}, "mixed": {"1000": infer(500, 3000)},
                    "long_tail": {"1000": infer(300, 12000, 12500), "64": infer(600, 900, 1400)}},
            "new": {"uniform": {"1000": infer(1100, 600)}, "mixed": {"1000": infer(1000, 700)},
                    "long_tail": {"1000": infer(700, 300, 900), "64": infer(650, 250, 850)}},
        },
        "spacy_train": {"new": {"uniform": {"0": {"peak_mb": 2000}}, "mixed": {"0": {"peak_mb": 3100}}}},
    }
    scores = {"old": {"f": 0.7}, "new": {"f": 0.7},
              "comparison": {"same_spans": True, "docs": 10, "max_score_difference": 1e-7}}
    checks = module.targets(summary, ["old", "new"], scores)
    assert checks["old"]["mixed_speed"]["mixed_over_uniform_words_per_s"] == pytest.approx(0.5)
    assert checks["old"]["mixed_memory"]["met"] is False and checks["old"]["long_tail_sweep"]["met"] is False
    assert checks["new"]["mixed_memory"]["limit_mb"] == pytest.approx(1.2 * 600 + 50)
    assert checks["new"]["mixed_memory"]["met"] is True and checks["new"]["mixed_speed"]["met"] is True
    assert checks["new"]["long_tail_sweep"]["met"] is True
    assert checks["new"]["spacy_train_memory"] == {"peak_ratio": pytest.approx(1.55), "met": False}
    assert checks["new_over_old"]["uniform@1000"]["words_per_s"] == pytest.approx(1.1)
    assert checks["new_over_old"]["mixed@1000"]["words_per_cpu_s"] == pytest.approx(2.0)
    assert checks["new"]["uniform_no_slowdown"]["met"] is True and checks["new"]["same_spans"]["met"] is True


def test_mixed_lengths_corpora_hold_the_asked_shares_of_long_docs():
    module = load_benchmark("mixed_lengths")
    records = [(f"text{i:03d}" * 5, [(0, 4, "A")]) for i in range(50)]  # 35 characters each
    corpora = module.build_corpora(records, 200, 0.01, 2000, [(0.09, 300, 800), (0.01, 1500, 2000)], seed=0)
    lengths = {name: sorted(len(text) for text, _ in docs) for name, docs in corpora.items()}
    assert lengths["uniform"] == [35] * 200
    assert sum(n == 2000 for n in lengths["mixed"]) == 2 and sum(n > 35 for n in lengths["mixed"]) == 2
    assert sum(n > 300 for n in lengths["long_tail"]) == 20 and sum(n > 1500 for n in lengths["long_tail"]) == 2
    for text, spans in corpora["long_tail"]:
        assert all(text[s:e] == "text" for s, e, _ in spans)  # the gold spans follow the joined text


def test_thresholds_benchmark_smoke(tmp_path):
    """benchmarks/thresholds.py end to end on a tiny trained pipeline."""
    from spacy.tokens import DocBin

    from .tiny_pipeline import build_tiny

    nlp, examples, _ = build_tiny("en", steps=8)
    nlp.to_disk(tmp_path / "pipeline")
    DocBin(docs=[eg.reference for eg in examples] * 3).to_disk(tmp_path / "dev.spacy")
    out = tmp_path / "results"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    command = [
        sys.executable, str(ROOT / "benchmarks" / "thresholds.py"),
        str(tmp_path / "pipeline"), str(tmp_path / "dev.spacy"), "--out", str(out),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "thresholds.json").read_text())
    assert report["n_docs"] == {"fit": 6, "heldout": 6}
    results = report["results"]
    assert set(results) == {"default", "find_threshold", "per_label_alone", "per_label", "calibrated"}
    assert results["default"]["threshold"] == 0.5
    assert len(results["find_threshold"]["sweep_on_fit"]) == 11
    assert results["per_label"]["fit_f_predicted"] == results["per_label"]["fit_f_scorer"]
    for part in ("before", "after"):
        assert len(report["calibration"][part]["bins"]) == 15
    assert set(report["targets"]) == {"per_label_gain_f1_points", "ece_after"}
    markdown = (out / "thresholds.md").read_text()
    assert "| per-label thresholds" in markdown and "ECE (15 bins)" in markdown
    assert (out / "reliability.png").read_bytes().startswith(b"\x89PNG")
