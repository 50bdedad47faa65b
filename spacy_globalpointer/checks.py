"""Checks of the component's settings and inputs, and the upgrade of a cfg saved when
thresholds were logits."""
import math
import numbers
import warnings
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy
from spacy.tokens import Doc

from .decoding import logit_cuts
from .model import SpanScores

# Written to cfg since thresholds and scores are probabilities. A saved cfg without it is
# from before, when `threshold` was a logit: loading converts it (see upgrade_saved_cfg).
SCORE_SCALE = "probability"


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_probability(value: Any, what: str, where: str = "") -> float:
    """`value` as a float in [0, 1]; ValueError naming `what` (and `where`) otherwise."""
    if not _is_number(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"global_pointer: {what} must be a probability in [0, 1], got {value!r}{where}.")
    return float(value)


def _check_threshold(threshold: Any, name: str = "global_pointer") -> float:
    if _is_number(threshold) and math.isfinite(threshold) and not 0.0 <= threshold <= 1.0:
        # Most likely a logit from a config or pipeline written before thresholds were
        # probabilities: say what the old value means now and how to load such a pipeline.
        raise ValueError(
            f"global_pointer: threshold must be a probability in [0, 1], got {threshold!r} "
            f"(component {name!r}). Thresholds used to be logits: "
            f"a logit threshold s is the probability 1 / (1 + exp(-s)) now, and the old default "
            f"0.0 is 0.5. To load a pipeline saved with a logit threshold, override it when "
            f"loading, e.g. spacy.load(path, config={{'components': {{{name!r}: {{'threshold': "
            f"0.5}}}}}}): the logit saved in its cfg is then converted, keeping its decisions."
        )
    return _check_probability(threshold, "threshold", f" (component {name!r})")


def _check_nested_threshold(value: Any, name: str = "global_pointer") -> Optional[float]:
    if value is None:
        return None
    return _check_probability(value, "nested_threshold", f" (component {name!r}; None turns it off)")


def _check_thresholds(thresholds: Any, labels: Sequence[str]) -> Dict[str, float]:
    """Per-label thresholds as a plain dict; ValueError naming the label and value at fault.

    Labels are only checked once the component has them (after initialize or loading).
    """
    if not isinstance(thresholds, Mapping):
        raise ValueError(
            f"global_pointer: thresholds must be a dict of label -> probability, got {thresholds!r}."
        )
    checked = {}
    for label, value in thresholds.items():
        if not isinstance(label, str):
            raise ValueError(f"global_pointer: thresholds keys must be labels (strings), got {label!r}.")
        checked[label] = _check_probability(value, f"thresholds[{label!r}]")
        if labels and label not in labels:
            raise ValueError(
                f"global_pointer: thresholds[{label!r}] = {value!r} names a label the component "
                f"does not have; its labels are {list(labels)}."
            )
    return checked


def _check_calibration(calibration: Any, labels: Sequence[str]) -> Dict[str, Dict[str, float]]:
    """Per-label Platt parameters {label: {"scale": a > 0, "bias": b}} as a plain dict."""
    if not isinstance(calibration, Mapping):
        raise ValueError(
            f"global_pointer: calibration must be a dict of label -> {{'scale', 'bias'}}, got {calibration!r}."
        )
    checked = {}
    for label, params in calibration.items():
        if labels and label not in labels:
            raise ValueError(
                f"global_pointer: calibration names label {label!r}, which the component does not "
                f"have; its labels are {list(labels)}."
            )
        scale = params.get("scale") if isinstance(params, Mapping) else None
        bias = params.get("bias") if isinstance(params, Mapping) else None
        if not (_is_number(scale) and math.isfinite(scale) and scale > 0 and _is_number(bias) and math.isfinite(bias)):
            raise ValueError(
                f"global_pointer: calibration[{label!r}] must be {{'scale': a, 'bias': b}} with a "
                f"finite a > 0 and a finite b, got {params!r}."
            )
        checked[label] = {"scale": float(scale), "bias": float(bias)}
    return checked


