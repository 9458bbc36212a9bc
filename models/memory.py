"""Product-key memory: a very large table of values of which each token reads only the top-k.

A sparse memory layer (Lample et al. 2019, "Large Memory Layers with Product Keys",
arXiv 1907.05242; UltraMem, Huang et al. 2024, arXiv 2411.12364) replaces the MLP of a
transformer block. Its capacity (``n_keys ** 2`` value slots) grows with almost no
compute: a token scores ``2 * n_keys`` sub-keys per head, not ``n_keys ** 2`` keys.

Per token and head (``n = n_keys``, ``k`` slots read, ``kd`` query width):

1. the query ``q = norm(W_q x)`` is split in two halves ``q1, q2`` of ``kd / 2``;
2. ``q1`` is scored against ``n`` sub-keys ``K1``, ``q2`` against ``K2``; each half keeps its
   top-k (:func:`product_key_topk`);
3. candidate pairs ``(i, j)`` of the two top-k lists are rescored as
   ``q1.K1[i] + q2.K2[j]``, which is exactly ``q . concat(K1[i], K2[j])``, the score of
   product key ``i * n + j``; the top-k pairs are **exactly** the top-k of all ``n ** 2``
   product keys (if a pair ``(i, j)`` is in the overall top-k, ``i`` is in the top-k of
   half 1: otherwise ``k`` better ``i'`` would give ``k`` better pairs ``(i', j)``; likewise
   ``j``). Of the ``k x k`` pairs only those at ranks ``(a, b)`` with
   ``(a + 1)(b + 1) <= k`` can make the top-k (the others are beaten by the
   ``(a + 1)(b + 1) - 1`` pairs of better or equal ranks in both halves), about
   ``k ln k`` pairs instead of ``k^2`` (:func:`candidate_pairs`);
4. softmax over the ``k`` scores gives the read weights; the ``k`` value rows are summed
   with :func:`torch.nn.functional.embedding_bag` (``mode="sum"``, ``per_sample_weights``),
   which touches only those rows (with ``sparse_grad`` their gradient is a sparse tensor).

Heads have their own query and sub-keys and share the value table; their reads are summed.
Per-token cost: ``O(n * kd + k log k + k * value_dim)`` per head, i.e. ``O(sqrt(slots))``
instead of ``O(slots)``.

The query is normalised with LayerNorm, not the papers' BatchNorm: batch statistics in
training mix tokens of a batch, so a bar's output would depend on *future* bars of the
batch (a look-ahead leak in a trading model) and on padding, and the three run modes of the
encoder (windows, whole series, streaming) would no longer be equal. LayerNorm is per token.

Value-table usage (the papers' known failure is a few slots doing all the work) is counted
in a non-persistent buffer at every forward and read with
:meth:`ProductKeyMemory.memory_usage`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "QUERY_NORMS",
    "MemoryUsage",
    "PKMConfig",
    "ProductKeyMemory",
    "candidate_pairs",
    "product_key_topk",
]

#: Accepted values of :attr:`PKMConfig.query_norm`.
QUERY_NORMS = ("layer", "none")


@dataclass(frozen=True)
class PKMConfig:
    """Hyper-parameters of a :class:`ProductKeyMemory` (one per memory layer of the encoder).

    Example:
        >>> cfg = PKMConfig(n_keys=512, k=32, heads=4)
        >>> cfg.n_slots
        262144
    """

    n_keys: int = 128  # sub-keys per half and head; the value table has n_keys**2 slots
    k: int = 16  # slots each head reads per token (top-k); 1 <= k <= n_keys
    heads: int = 2  # memory heads: own query and sub-keys each, one shared value table
    k_dim: int = 32  # query width per head (even); each half is k_dim / 2 wide
    value_dim: int | None = None  # width of a value slot; None = d_model (no output projection)
    query_norm: str = "layer"  # "layer" (LayerNorm on the query, per token) or "none"
    sparse_grad: bool = False  # sparse value-table gradient (needs torch.optim.SparseAdam or SGD)
    track_usage: bool = True  # count slot reads at every forward (see memory_usage)

    def __post_init__(self) -> None:
        for name in ("n_keys", "k", "heads", "k_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"PKMConfig.{name} must be an integer >= 1, got {value!r}.")
        if self.k > self.n_keys:
            raise ValueError(
                f"PKMConfig.k = {self.k} must be <= n_keys = {self.n_keys}: each half of the "
                f"product-key search keeps its top-k of n_keys sub-keys. Lower k or raise n_keys."
            )
        if self.k_dim % 2:
            raise ValueError(
                f"PKMConfig.k_dim = {self.k_dim} must be even: the query is split into two "
                f"halves of k_dim / 2, one per sub-key set."
            )
        v = self.value_dim
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"PKMConfig.value_dim must be None or an integer >= 1, got {v!r}.")
        if self.query_norm not in QUERY_NORMS:
            raise ValueError(
                f"PKMConfig.query_norm must be one of {QUERY_NORMS}, got {self.query_norm!r} "
                f"(batch norm is not offered: its statistics leak future bars into a bar's output)."
            )

    @property
    def n_slots(self) -> int:
        """Value slots in the table, ``n_keys ** 2``."""
        return self.n_keys**2

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML/JSON friendly); :meth:`from_dict` inverts it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> PKMConfig:
        """Build from a dict of fields (missing ones take their defaults).

        Raises:
            ValueError: an unknown field or an invalid value.
        """
        if not isinstance(spec, dict):
            raise ValueError(f"PKMConfig.from_dict: expected a dict of fields, got {spec!r}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise ValueError(
                f"PKMConfig: unknown field(s) {unknown}; the fields are {sorted(known)}."
            )
        return cls(**spec)


@dataclass(frozen=True)
class MemoryUsage:
    """How evenly a memory's value slots were read since its counters were last reset."""

    slot_share: float  # share of the n_slots value slots read at least once, in [0, 1]
    read_entropy: float  # entropy (nats) of the reads' distribution over slots
    n_slots: int  # value slots in the table
    reads: int  # slot reads counted: tokens x heads x k

    @property
    def max_entropy(self) -> float:
        """``log(n_slots)``: the entropy of perfectly even reads."""
        return math.log(self.n_slots)

    @property
    def read_entropy_ratio(self) -> float:
        """``read_entropy / log(n_slots)`` in [0, 1]: 1 = even reads, 0 = one slot only."""
        return self.read_entropy / self.max_entropy if self.n_slots > 1 else 0.0


