"""Column files with BIO / IOB1 / BIOES tags: one word (CoNLL-2003) or one character (People's Daily) per line."""
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Tuple, Union

from spacy.tokens import Doc, Span
from spacy.vocab import Vocab

from .core import (
    DEFAULT_SPANS_KEY, MAX_MALFORMED_SHARE, ConversionReport, FormatError, NlpOrLang, PathLike, ReadResult,
    TokenSpan, _as_nlp, _existing_file, _is_int,
)

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
