"""Choose thresholds and calibrate the probabilities of a trained global_pointer on dev data.

`tune_thresholds` picks each label's threshold to maximise micro F1 (the Scorer's
`spans_{key}_f`); `fit_calibration` fits a per-label Platt scaling p = sigmoid(a * s + b) on
the candidates' logits; `calibration_report` gives the expected calibration error (ECE) and
Brier score before and after on data not used for fitting.
"""
import math
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy
from spacy.language import Language
from spacy.tokens import Doc, DocBin
from spacy.training import Example
from spacy.util import minibatch

from .decoding import calibrated_logits, candidates_above, logit_cuts, sigmoid
from .evaluate import unannotated_doc
from .pipe import GlobalPointer

PathLike = Union[str, Path]
N_BINS = 15
# The spans that calibration fits and reports on: candidates that the uncalibrated model
# (or, when reporting, either model) scores at least this probable. Below it lie millions
# of candidates per dataset that no sensible threshold admits; they would swamp both the
# fit and the ECE (whose first bin they would fill with near-perfect agreement).
MIN_PROBABILITY = 0.01
DEFAULT_GRID_STEP = 0.05
DEFAULT_FOLDS = 5
# Weights of the per-label thresholds against the shared one that cross-validation chooses from.
SHRINK_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass
class Candidates:
    """The scored candidate spans of a dataset above a per-label cut: each one's doc,
    label, raw logit and whether it is a gold span; and the gold counts the Scorer uses."""

    labels: Tuple[str, ...]
    doc_ids: numpy.ndarray  # int, index into the docs that have the key
    label_ids: numpy.ndarray  # int, index into labels
    logits: numpy.ndarray  # float32, the head's raw logits s
    is_gold: numpy.ndarray  # bool
    n_gold_per_doc: numpy.ndarray  # gold spans (label, start, end) under the key, candidates or not

    @property
    def n_gold(self) -> int:
        return int(self.n_gold_per_doc.sum())

    @property
    def n_docs(self) -> int:
        """Docs whose reference has the key (the Scorer skips the others)."""
        return len(self.n_gold_per_doc)

    def of_docs(self, docs: numpy.ndarray) -> "Candidates":
        """The candidates of the docs where `docs` (a bool per doc) is True."""
        keep = docs[self.doc_ids]
        renumber = numpy.cumsum(docs) - 1
        return Candidates(
            self.labels, renumber[self.doc_ids[keep]], self.label_ids[keep], self.logits[keep],
            self.is_gold[keep], self.n_gold_per_doc[docs],
        )


def find_global_pointer(nlp: Language, name: Optional[str] = None) -> Tuple[str, GlobalPointer]:
    """The global_pointer component called `name`, or the pipeline's only one."""
    found = [(n, pipe) for n, pipe in nlp.pipeline if isinstance(pipe, GlobalPointer)]
    if name is not None:
        found = [(n, pipe) for n, pipe in found if n == name]
    if len(found) != 1:
        which = f"named {name!r}" if name else "(name one)"
        raise ValueError(
            f"The pipeline {nlp.pipe_names} has {len(found)} global_pointer components {which}."
        )
    return found[0]


def read_docs(nlp: Language, path: PathLike) -> List[Doc]:
    docs = list(DocBin().from_disk(path).get_docs(nlp.vocab))
    if not docs:
        raise ValueError(f"{path} holds no docs.")
    return docs


def split_in_halves(docs: Sequence[Doc], seed: int = 0) -> Tuple[List[Doc], List[Doc]]:
    """A seeded shuffle of `docs` cut in two halves (the first gets the odd one)."""
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    cut = (len(order) + 1) // 2
    return [docs[i] for i in sorted(order[:cut])], [docs[i] for i in sorted(order[cut:])]


def score(nlp: Language, gold: Sequence[Doc], batch_size: int = 128, gold_tokens: bool = False) -> Dict[str, Any]:
    """The pipeline's scores on `gold` from spaCy's Scorer (`nlp.evaluate`); gold_tokens: predict
    on the gold docs' own tokens instead of the tokenizer's."""
    examples = [Example(unannotated_doc(nlp, doc, gold_tokens), doc) for doc in gold]
    return nlp.evaluate(examples, batch_size=batch_size)


