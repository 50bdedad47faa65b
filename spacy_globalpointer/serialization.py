"""Loading a global_pointer's model data: build the head the saved weights need (from
the labels in cfg, which loads first) and say clearly when the data is damaged or does
not fit the model the config builds."""
from typing import Any, Dict, List, Optional, Sequence

import srsly
from thinc.api import Model
from thinc.util import convert_recursive, is_xp_array

from .model import build_head


def _load_model_bytes(
    model: Model, labels: Sequence[str], max_span_length: Optional[int], data: bytes, source: str
) -> None:
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
    _prepare_model_for_weights(model, labels, max_span_length, msg["nodes"])
    _check_saved_dims(model, labels, msg["nodes"], source)
    model.from_dict(convert_recursive(is_xp_array, model.ops.asarray, msg))


def _prepare_model_for_weights(
    model: Model, labels: Sequence[str], max_span_length: Optional[int], saved_nodes: List[Dict[str, Any]]
) -> None:
    model.attrs["max_span_length"] = max_span_length
    if not model.has_ref("head"):
        if not labels:
            raise ValueError("global_pointer: the saved component has no labels; the model data is incomplete.")
        model.set_dim("nO", len(labels))
        if not model.has_dim("nI"):
            tok2vec = model.get_ref("tok2vec")
            if tok2vec.has_dim("nO"):
                model.set_dim("nI", tok2vec.get_dim("nO"))
            else:
                # A TransformerListener learns its width only at initialize(), which
                # loading skips; the saved model records the width the head was built with.
                model.set_dim("nI", _saved_width(saved_nodes))
        build_head(model)


def _check_saved_dims(model: Model, labels: Sequence[str], saved_nodes: List[Dict[str, Any]], source: str) -> None:
    """Compare the saved layer dims with the model the config and cfg built.

    Thinc would fail on the first mismatch with "Attempt to change dimension";
    this names the component and what to check instead.
    """
    nodes = list(model.walk())
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
        f"({len(labels)}: {list(labels)}) and nI the tok2vec width; labels, "
        "the model config (widths, architecture) and the weights must come from the "
        "same training run."
    )


def _saved_width(saved_nodes: List[Dict[str, Any]]) -> int:
    """The input width (nI) stored with a serialized global_pointer model (its root node)."""
    width = (saved_nodes[0].get("dims") or {}).get("nI") if saved_nodes else None
    if width is None:
        raise ValueError(
            "global_pointer: the saved model does not record its input width (nI) and the "
            "tok2vec layer does not know it either; the model data is incomplete."
        )
    return int(width)
