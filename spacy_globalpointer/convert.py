"""Converters from public NER formats to spaCy Docs with gold spans in `doc.spans[spans_key]`.

Readers return `(docs, report)`. Spans may nest and overlap. A span that cannot be converted
faithfully (offsets outside the text, off token boundaries, text that differs from the entity string
the file gives, a malformed entry) is skipped and listed in the report with file, line and offsets;
nothing is dropped silently. `convert` reads a file and writes a `DocBin` for `spacy train`.

Formats (see FORMATS): CLUENER JSON lines, CMeEE JSON array, the project's own JSONL
(`{"text", "spans": [{"start", "end", "label"}]}`, end exclusive), and column files with BIO, IOB1
or BIOES tags, one word (CoNLL-2003) or one character (People's Daily) per line.
"""
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import spacy
from spacy.language import Language
from spacy.tokens import Doc, DocBin, Span
from spacy.vocab import Vocab

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


def _cluener_record(record: Any) -> Tuple[str, List[CharSpan], List[str]]:
    """Text, spans and entry errors of a CLUENER record `{"text", "label": {type: {surface: [[s, e]]}}}`."""
    text = _record_text(record, "label")
    labels = record.get("label")
    if labels is None:
        return text, [], []
    if not isinstance(labels, dict):
        raise RecordError(f'"label" must be an object {{type: {{entity: [[start, end], ...]}}}}, got {labels!r}')
    spans, errors = [], []
    for label, entities in labels.items():
        if not isinstance(entities, dict):
            errors.append(f"label {label!r}: expected an object {{entity: [[start, end], ...]}}, got {entities!r}")
            continue
        for surface, positions in entities.items():
            if not isinstance(positions, list):
                errors.append(f"label {label!r} entity {surface!r}: expected a list of [start, end], got {positions!r}")
                continue
            for position in positions:
                if not (isinstance(position, list) and len(position) == 2 and all(map(_is_int, position))):
                    errors.append(f"label {label!r} entity {surface!r}: position {position!r} is not [start, end]")
                    continue
                spans.append(CharSpan(position[0], position[1], label, surface, end_inclusive=True))
    return text, spans, errors


def _listed_spans_record(
    record: Any, key: str, fields: Tuple[str, str, str], surface_field: Optional[str], end_inclusive: bool
) -> Tuple[str, List[CharSpan], List[str]]:
    """Text, spans and entry errors of a record whose `key` lists span objects with (start, end, label) `fields`."""
    text = _record_text(record, key)
    entries = record.get(key)
    if entries is None:
        return text, [], []
    described = f"{fields[0]}, {fields[1]} and {fields[2]}"
    if not isinstance(entries, list):
        raise RecordError(f'"{key}" must be a list of objects with {described}, got {entries!r}')
    spans, errors = [], []
    for i, entry in enumerate(entries):
        if not (isinstance(entry, dict) and set(fields) <= entry.keys()):
            errors.append(f"{key}[{i}] must be an object with {described}, got {entry!r}")
            continue
        start, end, label = (entry[name] for name in fields)
        surface = entry.get(surface_field) if surface_field else None
        spans.append(CharSpan(start, end, label, surface, end_inclusive=end_inclusive))
    return text, spans, errors


def _cmeee_record(record: Any) -> Tuple[str, List[CharSpan], List[str]]:
    """Text, spans and entry errors of a CMeEE record `{"text", "entities": [{start_idx, end_idx, type, entity}]}`."""
    return _listed_spans_record(record, "entities", ("start_idx", "end_idx", "type"), "entity", end_inclusive=True)


def _jsonl_record(record: Any) -> Tuple[str, List[CharSpan], List[str]]:
    """Text, spans and entry errors of a record `{"text", "spans": [{"start", "end", "label"}]}`."""
    return _listed_spans_record(record, "spans", ("start", "end", "label"), None, end_inclusive=False)


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


