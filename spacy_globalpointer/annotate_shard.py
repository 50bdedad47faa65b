"""One shard's work, the same on every engine: its lines read and parsed into records or errors, the
records run through the pipeline, the bad ones checked against `on_error`.
"""
import json
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from .annotate_jobs import BadInputError, JobMismatchError, Line, Shard, ShardResult, _error, describe_error

GENERATED_KEYS = ("id", "spans")  # an input field with one of these names is kept as input_<name>
# Each worker runs torch on one thread: workers, not threads, use the cores, and the same batches
# then give the same floats (summation order depends on the thread count) whatever the worker count.
TORCH_THREADS = 1


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

