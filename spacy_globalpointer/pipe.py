"""The `global_pointer` pipeline component: nested and flat entities in `doc.spans`."""
import contextlib
import math
import warnings
from dataclasses import replace
from itertools import islice
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import numpy
import srsly
from spacy import util
from spacy.language import Language
from spacy.pipeline import TrainablePipe
from spacy.scorer import Scorer
from spacy.tokens import Doc, Span, SpanGroup
from spacy.training import Example, validate_examples, validate_get_examples
from spacy.vocab import Vocab
from thinc.api import Config, Model, Optimizer, get_array_module
from thinc.types import ArrayXd
from thinc.util import convert_recursive, is_xp_array

from .loss import multilabel_categorical_crossentropy
from .model import SpanScores, build_head
from .scoring import recall_by_kind

DEFAULT_MODEL_CONFIG = """
[model]
@architectures = "spacy-globalpointer.GlobalPointer.v1"
head_size = 64
rope = true

[model.tok2vec]
@architectures = "spacy.Tok2Vec.v2"

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
DEFAULT_SPANS_KEY = "sc"


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
        "threshold": 0.0,
        "max_span_length": None,
        "write_ents": False,
        "head_optimizer": None,
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
    max_span_length: Optional[int],
    write_ents: bool,
    scorer: Optional[Callable],
    head_optimizer: Optional[Optimizer] = None,
) -> "GlobalPointer":
    """Create a GlobalPointer span recognizer.

    model: maps docs to span scores (`SpanScores`: one (docs, labels, n, band)
        array per group of docs of similar length).
    spans_key: `doc.spans` key to read gold spans from and write predictions to.
    threshold: a span is predicted when its logit s(i, j) > threshold. 0.0 is the
        paper's rule (the loss puts the decision boundary at 0); raise it for
        precision, lower it for recall.
    max_span_length: spans of more tokens are not candidates. Set it to make time
        and memory grow linearly with doc length; None scores every span.
    write_ents: also write a non-overlapping subset to `doc.ents` (highest score wins).
    head_optimizer: an optimizer of the head's own (e.g. Adam at 1e-3 while a transformer
        fine-tunes at 2e-5); None updates the head with the training optimizer.
    """
    return GlobalPointer(
        nlp.vocab,
        model,
        name,
        spans_key=spans_key,
        threshold=threshold,
        max_span_length=max_span_length,
        write_ents=write_ents,
        scorer=scorer,
        head_optimizer=head_optimizer,
    )


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


@util.registry.scorers("spacy-globalpointer.scorer.v1")
def make_global_pointer_scorer() -> Callable:
    return global_pointer_score


def _check_threshold(threshold: Any) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise ValueError(f"global_pointer: threshold must be a finite number (a logit), got {threshold!r}.")
    return float(threshold)


def _check_max_span_length(value: Any) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"global_pointer: max_span_length must be None or an integer >= 1, got {value!r}.")
    return value


class GlobalPointer(TrainablePipe):
    """Recognise possibly nested spans by scoring every (start, end, label) triple."""

    def __init__(
        self,
        vocab: Vocab,
        model: Model[List[Doc], SpanScores],
        name: str = "global_pointer",
        *,
        spans_key: str = DEFAULT_SPANS_KEY,
        threshold: float = 0.0,
        max_span_length: Optional[int] = None,
        write_ents: bool = False,
        scorer: Optional[Callable] = global_pointer_score,
        head_optimizer: Optional[Optimizer] = None,
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
            "threshold": _check_threshold(threshold),
            "max_span_length": _check_max_span_length(max_span_length),
            "write_ents": bool(write_ents),
        }
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
        self.cfg["threshold"] = _check_threshold(value)

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
        """Infer the labels from the training data (or take `labels`) and build the model."""
        if callable(get_examples) and next(iter(get_examples()), None) is None:
            raise ValueError("global_pointer: the training set is empty; initialize() needs examples.")
        validate_get_examples(get_examples, "GlobalPointer.initialize")
        n_examples = n_with_key = n_spans = n_too_long = 0
        inferred = []
        for eg in get_examples():
            n_examples += 1
            if self.key not in eg.reference.spans:
                continue
            n_with_key += 1
            _check_gold_spans(eg.reference, self.key, f"training example {n_examples - 1}")
            for span in eg.reference.spans[self.key]:
                n_spans += 1
                inferred.append(span.label_)
                if self.max_span_length is not None and len(span) > self.max_span_length:
                    n_too_long += 1
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
        if n_too_long:
            warnings.warn(
                f"global_pointer: {n_too_long} of {n_spans} training spans are longer than "
                f"max_span_length={self.max_span_length} tokens and can never be predicted."
            )
        self.model.set_dim("nO", len(self.labels))
        sample = [eg.predicted for eg in islice(get_examples(), 10)]
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
        """Write every candidate with score > threshold to doc.spans[spans_key]."""
        docs = list(docs)
        _check_batch(docs, scores, "set_annotations")
        doc_ids, label_ids, starts, offsets, found_scores = self._found_spans(scores)
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
            group.attrs["scores"] = found_scores[rows].astype("float32")
            doc.spans[self.key] = group
            if self.cfg["write_ents"]:
                doc.set_ents(select_non_overlapping(group, found_scores[rows]), default="outside")

    def _found_spans(self, scores: SpanScores) -> Tuple[numpy.ndarray, ...]:
        """(doc, label, start, offset, score) of every candidate above the threshold, as
        numpy arrays, one entry per span, gathered group by group."""
        ops = self.model.ops
        found: List[List[numpy.ndarray]] = [[numpy.zeros((0,), "i")] * 4 + [numpy.zeros((0,), "f")]]
        lengths = numpy.asarray(scores.lengths)
        for group, ids in zip(scores.groups, scores.doc_ids):
            if not group.size:
                continue
            rows, label_ids, starts, offsets = (
                ops.to_numpy(x) for x in ops.xp.nonzero(above_threshold(group, self.threshold))
            )
            # Only spans inside their doc are candidates. Checked on what passed the
            # threshold rather than masking the whole (mostly empty) score array.
            doc_ids = numpy.asarray(ids)[rows]
            inside = starts + offsets < lengths[doc_ids]
            where = [x[inside] for x in (rows, label_ids, starts, offsets)]
            values = ops.to_numpy(group[tuple(ops.asarray(x) for x in where)])
            found.append([doc_ids[inside]] + where[1:] + [values])
        return tuple(numpy.concatenate(column) for column in zip(*found))

    def _candidate_mask(self, lengths, shape) -> Any:
        """(docs, 1, n, band) bool: True where span (i, i + d) lies inside its doc."""
        xp = self.model.ops.xp
        n_max, band = shape[2], shape[3]
        ends = xp.arange(n_max)[:, None] + xp.arange(band)[None, :]
        return (ends[None, :, :] < lengths[:, None, None])[:, None]

    def get_loss(self, examples: Iterable[Example], scores: SpanScores) -> Tuple[float, SpanScores]:
        """Multi-label categorical cross-entropy over the valid candidates, and its
        gradient in the scores' own (ragged) form. The loss is the mean over the
        batch's (doc, label) rows, computed one group of docs at a time."""
        examples = list(examples)
        validate_examples(examples, "GlobalPointer.get_loss")
        _check_batch([eg.predicted for eg in examples], scores, "get_loss")
        gold = [self._gold_candidates(eg, i) for i, eg in enumerate(examples)]
        n_rows = len(examples) * len(self.labels)
        loss, d_groups = 0.0, []
        for group, ids in zip(scores.groups, scores.doc_ids):
            targets = self._targets(group.shape, [gold[i] for i in ids])
            lengths = self.model.ops.asarray1i([scores.lengths[i] for i in ids])
            mask = self.model.ops.xp.broadcast_to(self._candidate_mask(lengths, group.shape), group.shape)
            group_loss, d_group = multilabel_categorical_crossentropy(group, targets, mask, n_rows=n_rows)
            loss += group_loss
            d_groups.append(d_group)
        return loss, scores.with_groups(d_groups)

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

    def _targets(self, shape, gold: List[List[Tuple[int, int, int]]]) -> Any:
        """Bool array of `shape` (docs, labels, n, band): True at each gold span inside the band."""
        ops = self.model.ops
        n, band = shape[2], shape[3]
        where = [
            (row, label, start, offset)
            for row, spans in enumerate(gold)
            for label, start, offset in spans
            if offset < band and start + offset < n
        ]
        targets = ops.xp.zeros(shape, dtype="bool")
        if where:
            targets[tuple(ops.asarray1i(list(column)) for column in zip(*where))] = True
        return targets

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

    @contextlib.contextmanager
    def use_params(self, params: Dict):
        """Swap in averaged weights (the training optimizer's, and the head optimizer's own
        when it keeps them) for evaluation and for saving model-best.

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

    # Serialization: restore cfg (labels) first, build the head, then load its weights.

    def _prepare_model_for_weights(self, saved_nodes: List[Dict[str, Any]]) -> None:
        self.model.attrs["max_span_length"] = self.cfg["max_span_length"]
        if not self.model.has_ref("head"):
            if not self.labels:
                raise ValueError("global_pointer: the saved component has no labels; the model data is incomplete.")
            self.model.set_dim("nO", len(self.labels))
            if not self.model.has_dim("nI"):
                tok2vec = self.model.get_ref("tok2vec")
                if tok2vec.has_dim("nO"):
                    self.model.set_dim("nI", tok2vec.get_dim("nO"))
                else:
                    # A TransformerListener learns its width only at initialize(), which
                    # loading skips; the saved model records the width the head was built with.
                    self.model.set_dim("nI", _saved_width(saved_nodes))
            build_head(self.model)

    def _load_model_bytes(self, data: bytes, source: str) -> None:
        """Load the model data, saying clearly when it is damaged or does not fit."""
        try:
            msg = srsly.msgpack_loads(data)
            if not isinstance(msg, dict) or not isinstance(msg.get("nodes"), list):
                raise TypeError(f"expected a Thinc model dict, got {type(msg).__name__}")
        except Exception as err:
            raise ValueError(
                f"global_pointer: could not read the model data in {source} ({len(data)} "
                f"bytes): it is truncated or corrupted ({type(err).__name__}: {err})."
            ) from err
        self._prepare_model_for_weights(msg["nodes"])
        self._check_saved_dims(msg["nodes"], source)
        self.model.from_dict(convert_recursive(is_xp_array, self.model.ops.asarray, msg))

    def _check_saved_dims(self, saved_nodes: List[Dict[str, Any]], source: str) -> None:
        """Compare the saved layer dims with the model the config and cfg built.

        Thinc would fail on the first mismatch with "Attempt to change dimension";
        this names the component and what to check instead.
        """
        nodes = list(self.model.walk())
        if len(saved_nodes) == len(nodes):
            mismatches = [
                f"{node.name}.{dim}: saved {value}, configured {node.get_dim(dim)}"
                for node, info in zip(nodes, saved_nodes)
                for dim, value in (info.get("dims") or {}).items()
                if value is not None and node.has_dim(dim) is True and node.get_dim(dim) != value
            ]
            if not mismatches:
                return
            found = "; ".join(mismatches[:6]) + ("; ..." if len(mismatches) > 6 else "")
        else:
            found = f"{len(saved_nodes)} layers saved, {len(nodes)} configured"
        raise ValueError(
            f"global_pointer: the saved model in {source} does not match the head this "
            f"pipeline builds ({found}). The head's nO is the number of labels in cfg "
            f"({len(self.labels)}: {list(self.labels)}) and nI the tok2vec width; labels, "
            "the model config (widths, architecture) and the weights must come from the "
            "same training run."
        )

    def from_bytes(self, bytes_data: bytes, *, exclude=tuple()) -> "GlobalPointer":
        deserialize = {
            "cfg": lambda b: self.cfg.update(srsly.json_loads(b)),
            "vocab": lambda b: self.vocab.from_bytes(b, exclude=exclude),
            "model": lambda b: self._load_model_bytes(b, "the component's bytes"),
        }
        util.from_bytes(bytes_data, deserialize, exclude)
        return self

    def from_disk(self, path, *, exclude=tuple()) -> "GlobalPointer":
        def load_model(p) -> None:
            with open(p, "rb") as file_:
                self._load_model_bytes(file_.read(), str(p))

        deserialize = {
            "cfg": lambda p: self.cfg.update(srsly.read_json(p)),
            "vocab": lambda p: self.vocab.from_disk(p, exclude=exclude),
            "model": load_model,
        }
        util.from_disk(path, deserialize, exclude)
        return self


def _saved_width(saved_nodes: List[Dict[str, Any]]) -> int:
    """The input width (nI) stored with a serialized global_pointer model (its root node)."""
    width = (saved_nodes[0].get("dims") or {}).get("nI") if saved_nodes else None
    if width is None:
        raise ValueError(
            "global_pointer: the saved model does not record its input width (nI) and the "
            "tok2vec layer does not know it either; the model data is incomplete."
        )
    return int(width)


def above_threshold(scores: ArrayXd, threshold: Any) -> ArrayXd:
    """Bool mask, True where a span's score passes `threshold`: the one place decisions
    are made. scores: any array with the labels on axis 1 (a `SpanScores` group is
    (docs, labels, n, band)); threshold: a logit, or one logit per label."""
    if numpy.ndim(threshold) == 1:
        xp = get_array_module(scores)
        threshold = xp.asarray(threshold, dtype=scores.dtype).reshape((1, -1) + (1,) * (scores.ndim - 2))
    return scores > threshold


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


def select_non_overlapping(spans: Iterable[Span], scores: Iterable[float]) -> List[Span]:
    """Greedy flat decoding: take spans by descending score, skip any that overlaps a taken one.

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
