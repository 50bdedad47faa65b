"""Token features for character-level NER: hashed embeddings of token n-grams.

In Chinese (and other scripts annotated character by character) a token is one
character, so the usual subword attributes (PREFIX, SUFFIX, SHAPE) all repeat the
character itself. What carries information is the word the character sits in, and
without a segmenter the cheapest proxy is the character's n-grams: "北京" is a far
better cue for a place than "北" or "京" alone. This module adds those n-grams to
spaCy's MultiHashEmbed recipe as extra hash-embedded columns.
"""
from typing import List, Sequence, Tuple, Union

import numpy
from spacy.attrs import intify_attr
from spacy.tokens import Doc
from thinc.api import HashEmbed, Maxout, Model, chain, concatenate, list2ragged, ragged2list, with_array
from thinc.layers.chain import init as chain_init
from thinc.types import Floats2d, Ints2d

# Stand-ins for the tokens before the start and after the end of a doc.
_BOUNDARY_BEFORE = numpy.uint64(0x2D424F532D)  # "-BOS-"
_BOUNDARY_AFTER = numpy.uint64(0x2D454F532D)  # "-EOS-"
# Odd 64-bit multiplier (golden ratio) to combine ids; HashEmbed hashes the result again.
_MIX = numpy.uint64(0x9E3779B97F4A7C15)


def build_ngram_hash_embed(
    width: int,
    attrs: Sequence[Union[str, int]],
    rows: Sequence[int],
    *,
    ngram_attr: Union[str, int] = "NORM",
    ngram_sizes: Sequence[int] = (2,),
    ngram_rows: int = 20000,
) -> Model[List[Doc], List[Floats2d]]:
    """MultiHashEmbed plus hashed n-grams of `ngram_attr` around each token.

    For each size n in `ngram_sizes`, every token gets the n n-grams that contain it
    (for n = 2: with its left and with its right neighbour), each embedded by its own
    HashEmbed table of `ngram_rows` rows. Doc boundaries count as tokens of their own.
    As in spaCy's MultiHashEmbed, all tables have `width` columns, are concatenated and
    mixed by a Maxout layer; `attrs` and `rows` are the single-token attributes.
    """
    if len(rows) != len(attrs):
        raise ValueError(f"Mismatched lengths: {len(rows)} rows for {len(attrs)} attrs.")
    for size in ngram_sizes:
        if not isinstance(size, int) or size < 2:
            raise ValueError(f"ngram_sizes must be integers >= 2, got {list(ngram_sizes)}.")
    table_rows = list(rows) + [ngram_rows] * sum(ngram_sizes)
    # Seeds continue MultiHashEmbed's scheme (8, 9, ...), so that with no n-grams the
    # tables are the ones spaCy's MultiHashEmbed would build.
    embeddings = [
        HashEmbed(width, n_rows, column=i, seed=8 + i, dropout=0.0) for i, n_rows in enumerate(table_rows)
    ]
    return chain(
        ngram_features(attrs, ngram_attr=ngram_attr, ngram_sizes=ngram_sizes),
        list2ragged(),
        with_array(concatenate(*embeddings)),
        with_array(Maxout(width, width * len(embeddings), nP=3, dropout=0.0, normalize=True)),
        ragged2list(),
    )


def ngram_features(
    attrs: Sequence[Union[str, int]],
    *,
    ngram_attr: Union[str, int] = "NORM",
    ngram_sizes: Sequence[int] = (2,),
) -> Model[List[Doc], List[Ints2d]]:
    """Per doc, a (tokens, columns) uint64 array: the `attrs` columns, then for each n in
    `ngram_sizes` the ids of the n n-grams of `ngram_attr` that contain the token, from
    the one ending at it to the one starting at it."""
    columns = [intify_attr(attr) for attr in attrs]
    ngram_column = intify_attr(ngram_attr)
    if ngram_column is None or None in columns:
        raise ValueError(f"Unknown token attribute in attrs={list(attrs)} or ngram_attr={ngram_attr!r}.")
    return Model(
        "ngram_features",
        _ngram_features_forward,
        attrs={"columns": columns, "ngram_column": ngram_column, "ngram_sizes": list(ngram_sizes)},
    )


