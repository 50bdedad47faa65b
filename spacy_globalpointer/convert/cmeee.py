"""CMeEE: one JSON array of records, entities listed with end-inclusive offsets, nested."""
from typing import Any, List, Tuple

from .core import (
    DEFAULT_SPANS_KEY, CharSpan, NlpOrLang, PathLike, ReadResult, _as_nlp, _docs_from_records, _existing_file,
    _json_array, _listed_spans_record,
)


def _cmeee_record(record: Any) -> Tuple[str, List[CharSpan], List[str]]:
    """Text, spans and entry errors of a CMeEE record `{"text", "entities": [{start_idx, end_idx, type, entity}]}`."""
    return _listed_spans_record(record, "entities", ("start_idx", "end_idx", "type"), "entity", end_inclusive=True)


def read_cmeee(path: PathLike, nlp: NlpOrLang, *, spans_key: str = DEFAULT_SPANS_KEY) -> ReadResult:
    """Docs from a CMeEE JSON array `[{"text", "entities": [{start_idx, end_idx, type, entity}]}]`.

    Ends are inclusive and entities may nest. When "entity" is given, the span's text must equal it.
    Problems name the record by its 0-based index in the array.
    """
    path = _existing_file(path)
    return _docs_from_records(path, _json_array(path, "CMeEE"), _cmeee_record, _as_nlp(nlp), spans_key, "CMeEE")