def _annotate_before(nlp: Language, name: str, docs: List[Doc]) -> List[Doc]:
    """Run the components that come before `name` (a shared tok2vec, say)."""
    for other, proc in nlp.pipeline:
        if other == name:
            break
        docs = list(proc.pipe(docs)) if hasattr(proc, "pipe") else [proc(doc) for doc in docs]
    return docs


def collect_candidates(
    nlp: Language, name: str, gold: Sequence[Doc], cuts: numpy.ndarray, batch_size: int = 128,
    gold_tokens: bool = False,
) -> Candidates:
    """Score `gold`'s texts and keep every candidate whose logit is above its label's cut.

    Gold spans are matched as the Scorer matches them: (label, start, end) in docs whose
    reference has the key.
    """
    pipe = nlp.get_pipe(name)
    label_index = {label: i for i, label in enumerate(pipe.labels)}
    parts: Dict[str, List[numpy.ndarray]] = {"doc_ids": [], "label_ids": [], "logits": [], "is_gold": []}
    n_gold_per_doc: List[int] = []
    annotated = [doc for doc in gold if pipe.key in doc.spans]
    for batch in minibatch(annotated, batch_size):
        examples = [Example(unannotated_doc(nlp, doc, gold_tokens), doc) for doc in batch]
        docs = _annotate_before(nlp, name, [eg.predicted for eg in examples])
        doc_ids, label_ids, starts, offsets, logits = candidates_above(pipe.model.ops, pipe.predict(docs), cuts)
        gold_sets = []
        for eg in examples:
            n_gold_per_doc.append(len({(s.label_, s.start, s.end) for s in eg.reference.spans[pipe.key]}))
            aligned = eg.get_aligned_spans_y2x(eg.reference.spans[pipe.key], allow_overlap=True)
            gold_sets.append({(label_index.get(s.label_, -1), s.start, s.end) for s in aligned})
        ends = starts + offsets + 1
        is_gold = numpy.fromiter(
            ((lab, start, end) in gold_sets[d] for d, lab, start, end in zip(
                doc_ids.tolist(), label_ids.tolist(), starts.tolist(), ends.tolist()
            )),
            dtype="bool",
            count=len(doc_ids),
        )
        parts["doc_ids"].append(doc_ids.astype("int64") + len(n_gold_per_doc) - len(batch))
        parts["label_ids"].append(label_ids.astype("int64"))
        parts["logits"].append(logits.astype("float32"))
        parts["is_gold"].append(is_gold)
    join = {k: numpy.concatenate(v) if v else numpy.zeros((0,)) for k, v in parts.items()}
    return Candidates(
        labels=pipe.labels,
        doc_ids=join["doc_ids"].astype("int64"),
        label_ids=join["label_ids"].astype("int64"),
        logits=join["logits"].astype("float32"),
        is_gold=join["is_gold"].astype("bool"),
        n_gold_per_doc=numpy.asarray(n_gold_per_doc, dtype="int64"),
    )


def require_gold(candidates: Candidates, key: str, where: str) -> None:
    """A tuning or calibration set must have gold spans under the component's key."""
    if candidates.n_gold == 0:
        raise ValueError(
            f"global_pointer: {where} has no gold spans under doc.spans[{key!r}] "
            f"({candidates.n_docs} docs have that key). Thresholds and calibration are "
            "fitted against gold spans: use annotated dev data, converted with the same "
            "--spans-key as the component's spans_key."
        )


# Per-label thresholds ---------------------------------------------------------------


def threshold_grid(step: float = DEFAULT_GRID_STEP) -> numpy.ndarray:
    """Thresholds step, 2 * step, ... below 1 (0 and 1 predict all or nothing)."""
    if not 0.0 < step < 0.5:
        raise ValueError(f"The threshold grid step must be in (0, 0.5), got {step!r}.")
    n = int(math.floor((1.0 - 1e-9) / step))
    return numpy.round(step * numpy.arange(1, n + 1), 10)


