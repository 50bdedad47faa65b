"""`annotate`: records in, JSONL/Parquet shards out; the same output with 2 processes; exact resume
after kill -9; bad input counted and listed with file and line."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spacy_globalpointer.__main__ import main
from spacy_globalpointer.annotate import (
    BadInputError, JobMismatchError, Shard, annotate, find_input_files, index_lines, plan_job, read_shard,
    write_shard, ShardResult,
)

from .annotate_helpers import BATCH_SIZE, N_DOCS, SHARD_SIZE, read_records, read_shard_bytes

REPO = Path(__file__).resolve().parents[1]


def _cli(*args) -> list:
    return [sys.executable, "-m", "spacy_globalpointer", "annotate", *map(str, args)]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def test_records_have_ids_fields_and_the_pipelines_spans(annotate_model, annotate_corpus, annotate_single_run):
    import spacy

    output, summary = annotate_single_run
    texts = annotate_corpus[1]
    records = read_records(output)
    assert [r["id"] for r in records] == [f"docs.jsonl:{i}" for i in range(1, N_DOCS + 1)]
    assert [r["text"] for r in records] == texts
    assert [r["meta"]["n"] for r in records] == list(range(N_DOCS))
    assert summary["docs"] == N_DOCS and summary["errors"] == 0
    assert summary["shards"] == N_DOCS // SHARD_SIZE
    assert summary["spans"] == sum(len(r["spans"]) for r in records) > 100
    nlp = spacy.load(annotate_model)
    for record in records[:200]:
        doc = nlp(record["text"])
        group = doc.spans["sc"]
        expected = [(s.start_char, s.end_char, s.label_) for s in group]
        assert [(s["start"], s["end"], s["label"]) for s in record["spans"]] == expected
        scores = group.attrs["scores"].tolist()
        assert [s["score"] for s in record["spans"]] == pytest.approx(scores, abs=1e-5)
        for span in record["spans"]:
            assert record["text"][span["start"]:span["end"]].strip() == record["text"][span["start"]:span["end"]]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_n_process_2_killed_and_resumed_gives_the_single_process_output(
    annotate_model, annotate_corpus, annotate_single_run, tmp_path
):
    """kill -9 of the main process at a random shard; the same command again completes the job."""
    output = tmp_path / "out"
    n_shards = N_DOCS // SHARD_SIZE
    kill_after = random.Random(time.time()).randint(1, n_shards // 2)  # a random shard
    command = _cli(annotate_model, annotate_corpus[0], output, "--n-process", 2, "--shard-size", SHARD_SIZE,
                   "--batch-size", BATCH_SIZE, "--no-progress")
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, env=_env(), start_new_session=True)
    try:
        deadline = time.time() + 300
        while len(list((output / "shards").glob("*.jsonl"))) < kill_after and proc.poll() is None:
            assert time.time() < deadline, "the run made no progress"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)  # the main process only, as `kill -9 PID` would
        proc.wait()
        done_before = len(list((output / "shards").glob("*.jsonl")))
        assert kill_after <= done_before < n_shards, "killed too late to test resuming"
        _wait_until_group_is_gone(proc.pid)  # the workers die with the main process
    finally:
        _kill_group(proc.pid)
    (output / "shards" / "stale.jsonl.999.tmp").write_text("half a shard")  # as a kill mid-write leaves

    resumed = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming: {done_before} of {n_shards} shards already done" in resumed.stderr
    summary = json.loads((output / "summary.json").read_text())
    assert summary["this_run"]["shards"] == n_shards - done_before
    assert summary["docs"] == N_DOCS and summary["errors"] == 0
    assert len(summary["this_run"]["workers"]) == 2
    assert all(worker["peak_rss_mb"] > 0 for worker in summary["this_run"]["workers"])
    assert not list((output / "shards").glob("*.tmp"))
    ids = [record["id"] for record in read_records(output)]
    assert len(ids) == len(set(ids)) == N_DOCS
    # Same shards, same batches, one torch thread per worker: byte-identical files.
    assert read_shard_bytes(output) == read_shard_bytes(annotate_single_run[0])


def test_a_worker_takes_no_shard_before_every_worker_has_loaded(annotate_model, monkeypatch):
    """Each pool worker waits for the others after loading, so a slow starter still gets its shards."""
    import threading

    from spacy_globalpointer import annotate as annotate_module

    monkeypatch.setattr(annotate_module, "_die_with_parent", lambda: None)  # a thread here, not a process
    ready = threading.Barrier(2)
    first = threading.Thread(target=annotate_module._init_worker, args=(str(annotate_model), -1, None, ready))
    first.start()
    first.join(timeout=3.0)
    assert first.is_alive(), "the first worker went to work before the second had loaded"
    annotate_module._init_worker(str(annotate_model), -1, None, ready)  # the second arrives: both go on
    first.join(timeout=30.0)
    assert not first.is_alive()


def test_a_worker_that_never_arrives_fails_the_run_with_a_clear_error(annotate_model, monkeypatch):
    import threading

    from spacy_globalpointer import annotate as annotate_module

    monkeypatch.setattr(annotate_module, "_die_with_parent", lambda: None)
    monkeypatch.setattr(annotate_module, "WORKERS_READY_TIMEOUT", 0.2)
    with pytest.raises(RuntimeError, match="workers were not all ready after 0.2 s"):
        annotate_module._init_worker(str(annotate_model), -1, None, threading.Barrier(2))


def _wait_until_group_is_gone(pgid: int, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    pytest.fail("worker processes outlived the killed main process")


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_a_shard_with_meta_but_no_output_is_redone(annotate_model, annotate_corpus, annotate_single_run, tmp_path):
    output = tmp_path / "out"

    def run():
        return annotate(str(annotate_model), annotate_corpus[0], output, shard_size=SHARD_SIZE,
                        batch_size=BATCH_SIZE, progress=False)

    run()
    job = plan_job(str(annotate_model), annotate_corpus[0], output, shard_size=SHARD_SIZE)
    assert job.meta_path(job.shards[3]).exists()
    job.output_path(job.shards[3]).unlink()  # as if killed between the meta file and the shard file
    summary = run()
    assert summary["this_run"]["shards"] == 1 and summary["docs"] == N_DOCS
    assert read_shard_bytes(output) == read_shard_bytes(annotate_single_run[0])
    again = run()
    assert again["this_run"]["shards"] == 0 and again["docs"] == N_DOCS


def test_another_job_in_the_output_folder_is_refused(annotate_model, annotate_corpus, annotate_single_run, tmp_path):
    output, _ = annotate_single_run
    with pytest.raises(JobMismatchError, match="shard_size is 100 there, 50 here"):
        plan_job(str(annotate_model), annotate_corpus[0], output, shard_size=50)
    copy = tmp_path / "docs.jsonl"
    copy.write_bytes(annotate_corpus[0].read_bytes())
    first = tmp_path / "out"
    plan_job(str(annotate_model), copy, first, shard_size=SHARD_SIZE)
    with copy.open("a") as handle:
        handle.write('{"text": "one more"}\n')
    with pytest.raises(JobMismatchError, match="docs.jsonl changed since the job started"):
        plan_job(str(annotate_model), copy, first, shard_size=SHARD_SIZE)


# ------------------------------------------------------------------------------------ bad input

BAD_JSONL = b"\n".join([
    b'{"text": "Alice lives in Paris", "id": 7, "spans": []}',
    b"not json",
    b'{"no_text": 1}',
    b'{"text": 5}',
    b'["a list"]',
    b"\xff\xfe latin-1 bytes",
    b"",
    b'{"text": ""}',
]) + b"\n"


@pytest.fixture
def bad_input(tmp_path):
    folder = tmp_path / "input"
    (folder / "sub").mkdir(parents=True)
    (folder / "bad.jsonl").write_bytes(BAD_JSONL)
    (folder / "empty.jsonl").write_bytes(b"")
    (folder / "sub" / "lines.txt").write_bytes(b"Bob works at Acme Corp\r\n\nnot \xc3 utf-8\nlast line, no newline")
    (folder / "README.md").write_text("not an input file")
    (folder / ".hidden.jsonl").write_text('{"text": "hidden"}\n')
    return folder


def test_bad_input_is_counted_and_listed_with_file_and_line(annotate_model, bad_input, tmp_path):
    output = tmp_path / "out"
    summary = annotate(str(annotate_model), bad_input, output, shard_size=3, progress=False)
    assert summary["files"] == 3 and summary["lines"] == 8 + 0 + 4
    assert summary["docs"] == 2 + 3  # bad.jsonl lines 1 and 8; lines.txt lines 1, 2 (empty doc), 4
    assert summary["errors_by_kind"] == {
        "not_json": 1, "no_text": 1, "text_not_string": 1, "not_object": 1, "undecodable": 2, "blank": 1,
        "empty_file": 1,
    }
    errors = [json.loads(line) for line in (output / "errors.jsonl").read_text().splitlines()]
    where = [(e["file"], e["line"], e["kind"]) for e in errors]
    assert where == [
        ("bad.jsonl", 2, "not_json"), ("bad.jsonl", 3, "no_text"), ("bad.jsonl", 4, "text_not_string"),
        ("bad.jsonl", 5, "not_object"), ("bad.jsonl", 6, "undecodable"), ("bad.jsonl", 7, "blank"),
        ("empty.jsonl", None, "empty_file"), ("sub/lines.txt", 3, "undecodable"),
    ]
    assert errors[0]["raw"] == "not json" and "0xff" in errors[4]["error"]
    records = {r["id"]: r for r in read_records(output)}
    assert set(records) == {
        "bad.jsonl:1", "bad.jsonl:8", "sub/lines.txt:1", "sub/lines.txt:2", "sub/lines.txt:4"
    }
    assert records["bad.jsonl:1"]["input_id"] == 7 and records["bad.jsonl:1"]["input_spans"] == []
    assert records["sub/lines.txt:1"]["text"] == "Bob works at Acme Corp"  # \r\n is a line end
    assert records["sub/lines.txt:2"] == {"id": "sub/lines.txt:2", "text": "", "spans": []}
    assert records["sub/lines.txt:4"]["text"] == "last line, no newline"


def test_on_error_fail_stops_at_the_first_bad_record(annotate_model, bad_input, tmp_path):
    (bad_input / "empty.jsonl").unlink()
    output = tmp_path / "out"
    with pytest.raises(BadInputError, match=r"bad.jsonl, line 2: not JSON"):
        annotate(str(annotate_model), bad_input / "bad.jsonl", output, on_error="fail", progress=False)
    assert not list((output / "shards").glob("*.jsonl"))
    command = ["annotate", str(annotate_model), str(bad_input), str(tmp_path / "cli"), "--on-error", "fail"]
    code = main(command + ["--no-progress"])
    assert code == 1


def test_empty_file_fails_with_on_error_fail(annotate_model, bad_input, tmp_path):
    with pytest.raises(BadInputError, match="empty.jsonl: empty file"):
        annotate(str(annotate_model), bad_input / "empty.jsonl", tmp_path / "out", on_error="fail",
                 progress=False)


def test_cli_reports_missing_input_and_wrong_arguments(annotate_model, tmp_path, capsys):
    assert main(["annotate", str(annotate_model), str(tmp_path / "nothing.jsonl"), str(tmp_path / "out")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["annotate", str(tmp_path), str(tmp_path), str(tmp_path / "out")]) == 2
    assert "config.cfg" in capsys.readouterr().err


def test_glob_input_names_files_relative_to_the_fixed_part(tmp_path):
    for name in ("a/one.jsonl", "a/b/two.jsonl", "a/skip.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text('{"text": "x"}\n')
    found = find_input_files(f"{tmp_path}/a/**/*.jsonl")
    assert [name for _, name in found] == ["b/two.jsonl", "one.jsonl"]


@pytest.mark.parametrize("data,n_lines", [
    (b"", 0), (b"a\n", 1), (b"a", 1), (b"a\nb", 2), (b"a\nb\n", 2), (b"\n\n", 2), (b"a\r\nb\r\n", 2),
])
def test_index_lines_counts_like_the_reader(tmp_path, data, n_lines):
    path = tmp_path / "f.txt"
    path.write_bytes(data)
    for shard_size in (1, 2, 5):
        count, starts = index_lines(path, shard_size)
        assert count == n_lines
        assert len(starts) == -(-n_lines // shard_size)
        ends = starts[1:] + [len(data)]
        lines = []
        for i, (start, end) in enumerate(zip(starts, ends)):
            shard = Shard(str(path), "f.txt", "text", 1 + i * shard_size,
                          min(shard_size, n_lines - i * shard_size), start, end)
            lines.extend(line.text for line in read_shard(shard))
        assert lines == [line.rstrip("\r") for line in data.decode().split("\n")][:n_lines]


def test_write_shard_refuses_a_shard_with_missing_lines(annotate_model, annotate_corpus, tmp_path):
    job = plan_job(str(annotate_model), annotate_corpus[0], tmp_path / "out", shard_size=SHARD_SIZE)
    with pytest.raises(RuntimeError, match="0 records and 0 errors for 100 lines"):
        write_shard(job, ShardResult(job.shards[0], [], []))


def test_parquet_output_holds_the_same_records(annotate_model, annotate_corpus, annotate_single_run, tmp_path):
    pyarrow_parquet = pytest.importorskip("pyarrow.parquet")
    output = tmp_path / "out"
    annotate(str(annotate_model), annotate_corpus[0], output, shard_size=SHARD_SIZE, batch_size=BATCH_SIZE,
             output_format="parquet", progress=False)
    rows = []
    for path in sorted((output / "shards").glob("*.parquet")):
        rows.extend(pyarrow_parquet.read_table(path).to_pylist())
    expected = read_records(annotate_single_run[0])
    assert [row["id"] for row in rows] == [record["id"] for record in expected]
    for row, record in zip(rows, expected):
        assert json.loads(row["fields"]) == {"meta": record["meta"]}
        assert [(s["start"], s["end"], s["label"]) for s in row["spans"]] == [
            (s["start"], s["end"], s["label"]) for s in record["spans"]
        ]
        scores = [s["score"] for s in record["spans"]]
        assert [s["score"] for s in row["spans"]] == pytest.approx(scores, abs=1e-6)


def test_settings_of_the_other_engine_are_refused(annotate_model, annotate_corpus, tmp_path):
    with pytest.raises(ValueError, match="settings of the ray engine"):
        annotate(str(annotate_model), annotate_corpus[0], tmp_path / "a", workers=2, progress=False)
    with pytest.raises(ValueError, match="settings of the local engine"):
        annotate(str(annotate_model), annotate_corpus[0], tmp_path / "b", engine="ray", n_process=2, progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
