"""The `global_pointer` pipeline component: nested and flat entities in `doc.spans`."""
import json
import warnings
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import numpy
from spacy import util
from spacy.language import Language
from spacy.pipeline import TrainablePipe
from spacy.tokens import Doc, Span, SpanGroup
from spacy.training import Example, validate_examples, validate_get_examples
from spacy.vocab import Vocab
from thinc.api import Config, Model, Optimizer

from .checks import (
    SCORE_SCALE, _check_batch, _check_boundary_smoothing, _check_calibration, _check_gold_spans,
    _check_max_span_length, _check_nested_threshold, _check_threshold, _check_thresholds, upgrade_saved_cfg,
)
from .decoding import calibrated_logits, candidates_above, keep_nested, logit_cuts, select_non_overlapping, sigmoid
from .loss import candidate_mask, gold_targets, loss_and_gradient, smoothed_targets
from .model import SpanScores
from .scoring import DEFAULT_SPANS_KEY, global_pointer_score
from .serialization import _load_model_bytes

# Moved out of this module; still importable from here, as users, tests and benchmarks do.
from .checks import threshold_for_logit  # noqa: F401
from .decoding import above_threshold, cut_bar  # noqa: F401

DEFAULT_MODEL_CONFIG = """
[model]
@architectures = "spacy-globalpointer.GlobalPointer.v1"
head_size = 64
rope = true

[model.tok2vec]
@architectures = "spacy-globalpointer.Tok2Vec.v1"
max_predict_tokens = 4096

[model.tok2vec.embed]
@architectures = "spacy.MultiHashEmbed.v2"
width = 96
rows = [5000, 1000, 2500, 2500]
attrs = ["NORM", "PREFIX", "SUFFIX", "SHAPE"]
include_static_vectors = false

[model.tok2vec.encode]
@architectures = "spacy.MaxoutWindowEncoder.v2"
width = 96
depth = 4
window_size = 1
maxout_pieces = 3
"""
DEFAULT_MODEL = Config().from_str(DEFAULT_MODEL_CONFIG)["model"]
DEFAULT_THRESHOLD = 0.5


def score_weights_for(spans_key: str, write_ents: bool = False) -> Dict[str, float]:
    """The score weights `spacy train` should use for a given key."""
    weights = {f"spans_{spans_key}_f": 1.0, f"spans_{spans_key}_p": 0.0, f"spans_{spans_key}_r": 0.0}
    if write_ents:
        weights.update({"ents_f": 0.0, "ents_p": 0.0, "ents_r": 0.0})
    return weights


@Language.factory(
    "global_pointer",
    assigns=["doc.spans"],
    default_config={
        "spans_key": DEFAULT_SPANS_KEY,
        "threshold": DEFAULT_THRESHOLD,
        "thresholds": {},
        "nested_threshold": None,
        "max_span_length": None,
        "write_ents": False,
        "head_optimizer": None,
        "boundary_smoothing": 0.0,
        "boundary_distance": 1,
        "model": DEFAULT_MODEL,
        "scorer": {"@scorers": "spacy-globalpointer.scorer.v1"},
    },
    default_score_weights=score_weights_for(DEFAULT_SPANS_KEY),
)
def make_global_pointer(
    nlp: Language,
    name: str,
    model: Model[List[Doc], SpanScores],
    spans_key: str,
    threshold: float,
    thresholds: Dict[str, float],
    max_span_length: Optional[int],
    write_ents: bool,
    scorer: Optional[Callable],
    head_optimizer: Optional[Optimizer] = None,
    nested_threshold: Optional[float] = None,
    boundary_smoothing: float = 0.0,
    boundary_distance: int = 1,
) -> "GlobalPointer":
    """Create a GlobalPointer span recognizer.

    model: maps docs to span scores (`SpanScores`: one (docs, labels, n, band)
        array per group of docs of similar length).
    spans_key: `doc.spans` key to read gold spans from and write predictions to.
    threshold: a span is predicted when its probability p = sigmoid(s) (calibrated:
        sigmoid(a * s + b)) is above it. 0.5 is the paper's rule s > 0 (the loss puts
        the decision boundary at 0); raise it for precision, lower it for recall.
    thresholds: per-label thresholds, e.g. {"address": 0.3}; `threshold` for the rest.
    nested_threshold: None (default) or a lower probability threshold for candidates
        that nest in or around a span predicted by the thresholds above (strictly inside
        it or containing it): a knob that trades precision for the recall of nested spans.
    max_span_length: spans of more tokens are not candidates. Set it to make time
        and memory grow linearly with doc length; None scores every span.
    write_ents: also write a non-overlapping subset to `doc.ents` (highest score wins).
    head_optimizer: an optimizer of the head's own (e.g. Adam at 1e-3 while a transformer
        fine-tunes at 2e-5); None updates the head with the training optimizer.
    boundary_smoothing: epsilon of boundary smoothing (Zhu and Li 2022), a training-only
        regulariser: each gold span keeps a target of 1 - epsilon and shares epsilon among
        the candidates of its label whose start and end are `boundary_distance` steps or
        fewer away in all (see `loss.py` for the soft-target loss). 0 turns it off.
    boundary_distance: how far (start and end steps together) boundary smoothing reaches.
    """
    return GlobalPointer(
        nlp.vocab,
        model,
        name,
        spans_key=spans_key,
        threshold=threshold,
        thresholds=thresholds,
        nested_threshold=nested_threshold,
        max_span_length=max_span_length,
        write_ents=write_ents,
        scorer=scorer,
        head_optimizer=head_optimizer,
        boundary_smoothing=boundary_smoothing,
        boundary_distance=boundary_distance,
    )


