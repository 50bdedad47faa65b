"""Thinc architectures: tok2vec -> padding -> PyTorch GlobalPointer head -> span scores.

The model maps a batch of docs to `SpanScores`: the docs are scored in groups of
similar length and the scores stay in those groups (ragged), so that decoding and
the loss, like the head, cost what the docs' own lengths cost.
"""
import os
import warnings
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import ArgsKwargs, CupyOps, Model, Ops, PyTorchWrapper_v3, get_current_ops, torch2xp, xp2torch
from thinc.shims.pytorch_grad_scaler import PyTorchGradScaler
from thinc.types import Floats2d, Floats3d, Floats4d, Ints1d

from .torch_layers import EfficientGlobalPointerHead, GlobalPointerHead, check_span_grid, length_groups

# Without a band the head keeps types * n^2 fp32 scores per doc; past this many the
# doc would need gigabytes, so we refuse it with advice instead of swapping or crashing.
MAX_FULL_SCORES = 2**28

_after_fork_registered = False

CPU_MIXED_PRECISION_WARNING = (
    "spacy-globalpointer: mixed precision and gradient scaling need a CUDA GPU and this "
    "pipeline runs on CPU, so they are switched off (set mixed_precision = false in the "
    "config to silence this)."
)


def on_cuda(ops: Optional[Ops] = None) -> bool:
    """Whether the pipeline runs on a CUDA GPU: thinc's ops are CupyOps (`spacy train
    --gpu-id`, `spacy.require_gpu()`), else the current ops are used."""
    return isinstance(ops if ops is not None else get_current_ops(), CupyOps)


def mixed_precision_for_device(requested: bool, ops: Optional[Ops] = None) -> bool:
    """Mixed precision (and gradient scaling) as requested on a GPU; off on CPU.

    thinc autocasts only on CUDA and its gradient scaler refuses CPU tensors, so a config
    written for a GPU would otherwise crash at the first update on CPU. The warning is
    issued from this one line, so Python's default filter shows it once per process
    however many layers ask.
    """
    if requested and not on_cuda(ops):
        warnings.warn(CPU_MIXED_PRECISION_WARNING, stacklevel=1)
        return False
    return requested


def build_global_pointer(
    tok2vec: Model[List[Doc], List[Floats2d]],
    *,
    head_size: int = 64,
    rope: bool = True,
    mixed_precision: bool = False,
    grad_scaler: Optional[PyTorchGradScaler] = None,
    span_evidence: bool = False,
    span_grid: Optional[Dict[str, int]] = None,
    nO: Optional[int] = None,
) -> Model[List[Doc], "SpanScores"]:
    """GlobalPointer: per-type q/k projections of `head_size`, RoPE, scaled dot products.

    Returns a model that maps a batch of docs to `SpanScores` (one (docs, n_labels,
    n, band) array per group of docs of similar length); see `torch_layers` for the
    band layout. With `span_evidence`, each span's score also reads the tokens between its
    endpoints (a mean and a soft minimum of per-type token scores; `torch_layers.SpanEvidence`):
    for CPU encoders whose endpoints do not see the whole span. With `span_grid`
    ({"channels", "depth", "kernel", "head_size"}, any of them; {} for the defaults
    8, 2, 3, 16), a few convolutions over the (start, end) grid of span features and the
    head's probabilities add a score per type, so that a span's score sees its neighbours
    (`torch_layers.SpanGrid`).
    """
    return _build(tok2vec, GlobalPointerHead, head_size, rope, mixed_precision, grad_scaler, span_evidence,
                  span_grid, nO)