def read_cluener(path: PathLike, nlp: NlpOrLang, *, spans_key: str = DEFAULT_SPANS_KEY) -> ReadResult:
    """Docs from CLUENER JSON lines `{"text", "label": {type: {entity: [[start, end_inclusive], ...]}}}`.

    Lines without "label" (test.json) give docs with an empty span group. Each span's text must
    equal its entity string; a mismatch is reported and the span skipped.
    """
    path = _existing_file(path)
    return _docs_from_records(path, _json_lines(path), _cluener_record, _as_nlp(nlp), spans_key, "CLUENER")


def read_cmeee(path: PathLike, nlp: NlpOrLang, *, spans_key: str = DEFAULT_SPANS_KEY) -> ReadResult:
    """Docs from a CMeEE JSON array `[{"text", "entities": [{start_idx, end_idx, type, entity}]}]`.

    Ends are inclusive and entities may nest. When "entity" is given, the span's text must equal it.
    Problems name the record by its 0-based index in the array.
    """
    path = _existing_file(path)
    return _docs_from_records(path, _json_array(path, "CMeEE"), _cmeee_record, _as_nlp(nlp), spans_key, "CMeEE")


def read_jsonl(
    path: PathLike,
    nlp: NlpOrLang,
    *,
    spans_key: str = DEFAULT_SPANS_KEY,
    use_tokens: bool = True,
    split_at_spans: bool = False,
) -> ReadResult:
    """Docs from the project's JSON lines `{"text": str, "spans": [{"start": int, "end": int, "label": str}]}`.

    Offsets are character offsets with the end exclusive (`text[start:end]`); "spans" may be left out
    for unlabelled text, and other keys (such as "meta") are ignored.

    use_tokens: a record with "tokens" (strings, or Prodigy-style objects with "text") becomes a Doc
        of exactly those words, spaced as in "text". Its spans are then taken from "token_spans"
        (`{"start", "end", "label"}` token indices, end exclusive) or from "spans" entries with
        Prodigy's "token_start"/"token_end" (end inclusive), else from the character offsets.
        Without tokens, or with use_tokens=False, `nlp` tokenizes the text.
    split_at_spans: cut tokens at the gold spans' character boundaries, so that an entity inside a
        token (`CD69` in `AIM)/CD69`, `NF-kappa B` in `B.`) is kept. This uses the gold boundaries,
        as nested-NER benchmarks usually do; a pipeline reading raw text does not see those cuts.
    """
    path = _existing_file(path)
    nlp = _as_nlp(nlp)
    report = ConversionReport(source=str(path))

    def make_doc(record: Any, text: str, spans: List[CharSpan], where: str) -> Doc:
        if use_tokens and isinstance(record, dict) and record.get("tokens") is not None:
            return _doc_from_record_tokens(nlp, record, text, spans, spans_key, report, where)
        doc = _split_at_span_boundaries(nlp, text, spans, report) if split_at_spans else None
        return _doc_with_char_spans(nlp, text, spans, spans_key, report, where, doc=doc)

    return _docs_from_records(path, _json_lines(path), _jsonl_record, nlp, spans_key, "jsonl", report, make_doc)


def _token_words(record: Dict[str, Any]) -> List[str]:
    """The record's tokens as strings; RecordError if "tokens" is not a list of strings or of objects with "text"."""
    tokens = record["tokens"]
    if not isinstance(tokens, list):
        raise RecordError(f'"tokens" must be a list of strings or of objects with "text", got {tokens!r}')
    words = []
    for i, token in enumerate(tokens):
        word = token.get("text") if isinstance(token, dict) else token
        if not isinstance(word, str) or not word or word.isspace():
            raise RecordError(f'tokens[{i}] must be a non-blank string (or an object with a "text" string), got {token!r}')
        words.append(word)
    return words


