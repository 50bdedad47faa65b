"""What the converters share: the report and its errors, character spans put on tokens, JSON records
read and checked, and writing a DocBin.
"""
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import spacy
from spacy.language import Language
from spacy.tokens import Doc, DocBin, Span

PathLike = Union[str, Path]
NlpOrLang = Union[Language, str]
TokenSpan = Tuple[int, int, str]  # (first token, end token exclusive, label)
ReadResult = Tuple[List[Doc], "ConversionReport"]

DEFAULT_SPANS_KEY = "sc"
MAX_LISTED_PROBLEMS = 20
MAX_MALFORMED_SHARE = 0.5  # above this share of bad records or token lines, a file is not the format


class FormatError(ValueError):
    """The input is not in the format it was read as: no record parses, or most lines are broken."""


class ConversionProblemsError(ValueError):
    """A strict conversion found spans or lines it could not convert faithfully."""


@dataclass
class ConversionReport:
    """What a reader made of one file: counts, label counts, notes and one message per problem.

    Problems are `misaligned` (offsets off token boundaries), `malformed` (a line, record, span
    entry or tag sequence that breaks the format) and `mismatched` (offsets whose text differs
    from the entity string in the file). Empty docs and duplicate spans are counted, not problems.
    """

    source: str = ""
    n_docs: int = 0
    n_spans: int = 0
    n_empty_docs: int = 0
    n_duplicates: int = 0
    n_misaligned: int = 0
    n_malformed: int = 0
    n_mismatched: int = 0
    n_docs_from_tokens: int = 0  # docs built from the record's own tokens
    n_tokens_split: int = 0  # tokens cut at a gold span boundary (split_at_spans)
    n_spans_aligned_by_split: int = 0  # spans that fall on token boundaries only after those cuts
    label_counts: Counter = field(default_factory=Counter)
    notes: List[str] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)

    @property
    def n_problems(self) -> int:
        """The number of problems of all kinds."""
        return self.n_misaligned + self.n_malformed + self.n_mismatched

    def add_problem(self, kind: str, message: str) -> None:
        """Count a problem of `kind` ("misaligned", "malformed" or "mismatched") and keep its message."""
        if kind not in ("misaligned", "malformed", "mismatched"):
            raise ValueError(f"Unknown problem kind {kind!r}; use misaligned, malformed or mismatched.")
        attr = f"n_{kind}"
        setattr(self, attr, getattr(self, attr) + 1)
        self.problems.append(message)

    def add_doc(self, spans: Iterable[Span], *, empty: bool = False) -> None:
        """Count a converted doc, whether its text is empty (or blank), and its gold spans."""
        spans = list(spans)
        self.n_docs += 1
        self.n_empty_docs += int(empty)
        self.n_spans += len(spans)
        self.label_counts.update(span.label_ for span in spans)

    def summary(self) -> str:
        """A few lines with the counts, for people."""
        labels = ", ".join(f"{label} {n}" for label, n in sorted(self.label_counts.items()))
        lines = [
            f"{self.source}: {self.n_docs} docs ({self.n_empty_docs} empty), {self.n_spans} spans"
            + (f" ({labels})" if labels else ""),
            f"duplicate spans kept once: {self.n_duplicates}",
            f"problems: {self.n_problems} ({self.n_misaligned} misaligned, {self.n_malformed} malformed, "
            f"{self.n_mismatched} surface mismatches)",
        ]
        if self.n_docs_from_tokens:
            lines.append(f"docs built from the records' own tokens: {self.n_docs_from_tokens}")
        if self.n_tokens_split:
            lines.append(
                f"split at gold span boundaries: {self.n_tokens_split} tokens, which aligned "
                f"{self.n_spans_aligned_by_split} spans"
            )
        return "\n".join(lines + self.notes)

    def first_problems(self, n: int = MAX_LISTED_PROBLEMS) -> str:
        """The first `n` problem messages, one per line, and how many more there are."""
        listed = self.problems[:n]
        more = len(self.problems) - len(listed)
        return "\n".join(listed + ([f"... and {more} more"] if more else []))

    def raise_if(self, max_problems: int = 0) -> None:
        """Raise ConversionProblemsError listing the first problems if there are more than `max_problems`."""
        if self.n_problems > max_problems:
            raise ConversionProblemsError(
                f"{self.source}: {self.n_problems} problems (at most {max_problems} allowed). "
                f"Fix the input, or convert without strict mode to skip these spans:\n{self.first_problems()}"
            )


# ---------------------------------------------------------------------------------------------
# Character spans (the JSON formats)


