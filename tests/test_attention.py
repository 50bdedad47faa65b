"""The CPU encoder's self-attention works on packed docs in length groups, and gives what the
padded layer (every doc padded to the batch's longest) gave: outputs, input gradients and
parameter gradients equal to float tolerance, on random batches of mixed lengths. The padded
layer is kept here as the reference."""
import numpy
import pytest
import spacy
import torch
from thinc.api import fix_random_seed
from torch.nn import functional as F

from spacy_globalpointer.torch_layers import LocalSelfAttention, LocalSelfAttentionLayer, PackedBatch

from .test_ragged import random_lengths
from .tiny_pipeline import EN_DATA, make_examples

WIDTH, HEADS = 16, 2


# ---------------------------------------------------------------- references


def padded_layer(layer, x, lengths):
    """The layer as it was: (batch, n_max, width) in, every doc padded to the longest,
    queries in blocks of `window` against keys within the window."""
    batch, n, width = x.shape
    q, k, v = layer.qkv(layer.norm_attn(x)).view(batch, n, 3, layer.n_heads, layer.head_size).unbind(2)
    q, k, v = layer.rope(q.transpose(1, 2)), layer.rope(k.transpose(1, 2)), v.transpose(1, 2)
    positions = torch.arange(n)
    valid = positions[None, :] < lengths[:, None]
    blocks = []
    for start in range(0, n, layer.window):
        end = min(start + layer.window, n)
        k_start, k_end = max(0, start - layer.window), min(n, end + layer.window)
        near = (positions[start:end, None] - positions[None, k_start:k_end]).abs() <= layer.window
        allowed = near[None, None] & valid[:, None, None, k_start:k_end]
        blocks.append(F.scaled_dot_product_attention(
            q[:, :, start:end], k[:, :, k_start:k_end], v[:, :, k_start:k_end], attn_mask=allowed
        ))
    attended = torch.cat(blocks, dim=2).transpose(1, 2).reshape(batch, n, width)
    x = x + layer.out(attended)
    return x + layer.ffn(layer.norm_ffn(x))


def padded_encoder(encoder, xs):
    """The encoder as it was, on a list of (n_i, width) tensors -> list of (n_i, width)."""
    if not any(len(x) for x in xs):
        return [x.clone() for x in xs]
    lengths = torch.tensor([len(x) for x in xs])
    padded = torch.nn.utils.rnn.pad_sequence(list(xs), batch_first=True)
    for layer in encoder.layers:
        padded = padded_layer(layer, padded, lengths)
    return [padded[i, :n] for i, n in enumerate(lengths.tolist())]


def full_attention_layer(layer, x):
    """One doc (n, width) with one full (n x n) attention matrix, masked to |i - j| <= window."""
    n, width = x.shape
    q, k, v = layer.qkv(layer.norm_attn(x)).view(n, 3, layer.n_heads, layer.head_size).unbind(1)
    q, k, v = layer.rope(q.transpose(0, 1)), layer.rope(k.transpose(0, 1)), v.transpose(0, 1)
    pos = torch.arange(n)
    mask = (pos[:, None] - pos[None, :]).abs() <= layer.window
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(0, 1).reshape(n, width)
    x = x + layer.out(out)
    return x + layer.ffn(layer.norm_ffn(x))


# ---------------------------------------------------------------- batches


BATCHES = {
    # Mostly short docs, some empty, now and then a long one (longer than the window).
    **{f"random{seed}": [int(n) for n in random_lengths(numpy.random.default_rng(seed))] for seed in range(6)},
    "one_long_doc": [61],
    "empty_docs": [0, 3, 0, 0],
    "all_empty": [0, 0],
    # One group padded to 25 tokens (window 4): the 20-token doc's padded queries in the
    # block from position 24 have no key inside their doc, the case that must not leak NaNs.
    "padded_queries_without_keys": [25, 20, 22],
}


def make_batch(lengths, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(n, WIDTH, generator=generator) for n in lengths]


def build_encoder(window, depth=2, seed=0):
    torch.manual_seed(seed)
    encoder = LocalSelfAttention(WIDTH, depth, HEADS, window)
    with torch.no_grad():  # LayerNorms away from their identity start, so that they count
        for name, param in encoder.named_parameters():
            if "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    return encoder


