"""The job of `annotate`, the same on every engine: its plan (`job.json`, the input files cut into
shards of lines), the shard and meta files, `errors.jsonl`, `summary.json` and the lock.

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
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

PathLike = Union[str, Path]
JOB_VERSION = 1
DEFAULT_SHARD_SIZE = 5000
FOLDER_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".txt": "text"}
INPUT_FORMATS = ("auto", "jsonl", "text")
OUTPUT_FORMATS = ("jsonl", "parquet")
MAX_RAW_CHARS = 200
READ_CHUNK = 1 << 24


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


def _error(name: str, line: Optional[int], kind: str, message: str, raw: str = "") -> Dict[str, Any]:
    return {
        "file": name, "line": line, "id": f"{name}:{line}" if line else name,
        "kind": kind, "error": message, "raw": raw[:MAX_RAW_CHARS],
    }


def describe_error(error: Dict[str, Any]) -> str:
    where = f"{error['file']}, line {error['line']}" if error["line"] else error["file"]
    return f"{where}: {error['error']}"


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

    from .scoring import DEFAULT_SPANS_KEY

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

