"""This project's JSON lines: character spans, end exclusive, or the record's own tokens and token spans."""
from typing import Any, Dict, List, Optional, Tuple

from spacy.language import Language
from spacy.tokens import Doc, Span

from .core import (
    DEFAULT_SPANS_KEY, CharSpan, ConversionReport, NlpOrLang, PathLike, ReadResult, RecordError, TokenSpan,
    _as_nlp, _char_span_problem, _doc_with_char_spans, _docs_from_records, _existing_file, _is_int, _json_lines,
    _listed_spans_record, span_entries,
)


def _jsonl_record(record: Any) -> Tuple[str, List[CharSpan], List[str]]:
    """Text, spans and entry errors of a record `{"text", "spans": [{"start", "end", "label"}]}`."""
    return _listed_spans_record(record, "spans", ("start", "end", "label"), None, end_inclusive=False)


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
    spans: List[TokenSpan] = []
    errors: List[str] = []
    for i, entry, (start, end, label) in span_entries(entries, name, fields, errors):
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
