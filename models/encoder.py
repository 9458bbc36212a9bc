"""The MLKV encoder: a pre-norm transformer over candle features with KV sharing.

Every bar is a token. Layers use causal sliding-window attention of width ``W`` with
rotary positions; K/V are computed (and rotated) only at the plan's owner layers and
reused by the layers that share them. Because other bars reach a token only through
K/V, a bar's output depends on exactly the last ``n_kv_layers * (W - 1) + 1`` bars
(:attr:`MLKVEncoder.receptive_field`), whatever the depth.

The same weights run three ways, equal up to float rounding:

* :meth:`MLKVEncoder.forward` -- windows ``[B, T, F] -> [B, T, D]`` (training);
* :meth:`MLKVEncoder.encode_series` -- every bar of a long series in one pass,
  ``[N, F] -> [N, D]`` or ``[B, N, F] -> [B, N, D]``, differentiable;
* :meth:`MLKVEncoder.step` -- one bar at a time with a :class:`~models.cache.KVCache`
  (inference).

For ``T >= receptive_field`` the last row of ``forward(x[t-T+1 : t+1])`` equals
``encode_series(x)[t]`` and the ``t``-th ``step`` output.

``EncoderConfig(memory_layers=(i, ...), memory=PKMConfig(...))`` replaces the MLP of the
chosen layers with a :class:`~models.memory.ProductKeyMemory`. The memory is per token, so
the receptive field and the equality of the three modes are unchanged.

The CUDA path (``autocast_bf16``, ``compile``):

* under bf16 autocast the projections and MLPs run in bf16, rotary positions and attention
  in fp32 (:mod:`models.attention`), so the three modes still agree to bf16 rounding;
* compiled, a series pass pads its block count to one of a few sizes
  (:func:`series_blocks`) and keeps the batch axis dynamic, so a training run compiles a
  bounded number of graphs instead of one per length;
* ``step`` takes its cache as an argument; :class:`~models.streaming.StreamingEncoder`
  owns one instead, which is what CUDA graphs need.

Compiled for the CPU (the PPO update's ``compile_update``), block attention is plain ops
(:func:`~models.attention.masked_attention`) and the MLP's GELU its sigmoid form
(:class:`TanhGELU`), both of which inductor fuses better than it runs SDPA's CPU kernel or
``tanh``; the rotary tables and the band mask are buffers made once at construction (the
float64 ``cos``/``sin`` would otherwise be recomputed inside every fused kernel that reads
them). Eager and CUDA runs are unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .attention import (
    SeriesState,
    SharedKVAttention,
    additive_band,
    rotation_tables,
    token_region,
)
from .cache import KVCache
from .memory import MemoryUsage, PKMConfig, ProductKeyMemory
from .plan import KVSharingPlan
from .rotary import rotary_tables

__all__ = ["EncoderConfig", "MLKVEncoder", "series_blocks"]

#: Accepted values of :attr:`EncoderConfig.compile` besides ``None``.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def series_blocks(nb: int, chunk_blocks: int) -> int:
    """Blocks a *compiled* series pass pads ``nb`` blocks of ``W`` bars to.

    ``torch.compile`` specialises on the block count (the attention loop runs over it), so
    every new series length would be a new graph, and after dynamo's recompile limit (8)
    the encoder would silently run eager. Rounding up to a few sizes bounds the graphs:
    a power of two up to 8 blocks (1, 2, 4, 8), then a multiple of 8 blocks, then (past
    one attention chunk) a multiple of ``chunk_blocks``; never past ``chunk_blocks`` while
    ``nb`` fits in one chunk. The padding is at most 8 blocks (one chunk for long series),
    and causal attention keeps it out of every real bar.

    Example:
        >>> [series_blocks(nb, 128) for nb in (1, 3, 5, 9, 19, 120, 129)]
        [1, 4, 8, 16, 24, 120, 256]
    """
    if nb > chunk_blocks:
        return -(-nb // chunk_blocks) * chunk_blocks
    padded = 1 << (nb - 1).bit_length() if nb <= 8 else -(-nb // 8) * 8
    return min(padded, chunk_blocks)


@dataclass(frozen=True)
class EncoderConfig:
    """Hyper-parameters of :class:`MLKVEncoder`.

    Example:
        >>> cfg = EncoderConfig(n_features=10, d_model=64, plan=KVSharingPlan.reference(),
        ...                     window=16)
        >>> cfg.receptive_field
        46
    """

    n_features: int  # per-bar input features F
    d_model: int  # token width D; divisible by plan.n_heads
    plan: KVSharingPlan  # layers, heads and KV sharing (a dict goes through from_dict)
    window: int  # attention window W in bars, the query's own bar included (>= 1)
    mlp_ratio: int = 4  # MLP hidden width = mlp_ratio * d_model
    dropout: float = 0.0  # dropout on attention weights and residual branches, in [0, 1)
    rope_base: float = 10_000.0  # rotary base (> 1); frequencies base**(-2j/head_dim)
    bias: bool = True  # biases in the linear layers
    norm_eps: float = 1e-5  # LayerNorm epsilon (> 0)
    chunk: int = 2048  # default queries per attention call of encode_series (>= 1)
    autocast_bf16: bool = False  # run under torch.autocast(bfloat16): the CUDA fast path
    compile: str | None = None  # torch.compile mode for all three modes; None = eager
    memory_layers: tuple[int, ...] = ()  # layers whose MLP is a product-key memory; () = none
    memory: PKMConfig | None = None  # the memory layers' config (a dict goes through from_dict)

    def __post_init__(self) -> None:
        if isinstance(self.plan, dict):
            object.__setattr__(self, "plan", KVSharingPlan.from_dict(self.plan))
        if not isinstance(self.plan, KVSharingPlan):
            raise ValueError(
                f"EncoderConfig.plan must be a KVSharingPlan or a plan dict, got {self.plan!r}."
            )
        for name in ("n_features", "d_model", "window", "mlp_ratio", "chunk"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"EncoderConfig.{name} must be an integer >= 1, got {value!r}.")
        if self.d_model % self.plan.n_heads:
            raise ValueError(
                f"EncoderConfig.d_model = {self.d_model} must be divisible by plan.n_heads = "
                f"{self.plan.n_heads}."
            )
        if self.head_dim % 2:
            raise ValueError(
                f"EncoderConfig.d_model / plan.n_heads = {self.head_dim} (head_dim) must be "
                f"even for rotary positions; change d_model or n_heads."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"EncoderConfig.dropout must be in [0, 1), got {self.dropout}.")
        if not self.rope_base > 1.0:
            raise ValueError(f"EncoderConfig.rope_base must be > 1, got {self.rope_base}.")
        if not self.norm_eps > 0.0:
            raise ValueError(f"EncoderConfig.norm_eps must be > 0, got {self.norm_eps}.")
        if self.compile is not None and self.compile not in COMPILE_MODES:
            raise ValueError(
                f"EncoderConfig.compile must be None or one of {COMPILE_MODES}, "
                f"got {self.compile!r}."
            )
        self._check_memory()

    def _check_memory(self) -> None:
        """Normalise ``memory_layers`` to a sorted tuple and ``memory`` to a :class:`PKMConfig`."""
        layers = self.memory_layers
        if isinstance(layers, int | str) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in layers
        ):
            raise ValueError(
                f"EncoderConfig.memory_layers must be a sequence of layer indices, e.g. (4,), "
                f"got {layers!r}."
            )
        L = self.plan.n_layers
        bad = [i for i in layers if not 0 <= i < L]
        if bad:
            raise ValueError(
                f"EncoderConfig.memory_layers = {tuple(layers)}: layer index {bad[0]} is out of "
                f"range; the plan has {L} layers (0 .. {L - 1})."
            )
        if len(set(layers)) != len(layers):
            raise ValueError(
                f"EncoderConfig.memory_layers = {tuple(layers)} repeats a layer; list each once."
            )
        object.__setattr__(self, "memory_layers", tuple(sorted(layers)))
        memory = self.memory
        if isinstance(memory, dict):
            try:
                memory = PKMConfig.from_dict(memory)
            except ValueError as err:
                raise ValueError(f"EncoderConfig.memory: {err}") from err
        if memory is None and layers:
            memory = PKMConfig()
        if memory is not None and not isinstance(memory, PKMConfig):
            raise ValueError(
                f"EncoderConfig.memory must be a PKMConfig, a dict of its fields or None, "
                f"got {memory!r}."
            )
        object.__setattr__(self, "memory", memory)

    @property
    def n_layers(self) -> int:
        """Number of transformer layers (from the plan)."""
        return self.plan.n_layers

    @property
    def head_dim(self) -> int:
        """Size of each attention head, ``d_model / n_heads``."""
        return self.d_model // self.plan.n_heads

    @property
    def receptive_field(self) -> int:
        """Bars a token's output depends on: ``n_kv_layers * (window - 1) + 1``."""
        return self.plan.n_kv_layers * (self.window - 1) + 1

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML/JSON friendly); :meth:`from_dict` inverts it.

        Without memory layers (and no ``memory`` config) the dict has no memory keys, as
        before memory layers existed.
        """
        out = dataclasses.asdict(self)
        out["plan"] = self.plan.to_dict()
        if not self.memory_layers and self.memory is None:
            del out["memory_layers"], out["memory"]
        else:
            out["memory_layers"] = list(self.memory_layers)
            out["memory"] = None if self.memory is None else self.memory.to_dict()
        return out

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> EncoderConfig:
        """Build from a dict such as the one :meth:`to_dict` writes (``plan`` and ``memory``
        may be dicts, ``memory_layers`` a list)."""
        return cls(**spec)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


class TanhGELU(nn.GELU):
    """GELU, tanh approximation: ``0.5 x (1 + tanh(c (x + 0.044715 x^3)))``, ``c = sqrt(2/pi)``.

    Compiled for the CPU it is computed as ``x * sigmoid(2c (x + 0.044715 x^3))``, the same
    function (``0.5 (1 + tanh z) = sigmoid(2z)``, equal to 5e-7 in float32), which inductor
    vectorises about twice as fast as ``tanh`` (forward and backward).
    """

    def __init__(self) -> None:
        super().__init__(approximate="tanh")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and torch.compiler.is_compiling():
            return x * torch.sigmoid(2 * math.sqrt(2 / math.pi) * (x + 0.044715 * x * x * x))
        return super().forward(x)


class Block(nn.Module):
    """Pre-norm transformer block: ``h + attn(norm(h))`` then ``h + mlp(norm(h))``.

    In a memory layer (``layer in config.memory_layers``) the MLP is replaced by a
    :class:`ProductKeyMemory`: ``mlp`` is ``None`` and ``memory`` holds it (else ``None``).
    """

    def __init__(self, config: EncoderConfig, layer: int) -> None:
        super().__init__()
        plan, D = config.plan, config.d_model
        self.norm1 = nn.LayerNorm(D, eps=config.norm_eps, bias=config.bias)
        self.attn = SharedKVAttention(
            D,
            plan.n_heads,
            plan.n_kv_heads,
            layer,
            plan.kv_source[layer],
            bias=config.bias,
            dropout=config.dropout,
        )
        self.norm2 = nn.LayerNorm(D, eps=config.norm_eps, bias=config.bias)
        self.mlp: nn.Sequential | None = None
        self.memory: ProductKeyMemory | None = None
        if layer in config.memory_layers:
            self.memory = ProductKeyMemory.from_config(
                D, config.memory, bias=config.bias, norm_eps=config.norm_eps
            )
        else:
            self.mlp = nn.Sequential(
                nn.Linear(D, config.mlp_ratio * D, bias=config.bias),
                TanhGELU(),
                nn.Linear(config.mlp_ratio * D, D, bias=config.bias),
            )
        self.drop = nn.Dropout(config.dropout)

    def series(
        self,
        h: torch.Tensor,
        h_start: int,
        q_start: int,
        q_len: int,
        state: SeriesState,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Tokens ``h_start ..`` in, tokens ``q_start .. q_start + q_len - 1`` out.

        Args:
            h: ``[B, n, D]`` residual stream of positions ``h_start .. h_start + n - 1``.
            h_start: position of ``h[:, 0]``.
            q_start: first output position (``>= h_start``); an owner layer still computes
                K/V for all of ``h``.
            q_len: output tokens, a multiple of ``W``.
            state: the pass's :class:`~models.attention.SeriesState`.
            valid: ``[B, q_len]`` bool, the output tokens that are not padding (``None``:
                all); a memory counts the reads of those only (the padded tokens never
                reach a real token).

        Returns:
            ``[B, q_len, D]``.
        """
        a = self.attn.series(self.norm1(h), h_start, q_start, q_len, state)  # [B, q_len, D]
        drop = self.drop if self.drop.p > 0 else _identity  # p = 0: skip the module call
        h = token_region(h, h_start, q_start, q_len) + drop(a)
        if self.memory is None:
            return h + drop(self.mlp(self.norm2(h)))
        return h + drop(self.memory(self.norm2(h), counted=valid))

    def step(self, h: torch.Tensor, *attn_args: Any) -> torch.Tensor:
        """``[B, D] -> [B, D]``; ``attn_args`` as in :meth:`SharedKVAttention.step`."""
        h = h + self.attn.step(self.norm1(h), *attn_args)
        ffn = self.mlp if self.memory is None else self.memory
        return h + ffn(self.norm2(h))