def pass_counts(
    candidates: Candidates, grid: numpy.ndarray, scales: numpy.ndarray, biases: numpy.ndarray
) -> Tuple[numpy.ndarray, numpy.ndarray]:
    """(true positives, false positives), each (labels, grid): the candidates of each label
    that threshold grid[g] admits, decided exactly as the pipe decides (float32 cuts)."""
    n_labels, limits = len(candidates.labels), numpy.finfo("float32")
    tp = numpy.zeros((n_labels, len(grid)), dtype="int64")
    fp = numpy.zeros((n_labels, len(grid)), dtype="int64")
    for label in range(n_labels):
        cuts = logit_cuts(grid, [scales[label]] * len(grid), [biases[label]] * len(grid))
        cuts = numpy.clip(cuts, limits.min, limits.max).astype("float32")
        mine = candidates.label_ids == label
        gold = numpy.sort(candidates.logits[mine & candidates.is_gold])
        other = numpy.sort(candidates.logits[mine & ~candidates.is_gold])
        tp[label] = len(gold) - numpy.searchsorted(gold, cuts, side="right")
        fp[label] = len(other) - numpy.searchsorted(other, cuts, side="right")
    return tp, fp


def micro_f1(tp: int, fp: int, n_gold: int) -> float:
    """F1 of spans: 2 TP / (2 TP + FP + FN), with FN = n_gold - TP."""
    return 2.0 * tp / (tp + fp + n_gold) if tp + fp + n_gold else 0.0


def ascend(
    candidates: Candidates, scales: numpy.ndarray, biases: numpy.ndarray, grid: numpy.ndarray, max_rounds: int = 10
) -> Tuple[int, List[int]]:
    """The grid index of the best shared threshold, and per-label grid indices that
    maximise micro F1: from the shared one, label by label, each moves to the value that
    gives the best micro F1 with the others fixed (ties keep the value nearest the
    current one), until a round changes nothing."""
    tp, fp = pass_counts(candidates, grid, scales, biases)
    n_labels = len(candidates.labels)

    def total(choice: List[int]) -> float:
        rows = numpy.arange(n_labels)
        return micro_f1(int(tp[rows, choice].sum()), int(fp[rows, choice].sum()), candidates.n_gold)

    shared = max(range(len(grid)), key=lambda g: (total([g] * n_labels), -abs(grid[g] - 0.5)))
    choice = [shared] * n_labels
    for _ in range(max_rounds):
        changed = False
        for label in range(n_labels):
            current = choice[label]

            def f1_with(g: int) -> float:
                return total(choice[:label] + [g] + choice[label + 1:])

            best = max(range(len(grid)), key=lambda g: (f1_with(g), -abs(g - current)))
            if f1_with(best) > f1_with(current):
                choice[label] = best
                changed = True
        if not changed:
            break
    return shared, choice


def shrink(shared: float, per_label: Sequence[float], weight: float) -> List[float]:
    """Per-label thresholds moved towards the shared one: logit(t) = (1 - w) logit(shared)
    + w logit(t_label), rounded to 3 decimals (w = 0: the shared one, w = 1: per label)."""
    logit = lambda t: math.log(t / (1.0 - t))  # noqa: E731
    return [
        round(1.0 / (1.0 + math.exp(-((1 - weight) * logit(shared) + weight * logit(t)))), 3)
        for t in per_label
    ]


