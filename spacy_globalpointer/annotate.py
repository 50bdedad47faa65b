"""Annotate corpora with a trained pipeline: JSONL or plain-text files in, JSONL (or Parquet) shards out.

`annotate(MODEL, INPUT, OUTPUT_DIR)` runs in this process, in `n_process` worker processes, or
(`engine="ray"`, see `annotate_ray.py`) on a Ray cluster. Every input line becomes one output
record `{"id": "FILE:LINE", <the input's fields>, "spans": [{start, end, label, score}]}` (character
offsets, end exclusive, from `doc.spans[key]` and its `attrs["scores"]`), or, if it is not a valid
record, one entry in `errors.jsonl` with its file, line and what is wrong.

Why the work unit is a fixed range of lines, and the manifest is the shard files themselves:

- A *shard* is `shard_size` consecutive lines of one input file. The first run writes `job.json`
  once: the input files (size, mtime, the byte offset where each shard starts) and the settings that
  decide the output. It is never rewritten, so every later run cuts the input into the same shards.
- A shard's output is written to a `*.tmp` name, flushed, and `os.replace`d to
  `shards/<file>.<first line>-<last line>.jsonl` only once it is complete. A shard is done if and
  only if that file exists: the done ranges are read off the disk, and there is no progress file
  that a kill between two writes could leave disagreeing with the outputs. Its counts and skipped
  records go to `<shard>.meta.json`, replaced just before the shard file, so a done shard always has
  them; a meta file without its shard file is simply overwritten when the shard is redone.
- Re-running the same command checks `job.json` against the input and settings, deletes stale
  `*.tmp` files and annotates only the missing shards. However often a run is killed (`kill -9`
  included), each input line ends in exactly one shard file, or in the errors of exactly one shard.
- A shard is annotated by one worker, in batches of `batch_size` from its first line, so the output
  does not depend on the number of workers or on the engine. Resuming costs a read of `job.json`
  and a listing of `shards/`: no input is re-read to find where to restart.

A lock (`OUTPUT_DIR/.lock`, released by the OS when the process dies) keeps two runs from sharing an
output folder.
"""
import fcntl
import glob
import hashlib
import json
import os
import re
import resource
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

PathLike = Union[str, Path]
JOB_VERSION = 1
DEFAULT_SHARD_SIZE = 5000
DEFAULT_BATCH_SIZE = 256
FOLDER_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".txt": "text"}
INPUT_FORMATS = ("auto", "jsonl", "text")
OUTPUT_FORMATS = ("jsonl", "parquet")
ON_ERROR = ("skip", "fail")
GENERATED_KEYS = ("id", "spans")  # an input field with one of these names is kept as input_<name>
MAX_RAW_CHARS = 200
READ_CHUNK = 1 << 24
# Each worker runs torch on one thread: workers, not threads, use the cores, and the same batches
# then give the same floats (summation order depends on the thread count) whatever the worker count.
TORCH_THREADS = 1


class JobMismatchError(ValueError):
    """OUTPUT_DIR holds a job whose input or settings differ from the ones asked for."""


class BadInputError(ValueError):
    """`on_error="fail"` met a record it cannot annotate (the message names file and line)."""


@dataclass(frozen=True)
class Shard:
    """`n_lines` lines of one input file, from line `first_line` (1-based) at byte `start` to byte `end`."""

    path: str  # absolute path of the input file
    name: str  # the file's name in ids and reports (relative to the input root)
    fmt: str  # "jsonl" or "text"
    first_line: int
    n_lines: int
    start: int
    end: int

    @property
    def stem(self) -> str:
        """The shard's file name without extension: the input file and its line range."""
        digest = hashlib.sha1(self.name.encode("utf8")).hexdigest()[:8]
        safe = re.sub(r"[^\w.-]", "_", self.name)
        return f"{safe}-{digest}.{self.first_line:09d}-{self.first_line + self.n_lines - 1:09d}"