def _words_on_text(nlp: Language, text: str, words: List[str]) -> Tuple[Doc, List[int]]:
    """A Doc whose text is `text` and whose tokens are `words` (plus whitespace tokens where the
    gaps are wider than one space), and the doc index of each word. RecordError where a word is
    not the next non-whitespace text."""
    doc_words: List[str] = []
    spaces: List[bool] = []
    index: List[int] = []
    pos = 0

    def gap(until: int) -> None:
        whitespace = text[pos:until]
        if not whitespace:
            return
        if doc_words and not spaces[-1] and whitespace[0] == " ":
            spaces[-1], whitespace = True, whitespace[1:]
        if whitespace:  # spaCy keeps wider whitespace as tokens of its own
            trailing = whitespace.endswith(" ") and len(whitespace) > 1
            doc_words.append(whitespace[:-1] if trailing else whitespace)
            spaces.append(trailing)

    for i, word in enumerate(words):
        start = text.find(word, pos)
        if start < 0 or text[pos:start].strip():
            found = text[pos : pos + len(word) + 10]
            raise RecordError(
                f"tokens[{i}] {word!r} is not the next text at character {pos} (the text there is {found!r}); "
                "the tokens must spell out the text in order, separated only by whitespace"
            )
        gap(start)
        doc_words.append(word)
        spaces.append(False)
        index.append(len(doc_words) - 1)
        pos = start + len(word)
    if text[pos:].strip():
        raise RecordError(f"the tokens end at character {pos} but the text goes on: {text[pos:pos + 20]!r}")
    gap(len(text))
    doc = Doc(nlp.vocab, words=doc_words, spaces=spaces)
    assert doc.text == text, (doc.text, text)
    return doc, index


def _token_spans(record: Dict[str, Any], n_words: int) -> Tuple[Optional[List[TokenSpan]], List[str]]:
    """Spans in token indices (end exclusive) from "token_spans" or Prodigy's token_start/token_end;
    None if the record gives only character offsets. Entry errors are returned, not raised."""
    if record.get("token_spans") is not None:
        entries, exclusive, name = record["token_spans"], True, "token_spans"
        fields = ("start", "end", "label")
    elif isinstance(record.get("spans"), list) and any(
        isinstance(e, dict) and "token_start" in e for e in record["spans"]
    ):
        entries, exclusive, name = record["spans"], False, "spans"
        fields = ("token_start", "token_end", "label")
    else:
        return None, []
    if not isinstance(entries, list):
        raise RecordError(f'"{name}" must be a list of objects with {", ".join(fields)}, got {entries!r}')
    spans, errors = [], []
    for i, entry in enumerate(entries):
        if not (isinstance(entry, dict) and set(fields) <= entry.keys()):
            errors.append(f"{name}[{i}] must be an object with {', '.join(fields)}, got {entry!r}")
            continue
        start, end, label = (entry[f] for f in fields)
        if not (_is_int(start) and _is_int(end)) or not isinstance(label, str) or not label.strip():
            errors.append(f"{name}[{i}] {entry!r}: token offsets must be integers and the label a non-empty string")
            continue
        end = end if exclusive else end + 1
        if not 0 <= start < end <= n_words:
            convention = "end exclusive" if exclusive else "token_end inclusive"
            errors.append(f"{name}[{i}] {entry!r} is outside the {n_words} tokens or empty ({convention})")
            continue
        spans.append((start, end, label))
    return spans, errors