@dataclass(frozen=True)
class CharSpan:
    """A span as a file gives it: offsets and label unchecked, `surface` the entity string if any."""

    start: Any
    end: Any
    label: Any
    surface: Any = None
    end_inclusive: bool = False

    def describe(self) -> str:
        """The span in the file's own convention, e.g. `[15, 16] 'address'`."""
        bracket = "]" if self.end_inclusive else ")"
        return f"span [{self.start!r}, {self.end!r}{bracket} {self.label!r}"

    @property
    def end_exclusive(self) -> int:
        """The end offset as Python slices count it."""
        return self.end + 1 if self.end_inclusive else self.end


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _char_span_problem(span: CharSpan, text: str) -> Optional[Tuple[str, str]]:
    """(kind, message) if the span's label, offsets or surface are unusable on `text`, else None."""
    if not isinstance(span.label, str) or not span.label.strip():
        return "malformed", f"{span.describe()}: the label must be a non-empty string"
    if not (_is_int(span.start) and _is_int(span.end)):
        return "malformed", f"{span.describe()}: start and end must be integers"
    start, end = span.start, span.end_exclusive
    if not 0 <= start < end <= len(text):
        return "malformed", (
            f"{span.describe()} is outside the text or empty (text length {len(text)}); "
            f"offsets must satisfy 0 <= start < end <= {len(text)}"
            + (" with end inclusive" if span.end_inclusive else " with end exclusive")
        )
    if span.surface is not None and not isinstance(span.surface, str):
        return "malformed", f"{span.describe()}: the entity string must be a string, got {span.surface!r}"
    if span.surface is not None and text[start:end] != span.surface:
        return "mismatched", (
            f"{span.describe()} covers {text[start:end]!r} but the file says {span.surface!r}; "
            "fix the offsets or the entity string"
        )
    return None


def _misaligned_message(doc: Doc, span: CharSpan) -> str:
    """Why a span does not map to tokens, with the nearest token span that would."""
    start, end = span.start, span.end_exclusive
    nearest = doc.char_span(start, end, alignment_mode="expand")
    hint = f"; the nearest token span is {nearest.text!r} [{nearest.start_char}, {nearest.end_char})" if nearest else ""
    return (
        f"{span.describe()} {doc.text[start:end]!r} does not align to token boundaries{hint}. "
        "Fix the offsets, or use a tokenizer (--lang) that splits there"
    )


def _doc_with_char_spans(
    nlp: Language, text: str, char_spans: Iterable[CharSpan], spans_key: str, report: ConversionReport, where: str,
    *, doc: Optional[Doc] = None,
) -> Doc:
    """Tokenize `text` (unless `doc` is given) and put every usable span into `doc.spans[spans_key]`;
    report the rest."""
    doc = nlp.make_doc(text) if doc is None else doc
    kept: Dict[Tuple[int, int, str], Span] = {}
    for char_span in char_spans:
        problem = _char_span_problem(char_span, text)
        if problem is not None:
            report.add_problem(problem[0], f"{where}: {problem[1]}")
            continue
        span = doc.char_span(char_span.start, char_span.end_exclusive, label=char_span.label, alignment_mode="strict")
        if span is None:
            report.add_problem("misaligned", f"{where}: {_misaligned_message(doc, char_span)}")
        elif (span.start, span.end, span.label_) in kept:
            report.n_duplicates += 1
        else:
            kept[(span.start, span.end, span.label_)] = span
    doc.spans[spans_key] = [kept[key] for key in sorted(kept)]
    report.add_doc(doc.spans[spans_key], empty=not text.strip())
    return doc


# ---------------------------------------------------------------------------------------------
# JSON records


class RecordError(ValueError):
    """A record (one JSON line or array element) that is not a record of the format at all."""


# The key that holds the annotations in each JSON format, to tell users which format a record is.
ANNOTATION_KEYS = {"label": "cluener", "entities": "cmeee", "spans": "jsonl"}
RecordParser = Callable[[Any], Tuple[str, List[CharSpan], List[str]]]


def _record_text(record: Any, annotation_key: str) -> str:
    """The record's "text"; RecordError if it is not an object with a text, or has another format's key."""
    if not isinstance(record, dict):
        raise RecordError(f'expected a JSON object with a "text" string, got {type(record).__name__}')
    text = record.get("text")
    if not isinstance(text, str):
        raise RecordError(f'expected a "text" string, got {text!r}' if "text" in record else 'no "text" key')
    if annotation_key not in record:
        for key, fmt in ANNOTATION_KEYS.items():
            if key in record:
                raise RecordError(
                    f'it has "{key}" but no "{annotation_key}": it looks like the {fmt} format; convert it as {fmt}'
                )
    return text