@dataclass
class Job:
    """The plan of an annotation job: its settings, its input files and their shards."""

    output_dir: Path
    settings: Dict[str, Any]
    files: List[Dict[str, Any]]
    shards: List[Shard]
    empty_files: List[str]

    @property
    def shard_dir(self) -> Path:
        return self.output_dir / "shards"

    def output_path(self, shard: Shard) -> Path:
        return self.shard_dir / f"{shard.stem}.{self.settings['output_format']}"

    def meta_path(self, shard: Shard) -> Path:
        return self.shard_dir / f"{shard.stem}.meta.json"

    def for_writing(self) -> "Job":
        """A copy with only what writing a shard needs (cheap to send to a worker)."""
        return Job(self.output_dir, self.settings, [], [], [])

    def pending(self) -> List[Shard]:
        """The shards whose output file does not exist yet."""
        done = {path.name for path in self.shard_dir.iterdir()} if self.shard_dir.exists() else set()
        return [shard for shard in self.shards if self.output_path(shard).name not in done]


@dataclass
class Line:
    """One input line: a record to annotate (`record` holds its output fields) or an error."""

    line: int
    text: Optional[str] = None
    record: Optional[Dict[str, Any]] = None
    error: Optional[Dict[str, Any]] = None


@dataclass
class ShardResult:
    """A shard's output lines (JSON records, in line order), its skipped records and counts."""

    shard: Shard
    records: List[str]
    errors: List[Dict[str, Any]]
    n_docs: int = 0
    n_tokens: int = 0
    n_spans: int = 0


@dataclass
class WorkerStats:
    """What one worker did in this run (peak RSS from getrusage, in MB)."""

    pid: int
    shards: int = 0
    docs: int = 0
    peak_rss_mb: float = 0.0