def tune_thresholds(
    candidates: Candidates,
    scales: numpy.ndarray,
    biases: numpy.ndarray,
    grid: numpy.ndarray,
    *,
    folds: int = DEFAULT_FOLDS,
    weights: Sequence[float] = SHRINK_WEIGHTS,
    seed: int = 0,
) -> Dict[str, Any]:
    """Per-label thresholds that maximise micro F1 on the candidates, shrunk towards the
    best shared threshold by the weight that scores best in cross-validation.

    A label's F1 curve on a dev set of a few hundred of its spans is noisy, and the
    thresholds that maximise it fit some of that noise. So the docs are split in `folds`
    (seeded); for each, thresholds are tuned on the others and every weight of `weights`
    is scored on it; the weight with the best micro F1 over all folds (ties: the smaller)
    is applied to the thresholds tuned on all the candidates. `folds` < 2 (or fewer docs)
    keeps the per-label values as tuned (weight 1).
    """
    n = candidates.n_docs
    cv: Dict[str, float] = {}
    weight = 1.0
    if folds >= 2 and n >= folds:
        fold_of = numpy.random.default_rng(seed).permutation(n) % folds
        counts = {w: [0, 0, 0] for w in weights}  # tp, fp, gold summed over folds
        for fold in range(folds):
            train, test = candidates.of_docs(fold_of != fold), candidates.of_docs(fold_of == fold)
            shared, choice = ascend(train, scales, biases, grid)
            for w in weights:
                thresholds = shrink(grid[shared], [grid[g] for g in choice], w)
                tp, fp = _tp_fp(test, thresholds, scales, biases)
                counts[w][0] += tp
                counts[w][1] += fp
                counts[w][2] += test.n_gold
        cv = {str(w): micro_f1(*counts[w]) for w in weights}
        weight = max(weights, key=lambda w: (micro_f1(*counts[w]), -w))
    shared, choice = ascend(candidates, scales, biases, grid)
    thresholds = shrink(grid[shared], [grid[g] for g in choice], weight)
    tp, fp = _tp_fp(candidates, thresholds, scales, biases)
    return {
        "thresholds": dict(zip(candidates.labels, thresholds)),
        "f": micro_f1(tp, fp, candidates.n_gold),
        "shared_threshold": float(grid[shared]),
        "unshrunk": {label: float(grid[g]) for label, g in zip(candidates.labels, choice)},
        "weight": weight,
        "cv_f": cv,
    }


def _tp_fp(
    candidates: Candidates, thresholds: Sequence[float], scales: numpy.ndarray, biases: numpy.ndarray
) -> Tuple[int, int]:
    """True and false positives with one threshold per label, decided as the pipe decides."""
    limits = numpy.finfo("float32")
    cuts = numpy.clip(logit_cuts(thresholds, scales, biases), limits.min, limits.max).astype("float32")
    passed = candidates.logits > cuts[candidates.label_ids]
    tp = int((passed & candidates.is_gold).sum())
    return tp, int(passed.sum()) - tp


# Calibration ------------------------------------------------------------------------


def fit_platt(logits: numpy.ndarray, is_gold: numpy.ndarray, max_iter: int = 100) -> Tuple[float, float]:
    """Platt scaling: (a, b) such that sigmoid(a * s + b) is the probability of gold.

    Minimises the cross-entropy against Platt's smoothed targets (N+ + 1) / (N+ + 2) and
    1 / (N- + 2), which keep (a, b) finite when the data are separable; Newton's method
    with a backtracking line search (Lin, Lin and Weng, 2007).
    """
    s = numpy.asarray(logits, dtype="float64")
    y = numpy.asarray(is_gold, dtype="bool")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    target = numpy.where(y, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))

    def loss(a: float, b: float) -> float:
        z = a * s + b
        return float(numpy.sum(target * numpy.logaddexp(0.0, -z) + (1 - target) * numpy.logaddexp(0.0, z)))

    a, b = 1.0, 0.0
    value = loss(a, b)
    for _ in range(max_iter):
        p = 0.5 * (1.0 + numpy.tanh(0.5 * (a * s + b)))  # the sigmoid, in float64
        d = p - target
        grad = numpy.array([numpy.dot(d, s), d.sum()])
        w = p * (1.0 - p)
        hess = numpy.array([[numpy.dot(w, s * s), numpy.dot(w, s)], [numpy.dot(w, s), w.sum()]])
        if numpy.abs(grad).max() < 1e-6 * max(1.0, len(s)):
            break
        step = numpy.linalg.solve(hess + 1e-12 * numpy.eye(2), -grad)
        t = 1.0
        while t > 1e-10:
            new = loss(a + t * step[0], b + t * step[1])
            if new <= value + 1e-4 * t * float(numpy.dot(grad, step)):
                break
            t /= 2
        if t <= 1e-10:
            break
        a, b, value = a + t * step[0], b + t * step[1], new
    return float(a), float(b)


