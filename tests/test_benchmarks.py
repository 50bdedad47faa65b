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