@dataclass
class RunStats:
    """This run's work: shards and docs annotated, seconds, and the workers' figures."""

    shards: int = 0
    docs: int = 0
    tokens: int = 0
    seconds: float = 0.0
    workers: Dict[int, WorkerStats] = field(default_factory=dict)

    def add(self, result: ShardResult, worker: WorkerStats) -> None:
        self.shards += 1
        self.docs += result.n_docs
        self.tokens += result.n_tokens
        known = self.workers.setdefault(worker.pid, WorkerStats(worker.pid))
        known.shards += 1
        known.docs += result.n_docs
        known.peak_rss_mb = max(known.peak_rss_mb, worker.peak_rss_mb)


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB (Linux reports ru_maxrss in KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------------- input files


def find_input_files(input_spec: PathLike, *, exclude: Optional[Path] = None) -> List[Tuple[Path, str]]:
    """(absolute path, name) of the input files: one file, the data files in a folder, or a glob.

    Names are relative to the folder (or to the glob's fixed prefix) and make the record ids.
    """
    spec = str(input_spec)
    path = Path(spec)
    if path.is_file():
        return [(path.resolve(), path.name)]
    if path.is_dir():
        root = path
        found = [p for p in path.rglob("*") if p.suffix.lower() in FOLDER_EXTENSIONS]
        what = f"folder {spec} (looked for {', '.join(sorted(FOLDER_EXTENSIONS))} files)"
    elif glob.has_magic(spec):
        root = Path(_glob_root(spec))
        found = [Path(p) for p in glob.glob(spec, recursive=True)]
        what = f"glob {spec}"
    else:
        raise FileNotFoundError(f"{spec}: no such file or folder, and not a glob pattern")
    files = []
    for p in found:
        relative = p.relative_to(root)
        hidden = any(part.startswith(".") for part in relative.parts)
        inside_output = exclude is not None and exclude.resolve() in p.resolve().parents
        if p.is_file() and not hidden and not inside_output:
            files.append((p.resolve(), relative.as_posix()))
    if not files:
        raise FileNotFoundError(f"no input files in {what}")
    return sorted(files, key=lambda item: item[1])


def _glob_root(pattern: str) -> str:
    """The folder part of a glob before its first wildcard (names are relative to it)."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return str(Path(*fixed)) if fixed else "."


def file_format(path: Path, input_format: str) -> str:
    """jsonl or text: as asked, or by extension for `auto` (.jsonl/.ndjson/.json are JSONL)."""
    if input_format != "auto":
        return input_format
    return "jsonl" if FOLDER_EXTENSIONS.get(path.suffix.lower()) == "jsonl" else "text"


def index_lines(path: Path, shard_size: int) -> Tuple[int, List[int]]:
    """Count the lines of `path` and return (n_lines, byte offset where every shard starts).

    A line ends at b"\\n" (not at the other characters str.splitlines breaks on); a last line
    without one still counts.
    """
    starts = [0]
    n_lines = 0
    offset = 0
    last_byte = b"\n"
    with path.open("rb") as handle:
        while True:
            chunk = handle.read(READ_CHUNK)
            if not chunk:
                break
            position = chunk.find(b"\n")
            while position >= 0:
                n_lines += 1
                if n_lines % shard_size == 0:
                    starts.append(offset + position + 1)
                position = chunk.find(b"\n", position + 1)
            offset += len(chunk)
            last_byte = chunk[-1:]
    if last_byte != b"\n":
        n_lines += 1  # a last line without a newline
    if starts[-1] == offset:
        starts.pop()  # no shard starts at the end of the file
    return n_lines, starts


def _shards_of(entry: Dict[str, Any], shard_size: int) -> List[Shard]:
    starts = entry["shard_starts"]
    ends = starts[1:] + [entry["size"]]
    return [
        Shard(
            path=entry["path"], name=entry["name"], fmt=entry["format"],
            first_line=1 + i * shard_size, n_lines=min(shard_size, entry["n_lines"] - i * shard_size),
            start=start, end=end,
        )
        for i, (start, end) in enumerate(zip(starts, ends))
    ]


# ------------------------------------------------------------------------------------- the plan


def model_location(model: str) -> Tuple[str, Path]:
    """The model as recorded in job.json (absolute folder or package name) and its config.cfg."""
    import spacy.util

    path = Path(model)
    if path.is_dir():
        config = path / "config.cfg"
        if not config.exists():
            raise FileNotFoundError(f"{model}: a pipeline folder needs a config.cfg, none found")
        return str(path.resolve()), config
    if spacy.util.is_package(model):
        configs = sorted(spacy.util.get_package_path(model).glob("*/config.cfg"))
        if configs:
            return model, configs[0]
    raise FileNotFoundError(f"{model}: no such pipeline folder or installed pipeline package")


def find_spans_key(config_path: Path) -> str:
    """The spans_key of the pipeline's global_pointer component(s), read from its config."""
    from spacy.util import load_config

    from .pipe import DEFAULT_SPANS_KEY

    components = load_config(config_path, interpolate=False).get("components", {})
    keys = {
        settings.get("spans_key", DEFAULT_SPANS_KEY)
        for settings in components.values()
        if settings.get("factory") == "global_pointer"
    }
    if len(keys) != 1:
        found = f"global_pointer components with keys {sorted(keys)}" if keys else "no global_pointer component"
        raise ValueError(f"{config_path.parent}: {found}; say which doc.spans key to write with --spans-key")
    return keys.pop()


def plan_job(
    model: str,
    input_spec: PathLike,
    output_dir: PathLike,
    *,
    shard_size: int = DEFAULT_SHARD_SIZE,
    input_format: str = "auto",
    output_format: str = "jsonl",
    spans_key: Optional[str] = None,
) -> Job:
    """Create OUTPUT_DIR/job.json, or check an existing one against the input and settings.

    Raises JobMismatchError if the folder holds another job (other input, changed files or other
    settings), FileNotFoundError / ValueError for missing input or a bad setting.
    """
    _check_choice("input_format", input_format, INPUT_FORMATS)
    _check_choice("output_format", output_format, OUTPUT_FORMATS)
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, not {shard_size}")
    output_dir = Path(output_dir)
    model_id, config_path = model_location(model)
    settings = {
        "model": model_id,
        "spans_key": spans_key or find_spans_key(config_path),
        "shard_size": shard_size,
        "input_format": input_format,
        "output_format": output_format,
    }
    inputs = find_input_files(input_spec, exclude=output_dir)
    job_path = output_dir / "job.json"
    if job_path.exists():
        saved = json.loads(job_path.read_text(encoding="utf8"))
        _check_same_job(job_path, saved, settings, inputs)
        files = saved["files"]
    else:
        files = [_file_entry(path, name, shard_size, input_format) for path, name in inputs]
        output_dir.mkdir(parents=True, exist_ok=True)
        job = {"version": JOB_VERSION, "input": str(input_spec), "settings": settings, "files": files}
        _atomic_write_text(job_path, json.dumps(job, indent=1, ensure_ascii=False) + "\n")
    shards = [shard for entry in files for shard in _shards_of(entry, shard_size)]
    empty = [entry["name"] for entry in files if entry["n_lines"] == 0]
    return Job(output_dir, settings, files, shards, empty)


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")


def _file_entry(path: Path, name: str, shard_size: int, input_format: str) -> Dict[str, Any]:
    stat = path.stat()
    n_lines, starts = index_lines(path, shard_size)
    return {
        "path": str(path), "name": name, "format": file_format(path, input_format),
        "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "n_lines": n_lines, "shard_starts": starts,
    }


def _check_same_job(
    job_path: Path, saved: Dict[str, Any], settings: Dict[str, Any], inputs: List[Tuple[Path, str]]
) -> None:
    """JobMismatchError naming every difference between the saved job and this command."""
    problems = [
        f"{key} is {saved['settings'].get(key)!r} there, {value!r} here"
        for key, value in settings.items()
        if saved["settings"].get(key) != value
    ]
    saved_files = {entry["name"]: entry for entry in saved["files"]}
    names = [name for _, name in inputs]
    if names != list(saved_files):
        problems.append(f"the input files differ ({len(saved_files)} there, {len(names)} here)")
    for path, name in inputs:
        entry = saved_files.get(name)
        if entry is None:
            continue
        stat = path.stat()
        if (stat.st_size, stat.st_mtime_ns) != (entry["size"], entry["mtime_ns"]):
            problems.append(f"{name} changed since the job started (size {entry['size']} -> {stat.st_size})")
    if problems:
        raise JobMismatchError(
            f"{job_path.parent} holds another job ({job_path}): " + "; ".join(problems)
            + ". Use another OUTPUT_DIR, or delete this one to start over."
        )


# -------------------------------------------------------------------------------- reading lines


def read_shard(shard: Shard) -> List[Line]:
    """The shard's lines, each parsed into a record to annotate or an error (file, line, kind)."""
    with open(shard.path, "rb") as handle:
        handle.seek(shard.start)
        data = handle.read(shard.end - shard.start)
    raw_lines = data.split(b"\n")
    if data.endswith(b"\n"):
        raw_lines.pop()
    if len(raw_lines) != shard.n_lines:
        raise JobMismatchError(
            f"{shard.name} changed since the job started: lines {shard.first_line}-"
            f"{shard.first_line + shard.n_lines - 1} are now {len(raw_lines)} lines"
        )
    parse = _parse_jsonl if shard.fmt == "jsonl" else _parse_text
    return [parse(raw, shard.name, shard.first_line + i) for i, raw in enumerate(raw_lines)]


def _decode(raw: bytes, name: str, line: int) -> Tuple[Optional[str], Optional[Dict[str, Any]]]:
    try:
        text = raw.decode("utf8")
    except UnicodeDecodeError as error:
        message = f"not UTF-8: {error.reason} at byte {error.start} (0x{raw[error.start]:02x})"
        return None, _error(name, line, "undecodable", message, raw.decode("utf8", "replace"))
    if line == 1 and text.startswith("\ufeff"):
        text = text[1:]  # a byte-order mark is not part of the first record
    return text, None


def _parse_text(raw: bytes, name: str, line: int) -> Line:
    text, error = _decode(raw, name, line)
    if error is not None:
        return Line(line, error=error)
    if text.endswith("\r"):
        text = text[:-1]
    return Line(line, text=text, record={"id": f"{name}:{line}", "text": text})


def _parse_jsonl(raw: bytes, name: str, line: int) -> Line:
    decoded, error = _decode(raw, name, line)
    if error is not None:
        return Line(line, error=error)
    value, problem = _json_record(decoded)
    if problem is not None:
        return Line(line, error=_error(name, line, *problem, decoded))
    record = {"id": f"{name}:{line}"}
    for key, item in value.items():
        record[f"input_{key}" if key in GENERATED_KEYS else key] = item
    return Line(line, text=value["text"], record=record)


def _json_record(decoded: str) -> Tuple[Any, Optional[Tuple[str, str]]]:
    """The parsed line and None, or (kind, message) of why it is not an object with a string "text"."""
    if not decoded.strip():
        return None, ("blank", "blank line, not a JSON object")
    try:
        value = json.loads(decoded)
    except json.JSONDecodeError as error:
        return None, ("not_json", f"not JSON: {error.msg} at column {error.colno}")
    if not isinstance(value, dict):
        return value, ("not_object", f"a JSON {_json_type(value)}, not an object")
    if "text" not in value:
        return value, ("no_text", f"no 'text' field (keys: {', '.join(list(value)[:5]) or 'none'})")
    if not isinstance(value["text"], str):
        return value, ("text_not_string", f"'text' is a JSON {_json_type(value['text'])}, not a string")
    return value, None


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return names.get(type(value), "null")


def _error(name: str, line: Optional[int], kind: str, message: str, raw: str = "") -> Dict[str, Any]:
    return {
        "file": name, "line": line, "id": f"{name}:{line}" if line else name,
        "kind": kind, "error": message, "raw": raw[:MAX_RAW_CHARS],
    }


def describe_error(error: Dict[str, Any]) -> str:
    where = f"{error['file']}, line {error['line']}" if error["line"] else error["file"]
    return f"{where}: {error['error']}"


# ------------------------------------------------------------------------------------ annotating


def load_pipeline(model: str, *, gpu_id: int = -1):
    """spacy.load the model, on GPU `gpu_id` if >= 0, with torch on TORCH_THREADS CPU threads."""
    import spacy
    import torch  # the head runs in torch, which would otherwise use every core in every worker

    torch.set_num_threads(TORCH_THREADS)
    if gpu_id >= 0:
        spacy.require_gpu(gpu_id)
    return spacy.load(model)


def doc_spans(doc, spans_key: str) -> List[Dict[str, Any]]:
    """The spans in `doc.spans[spans_key]` as {start, end, label, score}, character offsets."""
    group = doc.spans.get(spans_key)
    if group is None:
        return []
    scores = group.attrs.get("scores")
    return [
        {"start": span.start_char, "end": span.end_char, "label": span.label_,
         "score": None if scores is None else _plain_float(scores[i])}
        for i, span in enumerate(group)
    ]


def _plain_float(value: Any) -> float:
    """A float32 score as the shortest decimal that reads back to it (0.8125, not 0.81250001...)."""
    return float(str(value))


def annotate_records(
    nlp, spans_key: str, lines: Sequence[Line], batch_size: int
) -> Iterator[Tuple[Line, str, int, int]]:
    """(line, output JSON record, tokens, spans) for each good line, run through `nlp` in batches."""
    good = [line for line in lines if line.error is None]
    docs = nlp.pipe((line.text for line in good), batch_size=batch_size)
    for line, doc in zip(good, docs):
        spans = doc_spans(doc, spans_key)
        yield line, json.dumps({**line.record, "spans": spans}, ensure_ascii=False), len(doc), len(spans)


def annotate_lines(
    nlp, spans_key: str, lines: Sequence[Line], shard: Shard, batch_size: int,
    on_batch: Optional[Callable[[int], None]] = None,
) -> ShardResult:
    """The shard's records annotated, its errors passed through; `on_batch(n)` reports progress."""
    result = ShardResult(shard, [], [line.error for line in lines if line.error is not None])
    for _, record, n_tokens, n_spans in annotate_records(nlp, spans_key, lines, batch_size):
        result.records.append(record)
        result.n_docs += 1
        result.n_tokens += n_tokens
        result.n_spans += n_spans
        if on_batch is not None and result.n_docs % batch_size == 0:
            on_batch(batch_size)
    if on_batch is not None:
        on_batch(result.n_docs % batch_size + len(result.errors))  # the last batch and the bad lines
    return result


def check_errors(result: ShardResult, on_error: str) -> None:
    """BadInputError on the shard's first bad record when `on_error` is "fail"."""
    if on_error == "fail" and result.errors:
        raise BadInputError(
            f"{describe_error(result.errors[0])} ({len(result.errors)} bad records in lines "
            f"{result.shard.first_line}-{result.shard.first_line + result.shard.n_lines - 1}; "
            "--on-error skip lists them in errors.jsonl and goes on)"
        )


# ---------------------------------------------------------------------------------------- output


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through `write(tmp)` to a temporary name, fsync it, and rename it to `path`."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    write(tmp)
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf8"))


def write_shard(job: Job, result: ShardResult) -> None:
    """Write the shard's meta file, then (atomically, last) its output file: the shard is done."""
    shard = result.shard
    if result.n_docs != len(result.records) or result.n_docs + len(result.errors) != shard.n_lines:
        raise RuntimeError(f"shard {shard.stem} has {len(result.records)} records and "
                           f"{len(result.errors)} errors for {shard.n_lines} lines")
    meta = {
        "file": shard.name, "first_line": shard.first_line, "n_lines": shard.n_lines,
        "docs": result.n_docs, "tokens": result.n_tokens, "spans": result.n_spans,
        "errors": result.errors,
    }
    job.shard_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(job.meta_path(shard), json.dumps(meta, ensure_ascii=False) + "\n")
    if job.settings["output_format"] == "parquet":
        _atomic_write(job.output_path(shard), lambda tmp: _write_parquet(tmp, result.records))
    else:
        _atomic_write_text(job.output_path(shard), "".join(record + "\n" for record in result.records))


def _write_parquet(path: Path, records: List[str]) -> None:
    """Columns id, text, spans (list of structs) and fields (the other input fields as JSON)."""
    import pyarrow
    import pyarrow.parquet

    span_type = pyarrow.struct([("start", pyarrow.int64()), ("end", pyarrow.int64()),
                                ("label", pyarrow.string()), ("score", pyarrow.float32())])
    schema = pyarrow.schema([("id", pyarrow.string()), ("text", pyarrow.string()),
                             ("spans", pyarrow.list_(span_type)), ("fields", pyarrow.string())])
    rows = []
    for line in records:
        record = json.loads(line)
        rows.append({
            "id": record.pop("id"), "text": record.pop("text"), "spans": record.pop("spans"),
            "fields": json.dumps(record, ensure_ascii=False),
        })
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows, schema=schema), str(path))


