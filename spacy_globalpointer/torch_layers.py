"""PyTorch modules for GlobalPointer span scoring. They know nothing of spaCy.

Scores are returned in *band layout*: ``scores[b, a, i, d]`` is the score of the
span that starts at token ``i`` and ends (inclusively) at token ``i + d`` for
entity type ``a``. With a band width ``w`` only spans of at most ``w`` tokens are
computed, so time and memory grow as O(n * w * types) instead of O(n^2 * types).
With ``w >= n`` the band holds every candidate ``i <= j`` of the full matrix.
Positions that are not candidates (padding, ``i + d`` past the end of the doc)
hold the dtype's most negative finite value.
"""
import math
from typing import Any, List, Mapping, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F


class RotaryPositionEmbedding(nn.Module):
    """Rotary position embedding (RoPE, Su et al. 2021) for the last dimension.

    Consecutive pairs (x[2m], x[2m+1]) are rotated by the angle pos * base^(-2m/dim),
    so that <R_i q, R_j k> depends on the positions only through j - i. Positions run
    along the second-to-last dimension.
    """

    def __init__(self, dim: int, base: float = 10000.0):
        super().__init__()
        if dim % 2 != 0:
            raise ValueError(f"RoPE needs an even head size, got {dim}.")
        inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)
        # Not a parameter and not saved: it is a pure function of `dim` and `base`.
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def phases(self, length: int, offset: int = 0) -> torch.Tensor:
        """(length, dim / 2) unit complex numbers e^{i pos theta_m}: multiplying the pair
        x[2m] + i x[2m+1] by them is the rotation. Computed in fp32, so that long
        positions keep their precision under autocast."""
        pos = torch.arange(offset, offset + length, device=self.inv_freq.device, dtype=torch.float32)
        angles = pos[:, None] * self.inv_freq[None, :]
        return torch.polar(torch.ones_like(angles), angles)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """x: (..., length, dim) -> same shape, row t rotated as position offset + t."""
        return rotate_pairs(x, self.phases(x.shape[-2], offset))


def rotate_pairs(x: torch.Tensor, phases: torch.Tensor) -> torch.Tensor:
    """Multiply each pair (x[2m], x[2m+1]), read as a complex number, by phases[..., m].

    With unit phases this is the pairwise rotation (x[2m] cos - x[2m+1] sin,
    x[2m+1] cos + x[2m] sin) in one pass over x, with no strided slicing; a phase of
    modulus r also scales the pair by r. The result is fp32 whatever x's dtype.
    """
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)).contiguous())
    return torch.view_as_real(pairs * phases).flatten(-2)


def band_candidate_mask(lengths: torch.Tensor, n: int, band: int) -> torch.Tensor:
    """(batch, n, band) bool mask: True where span (i, i + d) lies inside the doc."""
    starts = torch.arange(n, device=lengths.device)[:, None]
    offsets = torch.arange(band, device=lengths.device)[None, :]
    ends = starts + offsets  # (n, band)
    return ends[None, :, :] < lengths[:, None, None]


