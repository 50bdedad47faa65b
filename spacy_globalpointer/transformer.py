"""spacy-transformers' TransformerModel that trains on CPU as written: mixed precision
and gradient scaling follow the device the pipeline runs on."""
from typing import Callable, Dict

from thinc.api import Model

from .model import mixed_precision_for_device


def build_transformer_model(
    name: str,
    get_spans: Callable,
    tokenizer_config: Dict = {},
    transformer_config: Dict = {},
    mixed_precision: bool = False,
    grad_scaler_config: Dict = {},
) -> Model:
    """`spacy-transformers.TransformerModel.v3` with the same arguments, except that
    mixed precision and gradient scaling are switched off (with one warning) when the
    pipeline is built on CPU, where thinc supports neither; on a GPU they stay as asked.

    The device is the one thinc's current ops name when the pipeline is built: `spacy
    train --gpu-id 0` and `spacy.require_gpu()` select CUDA before that.
    """
    from spacy_transformers.architectures import create_TransformerModel_v3

    wants_scaling = bool(grad_scaler_config.get("enabled", mixed_precision))
    on_device = mixed_precision_for_device(mixed_precision or wants_scaling)
    return create_TransformerModel_v3(
        name,
        get_spans,
        tokenizer_config=dict(tokenizer_config),
        transformer_config=dict(transformer_config),
        mixed_precision=mixed_precision and on_device,
        grad_scaler_config={**grad_scaler_config, "enabled": wants_scaling and on_device},
    )