def _ngram_features_forward(model: Model, docs: List[Doc], is_train: bool):
    # The n-gram attribute goes last, so that values[:, -1] holds it.
    columns = model.attrs["columns"] + [model.attrs["ngram_column"]]
    sizes = model.attrs["ngram_sizes"]
    features = []
    for doc in docs:
        values = doc.to_array(columns).astype("uint64").reshape((len(doc), len(columns)))
        tokens = values[:, -1]
        parts = [values[:, :-1]]
        for size in sizes:
            padded = numpy.concatenate(
                ([_BOUNDARY_BEFORE] * (size - 1), tokens, [_BOUNDARY_AFTER] * (size - 1))
            ).astype("uint64")
            # ngram_ids[p] combines padded[p : p + size]; token t sits at padded[t + size - 1],
            # so the n-grams that contain it are ngram_ids[t], ..., ngram_ids[t + size - 1].
            ngram_ids = padded[: len(padded) - size + 1].copy()
            for offset in range(1, size):
                ngram_ids = ngram_ids * _MIX + padded[offset : offset + len(ngram_ids)]
            parts.extend(ngram_ids[start : start + len(doc), None] for start in range(size))
        features.append(model.ops.asarray(numpy.hstack(parts), dtype="uint64"))

    def backprop(d_features):
        return []

    return features, backprop


# Tokens per chunk when a tok2vec predicts: enough to keep the matrix products efficient,
# few enough that the activations Thinc holds until a forward pass returns stay small.
DEFAULT_MAX_PREDICT_TOKENS = 4096


def build_tok2vec(
    embed: Model[List[Doc], List[Floats2d]],
    encode: Model[List[Floats2d], List[Floats2d]],
    *,
    max_predict_tokens: int = DEFAULT_MAX_PREDICT_TOKENS,
) -> Model[List[Doc], List[Floats2d]]:
    """spaCy's Tok2Vec.v2 (`embed`, then `encode`) that predicts in chunks of consecutive
    docs of at most `max_predict_tokens` tokens (a longer doc is a chunk of its own).

    A Thinc chain keeps every layer's activations until its forward pass returns, so a
    tok2vec predicting a batch holds some 24 KB per token (configs/cpu.cfg): gigabytes for
    `nlp.pipe(batch_size=1000)` over long documents. Docs do not see each other in a
    tok2vec, so predicting chunk by chunk gives the same vectors while memory follows the
    chunk, whatever the batch size. Training (`begin_update`) runs on the whole batch, as
    backprop needs the activations. The layer tree is Tok2Vec.v2's, so weights saved by
    either load into the other (a pipeline, or `spacy pretrain` output).
    """
    if isinstance(max_predict_tokens, bool) or not isinstance(max_predict_tokens, int) or max_predict_tokens < 1:
        raise ValueError(f"max_predict_tokens must be an integer >= 1, got {max_predict_tokens!r}.")

    def forward(model: Model, docs: List[Doc], is_train: bool):
        embed, encode = model.layers
        if is_train:
            X, backprop_embed = embed(docs, is_train)
            Y, backprop_encode = encode(X, is_train)
            return Y, lambda dY: backprop_embed(backprop_encode(dY))
        # Each layer's prediction frees its activations before the next runs, chunk by chunk.
        outputs: List[Floats2d] = []
        for start, end in token_chunks([len(doc) for doc in docs], max_predict_tokens):
            outputs.extend(encode.predict(embed.predict(docs[start:end])))

        def backprop(d_outputs: List[Floats2d]) -> List[Doc]:
            raise ValueError("Tok2Vec: no backprop from a prediction (is_train=False); use begin_update.")

        return outputs, backprop

    # Named, initialised and with the dims of chain(embed, encode), which Tok2Vec.v2 saves.
    return Model(
        f"{embed.name}>>{encode.name}",
        forward,
        init=chain_init,
        layers=[embed, encode],
        refs={"embed": embed, "encode": encode},
        dims={"nO": encode.get_dim("nO") if encode.has_dim("nO") else None, "nI": None},
    )


