"""Causal sliding-window attention with K/V shared across layers and across query heads.

Notation: ``B`` batch, ``N`` tokens (bars), ``D`` model width, ``H`` query heads, ``Hkv``
KV heads, ``G = H / Hkv`` query heads per KV head, ``Dh`` head size, ``W`` window.
Query head ``h`` belongs to KV group ``h // G`` (the usual GQA layout).

A query at position ``t`` attends to the keys at positions ``t - W + 1 .. t``.

Two kernels, used by every mode of the encoder:

* :func:`block_attention` (windows and whole series): queries are cut into blocks of
  ``W``; block ``b`` attends to the keys of blocks ``b - 1`` and ``b`` (``2W`` keys, of
  which exactly the band is unmasked), so the work is ``O(N * 2W)`` instead of ``O(N^2)``.
  The ``G`` query heads that share a KV head are folded into the query axis
  (``[.., G*W, Dh]`` against ``[.., 2W, Dh]``) instead of repeating K/V ``G`` times.
* :func:`step_attention` (streaming): one query per row against the ``W`` cached keys,
  again with the ``G`` query heads folded into the query axis.

Both call ``torch.nn.functional.scaled_dot_product_attention``, which picks a fused
kernel on CUDA and a vectorised one on CPU; compiled for the CPU, block attention is
:func:`masked_attention` instead, which inductor fuses better at these sizes.

Precision: queries and keys arrive rotated in float32 (see :mod:`models.rotary`) and the
attention itself runs in float32 with autocast off, also under bf16 autocast. A bar is
rotated by different absolute angles in the three run modes; rounding the rotated vectors
to bf16 would round each mode differently. The projections and MLPs (most of the FLOPs)
stay in bf16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cache import KVCache
from .rotary import apply_rotary

__all__ = [
    "SeriesState",
    "SharedKVAttention",
    "additive_band",
    "band_mask",
    "block_attention",
    "first_chunk_mask",
    "kv_blocks",
    "masked_attention",
    "rotation_tables",
    "step_attention",
    "token_region",
]


def band_mask(window: int, group: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Which of the ``2W`` keys of a block each (folded) query of the block may attend to.

    Key ``j < W`` is bar ``j - W`` relative to the block start (previous block), key
    ``j >= W`` is bar ``j - W`` of the current block; query ``i`` (bar ``i``) sees key ``j``
    iff ``i - W < j - W <= i``, i.e. ``i < j <= i + W``.

    Args:
        window: ``W``.
        group: ``G``, query heads folded into the query axis.
        device: device of the mask.

    Returns:
        ``[G*W, 2W]`` bool, True where attention is allowed.
    """
    i = torch.arange(window, device=device)[:, None]  # [W, 1]
    j = torch.arange(2 * window, device=device)[None, :]  # [1, 2W]
    band = (j > i) & (j <= i + window)  # [W, 2W]
    return band.repeat(group, 1)  # [G*W, 2W]