def remove_stale_temporaries(job: Job) -> int:
    """Delete `*.tmp` files a killed run left behind; return how many."""
    stale = list(job.shard_dir.glob("*.tmp")) if job.shard_dir.exists() else []
    for path in stale:
        path.unlink()
    return len(stale)


@contextmanager
def job_lock(output_dir: Path) -> Iterator[None]:
    """Hold OUTPUT_DIR/.lock; ValueError if another run holds it. The OS drops it when we die."""
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"another annotate run is writing to {output_dir}") from None
        yield


def finish(job: Job, run: RunStats) -> Dict[str, Any]:
    """Write errors.jsonl and summary.json from the shards' meta files; return the summary."""
    totals: Counter = Counter()
    errors = [_error(name, None, "empty_file", "empty file, no records") for name in job.empty_files]
    for shard in job.shards:
        meta = json.loads(job.meta_path(shard).read_text(encoding="utf8"))
        totals.update({key: meta[key] for key in ("docs", "tokens", "spans")})
        errors.extend(meta["errors"])
    errors.sort(key=lambda error: (error["file"], error["line"] or 0))
    _atomic_write_text(
        job.output_dir / "errors.jsonl", "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in errors)
    )
    summary = {
        "output": str(job.shard_dir),
        "files": len(job.files),
        "shards": len(job.shards),
        "lines": sum(entry["n_lines"] for entry in job.files),
        "docs": totals["docs"],
        "tokens": totals["tokens"],
        "spans": totals["spans"],
        "errors": len(errors),
        "errors_by_kind": dict(Counter(error["kind"] for error in errors)),
        "first_errors": [describe_error(error) for error in errors[:20]],
        "this_run": _run_summary(run),
    }
    _atomic_write_text(job.output_dir / "summary.json", json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    return summary


def _run_summary(run: RunStats) -> Dict[str, Any]:
    seconds = max(run.seconds, 1e-9)
    return {
        "shards": run.shards, "docs": run.docs, "tokens": run.tokens, "seconds": round(run.seconds, 3),
        "docs_per_s": round(run.docs / seconds, 1), "words_per_s": round(run.tokens / seconds, 1),
        "workers": [asdict(worker) for worker in run.workers.values()],
    }


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
