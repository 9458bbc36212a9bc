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
kernel on CUDA and a vectorised one on CPU.

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

__all__ = ["SharedKVAttention", "band_mask", "block_attention", "kv_blocks", "step_attention"]


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


def block_attention(
    q: torch.Tensor,
    k2: torch.Tensor,
    v2: torch.Tensor,
    band: torch.Tensor,
    chunk_blocks: int,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Causal sliding-window attention over whole blocks of queries.

    Args:
        q: ``[B, Hkv, nb, G*W, Dh]`` rotated queries, ``G`` heads folded into the query axis.
        k2: ``[B, Hkv, nb, 2W, Dh]`` rotated keys from :func:`kv_blocks`.
        v2: ``[B, Hkv, nb, 2W, Dh]`` values from :func:`kv_blocks`.
        band: ``[G*W, 2W]`` bool from :func:`band_mask`.
        chunk_blocks: blocks per attention call (bounds the score memory to
            ``B * Hkv * chunk_blocks * G*W * 2W`` elements).
        dropout_p: attention dropout probability (training only).

    Returns:
        ``[B, Hkv, nb, G*W, Dh]`` attention outputs.
    """
    B, Hkv, nb, GW, Dh = q.shape
    W = k2.shape[3] // 2
    # Block 0 has no previous block: its first W keys are padding.
    first = band.clone()
    first[:, :W] = False  # [G*W, 2W]
    outs = []
    for b0 in range(0, nb, chunk_blocks):
        b1 = min(nb, b0 + chunk_blocks)
        mask = band  # [G*W, 2W], the same for every block
        if b0 == 0:  # 4-D (not 3-D) masks keep SDPA on its fused CPU kernel
            rest = band.expand(1, b1 - b0 - 1, GW, 2 * W)  # [1, nbc-1, G*W, 2W]
            mask = torch.cat((first.expand(1, 1, GW, 2 * W), rest), dim=1)  # [1, nbc, G*W, 2W]
        # 4-D views (blocks in the "heads" slot) let SDPA pick its fused kernels
        qc = q[:, :, b0:b1].reshape(B * Hkv, b1 - b0, GW, Dh)  # [B*Hkv, nbc, G*W, Dh]
        kc = k2[:, :, b0:b1].reshape(B * Hkv, b1 - b0, 2 * W, Dh)  # [B*Hkv, nbc, 2W, Dh]
        vc = v2[:, :, b0:b1].reshape(B * Hkv, b1 - b0, 2 * W, Dh)  # [B*Hkv, nbc, 2W, Dh]
        with torch.autocast(q.device.type, enabled=False):  # fp32 scores, see the module doc
            y = F.scaled_dot_product_attention(qc, kc, vc, attn_mask=mask, dropout_p=dropout_p)
        outs.append(y.view(B, Hkv, b1 - b0, GW, Dh))  # [B, Hkv, nbc, G*W, Dh]
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)  # [B, Hkv, nb, G*W, Dh]


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
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv: dict[int, tuple[torch.Tensor, torch.Tensor]],
        window: int,
        band: torch.Tensor,
        chunk_blocks: int,
    ) -> torch.Tensor:
        """Attention for every token of ``B`` sequences of ``N`` tokens (``N`` a multiple of W).

        Args:
            h: ``[B, N, D]`` normalised layer input.
            cos: ``[N, Dh/2]`` rotary cosines of the token positions.
            sin: ``[N, Dh/2]`` rotary sines.
            kv: blocked K/V per owner layer, ``{layer: (k2, v2)}`` with ``[B, Hkv, nb, 2W,
                Dh]`` each; an owner adds its entry, sharing layers read their source's.
            window: ``W``.
            band: ``[G*W, 2W]`` bool mask from :func:`band_mask`.
            chunk_blocks: blocks per attention call.

        Returns:
            ``[B, N, D]`` attention output (after the output projection).
        """
        B, N, _ = h.shape
        Hkv, Dh, W = self.n_kv_heads, self.head_dim, window
        G, nb = self.n_heads // Hkv, N // W
        if self.kv_proj is not None:
            k, v = self.kv_proj(h).view(B, N, 2, Hkv, Dh).unbind(2)  # [B, N, Hkv, Dh] each
            k = apply_rotary(k, cos[:, None], sin[:, None])  # rotate before sharing
            k = kv_blocks(k.transpose(1, 2), W)  # [B, Hkv, nb, 2W, Dh]
            v = kv_blocks(v.transpose(1, 2), W)  # [B, Hkv, nb, 2W, Dh]
            kv[self.layer] = (k, v)
        k2, v2 = kv[self.kv_source]
        q = self.q_proj(h).view(B, N, Hkv, G, Dh)  # [B, N, Hkv, G, Dh]
        q = apply_rotary(q, cos[:, None, None], sin[:, None, None])
        q = q.view(B, nb, W, Hkv, G, Dh).permute(0, 3, 1, 4, 2, 5)  # [B, Hkv, nb, G, W, Dh]
        q = q.reshape(B, Hkv, nb, G * W, Dh)  # [B, Hkv, nb, G*W, Dh]
        y = block_attention(
            q,
            k2.to(q.dtype),
            v2.to(q.dtype),
            band,
            chunk_blocks,
            self.dropout if self.training else 0.0,
        )  # [B, Hkv, nb, G*W, Dh]
        y = y.view(B, Hkv, nb, G, W, Dh).permute(0, 2, 4, 1, 3, 5)  # [B, nb, W, Hkv, G, Dh]
        return self.out_proj(y.reshape(B, N, Hkv * G * Dh))  # [B, N, D]

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