def additive_band(window: int, group: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """:func:`band_mask` as an additive float mask (SDPA would convert a bool mask in every
    call, forward and back): ``[G*W, 2W]``, 0 where attention is allowed, -inf elsewhere."""
    band = band_mask(window, group)  # [G*W, 2W]
    return torch.zeros(band.shape, dtype=dtype).masked_fill_(~band, float("-inf"))


def kv_blocks(x: torch.Tensor, window: int) -> torch.Tensor:
    """Pair every block of ``W`` keys (or values) with the block before it.

    Args:
        x: ``[B, Hkv, N, Dh]`` with ``N`` a multiple of ``W``.
        window: ``W``.

    Returns:
        ``[B, Hkv, N/W, 2W, Dh]``: for block ``b``, bars ``(b-1)W .. (b+1)W - 1``; the
        "previous block" of block 0 is zeros (always masked).
    """
    B, Hkv, N, Dh = x.shape
    nb = N // window
    x = F.pad(x, (0, 0, window, 0))  # [B, Hkv, N + W, Dh]
    x = x.view(B, Hkv, nb + 1, window, Dh)  # [B, Hkv, nb + 1, W, Dh]
    return torch.cat((x[:, :, :-1], x[:, :, 1:]), dim=3)  # [B, Hkv, nb, 2W, Dh]


def first_chunk_mask(band: torch.Tensor, first: torch.Tensor, blocks: int) -> torch.Tensor:
    """``[1, blocks, G*W, 2W]``: ``first`` for block 0, ``band`` for the others."""
    # pointwise (not a cat of expands), so a compiled softmax reads it in its own layout
    block0 = torch.arange(blocks, device=band.device)[:, None, None] == 0  # [blocks, 1, 1]
    return torch.where(block0, first, band)[None]  # [1, blocks, G*W, 2W]


def block_attention(
    q: torch.Tensor,
    k2: torch.Tensor,
    v2: torch.Tensor,
    band: torch.Tensor,
    chunk_blocks: int,
    dropout_p: float = 0.0,
    first: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal sliding-window attention over whole blocks of queries.

    Args:
        q: ``[B, Hkv, nb, G*W, Dh]`` rotated queries, ``G`` heads folded into the query axis.
        k2: ``[B, Hkv, nb, 2W, Dh]`` rotated keys from :func:`kv_blocks`.
        v2: ``[B, Hkv, nb, 2W, Dh]`` values from :func:`kv_blocks`.
        band: ``[G*W, 2W]`` bool from :func:`band_mask` (True = allowed), or the same as
            an additive float mask (0 = allowed, -inf = masked) in the dtype of ``q``.
        chunk_blocks: blocks per attention call (bounds the score memory to
            ``B * Hkv * chunk_blocks * G*W * 2W`` elements).
        dropout_p: attention dropout probability (training only).
        first: ``[G*W, 2W]`` mask of block 0, of ``band``'s kind (``band`` itself: block 0
            has a whole previous block of real keys), or already the mask of the first
            chunk, ``[1, min(nb, chunk_blocks), G*W, 2W]`` (:func:`first_chunk_mask`).
            ``None``: block 0 has no previous block, its first ``W`` keys are padding
            (:func:`kv_blocks` of a series that starts at bar 0).

    Returns:
        ``[B, Hkv, nb, G*W, Dh]`` attention outputs.
    """
    B, Hkv, nb, GW, Dh = q.shape
    W = k2.shape[3] // 2
    if first is None:  # block 0 has no previous block: its first W keys are padding
        first = band.clone()
        first[:, :W] = False if band.dtype == torch.bool else float("-inf")  # [G*W, 2W]
    outs = []
    for b0 in range(0, nb, chunk_blocks):
        b1 = min(nb, b0 + chunk_blocks)
        mask = band  # [G*W, 2W], the same for every block
        if b0 == 0 and first is not band:  # 4-D (not 3-D) masks keep SDPA on its fused kernel
            mask = first if first.dim() == 4 else first_chunk_mask(band, first, b1 - b0)
        # 4-D views (blocks in the "heads" slot) let SDPA pick its fused kernels
        qc = q[:, :, b0:b1].reshape(B * Hkv, b1 - b0, GW, Dh)  # [B*Hkv, nbc, G*W, Dh]
        kc = k2[:, :, b0:b1].reshape(B * Hkv, b1 - b0, 2 * W, Dh)  # [B*Hkv, nbc, 2W, Dh]
        vc = v2[:, :, b0:b1].reshape(B * Hkv, b1 - b0, 2 * W, Dh)  # [B*Hkv, nbc, 2W, Dh]
        with torch.autocast(q.device.type, enabled=False):  # fp32 scores, see the module doc
            plain = dropout_p == 0.0 and mask.is_floating_point() and q.device.type == "cpu"
            if plain and torch.compiler.is_compiling():  # additive masks only, see masked_attention
                y = masked_attention(qc, kc, vc, mask)
            else:
                y = F.scaled_dot_product_attention(qc, kc, vc, attn_mask=mask, dropout_p=dropout_p)
        outs.append(y.view(B, Hkv, b1 - b0, GW, Dh))  # [B, Hkv, nbc, G*W, Dh]
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)  # [B, Hkv, nb, G*W, Dh]


def masked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """``softmax(q k^T / sqrt(Dh) + mask) v``, what SDPA computes, as plain ops.

    :func:`block_attention` uses it when compiled for the CPU: inductor fuses the scale,
    mask and softmax around two batched matmuls, forward and backward, about twice as fast
    as SDPA's CPU flash kernel on blocks this small (``Dh`` of 8, ``2W`` keys).

    Args:
        q: ``[..., Q, Dh]``; k, v: ``[..., K, Dh]``; mask: additive, broadcastable to
            ``[..., Q, K]`` (every query must see at least one key).

    Returns:
        ``[..., Q, Dh]``.
    """
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2) + mask  # [..., Q, K]
    return scores.softmax(-1) @ v  # [..., Q, Dh]


def step_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """One new query per row against the cached window.

    Args:
        q: ``[B, Hkv, G, Dh]`` rotated queries of the new bar, ``G`` heads as the query axis.
        k: ``[B, Hkv, W, Dh]`` cached rotated keys (ring buffer, any slot order).
        v: ``[B, Hkv, W, Dh]`` cached values.
        valid: ``[B, W]`` bool, which cache slots hold a bar of the current episode.

    Returns:
        ``[B, Hkv, G, Dh]`` attention outputs.
    """
    mask = valid[:, None, None, :]  # [B, 1, 1, W]
    with torch.autocast(q.device.type, enabled=False):  # fp32 scores, see the module doc
        return F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask)


def rotation_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)`` ``[P, Dh/2]`` -> ``([cos, cos], [-sin, sin])`` ``[P, Dh]``, the tables
    :meth:`SeriesState.rotate` multiplies by."""
    return torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)


