"""The CPU encoder's self-attention: local windows equal full attention restricted to the
window, a doc's vectors do not depend on its batch, and a pipeline with it trains and reloads."""
import numpy
import pytest
import spacy
import torch
from thinc.api import fix_random_seed
from torch.nn import functional as F

from spacy_globalpointer.torch_layers import LocalSelfAttention, LocalSelfAttentionLayer

from .tiny_pipeline import EN_DATA, make_examples


def _reference(layer, x, lengths):
    """The layer computed with one full (n x n) attention matrix, masked to |i - j| <= window."""
    batch, n, width = x.shape
    q, k, v = layer.qkv(layer.norm_attn(x)).view(batch, n, 3, layer.n_heads, layer.head_size).unbind(2)
    q, k, v = layer.rope(q.transpose(1, 2)), layer.rope(k.transpose(1, 2)), v.transpose(1, 2)
    pos = torch.arange(n)
    mask = ((pos[:, None] - pos[None, :]).abs() <= layer.window)[None, None]
    mask = mask & (pos[None, :] < lengths[:, None])[:, None, None]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(batch, n, width)
    x = x + layer.out(out)
    return x + layer.ffn(layer.norm_ffn(x))


@pytest.mark.parametrize("n,window", [(11, 4), (5, 8), (23, 3), (1, 2)])
def test_blocked_local_attention_equals_full_masked_attention(n, window):
    torch.manual_seed(0)
    layer = LocalSelfAttentionLayer(16, 2, window).eval()
    x = torch.randn(3, n, 16)
    lengths = torch.tensor([n, max(1, n - 3), 1])
    with torch.no_grad():
        got, expected = layer(x, lengths), _reference(layer, x, lengths)
    inside = torch.arange(n)[None, :] < lengths[:, None]
    assert torch.allclose(got[inside], expected[inside], atol=1e-5)


def test_a_doc_attends_the_same_alone_and_in_a_padded_batch():
    torch.manual_seed(0)
    encoder = LocalSelfAttention(16, 2, 4, 5).eval()
    x = torch.randn(2, 13, 16)
    with torch.no_grad():
        batch = encoder(x, torch.tensor([13, 6]))
        alone = encoder(x[1:, :6], torch.tensor([6]))
    assert torch.allclose(batch[1, :6], alone[0], atol=1e-5)
    assert torch.count_nonzero(batch[1, 6:]) == 0  # padding rows are zeroed
    assert encoder(torch.zeros(2, 0, 16), torch.tensor([0, 0])).shape == (2, 0, 16)


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
