"""The Ray engine of `annotate` (`engine="ray"`): Ray Data reads the shards, an actor pool annotates.

Imported only for `--engine ray`; needs the `ray` extra (`pip install "spacy-globalpointer[ray]"`).
The shards, files and resume rules are shared with the local engine (see `annotate_jobs.py`). The pipeline:

    from_items(one item per pending shard, one block each)
      -> flat_map(read_shard_rows)                one flat row per input line
      -> map_batches(ShardAnnotator, batch_size=None, compute=ActorPoolStrategy(size=workers))

Each actor loads the pipeline once. With `batch_size=None` an actor gets whole blocks, and a block
is one shard (Ray splits blocks only above its target block size, 128 MiB), so it annotates in the
same `batch_size` batches from the shard's first line as the local engine does. Actors return flat
rows (strings and numbers, never Doc objects). The driver collects each shard's rows by line
number and writes the shard (temporary name, then `os.replace`) once every line is back: the
output folder need only exist on the driver's machine, and a row delivered twice is kept once.
The input files must be readable at the same path on every node, as for any Ray Data file source.

A dead actor: Ray Data's actor pools restart it and retry its task (unless told otherwise, Ray
sets `max_restarts=-1` and `max_task_retries=-1` on the pool's actors; the `ray` extra asks for a
Ray that does), and the retried shard comes back whole.
"""
import json
import logging
import os
from collections import defaultdict
from typing import Any, Dict, List, Optional, Sequence, Type

import numpy

from .annotate_jobs import Job, Line, RunStats, Shard, ShardResult, WorkerStats, peak_rss_mb, write_shard
from .annotate_shard import annotate_records, check_errors, load_pipeline, read_shard

OUTPUT_COLUMNS = ("shard", "line", "output", "is_error", "n_tokens", "n_spans", "pid", "peak_rss_mb")


def read_shard_rows(item: Dict[str, Any]) -> List[Dict[str, Any]]:
    """One flat row per line of the shard described by `item` (a Shard as a dict)."""
    shard = Shard(**item)
    return [
        {
            "shard": shard.stem, "line": line.line, "text": line.text or "",
            "record": json.dumps(line.record, ensure_ascii=False) if line.record is not None else "",
            "error": json.dumps(line.error, ensure_ascii=False) if line.error is not None else "",
        }
        for line in read_shard(shard)
    ]


class ShardAnnotator:
    """The Ray Data actor: loads the pipeline once, annotates the shards in each batch of rows."""

    def __init__(self, model: str, spans_key: str, batch_size: int, use_gpu: bool):
        self.nlp = load_pipeline(model, gpu_id=0 if use_gpu else -1)  # Ray shows each actor its GPUs from 0
        self.spans_key = spans_key
        self.batch_size = batch_size

    def __call__(self, batch: Dict[str, numpy.ndarray]) -> Dict[str, List[Any]]:
        out: Dict[str, List[Any]] = {column: [] for column in OUTPUT_COLUMNS}
        for shard, lines in self.group_by_shard(batch).items():
            self.annotate_shard(shard, lines, out)
        rss = peak_rss_mb()
        out["pid"] = [os.getpid()] * len(out["line"])
        out["peak_rss_mb"] = [rss] * len(out["line"])
        return out

    @staticmethod
    def group_by_shard(batch: Dict[str, numpy.ndarray]) -> Dict[str, List[Line]]:
        """The batch's rows as Lines, per shard, in line order."""
        groups: Dict[str, List[Line]] = defaultdict(list)
        for shard, line, text, record, error in zip(
            batch["shard"], batch["line"], batch["text"], batch["record"], batch["error"]
        ):
            if error:
                groups[str(shard)].append(Line(int(line), error=json.loads(error)))
            else:
                groups[str(shard)].append(Line(int(line), text=str(text), record=json.loads(record)))
        return {shard: sorted(lines, key=lambda line: line.line) for shard, lines in groups.items()}

    def annotate_shard(self, shard: str, lines: List[Line], out: Dict[str, List[Any]]) -> None:
        """Append one output row per line: the JSON record, or the error for a bad line."""
        for line in lines:
            if line.error is not None:
                self._append(out, shard, line.line, json.dumps(line.error, ensure_ascii=False), True, 0, 0)
        for line, record, n_tokens, n_spans in annotate_records(self.nlp, self.spans_key, lines, self.batch_size):
            self._append(out, shard, line.line, record, False, n_tokens, n_spans)

    @staticmethod
    def _append(out, shard: str, line: int, output: str, is_error: bool, n_tokens: int, n_spans: int) -> None:
        for column, value in zip(OUTPUT_COLUMNS, (shard, line, output, is_error, n_tokens, n_spans)):
            out[column].append(value)


