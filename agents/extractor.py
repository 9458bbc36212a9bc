"""SB3 features extractor: the MLKV encoder on the candles plus an MLP on the account state.

The extractor is the only place that turns candle features into a token encoding, and it
does so three equivalent ways (equal up to float rounding, see ``models.encoder``):

* :meth:`MLKVExtractor.forward` -- SB3 observations: the last token of each window;
* :meth:`MLKVExtractor.encode_spans` -- runs of consecutive bars of one feature array, each
  encoded with exactly ``receptive_field - 1`` bars of context in one batched
  ``encode_series`` pass (fast rollouts and fast PPO updates);
* :meth:`MLKVExtractor.encode_bars` -- a whole series at once (the backtester);

PPO minibatches go through :meth:`MLKVExtractor.encode_samples`, the cheaper of
``encode_spans`` (one row per run, context trimmed per KV group) and
:meth:`MLKVExtractor.encode_packed` (runs end to end in one row); and
:meth:`MLKVExtractor.combine` joins a bar encoding with the account features.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from models import EncoderConfig, KVSharingPlan, MLKVEncoder

__all__ = [
    "ACCOUNT_KEY",
    "CANDLES_KEY",
    "DEFAULT_ENCODER",
    "MLKVExtractor",
    "resolve_encoder_config",
]

#: Observation key of the ``[T, F]`` candle-feature window.
CANDLES_KEY = "candles"
#: Observation key of the ``[A]`` account-state vector.
ACCOUNT_KEY = "account"

#: Encoder used when none is given (``n_features`` comes from the observation space):
#: the reference MLKV plan (9 layers, 8 query heads, 2 KV heads, 3 KV layers), receptive
#: field ``3 * (16 - 1) + 1 = 46`` bars.
DEFAULT_ENCODER: dict[str, Any] = {
    "d_model": 64,
    "window": 16,
    "plan": KVSharingPlan.reference().to_dict(),
}


def resolve_encoder_config(
    encoder: EncoderConfig | dict[str, Any] | None, n_features: int
) -> EncoderConfig:
    """Build the encoder config for observations with ``n_features`` features per bar.

    Args:
        encoder: an :class:`EncoderConfig`, a dict of its fields (``plan`` may itself be a
            dict, as :meth:`KVSharingPlan.from_dict` reads it; ``n_features`` may be left
            out), or ``None`` for :data:`DEFAULT_ENCODER`.
        n_features: ``F`` of the observation space's candle window.

    Returns:
        The config, with ``n_features`` taken from the observation space.

    Raises:
        ValueError: ``n_features`` in the given config disagrees with the observation space,
            or the dict has fields :class:`EncoderConfig` does not know.
    """
    if encoder is None:
        encoder = DEFAULT_ENCODER
    if isinstance(encoder, EncoderConfig):
        spec = encoder.to_dict()
    elif isinstance(encoder, dict):
        spec = dict(encoder)
    else:
        raise ValueError(
            f"policy_kwargs 'encoder' must be an EncoderConfig, a dict of its fields or None, "
            f"got {type(encoder).__name__}."
        )
    given = spec.get("n_features")
    if given is not None and given != n_features:
        raise ValueError(
            f"encoder n_features = {given} disagrees with the observation space, whose "
            f"'{CANDLES_KEY}' window has {n_features} features per bar; leave n_features out "
            f"and it is taken from the observation space."
        )
    spec["n_features"] = n_features
    try:
        return EncoderConfig.from_dict(spec)
    except TypeError as err:  # unknown field names
        raise ValueError(f"policy_kwargs 'encoder': {err}") from err


def encoder_spec(config: EncoderConfig) -> dict[str, Any]:
    """JSON-friendly form of ``config`` without ``n_features`` (what SB3 saves with a model)."""
    spec = config.to_dict()
    spec.pop("n_features")
    return spec


class MLKVExtractor(BaseFeaturesExtractor):
    """MLKV encoder on ``obs["candles"]`` (last token) and an MLP on ``obs["account"]``.

    Features are ``concat(encoder(candles)[:, -1], account_mlp(account))``, so
    ``features_dim = d_model + account_hidden[-1]`` (``d_model + A`` with no account MLP).

    Only the last ``receptive_field`` bars of a window can reach its last token, so the
    window path encodes just those (the result is the same as encoding all ``T``).

    Args:
        observation_space: ``Dict(candles=Box[T, F], account=Box[A])``.
        encoder: :class:`EncoderConfig`, a dict of its fields (``n_features`` optional,
            ``plan`` a :class:`KVSharingPlan` or plan dict) or ``None`` for
            :data:`DEFAULT_ENCODER`.
        account_hidden: hidden width(s) of the account MLP (an int is one layer; ``()``
            passes the raw account vector through).
        activation_fn: activation of the account MLP.

    Raises:
        ValueError: the observation space is not such a Dict, the window ``T`` is shorter
            than the encoder's receptive field (the policy would miss bars that its
            sliding-window attention is built to see), or a memory layer asks for sparse
            gradients (SB3's optimisers take dense ones).
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        encoder: EncoderConfig | dict[str, Any] | None = None,
        account_hidden: int | Sequence[int] = (64,),
        activation_fn: type[nn.Module] = nn.Tanh,
    ) -> None:
        candles, account = _check_observation_space(observation_space)
        T, F = candles.shape
        config = resolve_encoder_config(encoder, F)
        if config.memory is not None and config.memory.sparse_grad:
            raise ValueError(
                "encoder memory.sparse_grad=True gives the memory's value table a sparse "
                "gradient, but SB3's PPO and SAC train with Adam and clip_grad_norm_, which "
                "take dense gradients only. Set memory.sparse_grad=False (in a YAML config: "
                "model.memory.sparse_grad: false); the dense gradient is exact."
            )
        if T < config.receptive_field:
            raise ValueError(
                f"The observation window has T = {T} bars but the encoder's receptive field is "
                f"{config.receptive_field} bars (n_kv_layers * (window - 1) + 1 = "
                f"{config.plan.n_kv_layers} * ({config.window} - 1) + 1). Make the env window "
                f">= {config.receptive_field}, or lower the encoder window or its KV layers."
            )
        widths = [account_hidden] if isinstance(account_hidden, int) else list(account_hidden)
        account_dim = widths[-1] if widths else account.shape[0]
        super().__init__(observation_space, features_dim=config.d_model + account_dim)
        self.config = config
        self.window_bars = T
        self.encoder = MLKVEncoder(config)
        layers: list[nn.Module] = []
        last = account.shape[0]
        for width in widths:
            layers += [nn.Linear(last, width), activation_fn()]
            last = width
        self.account_net = nn.Sequential(*layers)  # identity when account_hidden == ()

    # ------------------------------------------------------------------ properties
    @property
    def receptive_field(self) -> int:
        """Bars the encoding of a bar depends on (``n_kv_layers * (window - 1) + 1``)."""
        return self.encoder.receptive_field

    @property
    def encoding_dim(self) -> int:
        """Width ``D`` of one bar's encoding (the encoder's ``d_model``)."""
        return self.config.d_model

    # ------------------------------------------------------------------ SB3 path
    def forward(self, observations: dict[str, th.Tensor]) -> th.Tensor:
        """``{"candles": [B, T, F], "account": [B, A]} -> [B, features_dim]``."""
        encoded = self.encode_windows(observations[CANDLES_KEY])  # [B, D]
        return self.combine(encoded, observations[ACCOUNT_KEY])

    def encode_windows(self, candles: th.Tensor) -> th.Tensor:
        """Encoding of each window's last bar: ``[B, T, F] -> [B, D]``."""
        rf = self.receptive_field
        return self.encoder(candles[:, -rf:])[:, -1]  # [B, D]

    def combine(self, encoded: th.Tensor, account: th.Tensor) -> th.Tensor:
        """Join bar encodings and account states: ``[B, D], [B, A] -> [B, features_dim]``."""
        return th.cat([encoded, self.account_net(account.float())], dim=1)

    # ------------------------------------------------------------------ bar paths
    def encode_bars(self, features: th.Tensor) -> th.Tensor:
        """Encode a whole series in one pass: ``[N, F] -> [N, D]`` (differentiable).

        Row ``t`` equals the window encoding of bar ``t`` for ``t >= receptive_field - 1``;
        earlier rows see fewer bars than any valid observation would.
        """
        return self.encoder.encode_series(features)

    def encode_spans(
        self,
        features: th.Tensor,
        starts: np.ndarray,
        lengths: np.ndarray,
        context: int | None = None,
    ) -> th.Tensor:
        """Encode runs of consecutive bars, each with its context, in one batched pass.

        Span ``s`` covers bars ``starts[s] .. starts[s] + lengths[s] - 1``. It is encoded
        from bar ``starts[s] - context`` on, so with the default ``context =
        receptive_field - 1`` every output row equals the window encoding of its bar. Spans
        are right-padded to the longest one; causal attention keeps the padding out of the
        valid rows. The context is encoded only as far as the spans' bars depend on it
        (``encode_series(..., outputs_from=context)``: later KV groups see less of it).
        Differentiable: wrap in ``no_grad`` for rollouts.

        Args:
            features: ``[n_bars, F]`` the per-bar features observations are sliced from.
            starts: ``[S]`` int, first bar of each span (``>= context``).
            lengths: ``[S]`` int, bars in each span (``>= 1``).
            context: bars of context before each span; ``None`` = ``receptive_field - 1``.
                Only tests should pass anything else.

        Returns:
            ``[S, max(lengths), D]``; row ``[s, i]`` is bar ``starts[s] + i`` for
            ``i < lengths[s]`` (later rows are padding).
        """
        ctx, starts, lengths = self._spans("encode_spans", starts, lengths, context)
        x = span_bars(features, starts, ctx, int(lengths.max()))  # [S, ctx + L, F]
        return self.encoder.encode_series(x, outputs_from=ctx)  # [S, L, D]

    def _spans(
        self, what: str, starts: np.ndarray, lengths: np.ndarray, context: int | None
    ) -> tuple[int, np.ndarray, np.ndarray]:
        """``(context, starts, lengths)`` as int64, checking every span has its context."""
        ctx = self.receptive_field - 1 if context is None else int(context)
        starts = np.asarray(starts, dtype=np.int64)
        lengths = np.asarray(lengths, dtype=np.int64)
        if starts.size and starts.min() < ctx:
            raise ValueError(
                f"{what}: bar {starts.min()} has fewer than {ctx} bars of context before "
                f"it; observations must end at bar >= receptive_field - 1."
            )
        return ctx, starts, lengths

    def encode_packed(
        self,
        features: th.Tensor,
        starts: np.ndarray,
        lengths: np.ndarray,
        context: int | None = None,
    ) -> th.Tensor:
        """Encode runs of consecutive bars packed end to end in one series: ``[M, D]``.

        The same rows as :meth:`encode_spans` (up to float rounding), without its padding:
        span ``s`` is laid out as its ``context`` bars then its ``lengths[s]`` bars, right
        after span ``s - 1``, and the whole row is encoded in one ``encode_series`` pass.
        A bar's encoding depends only on its last ``receptive_field`` bars, which with the
        default context all belong to its own span, and rotary positions are relative, so
        packing changes nothing but rounding. The cost is ``sum(lengths) + S * context``
        tokens instead of ``S * (max(lengths) + context)``.

        Args:
            features: ``[n_bars, F]``.
            starts: ``[S]`` int, first bar of each span (``>= context``).
            lengths: ``[S]`` int, bars in each span (``>= 1``).
            context: bars of context before each span; ``None`` = ``receptive_field - 1``.
                Only tests should pass anything else.

        Returns:
            ``[M, D]``, ``M = lengths.sum()``: span 0's bars oldest first, then span 1's, ...
        """
        ctx, starts, lengths = self._spans("encode_packed", starts, lengths, context)
        run = lengths + ctx  # [S] tokens per span
        run_begin = np.cumsum(run) - run  # [S] first token of each span in the packed row
        bars = np.repeat(starts - ctx - run_begin, run) + np.arange(int(run.sum()))  # [N]
        keep = np.repeat(run_begin + ctx, lengths) + (
            np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        )  # [M] packed token of each sample
        x = features[th.as_tensor(bars, device=features.device)]  # [N, F]
        encoded = self.encoder.encode_series(x)  # [N, D]
        return encoded[th.as_tensor(keep, device=features.device)]  # [M, D]


    def encode_samples(
        self,
        features: th.Tensor,
        starts: np.ndarray,
        lengths: np.ndarray,
        context: int | None = None,
    ) -> th.Tensor:
        """The rows of :meth:`encode_packed` (``[M, D]``), by the cheaper of two passes.

        :meth:`encode_spans` (one row per span, right-padded, context trimmed per KV group)
        or :meth:`encode_packed` (spans end to end, whole context in every layer), whichever
        computes fewer token-layers (:meth:`MLKVEncoder.series_tokens`): spans of equal
        length (a PPO minibatch of whole segments) take the first, many spans of unequal
        length the second. Equal up to float rounding.

        Args:
            features: ``[n_bars, F]``.
            starts: ``[S]`` int, first bar of each span (``>= context``).
            lengths: ``[S]`` int, bars in each span (``>= 1``).
            context: bars of context before each span; ``None`` = ``receptive_field - 1``.

        Returns:
            ``[M, D]``, ``M = lengths.sum()``: span 0's bars oldest first, then span 1's, ...
        """
        ctx, starts, lengths = self._spans("encode_samples", starts, lengths, context)
        S, longest, total = len(lengths), int(lengths.max()), int(lengths.sum())
        rows = S * self.encoder.series_tokens(ctx + longest, ctx)
        packed = self.encoder.series_tokens(total + S * ctx)
        if packed < rows:
            return self.encode_packed(features, starts, lengths, ctx)
        encoded = self.encode_spans(features, starts, lengths, ctx)  # [S, L, D]
        if total == S * longest:  # no padding
            return encoded.reshape(total, -1)  # [M, D]
        keep = np.repeat(np.arange(S) * longest, lengths) + (
            np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        )  # [M] row of each sample in [S * L]
        return encoded.reshape(S * longest, -1)[th.as_tensor(keep, device=features.device)]