def build_efficient_global_pointer(
    tok2vec: Model[List[Doc], List[Floats2d]],
    *,
    head_size: int = 64,
    rope: bool = True,
    mixed_precision: bool = False,
    grad_scaler: Optional[PyTorchGradScaler] = None,
    span_evidence: bool = False,
    span_grid: Optional[Dict[str, int]] = None,
    nO: Optional[int] = None,
) -> Model[List[Doc], "SpanScores"]:
    """Efficient GlobalPointer: one shared q/k projection plus per-type start/end biases
    (`span_evidence` and `span_grid` as for GlobalPointer.v1)."""
    return _build(
        tok2vec, EfficientGlobalPointerHead, head_size, rope, mixed_precision, grad_scaler, span_evidence,
        span_grid, nO,
    )


@registry.misc("spacy-globalpointer.grad_scaler.v1")
def make_grad_scaler(
    *,
    enabled: bool = False,
    init_scale: float = 2.0**16,
    backoff_factor: float = 0.5,
    growth_factor: float = 2.0,
    growth_interval: int = 2000,
) -> PyTorchGradScaler:
    """Thinc's PyTorchGradScaler, made available to configs as the head's `grad_scaler`.

    Enable it together with `mixed_precision` (fp16 autocast on CUDA): the head's
    gradients are scaled up before backprop and unscaled afterwards, and steps whose
    gradients overflow are skipped. Thinc only supports it on CUDA tensors.
    """
    return PyTorchGradScaler(
        enabled=enabled,
        init_scale=init_scale,
        backoff_factor=backoff_factor,
        growth_factor=growth_factor,
        growth_interval=growth_interval,
    )


def _build(tok2vec, head_class, head_size, rope, mixed_precision, grad_scaler, span_evidence, span_grid, nO):
    if head_size < 2 or head_size % 2:
        raise ValueError(f"head_size must be an even number >= 2, got {head_size}.")
    if span_grid is not None:
        span_grid = check_span_grid(span_grid)
    return Model(
        "global_pointer",
        forward,
        init=init,
        layers=[tok2vec],
        refs={"tok2vec": tok2vec},
        dims={"nI": None, "nO": nO},
        attrs={
            "head_class": head_class,
            "head_size": head_size,
            "rope": rope,
            "mixed_precision": mixed_precision,
            "grad_scaler": grad_scaler,
            "span_evidence": span_evidence,
            "span_grid": span_grid,
            # Set by the pipe: spans longer than this are not candidates (None: no limit).
            "max_span_length": None,
        },
    )


def init(model: Model, X: Optional[List[Doc]] = None, Y: Any = None) -> None:
    tok2vec = model.get_ref("tok2vec")
    if X is not None:
        tok2vec.initialize(X=X)
    else:
        tok2vec.initialize()
    if not model.has_dim("nI"):
        model.set_dim("nI", tok2vec.get_dim("nO"))
    build_head(model)


def build_head(model: Model) -> None:
    """Create the torch head once its width (nI) and label count (nO) are known.

    Called by `init` when training starts and by the pipe before it loads weights,
    so that the layer tree matches the serialized one. Does nothing if built already.
    """
    if model.has_ref("head"):
        return
    width, n_labels = model.get_dim("nI"), model.get_dim("nO")
    torch_head = model.attrs["head_class"](
        width, n_labels, head_size=model.attrs["head_size"], rope=model.attrs["rope"],
        span_evidence=model.attrs["span_evidence"], span_grid=model.attrs["span_grid"],
    )
    grad_scaler = model.attrs["grad_scaler"]
    wants_scaling = grad_scaler is not None and grad_scaler._enabled
    mixed_precision = mixed_precision_for_device(model.attrs["mixed_precision"] or wants_scaling, model.ops)
    head = PyTorchWrapper_v3(
        torch_head,
        convert_inputs=_convert_inputs,
        convert_outputs=_convert_outputs,
        mixed_precision=mixed_precision and model.attrs["mixed_precision"],
        grad_scaler=grad_scaler if mixed_precision else PyTorchGradScaler(enabled=False),
        deserialize_model=_load_weights_only,
    )
    model._layers.append(head)
    model.set_ref("head", head)
    _register_after_fork()