def _listed_spans_record(
    record: Any, key: str, fields: Tuple[str, str, str], surface_field: Optional[str], end_inclusive: bool
) -> Tuple[str, List[CharSpan], List[str]]:
    """Text, spans and entry errors of a record whose `key` lists span objects with (start, end, label) `fields`."""
    text = _record_text(record, key)
    entries = record.get(key)
    if entries is None:
        return text, [], []
    spans, errors = [], []
    for i, entry, (start, end, label) in span_entries(entries, key, fields, errors):
        surface = entry.get(surface_field) if surface_field else None
        spans.append(CharSpan(start, end, label, surface, end_inclusive=end_inclusive))
    return text, spans, errors


def span_entries(
    entries: Any, key: str, fields: Tuple[str, str, str], errors: List[str]
) -> Iterator[Tuple[int, Dict[str, Any], Tuple[Any, Any, Any]]]:
    """(index, entry, its three `fields`) for each object of the list `entries` (the record's
    `key`) that has them all; an entry without them is named in `errors`, and a value that is not
    a list at all raises a RecordError."""
    described = f"{fields[0]}, {fields[1]} and {fields[2]}"
    if not isinstance(entries, list):
        raise RecordError(f'"{key}" must be a list of objects with {described}, got {entries!r}')
    for i, entry in enumerate(entries):
        if not (isinstance(entry, dict) and set(fields) <= entry.keys()):
            errors.append(f"{key}[{i}] must be an object with {described}, got {entry!r}")
            continue
        yield i, entry, (entry[fields[0]], entry[fields[1]], entry[fields[2]])


def _json_lines(path: Path) -> Iterator[Tuple[str, Any]]:
    """(where, value) for each non-blank line; the value is a RecordError for a line that is not JSON."""
    with path.open(encoding="utf-8-sig") as file:
        for line_no, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                value: Any = json.loads(line)
            except json.JSONDecodeError as error:
                value = RecordError(f"not valid JSON ({error.msg} at column {error.colno})")
            yield f"line {line_no}", value


def _json_array(path: Path, fmt: str) -> Iterator[Tuple[str, Any]]:
    """(where, record) for each element of a file holding one JSON array; FormatError if it is not one."""
    try:
        with path.open(encoding="utf-8-sig") as file:
            data = json.load(file)
    except json.JSONDecodeError as error:
        raise FormatError(
            f"{path}: not a {fmt} file: line {error.lineno} column {error.colno}: {error.msg}. "
            f"A {fmt} file is one JSON array of records; for JSON lines use the cluener or jsonl format"
        ) from None
    if not isinstance(data, list):
        raise FormatError(f"{path}: not a {fmt} file: line 1: expected a JSON array of records, got {type(data).__name__}")
    for index, record in enumerate(data):
        yield f"record {index}", record


DocMaker = Callable[[Any, str, List[CharSpan], str], Doc]


def _docs_from_records(
    path: Path, records: Iterable[Tuple[str, Any]], parse: RecordParser, nlp: Language, spans_key: str, fmt: str,
    report: Optional[ConversionReport] = None, make_doc: Optional[DocMaker] = None,
) -> ReadResult:
    """Parse and convert each record (`make_doc(record, text, spans, where)`, by default `nlp`'s
    tokens); FormatError when there are none, or most are not records of the format."""
    report = ConversionReport(source=str(path)) if report is None else report
    if make_doc is None:
        def make_doc(record: Any, text: str, spans: List[CharSpan], where: str) -> Doc:
            return _doc_with_char_spans(nlp, text, spans, spans_key, report, where)

    docs: List[Doc] = []
    bad: List[str] = []
    for where, record in records:
        try:
            if isinstance(record, RecordError):
                raise record
            text, spans, errors = parse(record)
            for error in errors:
                report.add_problem("malformed", f"{path}: {where}: {error}")
            docs.append(make_doc(record, text, spans, f"{path}: {where}"))
        except RecordError as error:
            report.add_problem("malformed", f"{path}: {where}: {error}")
            bad.append(f"{where}: {error}")
    n_records = len(docs) + len(bad)
    if not n_records:
        raise FormatError(f"{path}: not a {fmt} file: the file has no records")
    if len(bad) > MAX_MALFORMED_SHARE * n_records:
        raise FormatError(
            f"{path}: not a {fmt} file: {len(bad)} of {n_records} records are not {fmt} records; first bad one: {bad[0]}"
        )
    return docs, report


def _as_nlp(nlp: NlpOrLang) -> Language:
    """`nlp` itself, or a blank pipeline for a language code such as "zh" or "en"."""
    return spacy.blank(nlp) if isinstance(nlp, str) else nlp


def _existing_file(path: PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return path


# ---------------------------------------------------------------------------------------------
# Writing


def write_docbin(docs: Iterable[Doc], output_path: PathLike) -> Path:
    """Save docs (with their span groups and user data) as a .spacy DocBin; parent folders are created."""
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    DocBin(docs=docs, store_user_data=True).to_disk(output_path)
    return output_path
