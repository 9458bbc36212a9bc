"""KV-sharing plans: which layer's keys/values each transformer layer attends over.

One mechanism expresses the whole family of KV-saving attention designs:

* **MHA**: every layer owns its K/V and has as many KV heads as query heads;
* **GQA** (Ainslie et al. 2023) / **MQA** (Shazeer 2019): every layer owns its K/V, with
  fewer KV heads (``n_kv_heads`` divides ``n_heads``; MQA has one) shared by groups of
  query heads;
* **CLA-k** (Brandon et al. 2024, arXiv 2405.12981): K/V are computed every ``k`` layers
  and reused by the ``k - 1`` layers that follow;
* **MLKV-m** (Zuhri et al. 2024, arXiv 2406.09297): only ``m`` layers in total compute K/V
  (possibly ``m = 1``), spread evenly over the depth, on top of GQA/MQA head sharing.

A plan is a tuple ``kv_source``: layer ``i`` attends over the K/V computed by layer
``kv_source[i]``. A layer that is its own source is a KV *owner*; sources never point
forward and always point at an owner. Non-owner layers have no K/V projections at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["KVSharingPlan"]

#: Plan kinds understood by :meth:`KVSharingPlan.from_dict`.
PLAN_KINDS = ("mha", "gqa", "mqa", "cla", "mlkv", "reference", "custom")


@dataclass(frozen=True)
class KVSharingPlan:
    """Maps every layer to the layer whose K/V it uses, and sets the head counts.

    Build plans with the constructors (:meth:`mha`, :meth:`gqa`, :meth:`mqa`, :meth:`cla`,
    :meth:`mlkv`, :meth:`reference`) or from a config dict (:meth:`from_dict`); the raw
    constructor accepts any valid ``kv_source``.

    Example:
        >>> plan = KVSharingPlan.reference()
        >>> plan.kv_source, plan.owners, plan.total_kv_heads
        ((0, 0, 0, 3, 3, 3, 6, 6, 6), (0, 3, 6), 6)
    """

    kv_source: tuple[int, ...]  # layer i attends over the K/V computed by layer kv_source[i]
    n_heads: int  # query heads per layer
    n_kv_heads: int  # key/value heads per KV-owning layer; divides n_heads

    def __post_init__(self) -> None:
        src = tuple(int(s) for s in self.kv_source)
        object.__setattr__(self, "kv_source", src)
        if len(src) == 0:
            raise ValueError("KVSharingPlan.kv_source: needs at least one layer, got ().")
        for i, s in enumerate(src):
            if not 0 <= s <= i:
                raise ValueError(
                    f"KVSharingPlan.kv_source[{i}] = {s}: a layer may only use the K/V of "
                    f"itself or an earlier layer (0 <= source <= {i}); got {src}."
                )
            if src[s] != s:
                raise ValueError(
                    f"KVSharingPlan.kv_source[{i}] = {s}: layer {s} is not a KV owner (it uses "
                    f"layer {src[s]}'s K/V); point layer {i} at an owner. Got {src}."
                )
        if self.n_heads < 1:
            raise ValueError(f"KVSharingPlan.n_heads must be >= 1, got {self.n_heads}.")
        if not 1 <= self.n_kv_heads <= self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"KVSharingPlan.n_kv_heads must divide n_heads = {self.n_heads} "
                f"(1 <= n_kv_heads <= n_heads), got {self.n_kv_heads}."
            )

    # ------------------------------------------------------------------ constructors
    @classmethod
    def mha(cls, n_layers: int, n_heads: int) -> KVSharingPlan:
        """Multi-head attention: every layer owns K/V with one KV head per query head."""
        return cls(tuple(range(_positive("n_layers", n_layers))), n_heads, n_heads)

    @classmethod
    def gqa(cls, n_layers: int, n_heads: int, n_kv_heads: int) -> KVSharingPlan:
        """Grouped-query attention: every layer owns K/V with ``n_kv_heads`` heads."""
        return cls(tuple(range(_positive("n_layers", n_layers))), n_heads, n_kv_heads)

    @classmethod
    def mqa(cls, n_layers: int, n_heads: int) -> KVSharingPlan:
        """Multi-query attention: every layer owns K/V with a single KV head."""
        return cls(tuple(range(_positive("n_layers", n_layers))), n_heads, 1)

    @classmethod
    def cla(cls, n_layers: int, n_heads: int, n_kv_heads: int, share_every: int) -> KVSharingPlan:
        """Cross-layer attention CLA-k: layers ``0, k, 2k, ...`` own K/V, the others reuse it.

        Args:
            n_layers: number of transformer layers.
            n_heads: query heads per layer.
            n_kv_heads: KV heads per owner layer.
            share_every: ``k``, the number of adjacent layers that share one K/V (1 = GQA).
        """
        _positive("n_layers", n_layers)
        k = _positive("share_every", share_every)
        return cls(tuple((i // k) * k for i in range(n_layers)), n_heads, n_kv_heads)

    @classmethod
    def mlkv(cls, n_layers: int, n_heads: int, n_kv_heads: int, n_kv_layers: int) -> KVSharingPlan:
        """Multi-layer KV sharing MLKV-m: ``m`` owner layers spread evenly over the depth.

        Owner ``j`` (``j = 0 .. m-1``) is layer ``floor(j * n_layers / m)``; every other layer
        uses the nearest owner below it. ``n_kv_layers = 1`` shares one K/V across all layers.

        Args:
            n_layers: number of transformer layers.
            n_heads: query heads per layer.
            n_kv_heads: KV heads per owner layer.
            n_kv_layers: ``m``, the number of KV-owning layers (1 <= m <= n_layers).
        """
        _positive("n_layers", n_layers)
        m = _positive("n_kv_layers", n_kv_layers)
        if m > n_layers:
            raise ValueError(
                f"KVSharingPlan.mlkv: n_kv_layers must be <= n_layers = {n_layers}, got {m}."
            )
        owners = sorted({(j * n_layers) // m for j in range(m)})
        src = tuple(max(o for o in owners if o <= i) for i in range(n_layers))
        return cls(src, n_heads, n_kv_heads)

    @classmethod
    def reference(cls) -> KVSharingPlan:
        """The reference trading design: 9 layers, 8 query heads, 2 KV heads, KV every 3 layers."""
        return cls.mlkv(9, 8, 2, 3)

    # ------------------------------------------------------------------ properties
    @property
    def n_layers(self) -> int:
        """Number of transformer layers."""
        return len(self.kv_source)

    @property
    def owners(self) -> tuple[int, ...]:
        """Indices of the layers that compute their own K/V, in order."""
        return tuple(i for i, s in enumerate(self.kv_source) if s == i)

    @property
    def n_kv_layers(self) -> int:
        """Number of KV-owning layers (the ``m`` of MLKV-m)."""
        return len(self.owners)

    @property
    def total_kv_heads(self) -> int:
        """KV heads summed over the whole model: what a KV cache stores per token."""
        return self.n_kv_layers * self.n_kv_heads

    @property
    def kind(self) -> str:
        """Name of the simplest constructor that rebuilds this plan.

        Layers that all own their K/V are ``"mha"``, ``"mqa"`` or ``"gqa"`` (by head count);
        evenly spread owners are ``"mlkv"`` (this includes CLA-k when ``k`` divides the depth,
        e.g. the reference plan is both MLKV-3 and CLA-3); other uniform strides are
        ``"cla"``; anything else is ``"custom"``.
        """
        L, m = self.n_layers, self.n_kv_layers
        if m == L:
            if self.n_kv_heads == self.n_heads:
                return "mha"
            return "mqa" if self.n_kv_heads == 1 else "gqa"
        if self == KVSharingPlan.mlkv(L, self.n_heads, self.n_kv_heads, m):
            return "mlkv"
        k = self.owners[1] if m > 1 else L
        if self == KVSharingPlan.cla(L, self.n_heads, self.n_kv_heads, k):
            return "cla"
        return "custom"

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """A plain dict (YAML/JSON friendly) that :meth:`from_dict` turns back into this plan.

        Example:
            >>> KVSharingPlan.reference().to_dict()
            {'kind': 'mlkv', 'n_layers': 9, 'n_heads': 8, 'n_kv_heads': 2, 'n_kv_layers': 3}
        """
        kind = self.kind
        out: dict[str, Any] = {"kind": kind, "n_layers": self.n_layers, "n_heads": self.n_heads}
        if kind in ("gqa", "cla", "mlkv"):
            out["n_kv_heads"] = self.n_kv_heads
        if kind == "cla":
            out["share_every"] = self.owners[1] if self.n_kv_layers > 1 else self.n_layers
        elif kind == "mlkv":
            out["n_kv_layers"] = self.n_kv_layers
        elif kind == "custom":
            out = {
                "kind": "custom",
                "kv_source": list(self.kv_source),
                "n_heads": self.n_heads,
                "n_kv_heads": self.n_kv_heads,
            }
        return out

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> KVSharingPlan:
        """Build a plan from a config dict such as ``{"kind": "mlkv", "n_layers": 9, ...}``.

        Kinds and their keys: ``mha`` (n_layers, n_heads), ``mqa`` (n_layers, n_heads),
        ``gqa`` (+ n_kv_heads), ``cla`` (+ n_kv_heads, share_every), ``mlkv`` (+ n_kv_heads,
        n_kv_layers), ``reference`` (no keys), ``custom`` (kv_source, n_heads, n_kv_heads).

        Raises:
            ValueError: unknown kind, missing or unexpected keys, or an invalid plan.
        """
        if not isinstance(spec, dict) or "kind" not in spec:
            raise ValueError(
                f"KVSharingPlan.from_dict: expected a dict with a 'kind' key "
                f"(one of {', '.join(PLAN_KINDS)}), got {spec!r}."
            )
        kind = str(spec["kind"]).lower()
        keys = {
            "mha": ("n_layers", "n_heads"),
            "mqa": ("n_layers", "n_heads"),
            "gqa": ("n_layers", "n_heads", "n_kv_heads"),
            "cla": ("n_layers", "n_heads", "n_kv_heads", "share_every"),
            "mlkv": ("n_layers", "n_heads", "n_kv_heads", "n_kv_layers"),
            "reference": (),
            "custom": ("kv_source", "n_heads", "n_kv_heads"),
        }
        if kind not in keys:
            raise ValueError(
                f"KVSharingPlan.from_dict: unknown kind {spec['kind']!r}; "
                f"use one of {', '.join(PLAN_KINDS)}."
            )
        args = {k: v for k, v in spec.items() if k != "kind"}
        missing = [k for k in keys[kind] if k not in args]
        extra = [k for k in args if k not in keys[kind]]
        if missing or extra:
            raise ValueError(
                f"KVSharingPlan.from_dict: kind {kind!r} takes keys {list(keys[kind])}; "
                f"missing {missing}, unexpected {extra}."
            )
        if kind == "custom":
            return cls(tuple(args["kv_source"]), int(args["n_heads"]), int(args["n_kv_heads"]))
        return getattr(cls, kind)(**{k: int(v) for k, v in args.items()})

    def __str__(self) -> str:
        kind = self.kind
        if kind == "mlkv":
            label = f"MLKV-{self.n_kv_layers}"
        elif kind == "cla":
            label = f"CLA-{self.to_dict()['share_every']}"
        else:
            label = kind.upper()
        heads = f"{self.n_kv_heads} KV head" + ("s" if self.n_kv_heads > 1 else "")
        return (
            f"{label}: {self.n_layers} layers x {self.n_heads} query heads, {heads} in owner "
            f"layers {list(self.owners)} ({self.total_kv_heads} KV heads in total); "
            f"kv_source={list(self.kv_source)}"
        )


def _positive(name: str, value: int) -> int:
    if int(value) != value or value < 1:
        raise ValueError(f"KVSharingPlan: {name} must be an integer >= 1, got {value!r}.")
    return int(value)