def band_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    band: int,
    q_phases: Optional[torch.Tensor] = None,
    k_phases: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Dot products <q_i, k_{i+d}> for 0 <= d < band, per head.

    q, k: (batch, heads, n, dim). Returns (batch, heads, n, band). Entries with
    i + d >= n are zero (they are masked by the caller). With `q_phases` and
    `k_phases` ((n, dim / 2) complex, see `rotate_pairs`), q and k are rotated block
    by block as they are used, so that no rotated copy of the whole of q and k exists:
    what inference on a long doc wants.

    When the band covers the whole sequence one matrix product is cheapest.
    Otherwise the rows are processed in blocks of `band` queries against their
    `2 * band - 1` reachable keys, so that memory, including what autograd keeps,
    stays O(n * band) rather than O(n^2).
    """
    batch, heads, n, _ = q.shape
    rotate = q_phases is not None and k_phases is not None
    if band >= n:
        if rotate:
            q, k = rotate_pairs(q, q_phases), rotate_pairs(k, k_phases)
        full = q @ k.transpose(-1, -2)  # (batch, heads, n, n)
        ends = torch.arange(n, device=q.device)[:, None] + torch.arange(band, device=q.device)
        index = ends.clamp(max=n - 1).expand(batch, heads, n, band)
        # In place: gather's backward does not need its output.
        return full.gather(-1, index).masked_fill_(ends >= n, 0.0)
    local_index = torch.arange(band, device=q.device)[:, None] + torch.arange(
        band, device=q.device
    )
    blocks = []
    for start in range(0, n, band):
        stop = min(start + band, n)
        rows = stop - start
        q_block, k_block = q[:, :, start:stop], k[:, :, start : stop + band - 1]
        if rotate:
            q_block = rotate_pairs(q_block, q_phases[start:stop])
            k_block = rotate_pairs(k_block, k_phases[start : start + k_block.shape[-2]])
        local = q_block @ k_block.transpose(-1, -2)
        if local.shape[-1] < rows + band - 1:  # keys past the end of the doc score 0
            local = F.pad(local, (0, rows + band - 1 - local.shape[-1]))
        index = local_index[:rows].expand(batch, heads, rows, band)
        blocks.append(local.gather(-1, index))
    return torch.cat(blocks, dim=2)


def scaled_band_scores(
    qk: torch.Tensor, size: int, band: int, rope: Optional[RotaryPositionEmbedding]
) -> torch.Tensor:
    """<R_i q_i, R_j k_j> / sqrt(size) over the band, per head. qk: (batch, heads, n, 2 * size),
    q then k (any strides) -> (batch, heads, n, band); `rope` None: no rotation.

    RoPE rotates q and k in one pass, and the 1 / sqrt(size) scaling rides along in the
    modulus of q's phases instead of costing a pass of its own.
    """
    scale = 1.0 / math.sqrt(size)
    if rope is None:
        return band_scores(qk[..., :size] * scale, qk[..., size:], band)
    phases = rope.phases(qk.shape[-2])
    if torch.is_grad_enabled() and qk.requires_grad:
        # Training: rotate once, on a contiguous copy so that the rotation and the
        # products read contiguous rows. Autograd keeps the rotated q and k for the
        # products either way, and block-wise rotation would keep overlapping copies of k.
        qk = rotate_pairs(qk.contiguous(), torch.cat((phases * scale, phases), -1))
        return band_scores(qk[..., :size], qk[..., size:], band)
    # Inference: block by block, straight from the projection's output, so that a long
    # doc never holds a second copy of all of q and k.
    return band_scores(qk[..., :size], qk[..., size:], band, phases * scale, phases)


def band_view(values: torch.Tensor, band: int) -> torch.Tensor:
    """(batch, heads, n) -> (batch, heads, n, band) with out[..., i, d] = values[..., i + d]."""
    padded = F.pad(values, (0, band - 1))
    return padded.unfold(-1, band, 1)


class SpanEvidence(nn.Module):
    """What the tokens between a span's endpoints say about it, added to the endpoint score.

    The endpoint score <q_i, k_j> sees the span only through what the encoder put into
    tokens i and j. On a CPU encoder with a narrow receptive field neither end of a long
    span sees the span, which costs recall on nested and long entities. This term reads
    the inside: two per-type token scores u and v (one linear layer), and for the span
    [i, j] the mean of u over its tokens plus a soft minimum of v over them
    (-log sum exp(-v): low if any token looks like it does not belong). Both are
    cumulative along the band, so the whole term is one parallel pass over the same
    (batch, types, n, band) layout as the scores; its size, not O(n^2), bounds memory.
    Zero-initialised, so that a new head starts from its endpoint scores alone (minus a
    length prior of log(length) from the soft minimum).
    """

    def __init__(self, width: int, n_types: int):
        super().__init__()
        self.n_types = n_types
        self.proj = nn.Linear(width, 2 * n_types)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, X: torch.Tensor, band: int) -> torch.Tensor:
        """X: (batch, n, width) -> (batch, types, n, band); entries past a doc's end are junk
        (masked by the caller), entries inside it never read past the span."""
        token_scores = self.proj(X).float().transpose(1, 2)  # (batch, 2 * types, n)
        inside = band_view(token_scores, band)  # [..., i, d] = score of token i + d
        u, v = inside[:, : self.n_types], inside[:, self.n_types :]
        lengths = torch.arange(1, band + 1, device=X.device, dtype=torch.float32)
        return u.cumsum(-1) / lengths - torch.logcumsumexp(-v, dim=-1)


def grid_conv(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A 2D convolution over the (start, end) grid of spans, computed in band layout.

    h: (batch, channels, n, band), `h[..., s, d]` the features of span (s, s + d); weight:
    (out, channels, k, k) over (start offset a, end offset b), k odd; bias: (out,). The
    neighbour (i + a, j + b) of span (i, j) = (s, s + d) is cell (s + a, d + b - a): a
    sheared window, which is a plain k x (2k - 1) convolution over (s, d) whose row a holds
    the k weights of row a shifted by -a (the other taps are zero). Cells outside the band
    (spans longer than it, or ending before they start) count as zeros, as padding does in
    a convolution over the full matrix. Memory is channels * n * band, never n^2.
    """
    k = weight.shape[-1]
    r = k // 2
    sheared = torch.stack([F.pad(weight[:, :, row], (2 * r - row, row)) for row in range(k)], dim=2)
    return F.conv2d(h, sheared, bias, padding=(r, 2 * r))


