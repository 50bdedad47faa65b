"""Annotate corpora with a trained pipeline: JSONL or plain-text files in, JSONL (or Parquet) shards out.

`annotate(MODEL, INPUT, OUTPUT_DIR)` runs in this process, in `n_process` worker processes, or
(`engine="ray"`, see `annotate_ray.py`) on a Ray cluster. Every input line becomes one output
record `{"id": "FILE:LINE", <the input's fields>, "spans": [{start, end, label, score}]}` (character
offsets, end exclusive, from `doc.spans[key]` and its `attrs["scores"]`), or, if it is not a valid
record, one entry in `errors.jsonl` with its file, line and what is wrong.

The job (its plan, shards, resume rules, output files and lock) is in `annotate_jobs.py`, reading
and annotating a shard's lines in `annotate_shard.py`; both engines use them.
"""
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

# INPUT_FORMATS, OUTPUT_FORMATS, JobMismatchError, find_input_files and index_lines are imported from
# here by the command line and the tests.
from .annotate_jobs import (  # noqa: F401
    DEFAULT_SHARD_SIZE, INPUT_FORMATS, OUTPUT_FORMATS, BadInputError, Job, JobMismatchError, PathLike, RunStats,
    Shard, ShardResult, WorkerStats, _check_choice, find_input_files, finish, index_lines, job_lock,
    peak_rss_mb, plan_job, remove_stale_temporaries, write_shard,
)
from .annotate_shard import annotate_lines, check_errors, load_pipeline, read_shard

DEFAULT_BATCH_SIZE = 256
ON_ERROR = ("skip", "fail")


# ------------------------------------------------------------------------------- the local engine


def progress_bar(total: int, enabled: bool):
    """A tqdm bar counting docs (docs/s), on stderr; off when not enabled."""
    from tqdm import tqdm

    return tqdm(total=total, unit="docs", unit_scale=True, smoothing=0.1, disable=not enabled, file=sys.stderr)


def run_in_process(
    job: Job, pending: Sequence[Shard], *, batch_size: int, gpu_id: int, on_error: str, bar
) -> RunStats:
    """Annotate the pending shards one after the other in this process."""
    nlp = load_pipeline(job.settings["model"], gpu_id=gpu_id)
    run = RunStats()
    for shard in pending:
        result = annotate_lines(nlp, job.settings["spans_key"], read_shard(shard), shard, batch_size, bar.update)
        check_errors(result, on_error)
        write_shard(job, result)
        run.add(result, WorkerStats(os.getpid(), peak_rss_mb=peak_rss_mb()))
    return run


# Per-process state of a pool worker, set once by its initializer (the pipeline is loaded once).
_WORKER: Dict[str, Any] = {}


# How long a loaded worker waits for the others to load before the run fails.
WORKERS_READY_TIMEOUT = 900.0


def _init_worker(model: str, gpu_id: int, progress_queue, ready) -> None:
    _die_with_parent()
    _WORKER.update(nlp=load_pipeline(model, gpu_id=gpu_id), progress=progress_queue)
    # Wait until every worker has loaded the pipeline: otherwise on a busy machine the first one up
    # can take every shard while the others are still importing torch, and n_process is not honoured.
    try:
        ready.wait(WORKERS_READY_TIMEOUT)
    except threading.BrokenBarrierError:
        raise RuntimeError(
            f"the annotate workers were not all ready after {WORKERS_READY_TIMEOUT:g} s: "
            f"a worker failed to load {model!r} or the machine is overloaded"
        ) from None