def _one_torch_thread() -> None:
    torch.set_num_threads(1)


def _register_after_fork() -> None:
    """Give forked children (`nlp.pipe(n_process=2)` on Linux) one torch thread.

    torch's CPU kernels run on GNU OpenMP, which is not fork-safe: a child forked
    after the parent ran a parallel region (training, or predicting a batch) hangs
    in its first one. With one thread the child never starts a thread team, and
    n_process workers do not oversubscribe the cores. Registered once per process.
    """
    global _after_fork_registered
    if not _after_fork_registered and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_one_torch_thread)
        _after_fork_registered = True


@dataclass
class SpanScores:
    """The span scores of a batch of docs, ragged: one array per group of docs of similar length.

    `groups[g]` has shape (len(doc_ids[g]), labels, n_g, band_g) in band layout
    (`groups[g][r, a, i, d]` scores label a for the span (i, i + d) of doc
    `doc_ids[g][r]`), with n_g the longest doc of the group and band_g =
    min(max_span_length, n_g), or n_g without a band. Positions that are not
    candidates (padding, spans past the end of their doc) hold the most negative
    finite float32. `lengths[b]` is the token count of the batch's doc b. Every doc is
    in exactly one group; a group of empty docs has n_g = band_g = 0.

    Nothing is padded to the batch's longest doc, so a batch costs the sum over its
    docs of n_i * band * labels (within the 25% padding of a group), not
    batch * n_max * band * labels. The pipe's `predict` returns this and
    `set_annotations` reads it; `get_loss` returns the gradient in the same form.
    """

    groups: List[Floats4d]
    doc_ids: List[List[int]]
    lengths: List[int]
    # Doc index -> (group, row), built on first use by `doc`.
    _where: Optional[Dict[int, Tuple[int, int]]] = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        """The number of docs."""
        return len(self.lengths)

    def doc(self, index: int) -> Floats3d:
        """Doc `index`'s scores, (labels, n, band): what a batch of that doc alone would give."""
        if self._where is None:
            self._where = {
                doc: (g, row) for g, ids in enumerate(self.doc_ids) for row, doc in enumerate(ids)
            }
        if index not in self._where:
            raise IndexError(f"SpanScores: no doc {index} in a batch of {len(self)} docs.")
        g, row = self._where[index]
        n = self.lengths[index]
        return self.groups[g][row, :, :n, : min(self.groups[g].shape[3], n)]

    def with_groups(self, groups: List[Floats4d]) -> "SpanScores":
        """The same docs and grouping with other arrays, e.g. the gradient of the scores."""
        if [g.shape for g in groups] != [g.shape for g in self.groups]:
            raise ValueError(
                "SpanScores: the new arrays have shapes "
                f"{[tuple(g.shape) for g in groups]}, expected {[tuple(g.shape) for g in self.groups]}."
            )
        return SpanScores(groups, self.doc_ids, self.lengths)