def grads_of(encoder, inputs):
    grads = {name: p.grad.clone() for name, p in encoder.named_parameters()}
    encoder.zero_grad()
    return grads, [x.grad.clone() for x in inputs]


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("window", [4, 64])
@pytest.mark.parametrize("batch", list(BATCHES))
def test_grouped_attention_equals_the_padded_layer_forward_and_backward(batch, window):
    lengths = BATCHES[batch]
    encoder = build_encoder(window)
    xs = make_batch(lengths)
    packed_in = [x.clone().requires_grad_() for x in xs]
    padded_in = [x.clone().requires_grad_() for x in xs]
    packed_out = encoder(torch.cat(packed_in) if xs else torch.zeros(0, WIDTH), lengths)
    padded_out = padded_encoder(encoder, padded_in)
    expected = torch.cat(padded_out) if xs else torch.zeros(0, WIDTH)
    assert packed_out.shape == (sum(lengths), WIDTH)
    torch.testing.assert_close(packed_out, expected, rtol=1e-5, atol=1e-5)
    if not sum(lengths):
        return
    upstream = torch.randn(packed_out.shape, generator=torch.Generator().manual_seed(1))
    (packed_out * upstream).sum().backward()
    packed_grads, packed_input_grads = grads_of(encoder, packed_in)
    (expected * upstream).sum().backward()
    padded_grads, padded_input_grads = grads_of(encoder, padded_in)
    for got, want in zip(packed_input_grads, padded_input_grads):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert packed_grads.keys() == padded_grads.keys()
    for name in packed_grads:
        assert torch.isfinite(packed_grads[name]).all(), name
        torch.testing.assert_close(packed_grads[name], padded_grads[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("n,window", [(11, 4), (5, 8), (23, 3), (1, 2)])
def test_blocked_local_attention_equals_full_masked_attention(n, window):
    torch.manual_seed(0)
    layer = LocalSelfAttentionLayer(WIDTH, HEADS, window).eval()
    lengths = [n, max(1, n - 3), 1]
    xs = make_batch(lengths)
    with torch.no_grad():
        got = layer(torch.cat(xs), PackedBatch(lengths, torch.device("cpu")))
        expected = torch.cat([full_attention_layer(layer, x) for x in xs])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_a_doc_attends_the_same_alone_and_in_any_batch():
    encoder = build_encoder(window=5).eval()
    xs = make_batch([13, 6, 0, 40, 2])
    with torch.no_grad():
        batch = encoder(torch.cat(xs), [13, 6, 0, 40, 2])
        alone = encoder(xs[1], [6])
    torch.testing.assert_close(batch[13:19], alone, rtol=1e-5, atol=1e-5)
    assert encoder(torch.zeros(0, WIDTH), [0, 0]).shape == (0, WIDTH)
    with pytest.raises(ValueError, match="5 packed rows for docs of 6 tokens"):
        encoder(torch.zeros(5, WIDTH), [6])


def test_packed_batch_groups_follow_the_docs_own_lengths():
    """A long doc gets a group of its own: the short docs are padded to their own longest."""
    lengths = [3] * 40 + [0, 500, 4, 2]
    batch = PackedBatch(lengths, torch.device("cpu"))
    gathered = sum(group.index.numel() for group in batch.groups)
    assert gathered <= 1.25 * sum(lengths)
    assert sorted(group.n for group in batch.groups)[-1] == 500
    x = torch.arange(sum(lengths), dtype=torch.float32)[:, None]
    assert torch.equal(batch.scatter([batch.gather(x, group) for group in batch.groups]), x)


def test_attention_needs_even_head_sizes():
    with pytest.raises(ValueError, match="heads of an even size"):
        LocalSelfAttentionLayer(12, 4, 8)
    with pytest.raises(ValueError, match="window must be >= 1"):
        LocalSelfAttentionLayer(16, 2, 0)


def test_pipeline_with_attention_encoder_trains_and_reloads(tmp_path):
    fix_random_seed(0)
    nlp = spacy.blank("en")
    encode = {
        "@architectures": "spacy-globalpointer.CNNAttentionEncoder.v1", "width": 32, "depth": 2,
        "window_size": 1, "maxout_pieces": 3, "attention_depth": 1, "attention_heads": 4, "attention_window": 8,
    }
    embed = {
        "@architectures": "spacy.MultiHashEmbed.v2", "width": 32, "rows": [500, 100, 200, 200],
        "attrs": ["NORM", "PREFIX", "SUFFIX", "SHAPE"], "include_static_vectors": False,
    }
    model = {"@architectures": "spacy-globalpointer.GlobalPointer.v1", "head_size": 16,
             "tok2vec": {"@architectures": "spacy.Tok2Vec.v2", "embed": embed, "encode": encode}}
    gp = nlp.add_pipe("global_pointer", config={"model": model})
    examples = make_examples(nlp, EN_DATA)
    optimizer = nlp.initialize(lambda: examples)
    losses = [nlp.update(examples, sgd=optimizer)["global_pointer"] for _ in range(40)]
    assert losses[-1] < 0.2 * losses[0]
    assert len(nlp(EN_DATA[0][0]).spans["sc"]) > 0 and len(nlp("").spans["sc"]) == 0
    nlp.to_disk(tmp_path / "nlp")
    loaded = spacy.load(tmp_path / "nlp")
    texts = [text for text, _ in EN_DATA]
    expected = gp.predict([nlp.make_doc(t) for t in texts])
    got = loaded.get_pipe("global_pointer").predict([loaded.make_doc(t) for t in texts])
    for i in range(len(texts)):
        numpy.testing.assert_allclose(got.doc(i), expected.doc(i), rtol=1e-5, atol=1e-5)