def token_region(x: torch.Tensor, x_start: int, start: int, length: int) -> torch.Tensor:
    """Tokens ``start .. start + length - 1`` of ``x``, whose token axis (1) starts at ``x_start``.

    Positions that ``x`` does not hold (before ``x_start`` or past its end) are zeros: they
    are padding that attention masks (before) or that causality keeps out of every real
    token (after). No copy when the region is all of ``x``; otherwise contiguous (a bf16
    matmul on a strided view rounds differently from one on the same rows stored
    contiguously, which would make a trimmed pass differ from a whole one under bf16).

    Args:
        x: ``[B, n, ...]``, tokens ``x_start .. x_start + n - 1``.
        x_start: position of ``x[:, 0]``.
        start: first position wanted.
        length: positions wanted.

    Returns:
        ``[B, length, ...]``.
    """
    n = x.shape[1]
    lo, hi = start - x_start, start - x_start + length
    if lo == 0 and hi == n:
        return x
    out = x[:, max(lo, 0) : min(hi, n)].contiguous()
    left, right = max(-lo, 0), max(hi - n, 0)
    if left or right:
        out = F.pad(out, (0, 0) * (x.dim() - 2) + (left, right))  # zeros on the token axis
    return out


class SeriesState:
    """What the layers of one series pass share: rotary tables, masks and the owners' K/V.

    Built once per pass by the encoder (see ``MLKVEncoder._blocks``) from tables the
    encoder makes once, so that nothing is recomputed per layer (or, compiled, inside every
    fused kernel that reads it), and K/V blocks that several layers read are cut once.

    Args:
        cos2: ``[P, Dh]`` rotary cosines of positions ``0 .. P-1``, twice (``[cos, cos]``),
            float32 or wider.
        sin2: ``[P, Dh]`` rotary sines, as ``[-sin, sin]`` (:func:`rotation_tables`).
        band: ``[G*W, 2W]`` additive band mask (:func:`additive_band`), in ``cos2``'s dtype.
        window: ``W``.
        chunk_blocks: blocks per attention call.
    """

    def __init__(
        self,
        cos2: torch.Tensor,
        sin2: torch.Tensor,
        band: torch.Tensor,
        window: int,
        chunk_blocks: int,
    ) -> None:
        self.cos2, self.sin2 = cos2, sin2  # [P, Dh] each
        self.band = band  # [G*W, 2W]: 0 where attention is allowed, -inf elsewhere
        self.window = window
        self.chunk_blocks = chunk_blocks
        self.kv: dict[int, tuple[torch.Tensor, torch.Tensor, int]] = {}  # owner: k, v, start
        self._blocks: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._first: dict[tuple[int, int], torch.Tensor] = {}

    def rotate(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """Rotate queries or keys of positions ``start ..``: ``[B, n, *heads, Dh]`` (float32+).

        ``x * [cos, cos] + swap_halves(x) * [-sin, sin]`` is :func:`apply_rotary`'s rotation
        (the same products and sums, so the same floats) in 4 ops instead of 8.
        """
        n, Dh = x.shape[1], x.shape[-1]
        shape = (n,) + (1,) * (x.dim() - 3) + (Dh,)
        cos = self.cos2[start : start + n].view(shape)  # [n, 1.., Dh]
        sin = self.sin2[start : start + n].view(shape)  # [n, 1.., Dh]
        x = x.to(torch.promote_types(x.dtype, cos.dtype))  # fp32 even under bf16 autocast
        return x * cos + x.roll(Dh // 2, -1) * sin  # roll: [x1, x2] -> [x2, x1]

    def kv_blocks(
        self, source: int, start: int, nb: int, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``source``'s K/V cut into blocks for the ``nb`` query blocks from ``start`` on.

        Query block ``b`` (positions ``start + bW ..``) gets the keys of positions ``start +
        (b-1)W .. start + (b+1)W - 1`` (:func:`kv_blocks` with its previous block).

        Returns:
            ``(k2, v2)``, ``[B, Hkv, nb, 2W, Dh]`` each, in ``dtype``.
        """
        key = (source, start, nb)
        if key not in self._blocks:
            k, v, k_start = self.kv[source]  # [B, n, Hkv, Dh] each
            W = self.window
            pair = []
            for x in (k, v):
                x = token_region(x, k_start, start - W, (nb + 1) * W)  # [B, (nb+1)W, Hkv, Dh]
                B, _, Hkv, Dh = x.shape
                x = x.view(B, nb + 1, W, Hkv, Dh).permute(0, 3, 1, 2, 4)  # [B, Hkv, nb+1, W, Dh]
                pair.append(torch.cat((x[:, :, :-1], x[:, :, 1:]), dim=3).to(dtype))
            self._blocks[key] = (pair[0], pair[1])  # [B, Hkv, nb, 2W, Dh] each
        return self._blocks[key]

    def first_mask(self, start: int, nb: int) -> torch.Tensor:
        """Mask of the first attention chunk when ``nb`` query blocks start at ``start``.

        Block 0's previous block holds positions ``start - W .. start - 1``; those below 0
        are padding. ``band`` itself when there are none (``start >= W``), else the
        ``[1, min(nb, chunk_blocks), G*W, 2W]`` mask of :func:`first_chunk_mask` (made once
        per pass).
        """
        W = self.window
        if start >= W:
            return self.band
        key = (start, min(nb, self.chunk_blocks))
        if key not in self._first:
            pad = torch.arange(2 * W, device=self.band.device) < W - start  # [2W]
            first = self.band.masked_fill(pad, float("-inf"))  # [G*W, 2W]
            self._first[key] = first_chunk_mask(self.band, first, key[1])
        return self._first[key]

    def release(self, source: int) -> None:
        """Free ``source``'s K/V (after its last reader)."""
        self.kv.pop(source, None)
        for key in [key for key in self._blocks if key[0] == source]:
            del self._blocks[key]


class SharedKVAttention(nn.Module):
    """Multi-head attention of one layer; owns K/V projections only if it is a KV owner.

    Args:
        d_model: ``D``.
        n_heads: ``H``.
        n_kv_heads: ``Hkv``.
        layer: index of this layer.
        kv_source: index of the owner layer whose K/V this layer attends over.
        bias: whether the projections have biases.
        dropout: attention dropout probability (training only).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int,
        layer: int,
        kv_source: int,
        bias: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        self.layer, self.kv_source = layer, kv_source
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, n_heads * self.head_dim, bias=bias)
        self.kv_proj = (
            nn.Linear(d_model, 2 * n_kv_heads * self.head_dim, bias=bias)
            if kv_source == layer
            else None
        )
        self.out_proj = nn.Linear(n_heads * self.head_dim, d_model, bias=bias)

    @property
    def is_owner(self) -> bool:
        """True if this layer computes its own K/V."""
        return self.kv_proj is not None

    def series(
        self,
        x: torch.Tensor,
        x_start: int,
        q_start: int,
        q_len: int,
        state: SeriesState,
    ) -> torch.Tensor:
        """Attention for the tokens ``q_start .. q_start + q_len - 1`` of ``B`` sequences.

        An owner computes K/V for every token of ``x`` (``state.kv[layer]``); the queries
        are the tokens of the query region. A token outside ``x`` is padding (zeros).

        Args:
            x: ``[B, n, D]`` normalised layer input of positions ``x_start .. x_start + n - 1``.
            x_start: position of ``x[:, 0]``.
            q_start: first query position (``>= x_start``).
            q_len: queries, a multiple of ``W``.
            state: the pass's :class:`SeriesState`.

        Returns:
            ``[B, q_len, D]`` attention output (after the output projection).
        """
        B, n, _ = x.shape
        Hkv, Dh, W = self.n_kv_heads, self.head_dim, state.window
        G, nb = self.n_heads // Hkv, q_len // W
        if self.kv_proj is not None:
            k, v = self.kv_proj(x).view(B, n, 2, Hkv, Dh).unbind(2)  # [B, n, Hkv, Dh] each
            state.kv[self.layer] = (state.rotate(k, x_start), v, x_start)  # rotate, then share
        xq = token_region(x, x_start, q_start, q_len)  # [B, q_len, D]
        q = self.q_proj(xq).view(B, q_len, Hkv, G, Dh)  # [B, q_len, Hkv, G, Dh]
        q = state.rotate(q, q_start)
        q = q.view(B, nb, W, Hkv, G, Dh).permute(0, 3, 1, 4, 2, 5)  # [B, Hkv, nb, G, W, Dh]
        q = q.reshape(B, Hkv, nb, G * W, Dh)  # [B, Hkv, nb, G*W, Dh]
        k2, v2 = state.kv_blocks(self.kv_source, q_start, nb, q.dtype)  # [B, Hkv, nb, 2W, Dh]
        y = block_attention(
            q,
            k2,
            v2,
            state.band,
            state.chunk_blocks,
            self.dropout if self.training else 0.0,
            first=state.first_mask(q_start, nb),
        )  # [B, Hkv, nb, G*W, Dh]
        y = y.view(B, Hkv, nb, G, W, Dh).permute(0, 2, 4, 1, 3, 5)  # [B, nb, W, Hkv, G, Dh]
        return self.out_proj(y.reshape(B, q_len, Hkv * G * Dh))  # [B, q_len, D]

    def step(
        self,
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache,
        valid: torch.Tensor,
    ) -> torch.Tensor:
        """Attention for one new bar per row, reading and (owners) writing the cache.

        Args:
            h: ``[B, D]`` normalised layer input of the new bar.
            cos: ``[B, Dh/2]`` rotary cosines of each row's position.
            sin: ``[B, Dh/2]`` rotary sines.
            cache: the streaming cache; an owner writes its new K/V into it first.
            valid: ``[B, W]`` bool, slots holding a bar of the current episode (new one included).

        Returns:
            ``[B, D]`` attention output.
        """
        B = h.shape[0]
        Hkv, Dh = self.n_kv_heads, self.head_dim
        G = self.n_heads // Hkv
        if self.kv_proj is not None:
            k, v = self.kv_proj(h).view(B, 2, Hkv, Dh).unbind(1)  # [B, Hkv, Dh] each
            k = apply_rotary(k, cos[:, None], sin[:, None])
            kbuf, vbuf = cache.update(self.layer, k, v)  # [B, Hkv, W, Dh] each
        else:
            kbuf, vbuf = cache.kv(self.kv_source)  # [B, Hkv, W, Dh] each
        q = self.q_proj(h).view(B, Hkv, G, Dh)  # [B, Hkv, G, Dh]
        q = apply_rotary(q, cos[:, None, None], sin[:, None, None])
        y = step_attention(q, kbuf, vbuf, valid)  # [B, Hkv, G, Dh]
        return self.out_proj(y.reshape(B, Hkv * G * Dh))  # [B, D]
