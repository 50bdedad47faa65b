"""Converters from public NER formats to spaCy Docs with gold spans in `doc.spans[spans_key]`.

Readers return `(docs, report)`. Spans may nest and overlap. A span that cannot be converted
faithfully (offsets outside the text, off token boundaries, text that differs from the entity string
the file gives, a malformed entry) is skipped and listed in the report with file, line and offsets;
nothing is dropped silently. `convert` reads a file and writes a `DocBin` for `spacy train`.

Formats (see FORMATS): CLUENER JSON lines, CMeEE JSON array, the project's own JSONL
(`{"text", "spans": [{"start", "end", "label"}]}`, end exclusive), and column files with BIO, IOB1
or BIOES tags, one word (CoNLL-2003) or one character (People's Daily) per line.

One module per format (`cluener`, `cmeee`, `jsonl`, `bio`), what they share in `core`, and
`write_raw_text` (unlabelled text for `spacy pretrain`) in `raw_text`. Every name is importable
from `spacy_globalpointer.convert`.
"""
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional

import spacy

from .bio import (
    COLUMN_SEPARATOR, PREFIX_ALIASES, SCHEME_PREFIXES, SCHEMES, Sentence, TaggedToken, decode_tags, detect_scheme,
    read_bio,
)
from .cluener import read_cluener
from .cmeee import read_cmeee
from .core import (
    ANNOTATION_KEYS, DEFAULT_SPANS_KEY, MAX_LISTED_PROBLEMS, MAX_MALFORMED_SHARE, CharSpan, ConversionProblemsError,
    ConversionReport, DocMaker, FormatError, NlpOrLang, PathLike, ReadResult, RecordError, RecordParser, TokenSpan,
    write_docbin,
)
from .jsonl import read_jsonl
from .raw_text import write_raw_text

__all__ = [
    "ANNOTATION_KEYS",
    "COLUMN_SEPARATOR",
    "CharSpan",
    "ConversionProblemsError",
    "ConversionReport",
    "DEFAULT_SPANS_KEY",
    "DocMaker",
    "FORMATS",
    "FormatError",
    "FormatSpec",
    "MAX_LISTED_PROBLEMS",
    "MAX_MALFORMED_SHARE",
    "NlpOrLang",
    "PREFIX_ALIASES",
    "PathLike",
    "ReadResult",
    "RecordError",
    "RecordParser",
    "SCHEMES",
    "SCHEME_PREFIXES",
    "Sentence",
    "TaggedToken",
    "TokenSpan",
    "convert",
    "decode_tags",
    "detect_scheme",
    "read_bio",
    "read_cluener",
    "read_cmeee",
    "read_jsonl",
    "write_docbin",
    "write_raw_text",
]


# ---------------------------------------------------------------------------------------------
# The format table


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