def span_bars(features: th.Tensor, starts: np.ndarray, context: int, length: int) -> th.Tensor:
    """``[S, context + length, F]``: span ``s``'s ``context`` bars then its ``length`` bars.

    Rows past the last bar repeat it (padding of spans shorter than ``length``).
    """
    first = th.as_tensor(np.asarray(starts) - context, device=features.device)  # [S]
    offsets = th.arange(context + length, device=features.device)  # [ctx + L]
    index = (first[:, None] + offsets[None, :]).clamp_(max=features.shape[0] - 1)
    return features[index]


def _check_observation_space(space: spaces.Space) -> tuple[spaces.Box, spaces.Box]:
    """The ``candles`` ``[T, F]`` and ``account`` ``[A]`` boxes of ``space``, or a clear error."""
    ok = (
        isinstance(space, spaces.Dict)
        and set(space.spaces) == {CANDLES_KEY, ACCOUNT_KEY}
        and isinstance(space[CANDLES_KEY], spaces.Box)
        and len(space[CANDLES_KEY].shape) == 2
        and isinstance(space[ACCOUNT_KEY], spaces.Box)
        and len(space[ACCOUNT_KEY].shape) == 1
    )
    if not ok:
        raise ValueError(
            f"MLKVExtractor needs observations Dict({CANDLES_KEY}=Box[T, F], "
            f"{ACCOUNT_KEY}=Box[A]) as MarketReplayEnv emits them, got {space}."
        )
    return space[CANDLES_KEY], space[ACCOUNT_KEY]