def candidate_pairs(
    k: int, candidates: int | None = None, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank pairs ``(a, b)`` of the two sorted top lists that can reach the top-k.

    ``(a, b)`` with ``a, b < candidates`` and ``(a + 1) * (b + 1) <= k``: any other pair is
    beaten or tied by ``>= k`` pairs of better or equal ranks in both halves.

    Args:
        k: pairs wanted.
        candidates: length of each top list; default ``k``.
        device: device of the result.

    Returns:
        ``(a, b)``: int64 ``[P]`` each, ``P ~ k ln k`` (``P >= k`` when ``candidates = k``).
    """
    c = k if candidates is None else candidates
    pairs = [(a, b) for a in range(c) for b in range(c) if (a + 1) * (b + 1) <= k]
    if len(pairs) < k:
        raise ValueError(
            f"candidate_pairs: {c} candidates per half give {len(pairs)} pairs < k = {k}."
        )
    a, b = torch.tensor(pairs, dtype=torch.long, device=device).unbind(1)
    return a, b


def product_key_topk(
    s1: torch.Tensor,
    s2: torch.Tensor,
    k: int,
    candidates: int | None = None,
    pairs: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of ``s1[..., i] + s2[..., j]`` over all ``n * n`` pairs, from each half's top-k.

    Exact for ``candidates = k`` (the default; see the module docstring): the returned
    scores are bit-identical to sorting all ``n ** 2`` sums. Fewer candidates is the
    approximation the test suite uses to show that the exactness check can fail.

    Args:
        s1: ``[..., n]`` scores of the first-half sub-keys.
        s2: ``[..., n]`` scores of the second-half sub-keys.
        k: pairs to return (``k <= n``).
        candidates: sub-keys kept per half (``<= n``); default ``k``.
        pairs: :func:`candidate_pairs` of ``(k, candidates)``, precomputed on the device.

    Returns:
        ``(scores, index)``, each ``[..., k]``, best first; ``index = i * n + j``.
    """
    n = s1.shape[-1]
    c = k if candidates is None else candidates
    a, b = candidate_pairs(k, c, s1.device) if pairs is None else pairs  # [P] each
    v1, i1 = s1.topk(c, dim=-1)  # [..., c] each, best first
    v2, i2 = s2.topk(c, dim=-1)  # [..., c] each, best first
    cand = v1[..., a] + v2[..., b]  # [..., P]
    scores, p = cand.topk(k, dim=-1)  # [..., k] each
    index = i1.gather(-1, a[p]) * n + i2.gather(-1, b[p])  # [..., k]
    return scores, index


class ProductKeyMemory(nn.Module):
    """Product-key memory layer: ``[..., D] -> [..., D]``, each token reading ``heads * k`` slots.

    Parameters: ``query`` (``Linear(D, heads * k_dim)``), ``query_norm`` (LayerNorm or
    identity), ``keys`` (``[heads, 2, n_keys, k_dim / 2]`` sub-keys), ``values``
    (``EmbeddingBag(n_keys ** 2, value_dim, mode="sum")``) and, when ``value_dim != D``,
    ``out_proj`` (``Linear(value_dim, D)``). Non-persistent buffers: ``reads``
    (``[n_keys ** 2]`` int64), slot reads since the last :meth:`reset_usage`, and
    ``pair_a``, ``pair_b``, the :func:`candidate_pairs` of ``k``.

    Args:
        d_model: ``D``, input and output width.
        n_keys: sub-keys per half and head; the table has ``n_keys ** 2`` slots.
        k: slots each head reads per token (``k <= n_keys``).
        heads: memory heads (own query and sub-keys, shared values).
        value_dim: width of a value slot; ``None`` = ``d_model``.
        k_dim: query width per head (even).
        query_norm: ``"layer"`` or ``"none"``.
        bias: biases in the query and output projections (and the query LayerNorm).
        sparse_grad: sparse gradient for the value table.
        track_usage: count slot reads at every forward.
        norm_eps: epsilon of the query LayerNorm.

    Example:
        >>> mem = ProductKeyMemory(32, n_keys=16, k=4, heads=2, value_dim=None)
        >>> mem(torch.randn(3, 7, 32)).shape, mem.n_slots
        (torch.Size([3, 7, 32]), 256)
    """

    def __init__(
        self,
        d_model: int,
        n_keys: int,
        k: int,
        heads: int = 1,
        value_dim: int | None = None,
        k_dim: int = 32,
        query_norm: str = "layer",
        bias: bool = True,
        sparse_grad: bool = False,
        track_usage: bool = True,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if isinstance(d_model, bool) or not isinstance(d_model, int) or d_model < 1:
            raise ValueError(f"ProductKeyMemory: d_model must be an integer >= 1, got {d_model!r}.")
        self.config = PKMConfig(
            n_keys, k, heads, k_dim, value_dim, query_norm, sparse_grad, track_usage
        )
        self.d_model = d_model
        self.value_dim = d_model if value_dim is None else value_dim
        self.track_usage = track_usage
        H, kd = heads, k_dim
        self.query = nn.Linear(d_model, H * kd, bias=bias)
        self.query_norm = (
            nn.LayerNorm(H * kd, eps=norm_eps, bias=bias)
            if query_norm == "layer"
            else nn.Identity()
        )
        self.keys = nn.Parameter(torch.empty(H, 2, n_keys, kd // 2))  # [H, 2, n, kd/2]
        self.values = nn.EmbeddingBag(n_keys**2, self.value_dim, mode="sum", sparse=sparse_grad)
        self.out_proj = (
            nn.Linear(self.value_dim, d_model, bias=bias) if self.value_dim != d_model else None
        )
        self.register_buffer("reads", torch.zeros(n_keys**2, dtype=torch.long), persistent=False)
        pair_a, pair_b = candidate_pairs(k)  # [P] each: rank pairs that can reach the top-k
        self.register_buffer("pair_a", pair_a, persistent=False)
        self.register_buffer("pair_b", pair_b, persistent=False)
        self.reset_parameters()

    @classmethod
    def from_config(
        cls, d_model: int, config: PKMConfig, bias: bool = True, norm_eps: float = 1e-5
    ) -> ProductKeyMemory:
        """Build from a :class:`PKMConfig` (as the encoder does for its memory layers)."""
        c = config
        return cls(
            d_model,
            c.n_keys,
            c.k,
            c.heads,
            c.value_dim,
            c.k_dim,
            c.query_norm,
            bias=bias,
            sparse_grad=c.sparse_grad,
            track_usage=c.track_usage,
            norm_eps=norm_eps,
        )

    def reset_parameters(self) -> None:
        """PKM's init: sub-keys ``U(+-1/sqrt(k_dim / 2))``, values ``N(0, 1 / value_dim)``."""
        bound = 1.0 / math.sqrt(self.keys.shape[-1])
        nn.init.uniform_(self.keys, -bound, bound)
        nn.init.normal_(self.values.weight, std=self.value_dim**-0.5)

    # ------------------------------------------------------------------ properties
    @property
    def n_slots(self) -> int:
        """Value slots in the table, ``n_keys ** 2``."""
        return self.config.n_slots

    @property
    def active_params(self) -> int:
        """Parameters one token uses: all but the value table, plus ``heads * k`` value rows.

        An upper bound when heads pick the same slot. Every sub-key is active (each is scored).
        """
        total = sum(p.numel() for p in self.parameters())
        c = self.config
        return total - self.values.weight.numel() + c.heads * c.k * self.value_dim

    @property
    def flops_per_token(self) -> int:
        """Multiply-adds x 2 per token: query projection, sub-key scores, candidate sums,
        weighted value sum and output projection (norms, softmax and top-k selections, which
        compare ``O(n_keys + k^2)`` numbers per head, are not counted)."""
        c, D = self.config, self.d_model
        flops = 2 * D * c.heads * c.k_dim  # query projection
        flops += 2 * c.heads * c.n_keys * c.k_dim  # 2 halves x n_keys sub-keys x k_dim/2
        flops += c.heads * len(self.pair_a)  # candidate sums, ~k ln k
        flops += 2 * c.heads * c.k * self.value_dim  # weighted sum of the read rows
        if self.out_proj is not None:
            flops += 2 * self.value_dim * D
        return flops

    # ------------------------------------------------------------------ forward
    def lookup(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The product-key search: which slots each head reads, and with what weight.

        Scores are computed in at least float32 (also under bf16 autocast, where the many
        ties of bf16 scores would make the top-k arbitrary).

        Args:
            x: ``[..., D]``.

        Returns:
            ``(weights, index)``, each ``[..., heads, k]``: softmax read weights (summing to
            1 per head) and slot indices ``i * n_keys + j``, best first.
        """
        c = self.config
        H, half = c.heads, c.k_dim // 2
        q = self.query_norm(self.query(x))  # [..., H*kd]
        q = q.view(*x.shape[:-1], H, 2, half)  # [..., H, 2, kd/2]
        dtype = torch.promote_types(q.dtype, torch.promote_types(self.keys.dtype, torch.float32))
        with torch.autocast(x.device.type, enabled=False):
            keys = self.keys.to(dtype)  # [H, 2, n, kd/2]
            s = torch.einsum("...hsd,hsnd->...hsn", q.to(dtype), keys)  # [..., H, 2, n]
            pairs = (self.pair_a, self.pair_b)
            scores, index = product_key_topk(s[..., 0, :], s[..., 1, :], c.k, pairs=pairs)
            weights = torch.softmax(scores, dim=-1)  # [..., H, k]
        return weights, index

    def forward(self, x: torch.Tensor, counted: torch.Tensor | None = None) -> torch.Tensor:
        """Read the memory for every token.

        Args:
            x: ``[..., D]`` normalised block input.
            counted: bool, broadcastable to ``x.shape[:-1]``: the tokens whose reads the usage
                counters record (padding is read but not counted); ``None`` counts all.

        Returns:
            ``[..., D]``: ``sum_heads sum_k weight * value[slot]`` (then ``out_proj``).
        """
        if x.shape[-1] != self.d_model:
            raise ValueError(
                f"ProductKeyMemory: last axis must have d_model = {self.d_model}, "
                f"got shape {tuple(x.shape)}."
            )
        lead = x.shape[:-1]
        weights, index = self.lookup(x)  # [..., H, k] each
        index = index.reshape(-1, index.shape[-2] * index.shape[-1])  # [M, H*k]
        weights = weights.reshape(index.shape).to(self.values.weight.dtype)  # [M, H*k]
        if self.track_usage:
            flat = index.reshape(-1)  # [M*H*k]
            if counted is None:
                ones = torch.ones_like(flat)  # [M*H*k]
            else:
                per_token = counted.expand(lead).reshape(-1, 1)  # [M, 1]
                ones = per_token.expand(index.shape).reshape(-1).to(flat.dtype)  # [M*H*k]
            self.reads.index_add_(0, flat, ones)
        y = self.values(index, per_sample_weights=weights)  # [M, value_dim]; bags = rows
        if self.out_proj is not None:
            y = self.out_proj(y)  # [M, D]
        return y.view(*lead, self.d_model)  # [..., D]

    # ------------------------------------------------------------------ usage statistics
    def memory_usage(self, reset: bool = False) -> MemoryUsage:
        """Share of slots read and entropy of the reads since the last reset.

        Args:
            reset: zero the counters after reading them.
        """
        counts = self.reads.to(torch.float64)
        total = float(counts.sum())
        if total == 0.0:
            usage = MemoryUsage(0.0, 0.0, self.n_slots, 0)
        else:
            p = counts[counts > 0] / total
            usage = MemoryUsage(
                slot_share=float((counts > 0).sum()) / self.n_slots,
                read_entropy=float(-(p * p.log()).sum()),
                n_slots=self.n_slots,
                reads=int(total),
            )
        if reset:
            self.reset_usage()
        return usage

    def reset_usage(self) -> None:
        """Zero the read counters."""
        self.reads.zero_()

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"slots={c.n_slots:,} ({c.n_keys}^2), k={c.k}, heads={c.heads}, k_dim={c.k_dim}, "
            f"value_dim={self.value_dim}"
        )
