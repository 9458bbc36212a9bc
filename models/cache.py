"""The streaming KV cache and the KV-cache memory formula.

The cache is a ring buffer of the last ``W`` (window) rotated keys and values of every
KV-*owning* layer, for a batch of independent streams (one per environment). Layers that
share an owner's K/V read the owner's buffers, so memory scales with the plan's
``total_kv_heads``, not with the depth. The cache only stores and returns tensors; the
attention code does the math (see :func:`models.attention.step_attention`).
"""

from __future__ import annotations

import torch
from torch import nn

from .plan import KVSharingPlan

__all__ = ["KVCache", "cache_bytes"]


def cache_bytes(
    plan: KVSharingPlan, head_dim: int, batch: int, seq_len: int, dtype: torch.dtype
) -> int:
    """Bytes of K/V a cache holds: ``2 * batch * seq_len * n_kv_layers * n_kv_heads * head_dim
    * bytes_per_element``.

    With the MLKV paper's Pythia-160M setting (12 layers, 12 heads, head_dim 64, batch 8,
    2,048 tokens, fp32) this gives 1,152 MiB for MHA (144 KV heads), 384 MiB for 48 KV
    heads, 96 MiB for 12 and 16 MiB for 2 (arXiv 2406.09297, Table 1).

    Args:
        plan: the KV-sharing plan.
        head_dim: size of each attention head.
        batch: number of sequences (environments).
        seq_len: tokens kept per sequence (the window ``W`` for :class:`KVCache`).
        dtype: element type of the cache.

    Returns:
        The number of bytes.
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    return 2 * batch * seq_len * plan.total_kv_heads * head_dim * itemsize


class KVCache(nn.Module):
    """Ring buffer of the last ``window`` rotated K/V entries per KV-owning layer.

    Buffers (non-persistent: they never enter a ``state_dict``):

    * ``k{layer}``, ``v{layer}``: ``[B, Hkv, W, Dh]`` for every owner layer; the entry of a
      row's bar at position ``p`` lives in slot ``p % W``;
    * ``pos``: ``[B]`` int64, bars written to each row since its last reset, i.e. the
      position of the next bar.

    Build it with :meth:`models.MLKVEncoder.new_cache`. It belongs to the inference path:
    use it under ``torch.inference_mode()`` (or ``no_grad``), create and use it in the same
    mode.

    Args:
        plan: the encoder's KV-sharing plan (decides which layers get buffers).
        batch: number of independent streams ``B``.
        window: attention window ``W``.
        head_dim: ``Dh``.
        device: where the buffers live.
        dtype: element type of the K/V buffers.
    """

    def __init__(
        self,
        plan: KVSharingPlan,
        batch: int,
        window: int,
        head_dim: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if batch < 1:
            raise ValueError(f"KVCache: batch must be >= 1, got {batch}.")
        self.owners = plan.owners
        self.window = window
        shape = (batch, plan.n_kv_heads, window, head_dim)  # [B, Hkv, W, Dh]
        for layer in self.owners:
            self.register_buffer(f"k{layer}", torch.zeros(shape, device=device, dtype=dtype), False)
            self.register_buffer(f"v{layer}", torch.zeros(shape, device=device, dtype=dtype), False)
        self.register_buffer("pos", torch.zeros(batch, device=device, dtype=torch.long), False)

    @property
    def batch(self) -> int:
        """Number of streams ``B``."""
        return self.pos.shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes held by the K/V buffers (the ``[B]`` position counter is not counted)."""
        return sum(
            getattr(self, f"{kv}{layer}").nbytes for layer in self.owners for kv in ("k", "v")
        )

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store one new bar's K/V of an owner layer at each row's slot ``pos % W``.

        Args:
            layer: index of the owner layer.
            k: ``[B, Hkv, Dh]`` rotated keys of the new bar.
            v: ``[B, Hkv, Dh]`` values of the new bar.

        Returns:
            The full buffers ``(k, v)``, each ``[B, Hkv, W, Dh]``.
        """
        kbuf, vbuf = getattr(self, f"k{layer}"), getattr(self, f"v{layer}")
        rows = torch.arange(self.batch, device=self.pos.device)  # [B]
        slot = self.pos % self.window  # [B]
        kbuf[rows, :, slot] = k.to(kbuf.dtype)  # kbuf[rows, :, slot] is [B, Hkv, Dh]
        vbuf[rows, :, slot] = v.to(vbuf.dtype)
        return kbuf, vbuf

    def kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The buffers ``(k, v)`` of an owner layer, each ``[B, Hkv, W, Dh]``."""
        return getattr(self, f"k{layer}"), getattr(self, f"v{layer}")

    def advance(self) -> None:
        """Mark the current bar as written for every row (``pos += 1``)."""
        self.pos += 1

    def reset(self, mask: torch.Tensor | None = None) -> None:
        """Restart streams: the next bar of a reset row is its position 0 with no history.

        Args:
            mask: ``[B]`` bool, the rows to restart (e.g. the VecEnv's ``dones``);
                ``None`` restarts every row.
        """
        if mask is None:
            self.pos.zero_()
            for layer in self.owners:
                getattr(self, f"k{layer}").zero_()
                getattr(self, f"v{layer}").zero_()
            return
        mask = torch.as_tensor(mask, device=self.pos.device)
        if mask.dtype != torch.bool or mask.shape != self.pos.shape:
            raise ValueError(
                f"KVCache.reset: mask must be a bool tensor of shape [{self.batch}], got "
                f"{mask.dtype} {tuple(mask.shape)}."
            )
        self.pos.masked_fill_(mask, 0)
        rows = mask[:, None, None, None]  # [B, 1, 1, 1]
        for layer in self.owners:
            getattr(self, f"k{layer}").masked_fill_(rows, 0.0)
            getattr(self, f"v{layer}").masked_fill_(rows, 0.0)

    def extra_repr(self) -> str:
        k0 = getattr(self, f"k{self.owners[0]}")
        return (
            f"batch={self.batch}, window={self.window}, owners={list(self.owners)}, "
            f"kv_shape={list(k0.shape)}, dtype={k0.dtype}, nbytes={self.nbytes}"
        )
