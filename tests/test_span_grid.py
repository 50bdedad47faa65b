"""The span grid: convolutions over the (start, end) grid computed in band layout equal the
same convolutions over the full score matrix; the grid ignores padding, starts neutral, and a
pipeline with it trains, saves and reloads. Boundary smoothing: the soft-target loss against a
direct computation, and the smoothed targets on small cases."""
import math

import numpy
import pytest
import spacy
import torch
from torch.nn import functional as F

from spacy_globalpointer.loss import multilabel_categorical_crossentropy
from spacy_globalpointer.pipe import smoothed_targets
from spacy_globalpointer.torch_layers import (
    EfficientGlobalPointerHead,
    GlobalPointerHead,
    SpanGrid,
    check_span_grid,
    grid_conv,
)

from .tiny_pipeline import EN_DATA, SMALL_MODEL, build_tiny, pipe_predictions

# ---------------------------------------------------------------- the grid against the full matrix


def band_to_full(band_values, n):
    """(batch, C, n, band) -> (batch, C, n, n): cell (i, i + d) gets [i, d]; the rest is 0."""
    batch, channels, _, band = band_values.shape
    full = band_values.new_zeros(batch, channels, n, n)
    for i in range(n):
        width = min(band, n - i)
        full[:, :, i, i : i + width] = band_values[:, :, i, :width]
    return full


def full_to_band(full, band):
    batch, channels, n, _ = full.shape
    out = full.new_zeros(batch, channels, n, band)
    for i in range(n):
        width = min(band, n - i)
        out[:, :, i, :width] = full[:, :, i, i : i + width]
    return out


def candidates_full(lengths, n, band):
    """(batch, 1, n, n) bool: i <= j < length and j - i < band."""
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    inside = (i <= j) & (j - i < band)
    return (inside[None] & (j[None] < lengths[:, None, None]))[:, None]


