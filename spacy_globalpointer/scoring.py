"""Recall by kind of gold span: nested or flat, inner or outer, and longer than the band.

A gold span is *nested* when another gold span of the same doc (with other offsets) lies
inside it or contains it; *inner* when it lies inside another, *outer* when it contains
another (a middle layer is both); *flat* when it is not nested. Spans that merely cross
(overlap without containment) are flat. *long* spans have more tokens than
`max_span_length`, so a banded head can never predict them.
"""
from collections import defaultdict
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

from spacy.scorer import Scorer
from spacy.tokens import Doc, Span
from spacy.training import Example

DEFAULT_SPANS_KEY = "sc"
KINDS = ("nested", "flat", "inner", "outer")
CharSpan = Tuple[int, int, str]  # start_char, end_char, label


def span_kinds(spans: List[Tuple[int, int]]) -> List[Set[str]]:
    """The kinds of each (start, end) among `spans`: "inner", "outer", "nested" or "flat"."""
    kinds = []
    for i, (start, end) in enumerate(spans):
        found = set()
        for j, (other_start, other_end) in enumerate(spans):
            if i == j or (start, end) == (other_start, other_end):
                continue
            if other_start <= start and end <= other_end:
                found.add("inner")
            elif start <= other_start and other_end <= end:
                found.add("outer")
        kinds.append(found | {"nested"} if found else {"flat"})
    return kinds


def recall_by_kind(
    examples: Iterable[Example], key: str, *, max_span_length: Optional[int] = None
) -> Dict[str, Optional[float]]:
    """`spans_{key}_{kind}_r` for each kind: the share of gold spans of that kind that the
    prediction has, with the same characters and label. None where no gold span is of the kind."""
    found: Dict[str, int] = defaultdict(int)
    total: Dict[str, int] = defaultdict(int)
    for eg in examples:
        gold = _char_spans(eg.reference, key)
        predicted = set(_char_spans(eg.predicted, key))
        token_lengths = [len(span) for span in eg.reference.spans.get(key, [])]
        for span, kinds, n_tokens in zip(gold, span_kinds([(s, e) for s, e, _ in gold]), token_lengths):
            if max_span_length is not None and n_tokens > max_span_length:
                kinds = kinds | {"long"}
            for kind in kinds:
                total[kind] += 1
                found[kind] += span in predicted
    kinds = KINDS + (("long",) if max_span_length is not None else ())
    return {f"spans_{key}_{kind}_r": (found[kind] / total[kind] if total[kind] else None) for kind in kinds}


def _char_spans(doc: Doc, key: str) -> List[CharSpan]:
    return [(span.start_char, span.end_char, span.label_) for span in doc.spans.get(key, [])]


def global_pointer_score(examples: Iterable[Example], **kwargs) -> Dict[str, Any]:
    """Span P/R/F (overall and per type) for `doc.spans[spans_key]`, overlaps allowed;
    recall of nested, flat, inner and outer gold spans (and of spans longer than
    `max_span_length`, when it is set; see `scoring.py`); plus entity scores when the
    component writes `doc.ents`."""
    examples = list(examples)
    key = kwargs.get("spans_key", DEFAULT_SPANS_KEY)
    attr = f"spans_{key}"
    scores = Scorer.score_spans(
        examples,
        attr,
        getter=lambda doc, attr: doc.spans.get(key, []),
        has_annotation=lambda doc: key in doc.spans,
        allow_overlap=True,
        labels=kwargs.get("labels"),
    )
    scores.update(recall_by_kind(examples, key, max_span_length=kwargs.get("max_span_length")))
    if kwargs.get("write_ents"):
        # Gold entities are the reference's doc.ents where it has them, else its spans
        # under the key: the flat prediction is scored against the (possibly nested)
        # gold it was chosen from, so nested gold caps ents_r below 1.
        def ents_getter(doc: Doc, attr: str) -> Iterable[Span]:
            return doc.ents if doc.has_annotation("ENT_IOB") else doc.spans.get(key, [])

        scores.update(
            Scorer.score_spans(
                examples,
                "ents",
                getter=ents_getter,
                has_annotation=lambda doc: doc.has_annotation("ENT_IOB") or key in doc.spans,
            )
        )
    return scores
