"""`annotate --engine ray`: two actors give the single-process output, and an actor that dies
mid-batch is restarted and its shard redone. Skipped without Ray (`spacy-globalpointer[ray]`)."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray.data")

from .annotate_helpers import BATCH_SIZE, N_DOCS, SHARD_SIZE, read_records, read_shard_bytes  # noqa: E402

TESTS_DIR = Path(__file__).resolve().parent

# In a fresh interpreter: Ray's local cluster starts and stops with it, away from pytest's process.
SCRIPT = """
import json, sys
import ray
from spacy_globalpointer.annotate import annotate, finish, plan_job, progress_bar
from spacy_globalpointer.annotate_ray import run_ray
from annotate_helpers import make_dying_annotator

model, corpus, two_actors, dying, marker, shard_size, batch_size, result = sys.argv[1:]
shard_size, batch_size = int(shard_size), int(batch_size)
ray.init(num_cpus=2, include_dashboard=False)
summary = annotate(model, corpus, two_actors, engine="ray", workers=2, shard_size=shard_size,
                   batch_size=batch_size, progress=False)
job = plan_job(model, corpus, dying, shard_size=shard_size)
with progress_bar(0, False) as bar:
    run = run_ray(job, job.pending(), workers=2, batch_size=batch_size, on_error="skip", bar=bar,
                  actor_class=make_dying_annotator(marker))
with open(result, "w") as handle:  # not stdout: Ray prints its workers' logs there
    json.dump({"two_actors": summary, "dying": finish(job, run)}, handle)
"""


@pytest.fixture(scope="module")
def ray_runs(annotate_model, annotate_corpus, tmp_path_factory):
    """Both Ray runs, in one subprocess (Ray starts once): their folders, summaries and the marker."""
    folder = tmp_path_factory.mktemp("ray")
    paths = {name: folder / name for name in ("two_actors", "dying", "died", "result.json")}
    env = dict(os.environ)
    # Ray's workers inherit the environment: they import this checkout and the helpers from it.
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR.parent), str(TESTS_DIR), env.get("PYTHONPATH", "")])
    env["RAY_AUTH_MODE"] = "disabled"  # a throwaway local cluster
    args = [annotate_model, annotate_corpus[0], paths["two_actors"], paths["dying"], paths["died"], SHARD_SIZE,
            BATCH_SIZE, paths["result.json"]]
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env, start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the Ray runs did not finish in 10 minutes")
    assert proc.returncode == 0, err[-5000:]
    summaries = json.loads(paths["result.json"].read_text())
    return paths, summaries


def test_two_actors_give_the_single_process_output(ray_runs, annotate_single_run):
    paths, summaries = ray_runs
    summary = summaries["two_actors"]
    assert summary["docs"] == N_DOCS and summary["errors"] == 0
    assert summary["spans"] == annotate_single_run[1]["spans"]
    workers = summary["this_run"]["workers"]
    assert len(workers) == 2 and all(worker["peak_rss_mb"] > 0 for worker in workers)
    # Whole shards per actor call, same batches, one torch thread: byte-identical files.
    assert read_shard_bytes(paths["two_actors"]) == read_shard_bytes(annotate_single_run[0])


def test_an_actor_that_dies_mid_batch_is_replaced_and_nothing_is_lost(ray_runs, annotate_single_run):
    paths, summaries = ray_runs
    assert paths["died"].exists(), "the actor did not die: the test tested nothing"
    died_pid = int(paths["died"].read_text())
    workers = summaries["dying"]["this_run"]["workers"]
    assert died_pid not in {worker["pid"] for worker in workers}  # its shard came back from a new actor
    ids = [record["id"] for record in read_records(paths["dying"])]
    assert len(ids) == len(set(ids)) == N_DOCS
    assert read_shard_bytes(paths["dying"]) == read_shard_bytes(annotate_single_run[0])
    assert json.loads((paths["dying"] / "summary.json").read_text())["docs"] == N_DOCS