def _die_with_parent() -> None:
    """Ask Linux to kill this worker when the main process dies (even by kill -9), not orphan it."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        try:
            ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)
        except (AttributeError, OSError):  # no prctl: an orphan lingers (harmless: shard writes are atomic)
            pass


def _worker_shard(job: Job, shard: Shard, batch_size: int, on_error: str) -> Tuple[ShardResult, WorkerStats]:
    queue = _WORKER["progress"]
    result = annotate_lines(
        _WORKER["nlp"], job.settings["spans_key"], read_shard(shard), shard, batch_size, queue.put
    )
    check_errors(result, on_error)
    write_shard(job, result)
    result.records = []  # written: do not send them back
    return result, WorkerStats(os.getpid(), peak_rss_mb=peak_rss_mb())


def run_in_processes(
    job: Job, pending: Sequence[Shard], *, n_process: int, batch_size: int, gpu_id: int, on_error: str, bar
) -> RunStats:
    """Annotate the pending shards in `n_process` spawned workers, one shard per task.

    Workers write their shards themselves, so only shard descriptions and counts cross processes.
    Spawned (not forked): a fork of a process that has run torch can deadlock in OpenMP. No worker
    starts a shard before all have loaded the pipeline (a barrier in the initializer), so every worker
    shares the work even when one is slow to start.
    """
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    context = multiprocessing.get_context("spawn")
    progress_queue = context.Queue()
    run = RunStats()
    n_workers = min(n_process, len(pending))
    pool = ProcessPoolExecutor(
        n_workers, mp_context=context, initializer=_init_worker,
        initargs=(job.settings["model"], gpu_id, progress_queue, context.Barrier(n_workers)),
    )
    try:
        writer = job.for_writing()
        futures = {pool.submit(_worker_shard, writer, shard, batch_size, on_error) for shard in pending}
        while futures:
            done, futures = wait(futures, timeout=0.25, return_when=FIRST_COMPLETED)
            _drain(progress_queue, bar)
            for future in done:
                result, worker = future.result()
                run.add(result, worker)
        _drain(progress_queue, bar)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return run


def _drain(queue, bar) -> None:
    import queue as queue_module

    while True:
        try:
            bar.update(queue.get_nowait())
        except queue_module.Empty:
            return


# ------------------------------------------------------------------------------------ the command


def annotate(
    model: str,
    input_spec: PathLike,
    output_dir: PathLike,
    *,
    engine: str = "local",
    n_process: int = 1,
    batch_size: int = DEFAULT_BATCH_SIZE,
    gpu_id: int = -1,
    shard_size: int = DEFAULT_SHARD_SIZE,
    input_format: str = "auto",
    output_format: str = "jsonl",
    spans_key: Optional[str] = None,
    on_error: str = "skip",
    progress: bool = True,
    workers: int = 1,
    num_gpus_per_worker: float = 0.0,
    ray_address: Optional[str] = None,
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
) -> Dict[str, Any]:
    """Annotate every record under INPUT into OUTPUT_DIR, resuming a job killed part-way.

    Returns the summary (also written to OUTPUT_DIR/summary.json). Raises BadInputError when
    `on_error="fail"` meets a bad record or an empty file, JobMismatchError when OUTPUT_DIR holds
    another job.
    """
    _check_choice("engine", engine, ("local", "ray"))
    _check_choice("on_error", on_error, ON_ERROR)
    if n_process < 1 or batch_size < 1 or workers < 1:
        raise ValueError("n_process, batch_size and workers must be at least 1")
    if engine == "local" and (workers != 1 or num_gpus_per_worker or ray_address):
        raise ValueError("workers, num_gpus_per_worker and ray_address are settings of the ray engine")
    if engine == "ray" and (n_process != 1 or gpu_id >= 0):
        raise ValueError("n_process and gpu_id are settings of the local engine; Ray takes workers and "
                         "num_gpus_per_worker")
    if output_format == "parquet":
        _require_pyarrow()
    if engine == "ray":
        _require_ray()
    output_dir = Path(output_dir)
    with job_lock(output_dir):
        job = plan_job(
            model, input_spec, output_dir, shard_size=shard_size, input_format=input_format,
            output_format=output_format, spans_key=spans_key,
        )
        if on_error == "fail" and job.empty_files:
            n_empty = len(job.empty_files)
            raise BadInputError(f"{job.empty_files[0]}: empty file, no records ({n_empty} empty files)")
        remove_stale_temporaries(job)
        pending = job.pending()
        done = len(job.shards) - len(pending)
        if done:
            log(f"resuming: {done} of {len(job.shards)} shards already done in {job.shard_dir}")
        started = time.perf_counter()
        with progress_bar(sum(shard.n_lines for shard in pending), progress and bool(pending)) as bar:
            run = _run_engine(
                job, pending, engine=engine, n_process=n_process, batch_size=batch_size, gpu_id=gpu_id,
                on_error=on_error, bar=bar, workers=workers, num_gpus_per_worker=num_gpus_per_worker,
                ray_address=ray_address,
            )
        run.seconds = time.perf_counter() - started
        return finish(job, run)


def _run_engine(job: Job, pending: Sequence[Shard], *, engine: str, n_process: int, bar, **options) -> RunStats:
    if not pending:
        return RunStats()
    ray_options = {key: options.pop(key) for key in ("workers", "num_gpus_per_worker", "ray_address")}
    if engine == "ray":
        from .annotate_ray import run_ray

        options.pop("gpu_id")
        return run_ray(job, pending, bar=bar, **ray_options, **options)
    if n_process == 1:
        return run_in_process(job, pending, bar=bar, **options)
    return run_in_processes(job, pending, n_process=n_process, bar=bar, **options)


def _require_ray() -> None:
    try:
        import ray.data  # noqa: F401
    except ImportError:
        raise ImportError('engine "ray" needs Ray Data: pip install "spacy-globalpointer[ray]"') from None


def _require_pyarrow() -> None:
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise ValueError("Parquet output needs pyarrow: pip install pyarrow") from None


def format_summary(summary: Dict[str, Any]) -> str:
    """A few lines for the terminal: counts, this run's speed, the first errors."""
    run = summary["this_run"]
    lines = [
        f"{summary['docs']} docs annotated, {summary['spans']} spans, {summary['errors']} records skipped "
        f"({summary['lines']} lines in {summary['files']} files; {summary['shards']} shards in "
        f"{summary['output']})",
        f"this run: {run['shards']} shards, {run['docs']} docs in {run['seconds']:.1f} s "
        f"({run['docs_per_s']:.0f} docs/s, {run['words_per_s']:.0f} words/s)",
    ]
    if summary["errors"]:
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(summary["errors_by_kind"].items()))
        lines.append(f"skipped records by kind: {kinds}; all listed in errors.jsonl; first ones:")
        lines.extend(f"  {message}" for message in summary["first_errors"])
    return "\n".join(lines)