def fit_calibration(
    candidates: Candidates, min_probability: float = MIN_PROBABILITY
) -> Dict[str, Dict[str, float]]:
    """Per-label Platt scaling fitted on the candidates with sigmoid(s) >= min_probability.

    A label without gold spans among them, or whose scores do not rank gold above the
    rest (a <= 0), keeps a = 1, b = 0, with a warning naming it.
    """
    floor = float(logit_cuts([min_probability], [1.0], [0.0])[0])
    params = {}
    for i, label in enumerate(candidates.labels):
        mine = (candidates.label_ids == i) & (candidates.logits >= floor)
        n_pos = int(candidates.is_gold[mine].sum())
        if n_pos == 0 or n_pos == int(mine.sum()):
            warnings.warn(
                f"global_pointer: label {label!r} has {n_pos} gold and {int(mine.sum()) - n_pos} "
                f"other candidate spans scored >= {min_probability} in the calibration set; "
                "it needs both to be calibrated and is left as it is."
            )
            continue
        a, b = fit_platt(candidates.logits[mine], candidates.is_gold[mine])
        if a <= 0:
            warnings.warn(
                f"global_pointer: label {label!r}: its scores do not rank gold spans above the "
                f"others in the calibration set (fitted scale {a:.3g}); it is left as it is."
            )
            continue
        params[label] = {"scale": a, "bias": b}
    return params


def calibration_arrays(labels: Sequence[str], params: Dict[str, Dict[str, float]]) -> Tuple[numpy.ndarray, numpy.ndarray]:
    identity = {"scale": 1.0, "bias": 0.0}
    scales = numpy.asarray([params.get(label, identity)["scale"] for label in labels], dtype="float64")
    biases = numpy.asarray([params.get(label, identity)["bias"] for label in labels], dtype="float64")
    return scales, biases


def reliability_bins(probabilities: numpy.ndarray, is_gold: numpy.ndarray, n_bins: int = N_BINS) -> List[Dict[str, float]]:
    """Equal-width bins of [0, 1]: each one's span count, mean probability and share of gold."""
    p = numpy.asarray(probabilities, dtype="float64")
    y = numpy.asarray(is_gold, dtype="float64")
    which = numpy.minimum((p * n_bins).astype("int64"), n_bins - 1)
    bins = []
    for k in range(n_bins):
        inside = which == k
        n = int(inside.sum())
        bins.append({
            "low": k / n_bins,
            "high": (k + 1) / n_bins,
            "count": n,
            "mean_probability": float(p[inside].mean()) if n else None,
            "gold_share": float(y[inside].mean()) if n else None,
        })
    return bins


def expected_calibration_error(probabilities: numpy.ndarray, is_gold: numpy.ndarray, n_bins: int = N_BINS) -> float:
    """ECE: the count-weighted mean over equal-width bins of |share of gold - mean probability|."""
    total = len(probabilities)
    if total == 0:
        return 0.0
    return float(sum(
        b["count"] / total * abs(b["gold_share"] - b["mean_probability"])
        for b in reliability_bins(probabilities, is_gold, n_bins) if b["count"]
    ))


def brier_score(probabilities: numpy.ndarray, is_gold: numpy.ndarray) -> float:
    """Mean squared difference between the probability and the 0/1 outcome."""
    p = numpy.asarray(probabilities, dtype="float64")
    return float(numpy.mean((p - numpy.asarray(is_gold, dtype="float64")) ** 2)) if len(p) else 0.0