def forward(model: Model, docs: List[Doc], is_train: bool) -> Tuple[SpanScores, Callable]:
    tok2vec = model.get_ref("tok2vec")
    head = model.get_ref("head")
    ops = model.ops
    if not any(len(doc) for doc in docs):
        # Nothing to score. The tok2vec is not called: spacy-transformers' listener cannot
        # pool a batch in which no doc has a token (it concatenates an empty list).
        groups = [list(range(len(docs)))] if docs else []
        arrays = [ops.alloc4f(len(docs), model.get_dim("nO"), 0, 0) for _ in groups]
        return SpanScores(arrays, groups, [0] * len(docs)), lambda d_scores: []
    Xs, backprop_tok2vec = tok2vec(docs, is_train)
    lengths = [len(x) for x in Xs]
    n_max = max(lengths, default=0)
    n_labels = model.get_dim("nO")
    band = model.attrs["max_span_length"]
    if band is None and n_labels * n_max * n_max > MAX_FULL_SCORES:
        raise ValueError(
            f"A doc of {n_max} tokens needs {n_labels} x {n_max}^2 span scores without a "
            f"band, more than {MAX_FULL_SCORES} ({MAX_FULL_SCORES * 4 // 2**30} GiB). Set "
            "`max_span_length` on the global_pointer component (e.g. 32) so that cost grows "
            "linearly with doc length, or split the doc."
        )
    groups = length_groups(lengths)
    arrays, callbacks = [], []
    # Docs of similar length are scored together, each group padded to its own longest
    # doc, and the scores stay in their groups: one long doc no longer makes every doc
    # of the batch pay for its length, here or in decoding and the loss.
    for group in groups:
        group_n = lengths[group[-1]]
        if group_n == 0:
            arrays.append(ops.alloc4f(len(group), n_labels, 0, 0))
            callbacks.append(None)
            continue
        group_lengths = ops.asarray1i([lengths[i] for i in group])
        padded = ops.pad([Xs[i] for i in group])  # (group, group_n, width)
        group_scores, backprop_head = head((padded, group_lengths, band), is_train)
        arrays.append(group_scores)
        callbacks.append(backprop_head)

    def backprop(d_scores: SpanScores) -> List[Doc]:
        n_in = model.get_dim("nI")
        d_Xs = [ops.alloc2f(0, n_in) if n == 0 else None for n in lengths]
        for group, d_group, backprop_head in zip(groups, d_scores.groups, callbacks):
            if backprop_head is None:
                continue
            d_padded = backprop_head(d_group)
            for i, d_X in zip(group, ops.unpad(d_padded, [lengths[i] for i in group])):
                d_Xs[i] = d_X
        return backprop_tok2vec(d_Xs)

    return SpanScores(arrays, groups, lengths), backprop


def _convert_inputs(
    model: Model, X: Tuple[Floats3d, Ints1d, Optional[int]], is_train: bool
) -> Tuple[ArgsKwargs, Callable[[ArgsKwargs], Floats3d]]:
    padded, lengths, band = X
    device = model.shims[0].device
    X_torch = xp2torch(padded, requires_grad=is_train, device=device)
    lengths_torch = xp2torch(lengths, device=device)

    def convert_back(d_inputs: ArgsKwargs) -> Floats3d:
        return torch2xp(d_inputs.args[0])

    return ArgsKwargs(args=(X_torch, lengths_torch), kwargs={"band": band}), convert_back


def _convert_outputs(
    model: Model, inputs_outputs: Tuple[Any, torch.Tensor], is_train: bool
) -> Tuple[Floats4d, Callable[[Floats4d], ArgsKwargs]]:
    _, scores_torch = inputs_outputs
    scores = torch2xp(scores_torch)

    def convert_for_torch_backward(d_scores: Floats4d) -> ArgsKwargs:
        d_torch = xp2torch(d_scores, device=scores_torch.device)
        return ArgsKwargs(args=(scores_torch,), kwargs={"grad_tensors": d_torch})

    return scores, convert_for_torch_backward


def _load_weights_only(module: torch.nn.Module, state_bytes: bytes, device) -> torch.nn.Module:
    """Load a state dict without unpickling code, and say clearly when it does not fit."""
    try:
        state = torch.load(BytesIO(state_bytes), map_location=device, weights_only=True)
    except Exception as err:
        raise ValueError(
            "Could not read the global_pointer head weights: the model data is truncated, "
            f"corrupted or not a weights-only state dict ({type(err).__name__}: {err})."
        ) from err
    expected = {name: tuple(t.shape) for name, t in module.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in state.items()}
    if expected != found:
        raise ValueError(
            "The saved global_pointer head does not match this pipeline's configuration "
            f"(labels, width, head_size or architecture): expected parameters {expected}, "
            f"found {found}."
        )
    module.load_state_dict(state)
    return module.to(device)
