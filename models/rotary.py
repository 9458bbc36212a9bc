"""Rotary position embedding (RoPE, Su et al. 2021): a purely relative position encoding.

Rotating queries and keys by an angle proportional to their position makes every
attention score depend only on the *difference* of the two positions. That is what lets
the same weights encode a window (positions ``0..T-1``), a whole series (positions
``0..N-1``) or one streamed bar (position = bars since the last reset) with identical
results.

Angles are computed in float64 and rounded once, so positions in the tens of thousands
lose no accuracy (in float32 ``pos * freq`` alone would err by ~1e-4 rad at pos 6,000).

The tables and the rotation stay in float32 even under bf16 autocast: the three run modes
rotate the same bar by different absolute angles (a window restarts at position 0, a
series does not), so bf16 tables or a bf16 rotation would round each mode differently and
break the relative-position invariance that makes the modes agree.
"""

from __future__ import annotations

import torch

__all__ = ["apply_rotary", "rotary_tables"]


def rotary_tables(
    positions: torch.Tensor, head_dim: int, base: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine and sine tables for the given positions.

    Args:
        positions: integer positions, any shape ``[*P]``.
        head_dim: size of each head, even.
        base: RoPE base; frequency ``j`` is ``base ** (-2j / head_dim)``.
        dtype: dtype of the returned tables.

    Returns:
        ``(cos, sin)``, each ``[*P, head_dim // 2]``.
    """
    half = head_dim // 2
    inv_freq = base ** (
        -torch.arange(half, device=positions.device, dtype=torch.float64) * 2.0 / head_dim
    )  # [Dh/2]
    angles = positions.to(torch.float64)[..., None] * inv_freq  # [*P, Dh/2]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of the last axis of ``x`` (GPT-NeoX layout).

    Args:
        x: ``[..., Dh]`` queries or keys.
        cos: ``[..., Dh/2]`` cosines, broadcastable against ``x[..., :Dh/2]``.
        sin: ``[..., Dh/2]`` sines, same shape as ``cos``.

    Returns:
        ``[..., Dh]`` rotated ``x`` in the promoted dtype of ``x`` and the tables (float32
        for bf16 ``x`` and float32 tables: the rotation is never rounded to bf16).
    """
    dtype = torch.promote_types(x.dtype, cos.dtype)
    x1, x2 = x.to(dtype).chunk(2, dim=-1)  # [..., Dh/2] each
    cos, sin = cos.to(dtype), sin.to(dtype)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)  # [..., Dh]
