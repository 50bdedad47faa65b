"""The benchmark scripts (long_docs.py, mixed_lengths.py) run end to end on tiny sizes."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


MIXED_SCRIPT = ROOT / "benchmarks" / "mixed_lengths.py"


def _load_mixed_lengths():
    spec = importlib.util.spec_from_file_location("benchmarks_mixed_lengths", MIXED_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mixed_lengths_smoke(tmp_path):
    """Both corpora and every kind of run, end to end (one checkout, to keep it short)."""
    out, work = tmp_path / "out", tmp_path / "work"
    demo = ROOT / "assets" / "demo"
    command = [
        sys.executable, str(MIXED_SCRIPT), "--config", str(ROOT / "configs" / "cpu.cfg"),
        "--dev", str(demo / "dev.jsonl"), "--train", str(demo / "train.jsonl"), "--format", "jsonl",
        "--model", str(work / "model"), "--train-steps", "1", "--work", str(work), "--out", str(out),
        "--n-docs", "20", "--long-share", "0.1", "--long-chars", "200",
        "--rounds", "1", "--repeats", "1", "--labels", "2", "--train-batch-words", "40",
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "mixed_lengths.json").read_text())
    assert report["corpora"]["uniform"]["long_docs"] == 0
    assert report["corpora"]["mixed"]["long_docs"] == 2 and report["corpora"]["mixed"]["longest"] == 200
    assert len(report["labels"]) == 2 and report["model"]["info"]["trained_here"]
    assert {(r["kind"], r["corpus"], r["code"]) for r in report["runs"]} == {
        (kind, corpus, "new") for kind in ("infer", "stages", "train") for corpus in ("uniform", "mixed")
    }
    for run in report["runs"]:
        result = run["result"]
        assert result["peak_mb"] >= result["baseline_mb"] > 0
        assert Path(result["package"]) == ROOT / "spacy_globalpointer"
        if run["kind"] != "stages":
            assert result["words_per_s"] > 0
    infer = report["summary"]["infer"]["new"]
    assert infer["mixed"]["words"] > infer["uniform"]["words"]
    assert 0 < infer["uniform"]["share"] < 1
    assert report["targets"]["new"]["above_baseline_limit_mb"] >= 50
    stages = report["summary"]["stages"]["new"]["mixed"]
    assert set(stages["rises_mb"]) == {"warm-up", "tokenizer", "tok2vec", "global_pointer"}
    assert sum(stages["rises_mb"].values()) == pytest.approx(stages["above_baseline_mb"], abs=1.0)
    assert stages["largest_batch_tokens"] == infer["mixed"]["words"]  # one batch of 20 docs
    markdown = (out / "mixed_lengths.md").read_text()
    assert "| code | corpus | infer words/s |" in markdown and "| new | mixed |" in markdown


def test_mixed_lengths_targets_compare_corpora_and_checkouts():
    module = _load_mixed_lengths()

    def infer(words_per_s, above_mb):
        return {"words_per_s": words_per_s, "words_per_cpu_s": 2 * words_per_s, "above_baseline_mb": above_mb}

    summary = {"infer": {
        "old": {"uniform": infer(1000, 600), "mixed": infer(500, 3000)},
        "new": {"uniform": infer(1100, 600), "mixed": infer(1000, 700)},
    }}
    checks = module.targets(summary, ["old", "new"])
    assert checks["old"]["mixed_over_uniform_words_per_s"] == pytest.approx(0.5)
    assert checks["old"]["above_baseline_within_limit"] is False
    assert checks["new"]["above_baseline_limit_mb"] == pytest.approx(1.2 * 600 + 50)
    assert checks["new"]["above_baseline_within_limit"] is True
    assert checks["new_over_old"]["uniform"]["words_per_s"] == pytest.approx(1.1)
    assert checks["new_over_old"]["mixed"]["words_per_cpu_s"] == pytest.approx(2.0)
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