def _doc_from_record_tokens(
    nlp: Language, record: Dict[str, Any], text: str, char_spans: List[CharSpan], spans_key: str,
    report: ConversionReport, where: str,
) -> Doc:
    """A Doc of the record's own tokens with its gold spans; token spans are checked against
    the character spans when the record has both."""
    doc, index = _words_on_text(nlp, text, _token_words(record))
    token_spans, errors = _token_spans(record, len(index))
    for error in errors:
        report.add_problem("malformed", f"{where}: {error}")
    report.n_docs_from_tokens += 1
    if token_spans is None:
        return _doc_with_char_spans(nlp, text, char_spans, spans_key, report, where, doc=doc)
    kept: Dict[Tuple[int, int, str], Span] = {}
    for start, end, label in token_spans:
        span = Span(doc, index[start], index[end - 1] + 1, label=label)
        if (span.start, span.end, label) in kept:
            report.n_duplicates += 1
        kept[(span.start, span.end, label)] = span
    # Cross-checked only when every token span was usable: a bad entry is reported once, as malformed.
    if record.get("token_spans") is not None and char_spans and not errors:
        by_chars = {(c.start, c.end_exclusive, c.label) for c in char_spans}
        by_tokens = {(s.start_char, s.end_char, s.label_) for s in kept.values()}
        for start, end, label in sorted(by_chars ^ by_tokens, key=str):
            side = "spans but not token_spans" if (start, end, label) in by_chars else "token_spans but not spans"
            report.add_problem(
                "mismatched", f"{where}: [{start}, {end}) {label!r} {text[start:end]!r} is in {side}; "
                "the two lists must give the same entities (token_spans are used)"
            )
    doc.spans[spans_key] = [kept[key] for key in sorted(kept)]
    report.add_doc(doc.spans[spans_key], empty=not text.strip())
    return doc


def _split_at_span_boundaries(nlp: Language, text: str, spans: List[CharSpan], report: ConversionReport) -> Doc:
    """`nlp`'s tokens of `text`, cut where a usable gold span starts or ends inside a token."""
    doc = nlp.make_doc(text)
    usable = [s for s in spans if _char_span_problem(s, text) is None]
    cuts = {offset for s in usable for offset in (s.start, s.end_exclusive)}
    words, spaces, n_split = [], [], 0
    for token in doc:
        inside = sorted(c - token.idx for c in cuts if token.idx < c < token.idx + len(token.text))
        pieces = [token.text[a:b] for a, b in zip([0] + inside, inside + [len(token.text)])]
        n_split += len(pieces) > 1
        words += pieces
        spaces += [False] * (len(pieces) - 1) + [bool(token.whitespace_)]
    if not n_split:
        return doc
    report.n_tokens_split += n_split
    report.n_spans_aligned_by_split += sum(
        doc.char_span(s.start, s.end_exclusive, alignment_mode="strict") is None for s in usable
    )
    return Doc(nlp.vocab, words=words, spaces=spaces)


# ---------------------------------------------------------------------------------------------
# Column files with BIO / IOB1 / BIOES tags


SCHEMES = {"auto": "auto", "bio": "bio", "iob2": "bio", "iob1": "iob1", "bioes": "bioes", "iobes": "bioes", "bilou": "bioes"}
SCHEME_PREFIXES = {"bio": "BI", "iob1": "BI", "bioes": "BIMESLU", "auto": "BIMESLU"}
# BILOU and BMES spell BIOES's prefixes differently; read them as BIOES.
PREFIX_ALIASES = {"L": "E", "U": "S", "M": "I"}
COLUMN_SEPARATOR = re.compile(r"[ \t]+")  # not str.split(): a character column may be U+3000 or U+00A0


@dataclass(frozen=True)
class TaggedToken:
    """One token line of a column file: where it is, the token, and its tag as (prefix, type)."""

    line_no: int
    token: str
    prefix: str  # "O", "B", "I", "E" or "S"
    label: Optional[str]

    @property
    def tag(self) -> str:
        return self.prefix if self.label is None else f"{self.prefix}-{self.label}"


Sentence = List[TaggedToken]


def _parse_tag(tag: str, allowed_prefixes: str) -> Optional[Tuple[str, Optional[str]]]:
    """(prefix, type) for "O" or "P-TYPE" with P in `allowed_prefixes`, aliases resolved; None if malformed."""
    if tag == "O":
        return "O", None
    prefix, _, label = tag.partition("-")
    if len(prefix) != 1 or prefix not in allowed_prefixes or not label:
        return None
    return PREFIX_ALIASES.get(prefix, prefix), label