@pytest.mark.parametrize("n,band,kernel", [(9, 9, 3), (11, 4, 3), (12, 5, 5), (7, 2, 3), (1, 1, 3)])
def test_grid_conv_in_band_layout_is_the_full_matrix_convolution(n, band, kernel):
    torch.manual_seed(n * band + kernel)
    lengths = torch.tensor([n, max(1, n - 3)])
    mask_full = candidates_full(lengths, n, band).float()
    full = torch.randn(2, 3, n, n) * mask_full  # non-candidates are zero
    weight, bias = torch.randn(4, 3, kernel, kernel), torch.randn(4)
    expected = F.conv2d(full, weight, bias, padding=kernel // 2)
    got = grid_conv(full_to_band(full, band), weight, bias)
    assert got.shape == (2, 4, n, band)
    mask_band = full_to_band(mask_full, band).bool().expand_as(got)
    torch.testing.assert_close(got[mask_band], full_to_band(expected, band)[mask_band], rtol=1e-5, atol=1e-5)


def full_grid_reference(grid, X, lengths, scores):
    """SpanGrid computed on the full (n x n) matrix: every q.k product and the head's
    probabilities, masked to the candidates, conv2d with zero padding."""
    batch, n, _ = X.shape
    band = scores.shape[-1]
    size = grid.head_size
    qk = grid.proj(X).view(batch, n, grid.channels, 2 * size).transpose(1, 2)
    q = grid.rope(qk[..., :size]) / math.sqrt(size)
    k = grid.rope(qk[..., size:])
    mask = candidates_full(lengths, n, band).float()
    h = (q @ k.transpose(-1, -2)) * mask
    probabilities = torch.sigmoid(band_to_full(scores, n)) * mask
    for layer, conv in enumerate(grid.convs):
        inputs = torch.cat((h, probabilities), 1) if layer == 0 else h
        h = (h + F.gelu(F.conv2d(inputs, conv.weight, conv.bias, padding=conv.weight.shape[-1] // 2))) * mask
    out = grid.out(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    return out, mask


@pytest.mark.parametrize("n,band,kernel,depth", [(10, 10, 3, 2), (13, 4, 3, 2), (9, 3, 5, 1), (6, 6, 3, 0)])
def test_span_grid_equals_the_brute_force_full_matrix(n, band, kernel, depth):
    torch.manual_seed(0)
    grid = SpanGrid(8, 3, channels=4, depth=depth, kernel=kernel, head_size=4)
    torch.nn.init.normal_(grid.out.weight)  # zero-initialised: make the output mean something
    X = torch.randn(3, n, 8)
    lengths = torch.tensor([n, n - 2, 1])
    scores = 3 * torch.randn(3, 3, n, band)
    with torch.no_grad():
        got = grid(X, lengths, scores)
        expected, mask = full_grid_reference(grid, X, lengths, scores)
    assert got.shape == (3, 3, n, band)
    inside = full_to_band(mask, band).bool().expand_as(got)
    torch.testing.assert_close(got[inside], full_to_band(expected, band)[inside], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("head_class", [GlobalPointerHead, EfficientGlobalPointerHead])
def test_span_grid_scores_of_a_doc_do_not_depend_on_its_padding(head_class):
    torch.manual_seed(0)
    head = head_class(8, 3, head_size=4, span_grid={"channels": 4, "depth": 2, "kernel": 3, "head_size": 4})
    torch.nn.init.normal_(head.grid.out.weight)
    X = torch.randn(2, 12, 8)
    with torch.no_grad():
        padded = head(X, torch.tensor([12, 7]), band=5)
        alone = head(X[1:, :7], torch.tensor([7]), band=5)
    torch.testing.assert_close(padded[1, :, :7, :5][alone[0] > -1e30], alone[0][alone[0] > -1e30], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("head_class", [GlobalPointerHead, EfficientGlobalPointerHead])
def test_a_new_span_grid_leaves_the_scores_as_they_were(head_class):
    torch.manual_seed(0)
    plain = head_class(8, 3, head_size=4)
    with_grid = head_class(8, 3, head_size=4, span_grid={})
    with_grid.load_state_dict({**with_grid.state_dict(), **plain.state_dict()})
    X = torch.randn(2, 9, 8)
    lengths = torch.tensor([9, 4])
    with torch.no_grad():
        torch.testing.assert_close(with_grid(X, lengths, band=4), plain(X, lengths, band=4), rtol=0, atol=0)
    assert set(with_grid.state_dict()) - set(plain.state_dict()) == {
        name for name in with_grid.state_dict() if name.startswith("grid.")
    }


def test_span_grid_settings_are_checked():
    assert check_span_grid({}) == {"channels": 8, "depth": 2, "kernel": 3, "head_size": 16}
    with pytest.raises(ValueError, match="kernel must be odd"):
        check_span_grid({"kernel": 4})
    with pytest.raises(ValueError, match=r"unknown settings \['dilation'\]"):
        check_span_grid({"dilation": 2})
    with pytest.raises(ValueError, match="channels must be an integer >= 1"):
        check_span_grid({"channels": 0})
    with pytest.raises(ValueError, match="must be a dict"):
        check_span_grid(3)
    model = {**SMALL_MODEL, "span_grid": {"depth": -1}}
    with pytest.raises(ValueError, match="depth must be an integer >= 0"):
        spacy.blank("en").add_pipe("global_pointer", config={"model": model})


def test_span_grid_trains_saves_and_reloads(tmp_path):
    model = {**SMALL_MODEL, "span_grid": {"channels": 4, "depth": 1, "kernel": 3, "head_size": 8}}
    nlp, _, losses = build_tiny("en", steps=30, config={"model": model, "max_span_length": 4})
    assert losses[-1] < losses[0] / 2
    grid = nlp.get_pipe("global_pointer").model.get_ref("head").shims[0]._model.grid
    assert grid.out.weight.abs().sum() > 0  # it learned something
    nlp.to_disk(tmp_path / "pipeline")
    loaded = spacy.load(tmp_path / "pipeline")
    assert loaded.config["components"]["global_pointer"]["model"]["span_grid"]["channels"] == 4
    texts = [text for text, _ in EN_DATA]
    assert pipe_predictions(loaded, texts) == pipe_predictions(nlp, texts)
    assert any(row["spans"] for row in pipe_predictions(loaded, texts))
    # Weights saved with a grid do not load into a head configured without one.
    without = {"components": {"global_pointer": {"model": {"span_grid": None}}}}
    with pytest.raises(ValueError, match="does not match this pipeline's configuration"):
        spacy.load(tmp_path / "pipeline", config=without)


# ---------------------------------------------------------------- boundary smoothing


def direct_soft_loss(scores, targets, mask):
    """log(1 + sum_c y_c e^{-s_c}) + log(1 + sum_c (1 - y_c) e^{s_c}) per row, in float64."""
    batch, types = scores.shape[:2]
    total = 0.0
    for b in range(batch):
        for a in range(types):
            s, y, m = (x[b, a].ravel().astype("float64") for x in (scores, targets, mask))
            total += math.log(1 + sum(yc * math.exp(-sc) for sc, yc, mc in zip(s, y, m) if mc))
            total += math.log(1 + sum((1 - yc) * math.exp(sc) for sc, yc, mc in zip(s, y, m) if mc))
    return total / (batch * types)


@pytest.mark.parametrize("seed", range(4))
def test_soft_target_loss_and_gradient_are_the_direct_computation(seed):
    rng = numpy.random.default_rng(seed)
    shape = (2, 3, 4, 3)
    scores = rng.normal(scale=2.0, size=shape).astype("float32")
    targets = numpy.where(rng.random(shape) < 0.3, rng.random(shape), 0.0).astype("float32")
    targets[rng.random(shape) < 0.1] = 1.0
    mask = rng.random(shape) < 0.85
    loss, d_scores = multilabel_categorical_crossentropy(scores, targets, mask)
    assert loss == pytest.approx(direct_soft_loss(scores, targets, mask), rel=1e-5)
    s = torch.tensor(scores.astype("float64"), requires_grad=True)
    y, m = torch.tensor(targets.astype("float64")), torch.tensor(mask)
    pos = torch.where(m & (y > 0), -s + torch.log(y.clamp_min(1e-300)), torch.tensor(-math.inf, dtype=torch.float64))
    neg = torch.where(m & (y < 1), s + torch.log((1 - y).clamp_min(1e-300)), torch.tensor(-math.inf, dtype=torch.float64))
    zero = torch.zeros(shape[:2] + (1,), dtype=torch.float64)
    total = torch.logsumexp(torch.cat([zero, pos.flatten(2)], -1), -1) + torch.logsumexp(torch.cat([zero, neg.flatten(2)], -1), -1)
    (total.sum() / (shape[0] * shape[1])).backward()
    numpy.testing.assert_allclose(d_scores, s.grad.numpy(), rtol=1e-4, atol=1e-7)
    assert (d_scores[~mask] == 0).all()


def test_hard_targets_as_floats_give_the_bool_loss_exactly():
    rng = numpy.random.default_rng(0)
    scores = rng.normal(scale=3.0, size=(2, 3, 5, 4)).astype("float32")
    targets = rng.random(scores.shape) < 0.2
    mask = rng.random(scores.shape) < 0.8
    hard = multilabel_categorical_crossentropy(scores, targets, mask)
    soft = multilabel_categorical_crossentropy(scores, targets.astype("float32"), mask)
    assert hard[0] == soft[0]
    numpy.testing.assert_array_equal(hard[1], soft[1])


@pytest.mark.parametrize("y", [0.9, 0.5, 0.05])
def test_a_soft_target_asks_for_half_its_logit(y):
    """One candidate alone: the loss is smallest at s = logit(y) / 2."""
    best = 0.5 * math.log(y / (1 - y))

    def gradient(s):
        ones = numpy.ones((1, 1, 1, 1))
        return multilabel_categorical_crossentropy((s * ones).astype("float32"), (y * ones).astype("float32"),
                                                   ones.astype(bool))[1].item()

    assert gradient(best - 0.01) < 0 < gradient(best + 0.01)
    assert abs(gradient(best)) < 1e-6


def test_smoothed_targets_share_epsilon_among_the_valid_neighbours():
    # Doc of 6 tokens, band 3; gold (label 1) 2..3 and (label 0) 0..0.
    gold = [[(1, 2, 1), (0, 0, 0)]]
    targets = smoothed_targets((1, 2, 6, 3), gold, [6], epsilon=0.2, distance=1)
    # 2..3: neighbours 1..3, 3..3, 2..2, 2..4 (all inside the doc and the band).
    assert targets[0, 1, 2, 1] == pytest.approx(0.8)
    for start, end in [(1, 3), (3, 3), (2, 2), (2, 4)]:
        assert targets[0, 1, start, end - start] == pytest.approx(0.05)
    # 0..0: only 0..1 is a span (-1..0 is outside the doc, 1..0 ends before it starts).
    assert targets[0, 0, 0, 0] == pytest.approx(0.8) and targets[0, 0, 0, 1] == pytest.approx(0.2)
    assert targets.sum() == pytest.approx(2.0)
    # The band: 0..2 (width 3) has neighbours 1..2 and 0..1 only (0..3 is longer than the band).
    edge = smoothed_targets((1, 1, 6, 3), [[(0, 0, 2)]], [6], epsilon=0.2, distance=1)
    assert edge[0, 0, 1, 1] == pytest.approx(0.1) and edge[0, 0, 0, 1] == pytest.approx(0.1)
    # Distance 2: of the 12 cells around 2..3, 9 are spans of the doc within the band of 4
    # (4..3, 2..1 and 3..2 end before they start).
    far = smoothed_targets((1, 1, 6, 4), [[(0, 2, 1)]], [6], epsilon=0.27, distance=2)
    assert numpy.count_nonzero(far) == 1 + 9 and far.sum() == pytest.approx(1.0)
    assert far[0, 0, 0, 3] == pytest.approx(0.03) and far[0, 0, 4, 0] == 0
    # Contributions add up and are capped at 1: in a doc of 2 tokens, 0..0 and 1..1 each have
    # only 0..1 as a neighbour, which is gold itself: 0.7 + 0.3 + 0.3, capped.
    meet = smoothed_targets((1, 1, 2, 2), [[(0, 0, 0), (0, 1, 0), (0, 0, 1)]], [2], epsilon=0.3, distance=1)
    assert meet[0, 0, 0, 1] == 1.0
    assert meet[0, 0, 0, 0] == pytest.approx(0.85) and meet[0, 0, 1, 0] == pytest.approx(0.85)
    # No smoothing: the hard targets; a doc of one token keeps its whole target.
    numpy.testing.assert_array_equal(
        smoothed_targets((1, 2, 6, 3), gold, [6], epsilon=0.0, distance=1) > 0,
        smoothed_targets((1, 2, 6, 3), gold, [6], epsilon=0.0, distance=1) == 1.0,
    )
    assert smoothed_targets((1, 1, 1, 1), [[(0, 0, 0)]], [1], 0.2, 1)[0, 0, 0, 0] == 1.0


def test_boundary_smoothing_trains_and_its_settings_are_checked():
    nlp, _, losses = build_tiny("en", steps=30, config={"boundary_smoothing": 0.2, "boundary_distance": 1})
    assert losses[-1] < losses[0] / 2
    assert any(len(nlp(text).spans["sc"]) for text, _ in EN_DATA)
    for setting, message in [({"boundary_smoothing": 1.0}, "boundary_smoothing must be a number in"),
                             ({"boundary_distance": 0}, "boundary_distance must be an integer >= 1")]:
        with pytest.raises(ValueError, match=message):
            spacy.blank("en").add_pipe("global_pointer", config={"model": SMALL_MODEL, **setting})