class MLKVEncoder(nn.Module):
    """Candle encoder with multi-layer KV sharing and causal sliding-window attention.

    Args:
        config: the hyper-parameters; ``config.plan`` fixes layers, heads and KV sharing.

    Example:
        >>> enc = MLKVEncoder(EncoderConfig(8, 32, KVSharingPlan.mlkv(4, 4, 1, 2), window=8))
        >>> enc(torch.randn(2, enc.receptive_field, 8)).shape
        torch.Size([2, 15, 32])
    """

    #: ``torch.compile`` backend when ``config.compile`` is set. Tests set ``"eager"`` (or
    #: ``"aot_eager"``) to count dynamo graphs without paying for inductor's code generation.
    compile_backend: str = "inductor"

    #: Positions whose rotation tables are computed once, at construction (longer series
    #: compute theirs per pass). Recomputing them inside a compiled update costs more than
    #: the whole attention: inductor fuses the float64 ``cos``/``sin`` into every consumer.
    rope_positions: int = 4096

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        plan = config.plan
        self.inp = nn.Linear(config.n_features, config.d_model, bias=config.bias)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(plan.n_layers))
        self.norm = nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=config.bias)
        cos2, sin2 = rotation_tables(
            *rotary_tables(
                torch.arange(self.rope_positions), config.head_dim, config.rope_base, torch.float64
            )
        )  # [P, Dh] each, float64: rounded to the pass's dtype when used
        self.register_buffer("rope_cos2", cos2, persistent=False)
        self.register_buffer("rope_sin2", sin2, persistent=False)
        G = plan.n_heads // plan.n_kv_heads
        self.register_buffer("band", additive_band(config.window, G), persistent=False)
        # last layer reading each owner's K/V: the series path frees them after it
        self._last_use = {
            o: max(i for i, s in enumerate(plan.kv_source) if s == o) for o in plan.owners
        }
        self.apply(self._init_weights)
        resid_std = 0.02 / math.sqrt(2 * plan.n_layers)
        for block in self.blocks:  # GPT-2 scaled init of the residual projections
            nn.init.normal_(block.attn.out_proj.weight, std=resid_std)
            if block.memory is None:
                nn.init.normal_(block.mlp[2].weight, std=resid_std)
            elif block.memory.out_proj is not None:
                nn.init.normal_(block.memory.out_proj.weight, std=resid_std)
            else:  # the values are the residual output: small, like a residual projection
                nn.init.normal_(block.memory.values.weight, std=resid_std)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ properties
    @property
    def receptive_field(self) -> int:
        """Bars a token's output depends on: ``n_kv_layers * (window - 1) + 1``.

        Windows of at least this many bars give the same last-token output as encoding
        the whole series; shorter windows do not.
        """
        return self.config.receptive_field

    @property
    def window(self) -> int:
        """Attention window ``W``."""
        return self.config.window

    @property
    def memories(self) -> dict[int, ProductKeyMemory]:
        """The product-key memories by layer index (empty without memory layers)."""
        return {i: b.memory for i, b in enumerate(self.blocks) if b.memory is not None}

    def memory_usage(self, reset: bool = False) -> dict[int, MemoryUsage]:
        """Value-table usage of every memory layer since its last reset, by layer index.

        Every ``forward``/``encode_series``/``step`` counts the slots its tokens read
        (padding excluded). Log it once per epoch or rollout and reset:
        :class:`agents.memory_callback.MemoryUsageCallback` does so for SB3.

        Args:
            reset: zero the counters after reading them.
        """
        return {i: m.memory_usage(reset=reset) for i, m in self.memories.items()}

    def reset_memory_usage(self) -> None:
        """Zero the read counters of every memory layer."""
        for m in self.memories.values():
            m.reset_usage()

    # ------------------------------------------------------------------ public modes
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode windows of bars, each window on its own (positions restart at 0).

        Args:
            x: ``[B, T, F]`` candle features, oldest bar first.

        Returns:
            ``[B, T, D]``; row ``t`` depends on bars ``max(0, t - receptive_field + 1) .. t``
            of its window only.
        """
        if x.dim() != 3:
            raise ValueError(
                f"MLKVEncoder.forward: expected windows [B, T, F={self.config.n_features}], "
                f"got shape {tuple(x.shape)}; use encode_series for one [N, F] series."
            )
        return self._series(self._check_features(x, "forward"), self.config.chunk)

    def encode_series(
        self, x: torch.Tensor, chunk: int | None = None, outputs_from: int = 0
    ) -> torch.Tensor:
        """Encode every bar of one or more series in a single pass.

        Differentiable (no ``no_grad`` inside): wrap it in ``torch.inference_mode()`` for
        rollouts and evaluation, leave it under autograd for training on segments. Memory
        is ``O(N * D)`` for activations plus ``O(chunk * 2W)`` attention scores per head.

        With ``outputs_from = c > 0`` only rows ``c ..`` are returned and the first ``c``
        bars are context, and each layer computes only the tokens that those rows depend
        on: a layer whose K/V reaches the rows through ``r`` later KV owners needs its
        output from bar ``c - r * (W - 1)`` on, so later layers run on fewer tokens. With
        the reference plan and ``c = receptive_field - 1 = 45`` the three KV groups run on
        ``L + 30``, ``L + 15`` and ``L`` tokens instead of ``L + 45``. The rows are the
        same as ``encode_series(x)[..., c:, :]`` up to float rounding. (Compiled encoders
        and encoders with memory layers encode all bars and drop the first ``c`` rows.)

        Args:
            x: ``[N, F]`` one series or ``[B, N, F]`` a batch of series, oldest bar first.
            chunk: queries per attention call (rounded down to a multiple of the window,
                at least one window); default ``config.chunk``.
            outputs_from: first bar whose encoding is returned (``0 <= outputs_from < N``).

        Returns:
            ``[N - outputs_from, D]`` or ``[B, N - outputs_from, D]``: row ``t -
            outputs_from`` equals ``forward`` of any window of ``>= receptive_field`` bars
            ending at bar ``t``.
        """
        if x.dim() not in (2, 3):
            raise ValueError(
                f"MLKVEncoder.encode_series: expected [N, F={self.config.n_features}] or "
                f"[B, N, F], got shape {tuple(x.shape)}."
            )
        single = x.dim() == 2
        x = self._check_features(x[None] if single else x, "encode_series")  # [B, N, F]
        chunk = self.config.chunk if chunk is None else chunk
        if chunk < 1:
            raise ValueError(f"MLKVEncoder.encode_series: chunk must be >= 1, got {chunk}.")
        if not 0 <= outputs_from < max(x.shape[1], 1):
            raise ValueError(
                f"MLKVEncoder.encode_series: outputs_from must be in [0, N = {x.shape[1]}), "
                f"got {outputs_from}."
            )
        out = self._series(x, chunk, outputs_from)  # [B, N - outputs_from, D]
        return out[0] if single else out

    def series_regions(self, outputs_from: int) -> tuple[list[int], int]:
        """First token each layer outputs, and the first input token, for a series pass.

        Walks the layers from the last one down: layer ``i``'s output is needed from the
        first token its successor needs; an owner's K/V from ``W - 1`` tokens before the
        first query of any layer that reads it, so the owner's input starts there.

        Args:
            outputs_from: first token whose final encoding is wanted.

        Returns:
            ``(starts, first)``: ``starts[i]``, the first token layer ``i`` outputs
            (``starts[-1] == outputs_from``), and ``first``, the first input token needed.
        """
        W, sources = self.config.window, self.config.plan.kv_source
        starts = [0] * len(sources)
        kv_from: dict[int, int] = {}  # owner -> first token whose K/V is read
        need = outputs_from
        for i in reversed(range(len(sources))):
            starts[i] = need
            o = sources[i]
            kv_from[o] = min(kv_from.get(o, need), max(0, need - (W - 1)))
            if o == i:  # every reader of layer i's K/V comes at or after layer i
                need = min(need, kv_from[i])
        return starts, need

    def series_tokens(self, n: int, outputs_from: int = 0) -> int:
        """Token-layers a series pass of ``n`` bars computes (queries and MLPs, padding
        included): the cost model that :meth:`MLKVExtractor.encode_samples` uses."""
        W = self.config.window
        trim = outputs_from if self._can_trim() else 0
        starts, _ = self.series_regions(trim)
        return sum(-(-(n - s) // W) * W for s in starts)

    def _can_trim(self) -> bool:
        """Whether a series pass may skip the tokens no wanted output depends on."""
        return self.config.compile is None and not self.config.memory_layers

    def step(self, x_t: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Encode the next bar of ``B`` streams, reading and updating ``cache``.

        Inference only: call it under ``torch.inference_mode()`` (or ``no_grad``). Call
        ``cache.reset(mask)`` for rows whose episode restarts before their first bar.

        Args:
            x_t: ``[B, F]`` features of each stream's newest bar.
            cache: from :meth:`new_cache` with the same batch size.

        Returns:
            ``[B, D]``: equals ``encode_series`` of each stream (since its last reset) at
            this bar.
        """
        if x_t.dim() != 2 or x_t.shape[0] != cache.batch:
            raise ValueError(
                f"MLKVEncoder.step: expected x_t [B={cache.batch}, F={self.config.n_features}] "
                f"matching the cache's batch, got shape {tuple(x_t.shape)}."
            )
        return self._dispatch("step")(self._check_features(x_t, "step"), cache)

    def new_cache(
        self,
        batch: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        """An empty streaming cache for ``batch`` streams.

        Args:
            batch: number of streams (environments).
            device: defaults to the encoder's device.
            dtype: defaults to the encoder's dtype, also under ``autocast_bf16``: the cache
                holds keys rotated in float32, and rounding them to bf16 would make ``step``
                differ from the other modes (see :mod:`models.attention`).
        """
        p = self.inp.weight
        if dtype is None:
            dtype = p.dtype
        return KVCache(
            self.config.plan,
            batch,
            self.config.window,
            self.config.head_dim,
            device=p.device if device is None else device,
            dtype=dtype,
        )

    # ------------------------------------------------------------------ implementation
    def _check_features(self, x: torch.Tensor, where: str) -> torch.Tensor:
        if x.shape[-1] != self.config.n_features:
            raise ValueError(
                f"MLKVEncoder.{where}: last axis must have n_features = "
                f"{self.config.n_features} features, got shape {tuple(x.shape)}."
            )
        return x

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """bf16 autocast if configured. Its weight-cast cache is off: each weight is used once
        per call, and a cache that outlives a CUDA graph capture is not allowed."""
        if not self.config.autocast_bf16:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)

    def _series(self, x: torch.Tensor, chunk: int, outputs_from: int = 0) -> torch.Tensor:
        """``[B, N, F] -> [B, N - outputs_from, D]`` with block attention (``forward`` and
        ``encode_series``).

        Eager, :meth:`_blocks` pads each layer's tokens to whole blocks of ``W`` (the padding
        is last, so causal attention keeps it out of every real bar) and skips the tokens
        before ``outputs_from`` that no output depends on (:meth:`series_regions`).
        Compiled, the series is padded here, its block count rounded up to
        :func:`series_blocks`, and the batch axis is dynamic (at least 2 rows; a power of two
        under ``"reduce-overhead"``, whose CUDA graphs are recorded per batch size), so that
        a training run compiles a few graphs instead of one per length (see
        :func:`series_blocks`); all bars are encoded. Padded rows are dropped.
        """
        B, N, _ = x.shape
        W = self.config.window
        chunk_blocks = max(1, chunk // W)
        nb = -(-N // W)  # blocks of W queries, the last one padded
        compiled = self.config.compile is not None
        trim = outputs_from if self._can_trim() else 0
        rows = B
        if compiled:
            nb = series_blocks(nb, chunk_blocks)
            if nb * W != N:
                x = nn.functional.pad(x, (0, 0, 0, nb * W - N))  # [B, nb*W, F]; pad is last
            x = x.contiguous()  # dynamo guards on strides: one layout, one graph
            # a dynamic batch axis must be >= 2 (dynamo specialises 0 and 1); CUDA graphs
            # ("reduce-overhead") record one graph per batch size: round it up to a power of 2
            if self.config.compile == "reduce-overhead":
                rows = 1 << (B - 1).bit_length()
            rows = max(rows, 2)
            if rows != B:
                x = nn.functional.pad(x, (0, 0, 0, 0, 0, rows - B))  # [rows, nb*W, F]
            torch._dynamo.mark_dynamic(x, 0)
        valid = None
        if self.config.memory_layers:  # memories count the reads of real bars only
            bars = torch.arange(nb * W, device=x.device) < N  # [nb*W]
            valid = bars & (torch.arange(rows, device=x.device) < B)[:, None]  # [rows, nb*W]
            if compiled:
                torch._dynamo.mark_dynamic(valid, 0)
        name = "series_grad" if torch.is_grad_enabled() else "series_infer"
        out = self._dispatch(name)(x, valid, chunk_blocks, trim)  # [rows, >= N - trim, D]
        out = out[:B, outputs_from - trim : N - trim]  # [B, N - outputs_from, D]
        if self.config.compile == "reduce-overhead":  # CUDA graph output: the next replay
            out = out.clone()  # overwrites it, so it must not escape as a view
        return out

    def _series_grad(
        self, x: torch.Tensor, valid: torch.Tensor | None, chunk_blocks: int, outputs_from: int
    ) -> torch.Tensor:
        """:meth:`_blocks` under autograd (its own code object: its own compile cache)."""
        return self._blocks(x, valid, chunk_blocks, outputs_from)

    def _series_infer(
        self, x: torch.Tensor, valid: torch.Tensor | None, chunk_blocks: int, outputs_from: int
    ) -> torch.Tensor:
        """:meth:`_blocks` without autograd (rollouts, backtests)."""
        return self._blocks(x, valid, chunk_blocks, outputs_from)

    def _blocks(
        self,
        x: torch.Tensor,
        valid: torch.Tensor | None,
        chunk_blocks: int,
        outputs_from: int = 0,
    ) -> torch.Tensor:
        """``[B, n, F] -> [B, m, D]``: the transformer over whole blocks of bars.

        Layer ``i`` outputs tokens ``starts[i] ..`` (:meth:`series_regions`), padded to whole
        blocks of ``W``; the result holds tokens ``outputs_from .. outputs_from + m - 1``,
        ``m = ceil((n - outputs_from) / W) * W`` (rows past ``n`` are padding).

        Args:
            x: features of ``n`` bars.
            valid: ``[B, ceil(n / W) * W]`` bool, the bars before the padding in the rows
                before the padding (``None``: all); only memory layers read it (they are
                never trimmed: ``outputs_from`` is 0 with memory layers).
            chunk_blocks: blocks per attention call.
            outputs_from: first token whose output is wanted.
        """
        cfg = self.config
        W = cfg.window
        n = x.shape[1]
        starts, first = self.series_regions(outputs_from)

        def whole(start: int) -> int:  # tokens from ``start`` to n, in whole blocks
            return -(-(n - start) // W) * W

        with self._autocast(x.device):
            h = self.inp(token_region(x, 0, first, whole(first)))  # [B, whole(first), D]
            rope = torch.promote_types(h.dtype, torch.float32)  # fp32 even under bf16 autocast
            cos2, sin2 = self._rotation(n + W, rope, x.device)  # [n+W, Dh] each
            state = SeriesState(cos2, sin2, self.band.to(rope), W, chunk_blocks)
            h_start = first
            for i, block in enumerate(self.blocks):
                h = block.series(h, h_start, starts[i], whole(starts[i]), state, valid=valid)
                h_start = starts[i]  # h: [B, whole(starts[i]), D]
                src = cfg.plan.kv_source[i]
                if self._last_use[src] == i:
                    state.release(src)
            h = self.norm(h)  # [B, whole(outputs_from), D]
        return h.to(x.dtype)

    def _rotation(
        self, positions: int, dtype: torch.dtype, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotation tables (:func:`~models.attention.rotation_tables`) of positions ``0 ..
        positions - 1`` in ``dtype``: the float64 buffers rounded once, the same floats as
        computing them (buffers that a ``.float()`` or ``.half()`` of the module rounded,
        or too short ones, are not used)."""
        cos2, sin2 = self.rope_cos2, self.rope_sin2  # [P, Dh] each
        if positions <= cos2.shape[0] and cos2.dtype == torch.float64 and cos2.device == device:
            return cos2[:positions].to(dtype), sin2[:positions].to(dtype)
        pos = torch.arange(positions, device=device)
        return rotation_tables(
            *rotary_tables(pos, self.config.head_dim, self.config.rope_base, dtype)
        )

    def _step(self, x_t: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """``[B, F] -> [B, D]`` for one bar per stream."""
        cfg = self.config
        W = cfg.window
        with self._autocast(x_t.device):
            h = self.inp(x_t)  # [B, D]
            pos = cache.pos  # [B]
            rope = torch.promote_types(h.dtype, torch.float32)  # fp32 even under bf16 autocast
            cos, sin = rotary_tables(pos, cfg.head_dim, cfg.rope_base, rope)  # [B, Dh/2]
            n_valid = (pos + 1).clamp(max=W)  # [B] bars of this episode in the window
            valid = torch.arange(W, device=pos.device) < n_valid[:, None]  # [B, W]
            for block in self.blocks:
                h = block.step(h, cos, sin, cache, valid)  # [B, D]
            cache.advance()
            h = self.norm(h)  # [B, D]
        return h.to(x_t.dtype)

    def _dispatch(self, name: str) -> Callable[..., torch.Tensor]:
        """The eager implementation, or its ``torch.compile``-d version (built on first use).

        Each compiled function is its own code object with its own dynamo cache (and
        recompile limit): ``series_grad`` (PPO updates), ``series_infer`` (rollouts,
        backtests) and ``step``. Shapes are static except the batch axis of the series
        functions, which :meth:`_series` marks dynamic. ``step`` mutates the cache it is
        given, which CUDA graphs cannot replay, so ``"reduce-overhead"`` compiles it in the
        default mode; :class:`~models.streaming.StreamingEncoder` is the graphed step.
        """
        fn = getattr(self, f"_{name}")
        if self.config.compile is None:
            return fn
        compiled = self.__dict__.setdefault("_compiled", {})
        if name not in compiled:
            backend = self.compile_backend
            mode = self.config.compile if backend == "inductor" else None
            if name == "step" and mode == "reduce-overhead":
                mode = "default"  # a cache passed in cannot be graphed: StreamingEncoder can
            compiled[name] = torch.compile(fn, mode=mode, backend=backend, dynamic=False)
        return compiled[name]

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__().copy()
        state.pop("_compiled", None)  # compiled callables do not pickle or deep-copy
        return state

    def extra_repr(self) -> str:
        out = f"plan={self.config.plan}, window={self.window}, rf={self.receptive_field}"
        if self.config.memory_layers:
            out += f", memory_layers={self.config.memory_layers}"
        return out
