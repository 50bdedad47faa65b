import math

import pytest
import torch

from spacy_globalpointer.torch_layers import (
    EfficientGlobalPointerHead,
    GlobalPointerHead,
    RotaryPositionEmbedding,
    band_candidate_mask,
    band_scores,
)


def test_rope_score_depends_only_on_offset():
    torch.manual_seed(0)
    dim, n = 16, 12
    rope = RotaryPositionEmbedding(dim)
    q, k = torch.randn(dim), torch.randn(dim)
    # The same q at every position and the same k at every position.
    rq = rope(q.expand(1, 1, n, dim))[0, 0]  # positions run along the second-to-last dim
    rk = rope(k.expand(1, 1, n, dim))[0, 0]
    scores = rq @ rk.T  # (n, n)
    for offset in range(-n + 1, n):
        diagonal = torch.diagonal(scores, offset=offset)
        assert torch.allclose(diagonal, diagonal[0].expand_as(diagonal), atol=1e-4), offset
    # ...and it does depend on the offset (otherwise RoPE would be a no-op).
    assert not torch.allclose(scores[0, 1], scores[0, 5], atol=1e-3)


def test_rope_preserves_norm_and_rejects_odd_dim():
    rope = RotaryPositionEmbedding(8)
    x = torch.randn(2, 5, 3, 8)
    assert torch.allclose(rope(x).norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    with pytest.raises(ValueError, match="even"):
        RotaryPositionEmbedding(7)


def full_scores(q, k):
    return torch.einsum("bhid,bhjd->bhij", q, k)


@pytest.mark.parametrize("n,band", [(1, 1), (5, 1), (7, 3), (8, 4), (9, 20), (16, 16)])
def test_band_scores_match_full_matrix(n, band):
    torch.manual_seed(n * 31 + band)
    q, k = torch.randn(2, 3, n, 4), torch.randn(2, 3, n, 4)
    full = full_scores(q, k)
    banded = band_scores(q, k, min(band, n))
    for i in range(n):
        for d in range(min(band, n)):
            if i + d < n:
                assert torch.allclose(banded[:, :, i, d], full[:, :, i, i + d], atol=1e-5)


@pytest.mark.parametrize("head_class", [GlobalPointerHead, EfficientGlobalPointerHead])
@pytest.mark.parametrize("rope", [True, False])
def test_head_masks_non_candidates_and_scales(head_class, rope):
    torch.manual_seed(0)
    head = head_class(10, 3, head_size=8, rope=rope)
    X = torch.randn(3, 6, 10)
    lengths = torch.tensor([6, 2, 0])
    scores = head(X, lengths)
    assert scores.shape == (3, 3, 6, 6)
    assert scores.dtype == torch.float32
    assert torch.isfinite(scores).all()
    mask = band_candidate_mask(lengths, 6, 6)[:, None].expand_as(scores)
    floor = torch.finfo(torch.float32).min
    assert (scores[~mask] == floor).all()
    assert (scores[mask] > floor / 2).all()
    # Band width w: only spans of at most w tokens, equal to the full scores there.
    banded = head(X, lengths, band=2)
    assert banded.shape == (3, 3, 6, 2)
    assert torch.allclose(banded, scores[..., :2])


def test_global_pointer_score_is_scaled_dot_product():
    torch.manual_seed(0)
    head = GlobalPointerHead(4, 2, head_size=6, rope=False)
    X = torch.randn(1, 5, 4)
    scores = head(X, torch.tensor([5]))
    qk = head.proj(X).view(1, 5, 2, 12).transpose(1, 2)  # (batch, types, n, 2 * head_size)
    q, k = qk[..., :6], qk[..., 6:]
    expected = full_scores(q, k) / math.sqrt(6) + head.offset[None, :, None, None]
    for i in range(5):
        for d in range(5 - i):
            assert torch.allclose(scores[0, :, i, d], expected[0, :, i, i + d], atol=1e-5)


def test_efficient_head_has_fewer_parameters():
    def count(module):
        return sum(p.numel() for p in module.parameters())

    width, types = 96, 10
    full = count(GlobalPointerHead(width, types, head_size=64))
    efficient = count(EfficientGlobalPointerHead(width, types, head_size=64))
    assert efficient * 5 < full


@pytest.mark.parametrize("head_class", [GlobalPointerHead, EfficientGlobalPointerHead])
def test_untrained_head_predicts_nothing(head_class):
    """The learned offset starts below the decision boundary: no junk spans before training."""
    torch.manual_seed(0)
    head = head_class(96, 10, head_size=64)
    X = torch.randn(4, 50, 96)
    scores = head(X, torch.tensor([50, 40, 10, 1]))
    assert (scores < 0).all()
    assert head.offset.requires_grad


@pytest.mark.parametrize("head_class", [GlobalPointerHead, EfficientGlobalPointerHead])
def test_span_evidence_is_mean_plus_soft_minimum_of_the_inside(head_class):
    torch.manual_seed(0)
    width, types, n, band = 6, 2, 7, 4
    plain = head_class(width, types, head_size=4)
    head = head_class(width, types, head_size=4, span_evidence=True)
    head.load_state_dict(plain.state_dict(), strict=False)
    torch.nn.init.normal_(head.evidence.proj.weight)
    torch.nn.init.normal_(head.evidence.proj.bias)
    X, lengths = torch.randn(2, n, width), torch.tensor([n, 5])
    extra = head(X, lengths, band=band) - plain(X, lengths, band=band)
    token = head.evidence.proj(X)  # (batch, n, 2 * types)
    for b, length in enumerate(lengths.tolist()):
        for i in range(length):
            for d in range(min(band, length - i)):
                inside = token[b, i : i + d + 1]
                u, v = inside[:, :types], inside[:, types:]
                expected = u.mean(0) - torch.logsumexp(-v, dim=0)
                assert torch.allclose(extra[b, :, i, d], expected, atol=1e-4), (b, i, d)


@pytest.mark.parametrize("head_class", [GlobalPointerHead, EfficientGlobalPointerHead])
def test_span_evidence_starts_neutral_and_ignores_padding(head_class):
    """Zero-initialised: only the log(length) prior of the soft minimum; a doc's scores do not
    depend on what else is in its batch; and heads without it have no extra parameters."""
    torch.manual_seed(0)
    plain = head_class(6, 3, head_size=4)
    head = head_class(6, 3, head_size=4, span_evidence=True)
    assert set(head.state_dict()) - set(plain.state_dict()) == {"evidence.proj.weight", "evidence.proj.bias"}
    head.load_state_dict(plain.state_dict(), strict=False)
    X = torch.randn(1, 5, 6)
    diff = head(X, torch.tensor([5])) - plain(X, torch.tensor([5]))
    prior = -torch.log(torch.arange(1, 6, dtype=torch.float32))
    assert torch.allclose(diff[0, :, 0], prior.expand(3, 5), atol=1e-5)
    torch.nn.init.normal_(head.evidence.proj.weight)
    alone = head(X[:, :3], torch.tensor([3]), band=2)
    padded = torch.cat([X[:, :3], 100 * torch.randn(1, 4, 6)], dim=1)
    batched = head(padded, torch.tensor([3]), band=2)
    assert torch.allclose(batched[:, :, :3], alone, atol=1e-5)
