import math

import numpy
import pytest
import torch

from spacy_globalpointer.loss import multilabel_categorical_crossentropy


def naive_loss(scores, targets, mask):
    """The formula, one candidate at a time: mean over (doc, type) rows."""
    batch, types = scores.shape[:2]
    total = 0.0
    for b in range(batch):
        for a in range(types):
            pos = [s for s, t, m in zip(scores[b, a].ravel(), targets[b, a].ravel(), mask[b, a].ravel()) if m and t]
            neg = [s for s, t, m in zip(scores[b, a].ravel(), targets[b, a].ravel(), mask[b, a].ravel()) if m and not t]
            total += math.log(1 + sum(math.exp(-s) for s in pos)) + math.log(1 + sum(math.exp(s) for s in neg))
    return total / (batch * types)


def random_problem(seed, shape=(2, 3, 5, 4)):
    rng = numpy.random.default_rng(seed)
    scores = rng.normal(scale=3.0, size=shape).astype("float32")
    targets = rng.random(shape) < 0.2
    mask = rng.random(shape) < 0.8
    return scores, targets, mask


@pytest.mark.parametrize("seed", range(5))
def test_loss_matches_naive_formula(seed):
    scores, targets, mask = random_problem(seed)
    loss, _ = multilabel_categorical_crossentropy(scores, targets, mask)
    assert loss == pytest.approx(naive_loss(scores, targets, mask), rel=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_gradient_matches_autograd_and_masked_get_zero(seed):
    scores, targets, mask = random_problem(seed)
    _, d_scores = multilabel_categorical_crossentropy(scores, targets, mask)
    s = torch.tensor(scores, dtype=torch.float64, requires_grad=True)
    zero = torch.zeros(s.shape[:2] + (1,), dtype=s.dtype)
    flat = s.reshape(s.shape[0], s.shape[1], -1)
    pos = torch.tensor(targets & mask).reshape(flat.shape)
    neg = torch.tensor(~targets & mask).reshape(flat.shape)
    pos_logits = torch.where(pos, -flat, torch.tensor(-math.inf, dtype=s.dtype))
    neg_logits = torch.where(neg, flat, torch.tensor(-math.inf, dtype=s.dtype))
    per_row = torch.logsumexp(torch.cat([zero, pos_logits], -1), -1) + torch.logsumexp(
        torch.cat([zero, neg_logits], -1), -1
    )
    per_row.mean().backward()
    assert numpy.allclose(d_scores, s.grad.numpy(), atol=1e-6)
    assert (d_scores[~mask] == 0).all()


def test_loss_is_finite_for_extreme_and_masked_scores():
    shape = (1, 2, 3, 3)
    scores = numpy.full(shape, 1e4, dtype="float32")
    scores[0, 0, 0, 0] = -1e4
    mask = numpy.ones(shape, dtype=bool)
    mask[0, 1] = False  # a fully masked row
    scores[0, 1] = numpy.finfo("float32").min  # what the head writes at masked positions
    targets = numpy.zeros(shape, dtype=bool)
    targets[0, 0, 0, 0] = True
    loss, d_scores = multilabel_categorical_crossentropy(scores, targets, mask)
    assert math.isfinite(loss) and numpy.isfinite(d_scores).all()
    assert (d_scores[0, 1] == 0).all()


def test_perfect_scores_give_near_zero_loss():
    targets = numpy.zeros((1, 1, 4, 4), dtype=bool)
    targets[0, 0, 1, 2] = True
    scores = numpy.where(targets, 30.0, -30.0).astype("float32")
    loss, _ = multilabel_categorical_crossentropy(scores, targets, numpy.ones_like(targets))
    assert loss < 1e-10
