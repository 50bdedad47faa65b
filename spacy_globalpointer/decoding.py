"""Decoding: from the head's logits to spans.

A candidate span is predicted when its probability sigmoid(a * s + b) (a = 1, b = 0
unless calibrated) is above its label's threshold t, that is when its logit s is above
the label's cut (logit(t) - b) / a (`logit_cuts`). Decoding compares the logits with
the cuts (`candidates_above`), admits the candidates of a nested threshold that nest in
or around a prediction (`keep_nested`) and picks the flat `doc.ents`
(`select_non_overlapping`).
"""
from typing import Any, Iterable, List, Sequence, Tuple

import numpy
from spacy.tokens import Span
from thinc.api import get_array_module
from thinc.types import ArrayXd

from .model import SpanScores


def logit_cuts(thresholds: Sequence[float], scales: Sequence[float], biases: Sequence[float]) -> numpy.ndarray:
    """Per-label cuts on the head's logits, float64.

    p = sigmoid(a * s + b) > t  <=>  s > (logit(t) - b) / a  (a > 0), so decoding compares
    the logits with one cut per label and never takes a sigmoid of the whole score array.
    t = 0 gives -inf (every candidate), t = 1 gives +inf (none), t = 0.5 with a = 1, b = 0
    gives exactly 0.
    """
    t = numpy.asarray(thresholds, dtype="float64")
    with numpy.errstate(divide="ignore"):
        logit_t = numpy.log(t / (1.0 - t))
    return (logit_t - numpy.asarray(biases, dtype="float64")) / numpy.asarray(scales, dtype="float64")


def cut_bar(cuts: numpy.ndarray, dtype: Any) -> numpy.ndarray:
    """The cuts in the scores' dtype, clipped to its finite range: what is not a candidate
    holds the dtype's minimum and never passes, even at threshold 0 (cut -inf)."""
    limits = numpy.finfo(dtype)
    return numpy.clip(cuts, limits.min, limits.max).astype(dtype)


def candidates_above(ops: Any, scores: SpanScores, cuts: numpy.ndarray) -> Tuple[numpy.ndarray, ...]:
    """Every candidate span whose logit is above its label's cut, as numpy arrays
    (doc index, label index, start, width - 1, logit), gathered group by group.

    One comparison per length group (`above_threshold`, the cuts broadcast on the label
    axis). Only spans inside their doc count: checked on what passed rather than by
    masking the whole (mostly empty) score array.
    """
    found: List[List[numpy.ndarray]] = [[numpy.zeros((0,), "i")] * 4 + [numpy.zeros((0,), "f")]]
    lengths = numpy.asarray(scores.lengths)
    for group, ids in zip(scores.groups, scores.doc_ids):
        if not group.size:
            continue
        bar = cut_bar(cuts, group.dtype)
        where = ops.xp.nonzero(above_threshold(group, bar))
        # Gathered on the device, then two copies to the host (indices, logits) per group.
        values = ops.to_numpy(group[where])
        rows, label_ids, starts, offsets = ops.to_numpy(ops.xp.stack(where)) if len(values) else (
            numpy.zeros((4, 0), dtype="int64"))
        doc_ids = numpy.asarray(ids)[rows]
        inside = starts + offsets < lengths[doc_ids]
        found.append([doc_ids[inside]] + [x[inside] for x in (label_ids, starts, offsets, values)])
    return tuple(numpy.concatenate(column) for column in zip(*found))


def keep_nested(found: Tuple[numpy.ndarray, ...], cuts: numpy.ndarray) -> Tuple[numpy.ndarray, ...]:
    """Of `candidates_above`'s rows (taken at a lower cut), those above `cuts` (the
    predictions) and those that nest in or around a prediction of their doc: strictly
    inside it or containing it, whatever the labels. One level: a candidate admitted this
    way admits no other."""
    doc_ids, label_ids, starts, offsets, logits = found
    ends = starts + offsets
    keep = logits > cut_bar(cuts, logits.dtype)[label_ids]
    # The rows of each doc, from one sort (not a scan of every row for each doc).
    order = numpy.argsort(doc_ids, kind="stable")
    sorted_ids = doc_ids[order]
    for mine in numpy.split(order, numpy.flatnonzero(sorted_ids[1:] != sorted_ids[:-1]) + 1):
        predicted, others = mine[keep[mine]], mine[~keep[mine]]
        if not predicted.size or not others.size:
            continue
        p_start, p_end = starts[predicted][None, :], ends[predicted][None, :]
        c_start, c_end = starts[others][:, None], ends[others][:, None]
        inside = (p_start <= c_start) & (c_end <= p_end)
        around = (c_start <= p_start) & (p_end <= c_end)
        same = (p_start == c_start) & (p_end == c_end)
        keep[others] = ((inside | around) & ~same).any(axis=1)
    return tuple(column[keep] for column in found)


def calibrated_logits(
    logits: numpy.ndarray, label_ids: numpy.ndarray, scales: numpy.ndarray, biases: numpy.ndarray
) -> numpy.ndarray:
    """z = a * s + b with each span's label's (a, b), float64: the order of the probabilities."""
    return scales[label_ids] * logits.astype("float64") + biases[label_ids]


def sigmoid(z: numpy.ndarray) -> numpy.ndarray:
    """1 / (1 + exp(-z)) without overflow, float32 (what attrs["scores"] holds)."""
    z = numpy.asarray(z, dtype="float64")
    e = numpy.exp(-numpy.abs(z))
    return numpy.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype("float32")


def above_threshold(scores: ArrayXd, threshold: Any) -> ArrayXd:
    """Bool mask, True where a span's score passes `threshold`: the one place decisions
    are made. scores: any array with the labels on axis 1 (a `SpanScores` group is
    (docs, labels, n, band)); threshold: a logit, or one logit per label."""
    if numpy.ndim(threshold) == 1:
        xp = get_array_module(scores)
        threshold = xp.asarray(threshold, dtype=scores.dtype).reshape((1, -1) + (1,) * (scores.ndim - 2))
    return scores > threshold


def select_non_overlapping(spans: Iterable[Span], scores: Iterable[float]) -> List[Span]:
    """Greedy flat decoding: take spans by descending score (any scale in the order of the
    probabilities), skip any that overlaps a taken one.

    Ties go to the longer span, then the earlier one.
    """
    ranked = sorted(zip(spans, scores), key=lambda x: (-float(x[1]), -len(x[0]), x[0].start))
    if not ranked:
        return []
    taken = numpy.zeros(len(ranked[0][0].doc), dtype="bool")
    chosen = []
    for span, _ in ranked:
        if not taken[span.start : span.end].any():
            taken[span.start : span.end] = True
            chosen.append(span)
    return sorted(chosen, key=lambda s: s.start)
