"""CLUENER2020: JSON lines, entities listed by type and surface with end-inclusive offsets."""
from typing import Any, List, Tuple

from .core import (
    DEFAULT_SPANS_KEY, CharSpan, NlpOrLang, PathLike, ReadResult, RecordError, _as_nlp, _docs_from_records,
    _existing_file, _is_int, _json_lines, _record_text,
)


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


def read_cluener(path: PathLike, nlp: NlpOrLang, *, spans_key: str = DEFAULT_SPANS_KEY) -> ReadResult:
    """Docs from CLUENER JSON lines `{"text", "label": {type: {entity: [[start, end_inclusive], ...]}}}`.

    Lines without "label" (test.json) give docs with an empty span group. Each span's text must
    equal its entity string; a mismatch is reported and the span skipped.
    """
    path = _existing_file(path)
    return _docs_from_records(path, _json_lines(path), _cluener_record, _as_nlp(nlp), spans_key, "CLUENER")
