"""The long-document benchmark script runs end to end on tiny sizes."""
import json
import os
import subprocess
import sys
from pathlib import Path

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