def _column_lines(path: Path) -> List[Tuple[int, List[str]]]:
    """(line number, columns) for every line of a column file; a blank line has no columns."""
    lines = []
    with path.open(encoding="utf-8-sig") as file:
        for line_no, line in enumerate(file, start=1):
            stripped = line.strip(" \t\r\n")
            lines.append((line_no, COLUMN_SEPARATOR.split(stripped) if stripped else []))
    return lines


def _expected_column_count(path: Path, lines: List[Tuple[int, List[str]]], docstart: Optional[str]) -> int:
    """The most common column count of the token lines; FormatError if there are none or no tag column."""
    counts = Counter(len(cols) for _, cols in lines if cols and cols[0] != docstart)
    if not counts:
        raise FormatError(f"{path}: not a BIO column file: it has no token lines")
    n_columns = counts.most_common(1)[0][0]
    if n_columns < 2:
        line_no, cols = next((n, c) for n, c in lines if c and c[0] != docstart)
        raise FormatError(
            f"{path}: not a BIO column file: line {line_no} {' '.join(cols)!r} has no tag column; "
            "expected 'token ... tag' on each line"
        )
    return n_columns


def _tagged_token(
    path: Path, line_no: int, cols: List[str], n_columns: int, tag_column: int, prefixes: str
) -> Tuple[TaggedToken, Optional[str]]:
    """The token of one line, and a problem message if the line is malformed (its token is then tagged O)."""
    if len(cols) != n_columns:
        problem = f"{len(cols)} columns where the file has {n_columns}; kept {cols[0]!r} tagged O"
    else:
        parsed = _parse_tag(cols[tag_column], prefixes)
        if parsed is not None:
            return TaggedToken(line_no, cols[0], *parsed), None
        problem = (
            f"tag {cols[tag_column]!r} is not O or {'/'.join(prefixes)}-TYPE; "
            f"kept {cols[0]!r} tagged O (check --scheme and --tag-column)"
        )
    return TaggedToken(line_no, cols[0], "O", None), f"{path}: line {line_no}: {problem}"


def _read_tagged_documents(
    path: Path, tag_column: int, docstart: Optional[str], prefixes: str, report: ConversionReport
) -> List[List[Sentence]]:
    """The file as documents (split at `docstart` lines) of sentences (split at blank lines).

    Raises FormatError when the file has no tag column or more than half its token lines are malformed.
    """
    lines = _column_lines(path)
    n_columns = _expected_column_count(path, lines, docstart)
    if not -n_columns <= tag_column < n_columns:
        raise ValueError(f"{path}: tag_column {tag_column} does not exist; the file has {n_columns} columns")
    documents: List[List[Sentence]] = [[]]
    sentence: Sentence = []
    n_tokens, bad_lines = 0, []
    for line_no, cols in lines + [(len(lines) + 1, [])]:
        if cols and cols[0] != docstart:
            token, problem = _tagged_token(path, line_no, cols, n_columns, tag_column, prefixes)
            sentence.append(token)
            n_tokens += 1
            if problem:
                report.add_problem("malformed", problem)
                bad_lines.append(f"line {line_no} {' '.join(cols)!r}")
            continue
        if sentence:
            documents[-1].append(sentence)
            sentence = []
        if cols and documents[-1]:
            documents.append([])
    if len(bad_lines) > MAX_MALFORMED_SHARE * n_tokens:
        raise FormatError(
            f"{path}: not a BIO column file: {len(bad_lines)} of {n_tokens} token lines are malformed, "
            f"first {bad_lines[0]}; expected 'token ... tag' per line with O, B-X, I-X tags"
        )
    return [document for document in documents if document]


