"""The annotation benchmark script runs end to end on a tiny corpus (spacy apply and annotate)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import load_benchmark, shared_data_dir

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "annotate_speed.py"


def _load_script():
    return load_benchmark("annotate_speed")


@pytest.mark.skipif(
    not (shared_data_dir() / "cluener" / "train.json").exists()
    or not (shared_data_dir() / "conll2003" / "eng.train").exists(),
    reason="needs CLUENER and CoNLL-2003 in ../shared/data (or GP_DATA_DIR)",
)
def test_annotate_speed_smoke(annotate_model, tmp_path):
    out = tmp_path / "results"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["GP_DATA_DIR"] = str(shared_data_dir())
    command = [
        sys.executable, str(SCRIPT), "--out", str(out), "--model", str(annotate_model), "--n-docs", "300",
        "--startup-docs", "20", "--shard-size", "100", "--runs", "spacy_apply", "annotate_1",
    ]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "annotate_speed.json").read_text())
    rows = {row["run"]: row for row in report["results"]}
    assert set(rows) == {"spacy_apply", "annotate_1"}
    assert report["corpus"]["n_docs"] == 300 and report["n_tokens"] > 300
    for row in rows.values():
        assert row["docs"] == 300 and row["full_seconds"] > 0 and row["docs_per_s"] > 0
        assert row["full_largest_process_mb"] > 0
    assert rows["spacy_apply"]["x_spacy_apply"] == 1.0
    assert len(rows["annotate_1"]["full_workers"]) == 1
    assert report["resume"]["pending"] == 0 and report["resume"]["shards"] == 3
    markdown = (out / "annotate_speed.md").read_text()
    assert "| annotate_1 |" in markdown and "Resume on a finished job (3 shards, 0 left)" in markdown


def _row(name, full, startup, docs=1000):
    return {"run": name, "full_seconds": full, "startup_seconds": startup, "full_docs": docs,
            "full_largest_process_mb": 500.0}


def test_ratios_and_targets_are_computed_against_the_right_runs():
    annotate_speed = _load_script()
    rows = [_row("spacy_apply", 100, 10), _row("annotate_1", 90, 10), _row("annotate_2", 50, 10),
            _row("ray_1", 100, 20), _row("ray_2", 70, 20)]
    annotate_speed.add_ratios(rows, n_tokens=50_000)
    by_name = {row["run"]: row for row in rows}
    assert by_name["annotate_1"]["x_spacy_apply"] == pytest.approx(100 / 90, abs=1e-3)
    assert by_name["annotate_1"]["words_per_s"] == pytest.approx(50_000 / 90, abs=0.1)
    assert by_name["annotate_2"]["net_x_spacy_apply"] == pytest.approx(90 / 40, abs=1e-3)
    found = annotate_speed.targets(rows)
    assert found["annotate_2_over_annotate_1"]["wall"] == pytest.approx(1.8)
    assert found["annotate_2_over_annotate_1"]["net"] == pytest.approx(2.0)
    assert found["annotate_2_over_annotate_1"]["met_wall"] is True
    overhead = found["ray_2_overhead_over_annotate_2"]
    assert overhead["wall"] == pytest.approx(70 / 50 - 1) and overhead["net"] == pytest.approx(50 / 40 - 1)
    assert overhead["met_wall"] is False and overhead["met_net"] is False
    ray = found["ray_2_over_ray_1"]  # 100 s / 70 s over wall time; 80 s / 50 s after the fixed cost
    assert (ray["wall"], ray["met_wall"], ray["net"], ray["met_net"]) == (1.429, False, 1.6, True)