def start_ray(ray_address: Optional[str]) -> bool:
    """Connect to the cluster at `ray_address`, or start Ray locally; True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    if ray_address:
        ray.init(address=ray_address, logging_level=logging.WARNING)
    else:
        ray.init(include_dashboard=False, logging_level=logging.WARNING)
    return True


def build_dataset(
    job: Job, pending: Sequence[Shard], *, workers: int, num_gpus_per_worker: float, batch_size: int,
    actor_class: Type = ShardAnnotator,
):
    """The Ray Dataset of output rows for the pending shards (lazy: nothing runs yet)."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # annotate shows its own bar, counted in docs
    items = [{key: getattr(shard, key) for key in Shard.__dataclass_fields__} for shard in pending]
    dataset = ray.data.from_items(items, override_num_blocks=len(items))
    return dataset.flat_map(read_shard_rows).map_batches(
        actor_class,
        batch_size=None,  # whole blocks, i.e. whole shards
        # One shard at a time per actor: a shard queued behind a busy actor would leave another idle
        # at the end of the job, and the read (fused into the actor) leaves nothing to prefetch.
        compute=ray.data.ActorPoolStrategy(size=min(workers, len(items)), max_tasks_in_flight_per_actor=1),
        num_gpus=num_gpus_per_worker or None,
        fn_constructor_kwargs={
            "model": job.settings["model"], "spans_key": job.settings["spans_key"],
            "batch_size": batch_size, "use_gpu": num_gpus_per_worker > 0,
        },
    )


def run_ray(
    job: Job, pending: Sequence[Shard], *, workers: int, num_gpus_per_worker: float = 0.0,
    ray_address: Optional[str] = None, batch_size: int, on_error: str, bar,
    actor_class: Type = ShardAnnotator,
) -> RunStats:
    """Annotate the pending shards on Ray and write each shard as soon as all its lines are back."""
    import ray

    started_here = start_ray(ray_address)
    try:
        dataset = build_dataset(
            job, pending, workers=workers, num_gpus_per_worker=num_gpus_per_worker,
            batch_size=batch_size, actor_class=actor_class,
        )
        return _collect(job, pending, dataset, on_error=on_error, bar=bar)
    finally:
        if started_here:
            ray.shutdown()


def _collect(job: Job, pending: Sequence[Shard], dataset, *, on_error: str, bar) -> RunStats:
    """Gather rows by shard and line; write a shard once all its lines have come back."""
    shards = {shard.stem: shard for shard in pending}
    rows: Dict[str, Dict[int, Dict[str, Any]]] = defaultdict(dict)
    written = set()
    run = RunStats()
    for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        stems = set(batch.column("shard").to_pylist()) - written  # a shard delivered twice is written once
        for row in batch.to_pylist():
            if row["shard"] in stems:
                rows[row["shard"]][row["line"]] = row
        bar.update(batch.num_rows)
        for stem in stems:
            if len(rows[stem]) == shards[stem].n_lines:
                written.add(stem)
                shard_rows = rows.pop(stem)
                result = _shard_result(shards[stem], shard_rows)
                check_errors(result, on_error)
                write_shard(job, result)
                first = shard_rows[min(shard_rows)]
                run.add(result, WorkerStats(first["pid"], peak_rss_mb=first["peak_rss_mb"]))
    if run.shards != len(shards):
        raise RuntimeError(
            f"Ray returned {run.shards} of {len(shards)} shards whole; run the same command again to redo the rest"
        )
    return run


def _shard_result(shard: Shard, rows_by_line: Dict[int, Dict[str, Any]]) -> ShardResult:
    result = ShardResult(shard, [], [])
    for line in sorted(rows_by_line):
        row = rows_by_line[line]
        if row["is_error"]:
            result.errors.append(json.loads(row["output"]))
            continue
        result.records.append(row["output"])
        result.n_docs += 1
        result.n_tokens += row["n_tokens"]
        result.n_spans += row["n_spans"]
    return result