def calibration_report(
    candidates: Candidates,
    before: Tuple[numpy.ndarray, numpy.ndarray],
    after: Tuple[numpy.ndarray, numpy.ndarray],
    min_probability: float = MIN_PROBABILITY,
    n_bins: int = N_BINS,
) -> Dict[str, Any]:
    """ECE and Brier score of the probabilities before and after calibration, on the
    candidates that either scores >= min_probability (the same spans for both)."""
    p_before = sigmoid(calibrated_logits(candidates.logits, candidates.label_ids, *before))
    p_after = sigmoid(calibrated_logits(candidates.logits, candidates.label_ids, *after))
    keep = (p_before >= min_probability) | (p_after >= min_probability)
    y = candidates.is_gold[keep]
    report: Dict[str, Any] = {
        "min_probability": min_probability,
        "n_bins": n_bins,
        "n_spans": int(keep.sum()),
        "n_gold_spans": int(y.sum()),
    }
    for name, p in (("before", p_before[keep]), ("after", p_after[keep])):
        report[name] = {
            "ece": expected_calibration_error(p, y, n_bins),
            "brier": brier_score(p, y),
            "bins": reliability_bins(p, y, n_bins),
        }
    return report


def report_cuts(
    labels: Sequence[str],
    before: Tuple[numpy.ndarray, numpy.ndarray],
    after: Tuple[numpy.ndarray, numpy.ndarray],
    min_probability: float,
) -> numpy.ndarray:
    """Per-label logit cuts below which neither calibration reaches min_probability."""
    t = [min_probability] * len(labels)
    return numpy.minimum(logit_cuts(t, *before), logit_cuts(t, *after))


# Whole-pipeline steps, used by the command line and the benchmark -------------------


def sync_config(nlp: Language, name: str) -> None:
    """Make the saved config.cfg show the component's threshold settings as in its cfg."""
    pipe = nlp.get_pipe(name)
    config = nlp.get_pipe_config(name)
    config["threshold"] = pipe.threshold
    config["thresholds"] = dict(pipe.thresholds)


def tune_pipeline(
    nlp: Language,
    dev: Sequence[Doc],
    *,
    name: Optional[str] = None,
    grid_step: float = DEFAULT_GRID_STEP,
    folds: int = DEFAULT_FOLDS,
    gold_tokens: bool = False,
) -> Dict[str, Any]:
    """Set per-label thresholds tuned on `dev` on the pipeline; returns what was chosen
    (see `tune_thresholds`)."""
    name, pipe = find_global_pointer(nlp, name)
    grid = threshold_grid(grid_step)
    scales, biases = pipe.calibration_arrays()
    cuts = logit_cuts([grid[0]] * len(pipe.labels), scales, biases)
    candidates = collect_candidates(nlp, name, dev, cuts, gold_tokens=gold_tokens)
    require_gold(candidates, pipe.key, "the tuning set")
    result = tune_thresholds(candidates, scales, biases, grid, folds=folds)
    pipe.thresholds = result["thresholds"]
    sync_config(nlp, name)
    return {**result, "grid_step": grid_step, "folds": folds}


def calibrate_pipeline(
    nlp: Language,
    fit: Sequence[Doc],
    heldout: Sequence[Doc],
    *,
    name: Optional[str] = None,
    min_probability: float = MIN_PROBABILITY,
    gold_tokens: bool = False,
) -> Tuple[Dict[str, Dict[str, float]], Dict[str, Any]]:
    """Fit per-label Platt scaling on `fit`, set it on the pipeline, and report ECE and
    Brier score before and after on `heldout`."""
    if not 0.0 < min_probability < 1.0:
        raise ValueError(f"global_pointer: min_probability must be in (0, 1), got {min_probability!r}.")
    name, pipe = find_global_pointer(nlp, name)
    raw = (numpy.ones(len(pipe.labels)), numpy.zeros(len(pipe.labels)))
    floor = logit_cuts([min_probability] * len(pipe.labels), *raw)
    fit_candidates = collect_candidates(nlp, name, fit, floor, gold_tokens=gold_tokens)
    require_gold(fit_candidates, pipe.key, "the calibration set")
    params = fit_calibration(fit_candidates, min_probability)
    before = pipe.calibration_arrays()
    after = calibration_arrays(pipe.labels, params)
    held = collect_candidates(nlp, name, heldout, report_cuts(pipe.labels, before, after, min_probability),
                              gold_tokens=gold_tokens)
    require_gold(held, pipe.key, "the held-out set")
    report = calibration_report(held, before, after, min_probability)
    report["n_fit_spans"] = int(len(fit_candidates.logits))
    report["calibration"] = params
    pipe.calibration = params
    return params, report
