"""Multi-label categorical cross-entropy (Su 2020, used by GlobalPointer).

For one (doc, type) row with positive candidates P and negative candidates Q:

    loss = log(1 + sum_{p in P} exp(-s_p)) + log(1 + sum_{q in Q} exp(s_q))

The "1" is a threshold class fixed at score 0, so the decision rule is s > 0 and
the number of negatives (almost all of the O(n^2) candidates) costs nothing in
balance. Works on numpy and cupy arrays alike.

Rows are independent, so a batch can be scored in pieces (the pipe passes one
group of docs of similar length at a time) with `n_rows` set to the batch's row
count: the pieces' losses then add up to the batch's mean.

Soft targets (boundary smoothing). With a target y in [0, 1] per candidate, each
candidate counts as a positive with weight y and as a negative with weight 1 - y:

    loss = log(1 + sum_c y_c exp(-s_c)) + log(1 + sum_c (1 - y_c) exp(s_c))

For y in {0, 1} this is the loss above. Both sums have non-negative weights, so the
loss stays well-defined and convex in s, and the weights enter as log-weights added to
the logits (log 0 = -inf: absent). For one candidate alone the minimum is where
y exp(-s) = (1 - y) exp(s), i.e. s* = logit(y) / 2: a target of 1 - epsilon asks for a
finite score instead of an ever larger one, a small target for a score below the
decision boundary s = 0 but closer to it than a hard negative's. `smoothed_targets`
builds such targets for boundary smoothing.
"""
from typing import Any, List, Optional, Tuple

import numpy
from thinc.types import ArrayXd, Floats2d, Floats4d
from thinc.api import get_array_module


def _logsumexp_with_zero(x, xp) -> Floats2d:
    """log(exp(0) + sum_k exp(x_k)) over the last axis; -inf entries count as absent."""
    shift = xp.maximum(x.max(axis=-1, keepdims=True), 0.0)
    total = xp.exp(-shift) + xp.exp(x - shift).sum(axis=-1, keepdims=True)
    return shift + xp.log(total)


def multilabel_categorical_crossentropy(
    scores: Floats4d, targets: ArrayXd, mask: ArrayXd, *, n_rows: Optional[int] = None
) -> Tuple[float, Floats4d]:
    """The loss as a Python float and its gradient (see `loss_and_gradient`)."""
    loss, gradient = loss_and_gradient(scores, targets, mask, n_rows=n_rows)
    return float(loss), gradient


def loss_and_gradient(
    scores: Floats4d, targets: ArrayXd, mask: ArrayXd, *, n_rows: Optional[int] = None
) -> Tuple[ArrayXd, Floats4d]:
    """Loss summed over (doc, type) rows and divided by `n_rows`, and its gradient
    with respect to `scores`.

    scores, targets, mask: (batch, types, n, band). `targets` is bool (the gold spans)
    or float in [0, 1] (soft targets, see the module's docstring). Only candidates where
    `mask` is True count; every other position gets a zero gradient. `n_rows` defaults
    to batch * types (the mean over these rows).
    """
    xp = get_array_module(scores)
    batch, types = scores.shape[:2]
    rows = max(batch * types if n_rows is None else n_rows, 1)
    flat = scores.reshape(batch, types, -1).astype("float32")
    if flat.shape[-1] == 0:  # no candidates at all (every doc empty): nothing to learn
        return xp.zeros((), dtype="float32"), xp.zeros(scores.shape, dtype=scores.dtype)
    neg_inf = xp.asarray(-xp.inf, dtype="float32")
    mask = mask.reshape(flat.shape)
    if targets.dtype == bool:
        targets = targets.reshape(flat.shape)
        pos_logits = xp.where(targets & mask, -flat, neg_inf)
        neg_logits = xp.where(~targets & mask, flat, neg_inf)
    else:
        y = targets.reshape(flat.shape).astype("float32")
        tiny = xp.asarray(xp.finfo("float32").tiny, dtype="float32")
        pos_logits = xp.where(mask & (y > 0), -flat + xp.log(xp.maximum(y, tiny)), neg_inf)
        neg_logits = xp.where(mask & (y < 1), flat + xp.log(xp.maximum(1 - y, tiny)), neg_inf)
    pos_lse = _logsumexp_with_zero(pos_logits, xp)
    neg_lse = _logsumexp_with_zero(neg_logits, xp)
    # A 0-d array on the scores' device: summing the groups' losses there and reading the
    # total once keeps a GPU step from waiting for each group.
    loss = (pos_lse + neg_lse).sum() / rows
    # d/ds = (1 - y) exp(s - neg_lse) - y exp(-s - pos_lse), the weights inside the logits;
    # exp(-inf) = 0 where a candidate is absent from a sum.
    d_flat = xp.exp(neg_logits - neg_lse) - xp.exp(pos_logits - pos_lse)
    return loss, (d_flat / rows).reshape(scores.shape).astype(scores.dtype)


def smoothed_targets(
    shape: Tuple[int, int, int, int], gold: List[List[Tuple[int, int, int]]], lengths: List[int],
    epsilon: float, distance: int,
) -> numpy.ndarray:
    """Boundary-smoothed targets (Zhu and Li 2022), float32 of `shape` (docs, labels, n, band).

    `gold[r]` holds (label, start, width - 1) of doc r's gold spans. Each gold span inside the
    band keeps 1 - epsilon and gives epsilon / K to each of the K candidates of its label that
    lie within `distance` boundary steps (|start - start'| + |end - end'| <= distance: inside
    the doc of `lengths[r]` tokens, start' <= end', within the band); with no such candidate
    it keeps 1. Where contributions meet, they add up, capped at 1.
    """
    n, band = shape[2], shape[3]
    targets = numpy.zeros(shape, dtype="float32")
    steps = [(a, b) for a in range(-distance, distance + 1) for b in range(-distance, distance + 1)
             if 0 < abs(a) + abs(b) <= distance]
    for row, spans in enumerate(gold):
        n_doc = lengths[row]
        for label, start, offset in spans:
            end = start + offset
            if offset >= band or end >= n:
                continue
            near = [(start + a, end + b) for a, b in steps]
            near = [(s, e) for s, e in near if 0 <= s <= e < n_doc and e - s < band]
            targets[row, label, start, offset] += 1.0 - epsilon if near else 1.0
            for s, e in near:
                targets[row, label, s, e - s] += epsilon / len(near)
    return numpy.minimum(targets, 1.0, out=targets)


def candidate_mask(xp: Any, lengths: ArrayXd, shape: Tuple[int, ...]) -> ArrayXd:
    """(docs, 1, n, band) bool for scores of `shape`: True where span (i, i + d) lies inside
    its doc of `lengths[doc]` tokens."""
    n_max, band = shape[2], shape[3]
    ends = xp.arange(n_max)[:, None] + xp.arange(band)[None, :]
    return (ends[None, :, :] < lengths[:, None, None])[:, None]


def gold_targets(ops: Any, shape: Tuple[int, ...], gold: List[List[Tuple[int, int, int]]]) -> ArrayXd:
    """Bool array of `shape` (docs, labels, n, band) on the ops' device: True at each gold span
    (label, start, width - 1) of `gold[doc]` that lies inside the band."""
    n, band = shape[2], shape[3]
    where = [
        (row, label, start, offset)
        for row, spans in enumerate(gold)
        for label, start, offset in spans
        if offset < band and start + offset < n
    ]
    targets = ops.xp.zeros(shape, dtype="bool")
    if where:
        index = ops.asarray2i(numpy.asarray(where, dtype="int32").T)  # one copy to the device
        targets[tuple(index)] = True
    return targets