def threshold_for_logit(logit: float, where: str) -> float:
    """The probability threshold that decides exactly as the old rule s > logit did.

    The old rule compared float32 scores with float32(logit); the new one compares them
    with float32(logit_cuts(t)). sigmoid(logit) is nudged by ulps until both are the same.
    """
    if not (_is_number(logit) and math.isfinite(logit)):
        raise ValueError(f"global_pointer: the logit threshold {logit!r} saved in {where} is not a finite number.")
    limits = numpy.finfo("float32")
    wanted = numpy.float32(numpy.clip(logit, limits.min, limits.max))
    t = 1.0 / (1.0 + math.exp(-logit)) if logit >= 0 else math.exp(logit) / (1.0 + math.exp(logit))
    for _ in range(16):
        got = numpy.float32(numpy.clip(logit_cuts([t], [1.0], [0.0])[0], limits.min, limits.max))
        if got == wanted and 0.0 < t < 1.0:
            return t
        t = float(numpy.nextafter(t, 1.0 if got < wanted else 0.0))
    raise ValueError(
        f"global_pointer: the logit threshold {logit!r} saved in {where} has no probability "
        "threshold that makes exactly the same decisions (it is too far from 0). Edit that cfg: "
        'set "threshold" to a probability in [0, 1] and add "score_scale": "probability".'
    )


def upgrade_saved_cfg(saved: Dict[str, Any], where: str) -> Dict[str, Any]:
    """A saved cfg in this version's terms: a cfg from before thresholds were
    probabilities (no "score_scale") gets the probability threshold that decides as its
    logit did, with a warning; a cfg from an unknown scale is refused."""
    scale = saved.get("score_scale")
    if scale == SCORE_SCALE:
        return saved
    if scale is not None:
        raise ValueError(
            f"global_pointer: the cfg in {where} has score_scale {scale!r}; this version of "
            f"spacy-globalpointer reads {SCORE_SCALE!r}. Install the version that saved it."
        )
    logit = saved.get("threshold", 0.0)
    threshold = threshold_for_logit(logit, where)
    warnings.warn(
        f"global_pointer: {where} was saved when thresholds and scores were logits. Its logit "
        f"threshold {logit!r} is the probability threshold {threshold!r} now, which makes the "
        "same decisions; doc.spans[key].attrs['scores'] hold probabilities. Save the "
        "pipeline again to store it in the new form."
    )
    return {**saved, "threshold": threshold, "score_scale": SCORE_SCALE}


def _check_boundary_smoothing(epsilon: Any, distance: Any) -> Tuple[float, int]:
    if not _is_number(epsilon) or not 0.0 <= epsilon < 1.0:
        raise ValueError(f"global_pointer: boundary_smoothing must be a number in [0, 1), got {epsilon!r}.")
    if isinstance(distance, bool) or not isinstance(distance, int) or distance < 1:
        raise ValueError(f"global_pointer: boundary_distance must be an integer >= 1, got {distance!r}.")
    return float(epsilon), distance


def _check_max_span_length(value: Any) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"global_pointer: max_span_length must be None or an integer >= 1, got {value!r}.")
    return value


def _check_batch(docs: List[Doc], scores: SpanScores, method: str) -> None:
    """Refuse scores that were not computed for these docs (a mismatch would misplace spans)."""
    if not isinstance(scores, SpanScores):
        raise TypeError(
            f"global_pointer.{method}: expected the SpanScores that predict() returns, got "
            f"{type(scores).__name__}. A padded (docs, labels, n, band) array is one group: "
            "SpanScores([array], [list(range(len(docs)))], [len(doc) for doc in docs])."
        )
    lengths = [len(doc) for doc in docs]
    if lengths != list(scores.lengths):
        raise ValueError(
            f"global_pointer.{method}: the scores are for {len(scores)} docs of lengths "
            f"{_preview(scores.lengths)}, but the batch has {len(docs)} docs of lengths "
            f"{_preview(lengths)}. Pass the docs the scores were predicted for, in the same order."
        )


def _preview(values: List[int], limit: int = 8) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return f"[{shown}{', ...' if len(values) > limit else ''}]"


def _check_gold_spans(doc: Doc, key: str, where: str) -> None:
    """Refuse empty or out-of-range gold spans, naming the doc and the span.

    spaCy refuses most such spans when they are made, but a zero-length span
    (start == end) can be stored in doc.spans.
    """
    for span in doc.spans[key]:
        if span.start < 0 or span.end > len(doc) or span.start >= span.end:
            text = doc.text if len(doc.text) <= 60 else doc.text[:57] + "..."
            raise ValueError(
                f"global_pointer: gold span ({span.start}, {span.end}) with label "
                f"{span.label_!r} in doc.spans[{key!r}] of {where} ({text!r}, "
                f"{len(doc)} tokens) is empty or outside the doc: spans need "
                "0 <= start < end <= len(doc)."
            )