def _follows_same_type(sentence: Sentence, i: int) -> bool:
    """Whether token i directly follows an entity token of its own type."""
    return i > 0 and sentence[i - 1].prefix != "O" and sentence[i - 1].label == sentence[i].label


def _entity_starts(sentences: Iterable[Sentence]) -> Tuple[int, int]:
    """How many entities start with I- and how many B- tags do not directly follow their own type."""
    i_starts = b_elsewhere = 0
    for sentence in sentences:
        for i, token in enumerate(sentence):
            if token.prefix in "BI" and not _follows_same_type(sentence, i):
                i_starts += token.prefix == "I"
                b_elsewhere += token.prefix == "B"
    return i_starts, b_elsewhere


def detect_scheme(sentences: Iterable[Sentence]) -> Tuple[str, str]:
    """The tag scheme of a file, "bio", "iob1" or "bioes", and the reason, from its tags.

    Rule: any E-/S- (or L-/U-) tag means BIOES. Otherwise pick the reading under which fewer tags
    are errors: BIO forbids an I- that starts an entity, IOB1 a B- anywhere but directly after an
    entity of its own type. IOB1 wins only with strictly fewer errors, so a file with neither is BIO.
    (CoNLL-2003 train: 23427 entities start with I-, 2 B- tags break IOB1, so it is IOB1.)
    """
    sentences = list(sentences)
    if any(token.prefix in "ES" for sentence in sentences for token in sentence):
        return "bioes", "E-/S- tags present"
    i_starts, b_elsewhere = _entity_starts(sentences)
    reason = f"{i_starts} entities start with I-, {b_elsewhere} B- tags do not follow their own type"
    return ("iob1" if i_starts > b_elsewhere else "bio"), reason


def decode_tags(sentence: Sentence, scheme: str) -> Tuple[List[TokenSpan], List[Tuple[int, str]]]:
    """Token spans of a tagged sentence under `scheme`, and the tag-sequence errors (line, message).

    Errors are repaired, not dropped: an I-/E- that cannot continue an entity starts one (legal in
    IOB1, an error in BIO and BIOES), a B- that IOB1 does not allow there still starts one, and in
    BIOES an entity left open without E- ends where it stops.
    """
    spans: List[TokenSpan] = []
    errors: List[Tuple[int, str]] = []
    start: Optional[int] = None
    for i, token in enumerate(sentence + [TaggedToken(-1, "", "O", None)]):
        open_label = sentence[start].label if start is not None else None
        if token.prefix in "IE" and token.label == open_label:
            if token.prefix == "E":
                spans.append((start, i + 1, open_label))
                start = None
            continue
        if start is not None:
            if scheme == "bioes":
                last = sentence[i - 1]
                errors.append((last.line_no, f"entity {open_label} ends at {last.tag} without E-{open_label}"))
            spans.append((start, i, open_label))
            start = None
        previous = sentence[i - 1].tag if i else "the sentence start"
        if token.prefix in "IE" and scheme != "iob1":
            errors.append((token.line_no, f"{token.tag} follows {previous} in {scheme.upper()}; started an entity here"))
        if token.prefix == "B" and scheme == "iob1" and not _follows_same_type(sentence, i):
            errors.append(
                (token.line_no, f"{token.tag} follows {previous}, but IOB1 uses B- only between two entities "
                 f"of one type; read it as the start of an entity")
            )
        if token.prefix in "SE":
            spans.append((i, i + 1, token.label))
        elif token.prefix != "O":
            start = i
    return spans, errors


def _group_size(group: Union[str, int]) -> Optional[int]:
    """Sentences per doc: 1 for "sentence", None (all) for "document", or a positive int."""
    if group == "sentence":
        return 1
    if group == "document":
        return None
    if isinstance(group, str) and group.isdigit():
        group = int(group)
    if not _is_int(group) or group < 1:
        raise ValueError(f'group must be "sentence", "document" or a positive number of sentences, got {group!r}')
    return group