def token_chunks(lengths: Sequence[int], max_tokens: int) -> List[Tuple[int, int]]:
    """(start, end) ranges of consecutive docs holding at most `max_tokens` tokens each,
    except that a doc longer than that is a range of its own."""
    chunks, start, tokens = [], 0, 0
    for i, n in enumerate(lengths):
        if i > start and tokens + n > max_tokens:
            chunks.append((start, i))
            start, tokens = i, 0
        tokens += n
    if start < len(lengths):
        chunks.append((start, len(lengths)))
    return chunks


def build_cnn_attention_encoder(
    width: int,
    depth: int,
    window_size: int,
    maxout_pieces: int,
    *,
    attention_depth: int = 1,
    attention_heads: int = 4,
    attention_window: int = 64,
    dropout: float = 0.0,
) -> Model[List[Floats2d], List[Floats2d]]:
    """spaCy's MaxoutWindowEncoder.v2, then `attention_depth` self-attention layers (RoPE,
    each token attending to the tokens within `attention_window`).

    The CNN sees `depth * window_size` tokens to each side; the attention gives every
    token (and so both ends of every candidate span) the context of its sentence, at a
    cost linear in doc length. A drop-in `encode` block of `spacy.Tok2Vec.v2`.
    """
    from spacy.ml.models.tok2vec import MaxoutWindowEncoder
    from thinc.api import PyTorchWrapper_v3

    from .model import _load_weights_only
    from .torch_layers import LocalSelfAttention

    attention = PyTorchWrapper_v3(
        LocalSelfAttention(width, attention_depth, attention_heads, attention_window, dropout=dropout),
        convert_inputs=_packed_inputs,
        convert_outputs=_unpacked_outputs,
        deserialize_model=_load_weights_only,
    )
    cnn = MaxoutWindowEncoder(width=width, window_size=window_size, maxout_pieces=maxout_pieces, depth=depth)
    return chain(cnn, attention)


def _packed_inputs(model: Model, Xs: List[Floats2d], is_train: bool):
    """A list of (n_i, width) arrays -> one packed (tokens, width) torch tensor and the
    lengths. Nothing is padded: the attention groups the docs by length itself."""
    from thinc.api import ArgsKwargs, torch2xp, xp2torch

    ops = model.ops
    lengths = [len(x) for x in Xs]
    packed = ops.flatten(Xs) if Xs else ops.alloc2f(0, 0)
    X = xp2torch(packed, requires_grad=is_train, device=model.shims[0].device)

    def convert_back(d_inputs: ArgsKwargs) -> List[Floats2d]:
        return ops.unflatten(torch2xp(d_inputs.args[0]), lengths)

    return ArgsKwargs(args=(X, lengths), kwargs={}), convert_back


def _unpacked_outputs(model: Model, inputs_outputs, is_train: bool):
    """The packed torch output -> a list of (n_i, width) arrays, and the way back."""
    from thinc.api import ArgsKwargs, torch2xp, xp2torch

    Xs, Y = inputs_outputs
    ops = model.ops
    lengths = [len(x) for x in Xs]
    Ys = ops.unflatten(torch2xp(Y), lengths)

    def convert_for_torch_backward(dYs: List[Floats2d]) -> ArgsKwargs:
        dY = xp2torch(ops.flatten(dYs) if dYs else ops.alloc2f(*Y.shape), device=Y.device)
        return ArgsKwargs(args=(Y,), kwargs={"grad_tensors": dY})

    return Ys, convert_for_torch_backward