@util.registry.scorers("spacy-globalpointer.scorer.v1")
def make_global_pointer_scorer() -> Callable:
    return global_pointer_score


class GlobalPointer(TrainablePipe):
    """Recognise possibly nested spans by scoring every (start, end, label) triple."""

    def __init__(
        self,
        vocab: Vocab,
        model: Model[List[Doc], SpanScores],
        name: str = "global_pointer",
        *,
        spans_key: str = DEFAULT_SPANS_KEY,
        threshold: float = DEFAULT_THRESHOLD,
        thresholds: Optional[Dict[str, float]] = None,
        nested_threshold: Optional[float] = None,
        max_span_length: Optional[int] = None,
        write_ents: bool = False,
        scorer: Optional[Callable] = global_pointer_score,
        head_optimizer: Optional[Optimizer] = None,
        boundary_smoothing: float = 0.0,
        boundary_distance: int = 1,
    ) -> None:
        if not isinstance(spans_key, str) or not spans_key:
            raise ValueError(f"global_pointer: spans_key must be a non-empty string, got {spans_key!r}.")
        self.vocab = vocab
        self.model = model
        self.name = name
        self.scorer = scorer
        self.cfg: Dict[str, Any] = {
            "labels": [],
            "spans_key": spans_key,
            "threshold": _check_threshold(threshold, name),
            # Labels are unknown until initialize() or loading, which check these again.
            "thresholds": _check_thresholds(thresholds or {}, []),
            "nested_threshold": _check_nested_threshold(nested_threshold, name),
            # Per-label Platt scaling {label: {"scale": a, "bias": b}}, set by `calibrate`.
            "calibration": {},
            "max_span_length": _check_max_span_length(max_span_length),
            "write_ents": bool(write_ents),
            "score_scale": SCORE_SCALE,
        }
        # Training settings: not in cfg, which holds what decides the predictions.
        self.boundary_smoothing, self.boundary_distance = _check_boundary_smoothing(
            boundary_smoothing, boundary_distance
        )
        self.model.attrs["max_span_length"] = self.cfg["max_span_length"]
        self.head_optimizer = head_optimizer

    @property
    def key(self) -> str:
        return str(self.cfg["spans_key"])

    @property
    def labels(self) -> Tuple[str, ...]:
        return tuple(self.cfg["labels"])

    @property
    def label_data(self) -> List[str]:
        return list(self.labels)

    @property
    def threshold(self) -> float:
        return float(self.cfg["threshold"])

    @threshold.setter
    def threshold(self, value: float) -> None:
        self.cfg["threshold"] = _check_threshold(value, self.name)

    @property
    def thresholds(self) -> Mapping[str, float]:
        """Per-label thresholds (read-only view; assign a new dict to change them)."""
        return MappingProxyType(self.cfg["thresholds"])

    @thresholds.setter
    def thresholds(self, value: Mapping[str, float]) -> None:
        self.cfg["thresholds"] = _check_thresholds(value, self.labels)

    @property
    def nested_threshold(self) -> Optional[float]:
        """The threshold of candidates nested in or around a prediction (None: off)."""
        return _check_nested_threshold(self.cfg.get("nested_threshold"), self.name)

    @nested_threshold.setter
    def nested_threshold(self, value: Optional[float]) -> None:
        self.cfg["nested_threshold"] = _check_nested_threshold(value, self.name)

    @property
    def calibration(self) -> Mapping[str, Mapping[str, float]]:
        """Per-label Platt scaling {label: {"scale": a, "bias": b}}: p = sigmoid(a * s + b).
        Labels without an entry have a = 1, b = 0."""
        return MappingProxyType(self.cfg["calibration"])

    @calibration.setter
    def calibration(self, value: Mapping[str, Mapping[str, float]]) -> None:
        self.cfg["calibration"] = _check_calibration(value, self.labels)

    def label_thresholds(self) -> List[float]:
        """The threshold of each label, in label order."""
        default = _check_threshold(self.cfg["threshold"], self.name)
        per_label = _check_thresholds(self.cfg["thresholds"], self.labels)
        return [per_label.get(label, default) for label in self.labels]

    def calibration_arrays(self) -> Tuple[numpy.ndarray, numpy.ndarray]:
        """Per-label scale a and bias b, float64, in label order."""
        params = _check_calibration(self.cfg["calibration"], self.labels)
        identity = {"scale": 1.0, "bias": 0.0}
        scales = [params.get(label, identity)["scale"] for label in self.labels]
        biases = [params.get(label, identity)["bias"] for label in self.labels]
        return numpy.asarray(scales, dtype="float64"), numpy.asarray(biases, dtype="float64")

    def decision_cuts(self) -> numpy.ndarray:
        """Per-label cuts on the logits: a candidate is predicted when s > its label's cut.

        Read from cfg on every call (and checked), since tools such as `spacy
        find-threshold` set cfg directly.
        """
        thresholds = self.label_thresholds()
        if 0.0 in thresholds:
            warnings.warn(
                f"global_pointer: a threshold of 0 makes every candidate span of "
                f"{[label for label, t in zip(self.labels, thresholds) if t == 0.0]} a "
                "prediction. Thresholds are probabilities (the old logit threshold 0 is 0.5)."
            )
        return logit_cuts(thresholds, *self.calibration_arrays())

    @property
    def max_span_length(self) -> Optional[int]:
        return self.cfg["max_span_length"]

    def add_label(self, label: str) -> int:
        """Add a label before training starts. Returns 1 if added, 0 if known."""
        if not isinstance(label, str):
            raise ValueError(f"global_pointer: labels must be strings, got {label!r} ({type(label).__name__}).")
        if label in self.labels:
            return 0
        if self.model.has_ref("head"):
            raise ValueError(
                f"global_pointer: cannot add label {label!r} after the model is initialized; "
                "pass all labels to initialize() (or [initialize.components] labels)."
            )
        self.cfg["labels"] = list(self.labels) + [label]
        self.vocab.strings.add(label)
        return 1

    def initialize(
        self,
        get_examples: Callable[[], Iterable[Example]],
        *,
        nlp: Optional[Language] = None,
        labels: Optional[List[str]] = None,
    ) -> None:
        """Infer the labels from the training data (or take `labels`) and build the model.

        Reads the examples once: each pass over a DocBin corpus costs about 1 ms per doc in
        deserialisation alone (10 s for CLUENER's training set).
        """
        n_examples = n_with_key = n_spans = n_too_long = 0
        inferred = []
        sample: List[Doc] = []
        for eg in get_examples() if callable(get_examples) else ():
            if not isinstance(eg, Example):
                # What spaCy's validate_get_examples checks, without a pass of its own.
                validate_examples([eg], "GlobalPointer.initialize")
            n_examples += 1
            if len(sample) < 10:
                sample.append(eg.predicted)
            if self.key not in eg.reference.spans:
                continue
            n_with_key += 1
            _check_gold_spans(eg.reference, self.key, f"training example {n_examples - 1}")
            for span in eg.reference.spans[self.key]:
                n_spans += 1
                inferred.append(span.label_)
                if self.max_span_length is not None and len(span) > self.max_span_length:
                    n_too_long += 1
        if not callable(get_examples):
            validate_get_examples(get_examples, "GlobalPointer.initialize")
        if n_examples == 0:
            raise ValueError("global_pointer: the training set is empty; initialize() needs examples.")
        if labels is not None:
            for label in labels:
                self.add_label(label)
        else:
            if n_with_key == 0:
                raise ValueError(
                    f"global_pointer: none of the {n_examples} training examples has "
                    f"doc.spans[{self.key!r}]. Set spans_key to the key your data uses "
                    "or convert the data so the gold spans live under that key."
                )
            for label in sorted(set(inferred)):
                self.add_label(label)
        if not self.labels:
            raise ValueError(
                f"global_pointer: no labels. The training data has no spans under "
                f"doc.spans[{self.key!r}] and no labels were given to initialize()."
            )
        # Per-label thresholds set before the labels were known must name known labels.
        self.cfg["thresholds"] = _check_thresholds(self.cfg["thresholds"], self.labels)
        if n_too_long:
            warnings.warn(
                f"global_pointer: {n_too_long} of {n_spans} training spans are longer than "
                f"max_span_length={self.max_span_length} tokens and can never be predicted."
            )
        self.model.set_dim("nO", len(self.labels))
        self.model.initialize(X=sample)
        if nlp is not None:
            self._sync_score_weights(nlp)

    def _sync_score_weights(self, nlp: Language) -> None:
        """Make `spacy train`'s score weights name this component's key.

        The factory's defaults are registered once, for the key "sc"; with another
        key (or `write_ents`) they would name scores this component never reports.
        """
        default = score_weights_for(DEFAULT_SPANS_KEY)
        wanted = score_weights_for(self.key, self.cfg["write_ents"])
        if default == wanted or self.name not in nlp.component_names:
            return
        meta = nlp.get_pipe_meta(self.name)
        nlp._pipe_meta[self.name] = replace(meta, default_score_weights=wanted, scores=list(wanted))
        weights = nlp._config.get("training", {}).get("score_weights")
        others = {
            key for name in nlp.component_names if name != self.name
            for key in nlp.get_pipe_meta(name).default_score_weights
        }
        if weights:
            for stale in set(default) - set(wanted) - others:
                weights.pop(stale, None)
            for key, value in wanted.items():
                weights.setdefault(key, value)

    def predict(self, docs: Iterable[Doc]) -> SpanScores:
        """Span scores for a batch of docs, one array per group of docs of similar length.

        `scores.doc(i)` is doc i's (labels, n, band) array; see `SpanScores`.
        """
        return self.model.predict(list(docs))

    def set_annotations(self, docs: Iterable[Doc], scores: SpanScores) -> None:
        """Write every candidate whose probability is above its label's threshold to
        doc.spans[spans_key], with the probabilities in attrs["scores"]; with a
        `nested_threshold`, also the candidates above it that nest in or around one of
        those (`keep_nested`)."""
        docs = list(docs)
        _check_batch(docs, scores, "set_annotations")
        cuts = self.decision_cuts()
        calibration = self.calibration_arrays()
        nested = self.nested_threshold
        if nested is None:
            found = candidates_above(self.model.ops, scores, cuts)
        else:
            # The nested cut only lowers a label's bar (a nested threshold above a label's
            # threshold changes nothing for it).
            nested_cuts = logit_cuts([nested] * len(self.labels), *calibration)
            found = keep_nested(candidates_above(self.model.ops, scores, numpy.minimum(cuts, nested_cuts)), cuts)
        doc_ids, label_ids, starts, offsets, logits = found
        # Probabilities in the order of the calibrated logits, which also rank ents
        # (float32 probabilities round to 1.0 above about 17 and would tie).
        ranks = calibrated_logits(logits, label_ids, *calibration)
        probabilities = sigmoid(ranks)
        # One sort for the whole batch: by doc, then start, end and label.
        order = numpy.lexsort((label_ids, starts + offsets, starts, doc_ids))
        bounds = numpy.searchsorted(doc_ids[order], numpy.arange(len(docs) + 1))
        labels = [self.vocab.strings.add(label) for label in self.labels]
        for i, doc in enumerate(docs):
            rows = order[bounds[i] : bounds[i + 1]]
            group = SpanGroup(
                doc,
                name=self.key,
                spans=[
                    Span(doc, start, start + offset + 1, label=labels[label])
                    for start, offset, label in zip(
                        starts[rows].tolist(), offsets[rows].tolist(), label_ids[rows].tolist()
                    )
                ],
            )
            group.attrs["scores"] = probabilities[rows]
            doc.spans[self.key] = group
            if self.cfg["write_ents"]:
                doc.set_ents(select_non_overlapping(group, ranks[rows]), default="outside")

    def get_loss(self, examples: Iterable[Example], scores: SpanScores) -> Tuple[float, SpanScores]:
        """Multi-label categorical cross-entropy over the valid candidates, and its
        gradient in the scores' own (ragged) form. The loss is the mean over the
        batch's (doc, label) rows, computed one group of docs at a time. With
        `boundary_smoothing`, the targets are soft (see `smoothed_targets`)."""
        examples = list(examples)
        validate_examples(examples, "GlobalPointer.get_loss")
        _check_batch([eg.predicted for eg in examples], scores, "get_loss")
        gold = [self._gold_candidates(eg, i) for i, eg in enumerate(examples)]
        n_rows = len(examples) * len(self.labels)
        losses, d_groups = [], []
        for group, ids in zip(scores.groups, scores.doc_ids):
            group_gold = [gold[i] for i in ids]
            group_lengths = [scores.lengths[i] for i in ids]
            if self.boundary_smoothing:
                targets = self.model.ops.asarray(smoothed_targets(
                    group.shape, group_gold, group_lengths, self.boundary_smoothing, self.boundary_distance
                ))
            else:
                targets = gold_targets(self.model.ops, group.shape, group_gold)
            lengths = self.model.ops.asarray1i(group_lengths)
            mask = self.model.ops.xp.broadcast_to(candidate_mask(self.model.ops.xp, lengths, group.shape), group.shape)
            group_loss, d_group = loss_and_gradient(group, targets, mask, n_rows=n_rows)
            losses.append(group_loss)
            d_groups.append(d_group)
        # One read of the loss per batch (a GPU sync), not one per group.
        return float(sum(losses)) if losses else 0.0, scores.with_groups(d_groups)

    def _gold_candidates(self, eg: Example, index: int) -> List[Tuple[int, int, int]]:
        """(label, start, offset) of each gold span of doc `index`, aligned to its tokens."""
        label_ids = {label: i for i, label in enumerate(self.labels)}
        candidates = []
        for span in self._aligned_gold(eg, index):
            if span.label_ not in label_ids:
                raise ValueError(
                    f"global_pointer: span {span.text!r} ({span.start}, {span.end}) in doc {index} "
                    f"of the batch has label {span.label_!r}, which is not among the "
                    f"component's labels {list(self.labels)}."
                )
            candidates.append((label_ids[span.label_], span.start, len(span) - 1))
        return candidates

    def _aligned_gold(self, eg: Example, index: int) -> List[Span]:
        if self.key not in eg.reference.spans:
            return []
        _check_gold_spans(eg.reference, self.key, f"doc {index} of the batch")
        return list(eg.get_aligned_spans_y2x(eg.reference.spans[self.key], allow_overlap=True))

    def update(
        self,
        examples: Iterable[Example],
        *,
        drop: float = 0.0,
        sgd: Optional[Optimizer] = None,
        losses: Optional[Dict[str, float]] = None,
    ) -> Dict[str, float]:
        """Learn from a batch; a batch whose docs have no tokens is a no-op."""
        examples = list(examples)
        losses = {} if losses is None else losses
        losses.setdefault(self.name, 0.0)
        validate_examples(examples, "GlobalPointer.update")
        if not any(len(eg.predicted) for eg in examples):
            return losses
        return super().update(examples, drop=drop, sgd=sgd, losses=losses)

    def finish_update(self, sgd: Optimizer) -> None:
        """Apply the accumulated gradients: the head with `head_optimizer` when one is set
        (stepping its schedules once per update), everything else with `sgd`."""
        if self.head_optimizer is None or not self.model.has_ref("head"):
            self.model.finish_update(sgd)
            return
        head = self.model.get_ref("head")
        for layer in self.model.layers:
            layer.finish_update(self.head_optimizer if layer is head else sgd)
        self.head_optimizer.step_schedules()

    def use_params(self, params: Dict):
        """Swap in averaged weights (the training optimizer's, and the head optimizer's own
        when it keeps them) for evaluation and for saving model-best.

        A plain generator, as spaCy's TrainablePipe.use_params is: `Language.use_params`
        (what `spacy train` calls with the optimizer's averages) advances it with `next()`,
        once to swap the weights in and once to restore them. It is called only when the
        training optimizer keeps averages (`use_averages = true`).

        thinc's optimizers keep a torch shim's averages under (shim.id, name), while the
        shim's use_params reads "pytorch_{id}_{name}" keys; without this translation the
        head would silently keep its current weights.
        """
        params = dict(params)
        if self.head_optimizer is not None and self.head_optimizer.averages:
            params.update(self.head_optimizer.averages)
        if self.model.has_ref("head"):
            for shim in self.model.get_ref("head").shims:
                params.update({
                    f"pytorch_{shim.id}_{key[1]}": value for key, value in params.items()
                    if isinstance(key, tuple) and key[0] == shim.id
                })
        with self.model.use_params(params):
            yield

    # Serialization: restore cfg (labels) first, build the head, then load its weights
    # (`_load_model_bytes` in serialization.py).

    def _restore_cfg(self, saved: Dict[str, Any], where: str) -> None:
        """Take the saved cfg (converted if it predates probabilities) and check it."""
        self.cfg.update(upgrade_saved_cfg(saved, where))
        try:
            _check_threshold(self.cfg["threshold"], self.name)
            self.cfg["thresholds"] = _check_thresholds(self.cfg.get("thresholds", {}), self.labels)
            self.cfg["nested_threshold"] = _check_nested_threshold(self.cfg.get("nested_threshold"), self.name)
            self.cfg["calibration"] = _check_calibration(self.cfg.get("calibration", {}), self.labels)
        except ValueError as err:
            raise ValueError(f"{err} (in the cfg read from {where})") from err

    # cfg goes through Python's json, not srsly's: srsly keeps 10 significant digits of a
    # float and reads "0.7" back as 0.7000000000000001, so thresholds and calibration
    # would not survive saving exactly.

    def to_bytes(self, *, exclude=tuple()) -> bytes:
        serialize = {
            "cfg": lambda: json.dumps(self.cfg, ensure_ascii=False),
            "vocab": lambda: self.vocab.to_bytes(exclude=exclude),
            "model": self.model.to_bytes,
        }
        return util.to_bytes(serialize, exclude)

    def to_disk(self, path, *, exclude=tuple()) -> None:
        serialize = {
            "cfg": lambda p: Path(p).write_text(json.dumps(self.cfg, ensure_ascii=False, indent=2), encoding="utf8"),
            "vocab": lambda p: self.vocab.to_disk(p, exclude=exclude),
            "model": lambda p: self.model.to_disk(p),
        }
        util.to_disk(path, serialize, exclude)

    def from_bytes(self, bytes_data: bytes, *, exclude=tuple()) -> "GlobalPointer":
        deserialize = {
            "cfg": lambda b: self._restore_cfg(json.loads(b), "the component's bytes"),
            "vocab": lambda b: self.vocab.from_bytes(b, exclude=exclude),
            "model": lambda b: _load_model_bytes(
                self.model, self.labels, self.max_span_length, b, "the component's bytes"
            ),
        }
        util.from_bytes(bytes_data, deserialize, exclude)
        return self

    def from_disk(self, path, *, exclude=tuple()) -> "GlobalPointer":
        def load_model(p) -> None:
            with open(p, "rb") as file_:
                _load_model_bytes(self.model, self.labels, self.max_span_length, file_.read(), str(p))

        deserialize = {
            "cfg": lambda p: self._restore_cfg(json.loads(Path(p).read_text(encoding="utf8")), str(p)),
            "vocab": lambda p: self.vocab.from_disk(p, exclude=exclude),
            "model": load_model,
        }
        util.from_disk(path, deserialize, exclude)
        return self
