"""nlp.pipe(n_process=2) gives the same spans and scores as n_process=1, with fork
(Linux default: workers inherit the pipeline) and spawn (workers unpickle it)."""
import json
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
from .tiny_pipeline import EN_DATA, build_tiny, pipe_predictions, predicted_spans

TESTS_DIR = Path(__file__).parent
TEXTS = [text for text, _ in EN_DATA] * 3 + ["", "   ", "New York New York", "Carol"]

# Runs in a fresh interpreter so that a hang (forked workers deadlocking in OpenMP)
# can be killed with its workers instead of hanging the test session.
SCRIPT = """
import json, sys
import numpy
from tiny_pipeline import build_tiny, pipe_predictions

texts = json.loads(sys.argv[1])
nlp, _, _ = build_tiny("en", config={"write_ents": True})  # trains: torch runs threads here

def run(n_process):
    return pipe_predictions(nlp, texts, n_process=n_process, batch_size=2)

print(json.dumps({"single": run(1), "multi": run(2)}))
"""


def assert_same_predictions(single, multi):
    assert len(single) == len(multi)
    for one, two in zip(single, multi):
        assert one["spans"] == two["spans"]
        assert one["ents"] == two["ents"]
        numpy.testing.assert_allclose(one["scores"], two["scores"], rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(sys.platform == "win32", reason="no fork on Windows")
def test_n_process_2_with_fork_equals_n_process_1():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(TESTS_DIR.parent), str(TESTS_DIR), env.get("PYTHONPATH", "")]
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, json.dumps(TEXTS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the script and its forked workers
        proc.communicate()
        pytest.fail("nlp.pipe(n_process=2) hung (forked workers deadlocked?)")
    assert proc.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert any(doc["spans"] for doc in result["single"])
    assert_same_predictions(result["single"], result["multi"])


@pytest.fixture(scope="module")
def trained():
    nlp, _, _ = build_tiny("en", config={"write_ents": True})
    return nlp


def test_pipeline_and_component_pickle(trained):
    text = EN_DATA[3][0]
    clone = pickle.loads(pickle.dumps(trained))
    assert predicted_spans(clone, text) == predicted_spans(trained, text)
    pipe = pickle.loads(pickle.dumps(trained.get_pipe("global_pointer")))
    assert pipe.labels == trained.get_pipe("global_pointer").labels
    assert pipe.cfg == trained.get_pipe("global_pointer").cfg


def test_n_process_2_with_spawn_equals_n_process_1(trained, monkeypatch):
    import spacy.language

    single = pipe_predictions(trained, TEXTS)
    # spaCy starts its workers with the module-level `mp`; spawn pickles the pipeline.
    monkeypatch.setattr(spacy.language, "mp", multiprocessing.get_context("spawn"))
    multi = pipe_predictions(trained, TEXTS, n_process=2, batch_size=2)
    assert any(doc["spans"] for doc in single)
    assert_same_predictions(single, multi)