def _chunks(sentences: List[Sentence], size: Optional[int]) -> Iterator[List[Sentence]]:
    size = size or len(sentences)
    for i in range(0, len(sentences), size):
        yield sentences[i : i + size]


def _doc_from_sentences(
    vocab: Vocab, sentences: List[Sentence], scheme: str, char_level: bool, spans_key: str, path: Path,
    report: ConversionReport,
) -> Doc:
    """One Doc whose tokens are the file's tokens, sentence starts set, decoded spans in `doc.spans`."""
    words = [token.token for sentence in sentences for token in sentence]
    sent_starts = [i == 0 for sentence in sentences for i in range(len(sentence))]
    spaces = [not char_level] * len(words)
    spaces[-1] = False
    doc = Doc(vocab, words=words, spaces=spaces, sent_starts=sent_starts)
    spans: List[Span] = []
    offset = 0
    for sentence in sentences:
        token_spans, errors = decode_tags(sentence, scheme)
        spans.extend(Span(doc, offset + start, offset + end, label=label) for start, end, label in token_spans)
        for line_no, message in errors:
            report.add_problem("malformed", f"{path}: line {line_no}: {message}")
        offset += len(sentence)
    doc.spans[spans_key] = spans
    report.add_doc(spans)
    return doc


def read_bio(
    path: PathLike,
    nlp: NlpOrLang,
    *,
    spans_key: str = DEFAULT_SPANS_KEY,
    scheme: str = "auto",
    tag_column: int = -1,
    char_level: bool = False,
    group: Union[str, int] = "sentence",
    docstart: Optional[str] = "-DOCSTART-",
) -> ReadResult:
    """Docs from a column file: a token and its tag on each line, a blank line between sentences.

    scheme: "bio" (= "iob2"), "iob1" (CoNLL-2003), "bioes" (= "iobes", "bilou"; M- reads as I-) or
        "auto", which picks one with `detect_scheme` and notes it in the report.
    tag_column: the column holding the tag (the token is column 0).
    char_level: one character per line (People's Daily): tokens are joined without spaces.
        Otherwise words are joined with single spaces. Either way the Doc's tokens are the file's.
    group: "sentence" (one Doc each), "document" (one per `docstart` section, sentence starts set)
        or a number of sentences per Doc.
    docstart: first column of document-boundary lines, or None.
    Bad lines are reported and their token kept tagged O; tag-sequence errors are repaired and
    reported. FormatError when there is no tag column or more than half the token lines are bad.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"Unknown tag scheme {scheme!r}; use one of {', '.join(SCHEMES)}")
    group_size = _group_size(group)
    path = _existing_file(path)
    report = ConversionReport(source=str(path))
    scheme = SCHEMES[scheme]
    documents = _read_tagged_documents(path, tag_column, docstart, SCHEME_PREFIXES[scheme], report)
    if scheme == "auto":
        scheme, reason = detect_scheme(sentence for document in documents for sentence in document)
        report.notes.append(f"tag scheme: {scheme} (detected: {reason})")
    vocab = _as_nlp(nlp).vocab
    docs = [
        _doc_from_sentences(vocab, chunk, scheme, char_level, spans_key, path, report)
        for document in documents
        for chunk in _chunks(document, group_size)
    ]
    return docs, report


# ---------------------------------------------------------------------------------------------
# Writing and the format table


def write_docbin(docs: Iterable[Doc], output_path: PathLike) -> Path:
    """Save docs (with their span groups and user data) as a .spacy DocBin; parent folders are created."""
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    DocBin(docs=docs, store_user_data=True).to_disk(output_path)
    return output_path


@dataclass(frozen=True)
class FormatSpec:
    """A convertible format: its reader, default language, fixed reader arguments and a description."""

    reader: Callable[..., ReadResult]
    lang: Optional[str]
    reader_kwargs: Mapping[str, Any]
    description: str


_BIO_WORDS = FormatSpec(
    read_bio, "en", {}, "column file, one word per line, BIO/IOB1/BIOES tags, -DOCSTART- lines (CoNLL-2003)"
)
_BIO_CHARS = FormatSpec(
    read_bio, "zh", {"char_level": True}, "column file, one character per line, BIO/IOB1/BIOES tags (People's Daily)"
)
FORMATS: Dict[str, FormatSpec] = {
    "cluener": FormatSpec(read_cluener, "zh", {}, "CLUENER2020 JSON lines, end-inclusive offsets"),
    "cmeee": FormatSpec(read_cmeee, "zh", {}, "CMeEE JSON array, end-inclusive offsets, nested entities"),
    "jsonl": FormatSpec(read_jsonl, None, {}, 'this project\'s JSON lines {"text", "spans": [{"start", "end", "label"}]}'),
    "bio": _BIO_WORDS,
    "bio-char": _BIO_CHARS,
    "conll": _BIO_WORDS,
    "peoples_daily": _BIO_CHARS,
}


def convert(
    fmt: str,
    input_path: PathLike,
    output_path: PathLike,
    *,
    lang: Optional[str] = None,
    spans_key: str = DEFAULT_SPANS_KEY,
    strict: bool = False,
    **reader_kwargs: Any,
) -> ConversionReport:
    """Read `input_path` as `fmt`, write the docs to `output_path` as a DocBin, and return the report.

    lang: the blank pipeline that tokenizes ("zh": one token per character); defaults per format,
        and required for "jsonl", whose tokens it decides.
    strict: raise ConversionProblemsError (writing nothing) if any span or line had a problem.
    reader_kwargs: passed on to the reader, e.g. scheme= or group= for the column formats.
    Raises FormatError when the file is not in the format at all.
    """
    if fmt not in FORMATS:
        raise ValueError(f"Unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    spec = FORMATS[fmt]
    lang = lang or spec.lang
    if lang is None:
        raise ValueError(f"Format {fmt!r} needs a language, which decides the tokens: pass lang='zh', 'en', ...")
    kwargs = {**spec.reader_kwargs, **reader_kwargs}
    docs, report = spec.reader(input_path, spacy.blank(lang), spans_key=spans_key, **kwargs)
    if strict:
        report.raise_if(0)
    write_docbin(docs, output_path)
    return report


def write_raw_text(
    inputs: Sequence[PathLike], output: PathLike, *, exclude: Sequence[PathLike] = ()
) -> Dict[str, int]:
    """Unlabelled text for `spacy pretrain`: the texts of converted DocBins as JSONL records
    {"text": ...} (what spaCy's `spacy.JsonlCorpus.v1` reads), each distinct text once.

    Texts found in the `exclude` DocBins are left out, so that a dev or test set used to report
    scores is not pretrained on. Empty texts are skipped and counted. Returns the counts
    (read, written, duplicates, excluded, empty).
    """
    vocab = Vocab()

    def texts(path: PathLike) -> Iterator[str]:
        path = _existing_file(path)
        try:
            doc_bin = DocBin().from_disk(path)
        except Exception as error:  # srsly/msgpack errors have no common base class
            raise FormatError(f"{path}: not a .spacy DocBin ({error})") from error
        for doc in doc_bin.get_docs(vocab):
            yield doc.text

    excluded = {text for path in exclude for text in texts(path)}
    counts = {"read": 0, "written": 0, "duplicates": 0, "excluded": 0, "empty": 0}
    seen = set()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w", encoding="utf8") as file_:
        for path in inputs:
            for text in texts(path):
                counts["read"] += 1
                if not text.strip():
                    counts["empty"] += 1
                elif text in excluded:
                    counts["excluded"] += 1
                elif text in seen:
                    counts["duplicates"] += 1
                else:
                    seen.add(text)
                    file_.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
                    counts["written"] += 1
    return counts