class SpanGrid(nn.Module):
    """Spans that see their neighbours: a few convolutions over the (start, end) grid of span
    features, mapped to a score per type that is added to the head's (Yan et al. 2023; W2NER).

    The grid's input is, for every candidate, `channels` RoPE dot products of small q/k
    projections (one per channel, `head_size` each) and the head's own probability for each
    type. Each of `depth` layers adds GELU(conv(h)) to the `channels` features (a `kernel` x
    `kernel` convolution over (start, end), see `grid_conv`; the first layer also reads the
    probabilities); cells that are not candidates are zero before and after every layer. So
    a span's score reads how confident the head is of its neighbours one boundary step away,
    of the spans it nests in and of those nested in it. The output map is zero-initialised:
    a new grid adds nothing until it has learned something, and the head starts as it would
    without it.
    """

    def __init__(self, width: int, n_types: int, *, channels: int = 8, depth: int = 2, kernel: int = 3,
                 head_size: int = 16):
        super().__init__()
        check_span_grid({"channels": channels, "depth": depth, "kernel": kernel, "head_size": head_size})
        self.channels, self.head_size = channels, head_size
        self.proj = nn.Linear(width, channels * 2 * head_size)
        self.rope = RotaryPositionEmbedding(head_size)
        # Conv2d holds each layer's weights; grid_conv applies them in band layout.
        self.convs = nn.ModuleList(
            nn.Conv2d(channels + (n_types if layer == 0 else 0), channels, kernel) for layer in range(depth)
        )
        self.out = nn.Linear(channels, n_types)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def features(self, X: torch.Tensor, band: int) -> torch.Tensor:
        """X: (batch, n, width) -> the span features (batch, channels, n, band)."""
        batch, n, _ = X.shape
        qk = self.proj(X).view(batch, n, self.channels, 2 * self.head_size).transpose(1, 2)
        return scaled_band_scores(qk, self.head_size, band, self.rope)

    def forward(self, X: torch.Tensor, lengths: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """X: (batch, n, width), lengths: (batch,), scores: the head's (batch, types, n, band)
        logits -> (batch, types, n, band) terms to add to them."""
        band = scores.shape[-1]
        h = self.features(X, band).float()
        mask = band_candidate_mask(lengths, h.shape[2], band)[:, None].to(h.dtype)
        h = h * mask
        for layer, conv in enumerate(self.convs):
            inputs = torch.cat((h, torch.sigmoid(scores.float()) * mask), 1) if layer == 0 else h
            h = (h + F.gelu(grid_conv(inputs, conv.weight.float(), conv.bias.float()))) * mask
        return self.out(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


SPAN_GRID_SETTINGS = {"channels": 8, "depth": 2, "kernel": 3, "head_size": 16}


def check_span_grid(settings: Any) -> dict:
    """The span grid's settings with their defaults; ValueError naming what is wrong."""
    if not isinstance(settings, Mapping):
        raise ValueError(f"span_grid must be a dict of {sorted(SPAN_GRID_SETTINGS)} (or null), got {settings!r}.")
    settings = dict(settings)
    unknown = sorted(set(settings) - set(SPAN_GRID_SETTINGS))
    if unknown:
        raise ValueError(f"span_grid: unknown settings {unknown}; it takes {sorted(SPAN_GRID_SETTINGS)}.")
    checked = {**SPAN_GRID_SETTINGS, **settings}
    for name, value in checked.items():
        low = 0 if name == "depth" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"span_grid: {name} must be an integer >= {low}, got {value!r}.")
    if checked["kernel"] % 2 == 0:
        raise ValueError(f"span_grid: kernel must be odd (a centred window), got {checked['kernel']}.")
    if checked["head_size"] % 2:
        raise ValueError(f"span_grid: head_size must be even (RoPE), got {checked['head_size']}.")
    return checked


# Initial value of the learned per-type score offset. An untrained head scores spans
# around 0, so with no offset it "predicts" half of all O(n^2) candidates: millions of
# spans on a dev set, which makes the first evaluations crawl. Starting well below the
# decision boundary (a prior, as in RetinaNet) makes an untrained model predict nothing.
INITIAL_OFFSET = -4.0


class _SpanScorer(nn.Module):
    """Shared scaffolding: RoPE, scaling, per-type offset, banding and masking of span scores."""

    def __init__(
        self, width: int, head_size: int, n_types: int, rope: bool, initial_offset: float = INITIAL_OFFSET,
        span_evidence: bool = False, span_grid: Optional[dict] = None,
    ):
        super().__init__()
        self.head_size = head_size
        self.n_types = n_types
        self.rope = RotaryPositionEmbedding(head_size) if rope else None
        self.offset = nn.Parameter(torch.full((n_types,), float(initial_offset)))
        # Absent (not just unused) when off, so that heads saved without them load unchanged.
        self.evidence = SpanEvidence(width, n_types) if span_evidence else None
        self.grid = SpanGrid(width, n_types, **span_grid) if span_grid is not None else None

    def _scores(self, qk: torch.Tensor, band: int) -> torch.Tensor:
        """qk: (batch, heads, n, 2 * head_size), q then k (any strides) -> (batch, heads, n, band)."""
        return scaled_band_scores(qk, self.head_size, band, self.rope)

    def _finish(self, scores: torch.Tensor, X: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # The loss and decoding run in fp32 whatever precision the products used.
        scores = scores.float() + self.offset[None, :, None, None]
        if self.evidence is not None:
            scores = scores + self.evidence(X, scores.shape[-1])
        if self.grid is not None:
            scores = scores + self.grid(X, lengths, scores)
        mask = band_candidate_mask(lengths, scores.shape[2], scores.shape[3])
        # In place: the addition's backward does not need its output.
        return scores.masked_fill_(~mask[:, None], torch.finfo(scores.dtype).min)


def _check_band(band: Optional[int], n: int) -> int:
    if band is None:
        return max(n, 1)
    if band < 1:
        raise ValueError(f"The band width (max_span_length) must be >= 1, got {band}.")
    return min(band, max(n, 1))


class GlobalPointerHead(_SpanScorer):
    """GlobalPointer: separate q/k projections of `head_size` for each entity type.

    s_a(i, j) = <R_i q_{i,a}, R_j k_{j,a}> / sqrt(head_size) + c_a, with c_a a learned offset
    (plus `SpanEvidence` of the tokens i..j with `span_evidence`).
    """

    def __init__(
        self, width: int, n_types: int, *, head_size: int = 64, rope: bool = True,
        initial_offset: float = INITIAL_OFFSET, span_evidence: bool = False, span_grid: Optional[dict] = None,
    ):
        super().__init__(width, head_size, n_types, rope, initial_offset, span_evidence, span_grid)
        self.proj = nn.Linear(width, n_types * head_size * 2)

    def forward(
        self, X: torch.Tensor, lengths: torch.Tensor, band: Optional[int] = None
    ) -> torch.Tensor:
        """X: (batch, n, width), lengths: (batch,) -> scores (batch, types, n, band)."""
        batch, n, _ = X.shape
        band = _check_band(band, n)
        qk = self.proj(X).view(batch, n, self.n_types, 2 * self.head_size).transpose(1, 2)
        return self._finish(self._scores(qk, band), X, lengths)


class EfficientGlobalPointerHead(_SpanScorer):
    """Efficient GlobalPointer (kexue.fm/archives/8877).

    One q/k projection is shared by all types; each type adds a start bias from
    token i and an end bias from token j, both read off the shared projection:
    s_a(i, j) = <R_i q_i, R_j k_j> / sqrt(head_size) + b_a(i) + e_a(j) + c_a.
    """

    def __init__(
        self, width: int, n_types: int, *, head_size: int = 64, rope: bool = True,
        initial_offset: float = INITIAL_OFFSET, span_evidence: bool = False, span_grid: Optional[dict] = None,
    ):
        super().__init__(width, head_size, n_types, rope, initial_offset, span_evidence, span_grid)
        self.proj = nn.Linear(width, head_size * 2)
        self.bias = nn.Linear(head_size * 2, n_types * 2)

    def forward(
        self, X: torch.Tensor, lengths: torch.Tensor, band: Optional[int] = None
    ) -> torch.Tensor:
        batch, n, _ = X.shape
        band = _check_band(band, n)
        hidden = self.proj(X)  # (batch, n, 2 * head_size)
        shared = self._scores(hidden[:, None], band)  # (batch, 1, n, band)
        # Halved as in the reference implementation, so start + end stays on the
        # scale of one bias term at initialisation.
        bias = self.bias(hidden).view(batch, n, self.n_types, 2).permute(0, 2, 3, 1) / 2
        start_bias, end_bias = bias[:, :, 0], bias[:, :, 1]  # (batch, types, n)
        scores = shared + start_bias[..., None] + band_view(end_bias, band)
        return self._finish(scores, X, lengths)


# A group of docs is closed when padding would waste more than this share of its tokens.
MAX_GROUP_PADDING = 0.25


def length_groups(lengths: Sequence[int], max_padding: float = MAX_GROUP_PADDING) -> List[List[int]]:
    """Indices of the docs, sorted by length and cut into groups that waste little padding.

    Ascending order makes the last doc of a group its longest; a group grows until
    padding its docs to that length would cost more than `max_padding` of its tokens.
    Every doc is in exactly one group; empty docs share a group of their own.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    groups: List[List[int]] = []
    current: List[int] = []
    tokens = 0
    for i in order:
        n = lengths[i]
        if current and n * (len(current) + 1) > (1.0 + max_padding) * (tokens + n):
            groups.append(current)
            current, tokens = [], 0
        current.append(i)
        tokens += n
    if current:
        groups.append(current)
    return groups


class PackedGroup:
    """Where the docs of one length group sit in a packed (tokens, width) batch.

    `index[r, t]` is the packed row of token t of the group's doc r; positions past a
    doc's end repeat its last token (they are masked as keys and dropped as queries), so
    gathering with it pads the group to its longest doc without a padding row.
    """

    def __init__(self, starts: List[int], lengths: List[int], device: torch.device):
        self.n = max(lengths)
        self.lengths = lengths
        self.full = min(lengths) == self.n  # no padding: no key needs masking
        t = torch.arange(self.n, device=device)
        lengths_t = torch.tensor(lengths, device=device)
        self.index = torch.tensor(starts, device=device)[:, None] + torch.minimum(t[None, :], lengths_t[:, None] - 1)
        self.valid = t[None, :] < lengths_t[:, None]  # (docs, n)
        # The packed rows of the group's tokens, in the order `gathered[valid]` lists them.
        self.rows = self.index[self.valid]


class PackedBatch:
    """The docs of a batch packed one after the other into (tokens, width), cut into
    length groups: what layers that mix tokens within a doc need to work group by group
    while everything position-wise runs once over the packed tokens, padding-free."""

    def __init__(self, lengths: Sequence[int], device: torch.device):
        lengths = [int(n) for n in lengths]
        starts = [0]
        for n in lengths[:-1]:
            starts.append(starts[-1] + n)
        nonempty = [i for i, n in enumerate(lengths) if n > 0]
        self.groups = [
            PackedGroup([starts[nonempty[i]] for i in group], [lengths[nonempty[i]] for i in group], device)
            for group in length_groups([lengths[i] for i in nonempty])
        ]
        self.n_tokens = sum(lengths)
        # Packed row -> its place in the concatenation of the groups' valid rows.
        order = torch.cat([g.rows for g in self.groups]) if self.groups else torch.zeros(0, dtype=torch.long)
        self.inverse = torch.empty_like(order)
        self.inverse[order] = torch.arange(len(order), device=order.device)

    def gather(self, x: torch.Tensor, group: PackedGroup) -> torch.Tensor:
        """(tokens, ...) -> (docs, n, ...): the group's docs, padded to its longest."""
        return x[group.index]

    def scatter(self, per_group: List[torch.Tensor]) -> torch.Tensor:
        """The inverse of `gather` over all groups: (docs, n, ...) each -> (tokens, ...)."""
        valid = [y[g.valid] for g, y in zip(self.groups, per_group)]
        return torch.cat(valid)[self.inverse]


class LocalSelfAttentionLayer(nn.Module):
    """A pre-norm transformer encoder layer whose queries see keys within `window` tokens.

    Multi-head self-attention with RoPE on queries and keys (so attention, like the span
    scores, depends on relative position), then a position-wise feed-forward block; both
    residual. The input is a packed batch (tokens, width): the norms, projections and the
    feed-forward block run once over the tokens present, and only the attention itself
    works on the docs, one length group at a time (each group padded to its own longest
    doc, see `PackedBatch`). Within a group, queries are processed in blocks of `window`
    tokens against keys in [block start - window, block end + window), so time and memory
    grow as the sum over docs of n_i * window, never with the batch's longest doc; within
    the window the result equals full attention restricted to |i - j| <= window.
    """

    def __init__(self, width: int, n_heads: int, window: int, *, ffn_width: Optional[int] = None, dropout: float = 0.0):
        super().__init__()
        if width % n_heads or (width // n_heads) % 2:
            raise ValueError(f"width {width} must split into {n_heads} heads of an even size (RoPE).")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}.")
        self.n_heads, self.window = n_heads, window
        self.head_size = width // n_heads
        self.norm_attn = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.norm_ffn = nn.LayerNorm(width)
        self.ffn = nn.Sequential(
            nn.Linear(width, ffn_width or 2 * width), nn.GELU(), nn.Linear(ffn_width or 2 * width, width)
        )
        self.dropout = nn.Dropout(dropout)
        self.rope = RotaryPositionEmbedding(self.head_size)

    def forward(self, x: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        """x: (tokens, width), the docs of `batch` packed -> (tokens, width)."""
        qkv = self.qkv(self.norm_attn(x))
        attended = batch.scatter([self._attend(batch.gather(qkv, group), group) for group in batch.groups])
        x = x + self.dropout(self.out(attended))
        return x + self.dropout(self.ffn(self.norm_ffn(x)))

    def _attend(self, qkv: torch.Tensor, group: PackedGroup) -> torch.Tensor:
        """qkv: (docs, n, 3 * width) of one group -> attention output (docs, n, width)."""
        docs, n, _ = qkv.shape
        q, k, v = qkv.view(docs, n, 3, self.n_heads, self.head_size).unbind(2)
        # (docs, heads, n, head_size); RoPE in fp32, then back to the working dtype.
        q = self.rope(q.transpose(1, 2)).to(v.dtype)
        k = self.rope(k.transpose(1, 2)).to(v.dtype)
        v = v.transpose(1, 2)
        positions = torch.arange(n, device=qkv.device)
        window = self.window
        blocks = []
        for start in range(0, n, window):
            end = min(start + window, n)
            k_start, k_end = max(0, start - window), min(n, end + window)
            if group.full and k_end - k_start <= window + 1:
                allowed = None  # every key is inside its doc and within the window of every query
            else:
                near = (positions[start:end, None] - positions[None, k_start:k_end]).abs() <= window
                allowed = near[None, None] & group.valid[:, None, None, k_start:k_end]
            blocks.append(F.scaled_dot_product_attention(
                q[:, :, start:end], k[:, :, k_start:k_end], v[:, :, k_start:k_end], attn_mask=allowed
            ))
        return torch.cat(blocks, dim=2).transpose(1, 2).reshape(docs, n, -1)


class LocalSelfAttention(nn.Module):
    """`depth` LocalSelfAttentionLayers over a packed batch of docs."""

    def __init__(self, width: int, depth: int, n_heads: int, window: int, *, dropout: float = 0.0):
        super().__init__()
        self.layers = nn.ModuleList(LocalSelfAttentionLayer(width, n_heads, window, dropout=dropout) for _ in range(depth))

    def forward(self, x: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
        """x: (tokens, width), the docs one after the other; lengths: each doc's token count
        (host integers, so that grouping costs no device sync) -> (tokens, width)."""
        if sum(lengths) != x.shape[0]:
            raise ValueError(f"LocalSelfAttention: {x.shape[0]} packed rows for docs of {sum(lengths)} tokens.")
        if x.shape[0] == 0:
            return x
        batch = PackedBatch(lengths, x.device)
        for layer in self.layers:
            x = layer(x, batch)
        return x
