"""Stochastic actor-critic policy on the MLKV features extractor.

The actor outputs, per action dimension, a mean and a **state-dependent** log-sigma; the
critic a value. Log-sigma is squashed smoothly into ``log_std_range`` (default
:data:`LOG_STD_RANGE`, i.e. sigma in ``[e^-5, e^1] = [0.0067, 2.72]``)::

    log_sigma = lo + (hi - lo) * sigmoid(raw)

which keeps gradients alive near the bounds (a hard clamp would not). Actions are drawn
from ``Normal(mean, sigma)`` and clipped to the action space by SB3, exactly as SB3's own
Gaussian policies do.

Besides SB3 observation dicts, :meth:`MLKVActorCriticPolicy.evaluate_actions` accepts
:class:`SegmentObs`: runs of consecutive bars referenced by index into the env's feature
array. That is how :class:`agents.MLKVPPO` evaluates a minibatch with one
``encode_series`` pass instead of one ``T``-bar window per sample.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import DiagGaussianDistribution, Distribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import get_action_dim
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from torch import nn
from torch.distributions import Normal

from models import EncoderConfig

from .actor import ActorProgram, actor_program
from .extractor import (
    ACCOUNT_KEY,
    CANDLES_KEY,
    MLKVExtractor,
    encoder_spec,
    resolve_encoder_config,
    span_bars,
)
from .optim import FlatAdam

__all__ = ["LOG_STD_RANGE", "MLKVActorCriticPolicy", "SegmentObs"]

#: Default range of the actor's log-sigma (natural log of the Gaussian's standard deviation).
LOG_STD_RANGE: tuple[float, float] = (-5.0, 1.0)


@dataclass(frozen=True)
class SegmentObs:
    """A minibatch of observations given as runs of consecutive bars plus account states.

    Sample ``j`` (in order: span 0's bars oldest first, then span 1's, ...) observes the
    window of ``window`` bars of ``features`` that ends at its bar, and ``account[j]``.

    Attributes:
        features: ``[n_bars, F]`` feature array the env slices its observations from.
        starts: ``[S]`` int64, first bar of each span.
        lengths: ``[S]`` int64, bars in each span; ``lengths.sum() == M``.
        account: ``[M, A]`` account observation of each sample.
        window: ``T``, bars per observation window.
        context: bars of context encoded before each span; ``None`` = receptive field - 1
            (the exact value; anything smaller is only for tests that must fail).
    """

    features: th.Tensor
    starts: np.ndarray
    lengths: np.ndarray
    account: th.Tensor
    window: int
    context: int | None = None

    def positions(self) -> tuple[np.ndarray, np.ndarray]:
        """``(span [M], offset [M])``: each sample's span and its position inside it."""
        span = np.repeat(np.arange(len(self.lengths)), self.lengths)
        offset = np.arange(int(self.lengths.sum())) - np.repeat(
            np.cumsum(self.lengths) - self.lengths, self.lengths
        )
        return span, offset

    @property
    def bars(self) -> np.ndarray:
        """``[M]`` int64: the last bar of each sample's observation window."""
        span, offset = self.positions()
        return self.starts[span] + offset

    def as_windows(self) -> dict[str, th.Tensor]:
        """The same samples as SB3 observations ``{"candles": [M, T, F], "account": [M, A]}``."""
        last = th.as_tensor(self.bars, device=self.features.device)  # [M]
        offsets = th.arange(-self.window + 1, 1, device=self.features.device)  # [T]
        candles = self.features[last[:, None] + offsets[None, :]]  # [M, T, F]
        return {CANDLES_KEY: candles, ACCOUNT_KEY: self.account}


class MLKVActorCriticPolicy(ActorCriticPolicy):
    """Actor-critic with the MLKV encoder and a state-dependent Gaussian actor.

    Pass its options through ``policy_kwargs``, e.g.
    ``MLKVPPO("MLKVPolicy", env, policy_kwargs={"encoder": {"d_model": 64, "window": 16,
    "plan": {"kind": "mlkv", ...}}})``.

    Args:
        observation_space: ``Dict(candles=Box[T, F], account=Box[A])``.
        action_space: ``Box`` of target positions (e.g. ``Box(-1, 1, (1,))``).
        lr_schedule: learning-rate schedule (SB3).
        net_arch: actor/critic MLP widths on top of the features, as in SB3
            (default ``dict(pi=[64, 64], vf=[64, 64])``).
        activation_fn: activation of those MLPs.
        ortho_init: orthogonal init (SB3 gains) of the MLPs, the heads and the account MLP.
            The transformer keeps its own GPT-2 style init either way.
        use_sde: must be ``False`` (sigma is already state dependent).
        log_std_init: initial log-sigma (the head's bias is set so that a zero input gives
            this value); must lie inside ``log_std_range``.
        encoder: :class:`EncoderConfig` or a dict of its fields (``n_features`` is taken
            from the observation space, ``plan`` may be a plan dict); ``None`` for
            :data:`agents.extractor.DEFAULT_ENCODER`. Shortcut for
            ``features_extractor_kwargs["encoder"]``.
        account_hidden: hidden widths of the account MLP (shortcut for
            ``features_extractor_kwargs["account_hidden"]``).
        log_std_range: ``(lo, hi)`` bounds of log-sigma.
        features_extractor_class: :class:`MLKVExtractor` or a subclass.
        features_extractor_kwargs: more extractor kwargs (win over the shortcuts).
        share_features_extractor: one encoder for actor and critic (default) or two.
        **kwargs: the rest of :class:`ActorCriticPolicy`'s arguments.
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Box,
        lr_schedule: Schedule,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.Tanh,
        ortho_init: bool = True,
        use_sde: bool = False,
        log_std_init: float = 0.0,
        encoder: EncoderConfig | dict[str, Any] | None = None,
        account_hidden: int | Sequence[int] = (64,),
        log_std_range: Sequence[float] = LOG_STD_RANGE,
        features_extractor_class: type[MLKVExtractor] = MLKVExtractor,
        features_extractor_kwargs: dict[str, Any] | None = None,
        share_features_extractor: bool = True,
        **kwargs: Any,
    ) -> None:
        if use_sde:
            raise ValueError(
                "MLKVActorCriticPolicy: use_sde=True is not supported; the actor's sigma is "
                "already state dependent. Drop use_sde from the algorithm's arguments."
            )
        if not isinstance(action_space, spaces.Box) or len(action_space.shape) != 1:
            raise ValueError(
                f"MLKVActorCriticPolicy needs a 1-D Box action space (target positions), got "
                f"{action_space}."
            )
        if not (isinstance(features_extractor_class, type)
                and issubclass(features_extractor_class, MLKVExtractor)):
            raise ValueError(
                f"MLKVActorCriticPolicy: features_extractor_class must be MLKVExtractor or a "
                f"subclass, got {features_extractor_class!r}."
            )
        lo, hi = (float(v) for v in log_std_range)
        if not lo < log_std_init < hi:
            raise ValueError(
                f"MLKVActorCriticPolicy: log_std_init = {log_std_init} must lie strictly "
                f"inside log_std_range = ({lo}, {hi})."
            )
        self.log_std_range = (lo, hi)
        self._compiled_segments: Any = None  # compile_update()
        if kwargs.get("optimizer_class", th.optim.Adam) in (th.optim.Adam, FlatAdam):
            # SB3's default eps, and the fused Adam kernel (one op per step for all
            # parameters instead of ~10 per parameter; the same update up to rounding),
            # stepping all parameters as one flat tensor (FlatAdam: Adam's state dict)
            kwargs["optimizer_class"] = FlatAdam
            given = kwargs.get("optimizer_kwargs")
            opt = {"eps": 1e-5} if given is None else dict(given)
            if "fused" not in opt and "foreach" not in opt:
                opt["fused"] = True
            kwargs["optimizer_kwargs"] = opt
        n_features = observation_space[CANDLES_KEY].shape[-1] if isinstance(
            observation_space, spaces.Dict) and CANDLES_KEY in observation_space.spaces else None
        fe_kwargs: dict[str, Any] = {"account_hidden": account_hidden}
        if n_features is not None:  # otherwise the extractor reports the bad space
            fe_kwargs["encoder"] = encoder_spec(resolve_encoder_config(encoder, n_features))
        fe_kwargs.update(features_extractor_kwargs or {})
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch=net_arch,
            activation_fn=activation_fn,
            ortho_init=ortho_init,
            use_sde=False,
            log_std_init=log_std_init,
            features_extractor_class=features_extractor_class,
            features_extractor_kwargs=fe_kwargs,
            share_features_extractor=share_features_extractor,
            **kwargs,
        )
        self._last_log_sigma: th.Tensor | None = None
        self._flat_grad: th.Tensor | None = None

    # ------------------------------------------------------------------ construction
    def _build(self, lr_schedule: Schedule) -> None:
        """Create the MLPs, the mean / log-sigma / value heads and the optimizer."""
        self._build_mlp_extractor()
        assert isinstance(self.action_dist, DiagGaussianDistribution)
        act_dim = get_action_dim(self.action_space)
        latent_pi = self.mlp_extractor.latent_dim_pi
        self.action_net = nn.Linear(latent_pi, act_dim)  # mean
        self.log_sigma_net = nn.Linear(latent_pi, act_dim)  # raw log-sigma, squashed later
        self.value_net = nn.Linear(self.mlp_extractor.latent_dim_vf, 1)
        if self.ortho_init:
            gains: dict[nn.Module, float] = {
                self.mlp_extractor: math.sqrt(2),
                self.action_net: 0.01,
                self.log_sigma_net: 0.01,
                self.value_net: 1.0,
            }
            for extractor in self._extractors():
                gains[extractor.account_net] = math.sqrt(2)
            for module, gain in gains.items():
                module.apply(partial(self.init_weights, gain=gain))
        lo, hi = self.log_std_range
        p = (self.log_std_init - lo) / (hi - lo)
        nn.init.constant_(self.log_sigma_net.bias, math.log(p / (1.0 - p)))  # sigmoid^-1
        self.optimizer = self.optimizer_class(
            self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs
        )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        for key in ("use_sde", "squash_output", "full_std", "use_expln"):
            data.pop(key, None)
        data["log_std_range"] = self.log_std_range
        return data

    def _extractors(self) -> list[MLKVExtractor]:
        """The distinct features extractors (one if shared, else actor's then critic's)."""
        if self.share_features_extractor:
            return [self.features_extractor]
        return [self.pi_features_extractor, self.vf_features_extractor]

    # ------------------------------------------------------------------ gradients
    def flat_grads(self) -> th.Tensor | None:
        """One ``[P]`` buffer that holds the gradient of every trainable parameter.

        Each ``p.grad`` becomes a view of a slice of it (current gradients are copied in,
        missing ones are zeros), so that zeroing, the norm and clipping of all gradients are
        one op each instead of one per parameter tensor (~130 here). Autograd accumulates
        into existing gradients in place, so the views survive ``backward``; zero them with
        ``flat.zero_()``. Made again if any gradient was replaced since (e.g. by
        ``optimizer.zero_grad()``, which sets them to ``None``). ``None`` when the
        parameters do not share one device and dtype.

        Returns:
            ``[P]`` with ``P`` the number of trainable parameter elements, or ``None``.
        """
        params = [p for p in self.parameters() if p.requires_grad]
        if not params or len({(p.device, p.dtype) for p in params}) > 1:
            return None
        flat = self._flat_grad
        if flat is not None and flat.numel() == sum(p.numel() for p in params):
            offset, intact = 0, True
            for p in params:
                if p.grad is None or p.grad.data_ptr() != flat[offset:].data_ptr():
                    intact = False
                    break
                offset += p.numel()
            if intact:
                return flat
        flat = th.zeros(sum(p.numel() for p in params), device=params[0].device,
                        dtype=params[0].dtype)
        offset = 0
        for p in params:
            view = flat[offset : offset + p.numel()].view_as(p)
            if p.grad is not None:
                view.copy_(p.grad)
            p.grad = view
            offset += p.numel()
        self._flat_grad = flat
        return flat

    # ------------------------------------------------------------------ distribution
    def log_sigma(self, latent_pi: th.Tensor) -> th.Tensor:
        """Squashed log-sigma: ``[B, latent_pi] -> [B, act]`` inside ``log_std_range``."""
        lo, hi = self.log_std_range
        return lo + (hi - lo) * th.sigmoid(self.log_sigma_net(latent_pi))

    def _get_action_dist_from_latent(self, latent_pi: th.Tensor) -> Distribution:
        mean = self.action_net(latent_pi)  # [B, act]
        log_sigma = self.log_sigma(latent_pi)  # [B, act]
        self._last_log_sigma = log_sigma.detach()
        return self.distribution(mean, log_sigma)

    def distribution(self, mean: th.Tensor, log_sigma: th.Tensor) -> DiagGaussianDistribution:
        """SB3's ``action_dist.proba_distribution(mean, log_sigma)`` without argument checks.

        torch's ``Normal`` validates its arguments (and every ``log_prob`` sample) by
        default, and each check reads a tensor on the host: on a GPU, three device syncs per
        rollout step and per minibatch. The squashed sigma is positive by construction.
        """
        dist = self.action_dist
        assert isinstance(dist, DiagGaussianDistribution)
        dist.distribution = Normal(mean, log_sigma.exp(), validate_args=False)
        return dist

    @property
    def last_sigma_mean(self) -> float | None:
        """Mean sigma of the last batch a distribution was built for (for logging)."""
        if self._last_log_sigma is None:
            return None
        return float(self._last_log_sigma.exp().mean())

    def action_stats(self, obs: PyTorchObs | dict[str, np.ndarray]) -> tuple[th.Tensor, th.Tensor]:
        """Mean and sigma of the action distribution (no gradients).

        Args:
            obs: one observation or a batch (numpy, as the env returns it, or tensors).

        Returns:
            ``(mean [B, act], sigma [B, act])``; ``mean`` is not clipped to the action space.
        """
        if not isinstance(next(iter(obs.values())), th.Tensor):
            obs, _ = self.obs_to_tensor(obs)
        with th.no_grad():
            normal = self.get_distribution(obs).distribution  # torch Normal(mean, sigma)
        return normal.mean, normal.stddev

    # ------------------------------------------------------------------ encoded-bar paths
    @property
    def receptive_field(self) -> int:
        """Bars one bar's encoding depends on."""
        return self.features_extractor.receptive_field

    @property
    def encoding_dim(self) -> int:
        """Width of :meth:`encode_bars` rows: ``d_model``, doubled for unshared extractors."""
        return sum(e.encoding_dim for e in self._extractors())

    def encode_bars(self, features: th.Tensor | np.ndarray) -> th.Tensor:
        """Encode a whole feature series once: ``[N, F] -> [N, encoding_dim]``.

        Row ``t`` is what the policy sees of a window ending at bar ``t`` (for ``t >=
        receptive_field - 1``). Differentiable; wrap in ``torch.no_grad()`` for inference.
        Feed rows to :meth:`heads_from_encoded` to run K passes over one encoding.
        """
        x = th.as_tensor(features, device=self.device, dtype=th.float32)
        return self._joined("encode_bars", x)

    def encode_spans(
        self,
        features: th.Tensor,
        starts: np.ndarray,
        lengths: np.ndarray,
        context: int | None = None,
    ) -> th.Tensor:
        """:meth:`MLKVExtractor.encode_spans` for every extractor: ``[S, L, encoding_dim]``."""
        return self._joined("encode_spans", features, starts, lengths, context)

    def encode_packed(
        self,
        features: th.Tensor,
        starts: np.ndarray,
        lengths: np.ndarray,
        context: int | None = None,
    ) -> th.Tensor:
        """:meth:`MLKVExtractor.encode_packed` for every extractor: ``[M, encoding_dim]``."""
        return self._joined("encode_packed", features, starts, lengths, context)

    def encode_samples(
        self,
        features: th.Tensor,
        starts: np.ndarray,
        lengths: np.ndarray,
        context: int | None = None,
    ) -> th.Tensor:
        """:meth:`MLKVExtractor.encode_samples` for every extractor: ``[M, encoding_dim]``."""
        return self._joined("encode_samples", features, starts, lengths, context)

    def _joined(self, method: str, *args: Any) -> th.Tensor:
        """``method(*args)`` of every extractor, joined on the last axis (actor's first)."""
        return th.cat([getattr(e, method)(*args) for e in self._extractors()], dim=-1)

    def heads_from_encoded(
        self, encoded: th.Tensor, account: th.Tensor
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """Actor and critic heads on bar encodings.

        Args:
            encoded: ``[B, encoding_dim]`` rows of :meth:`encode_bars`.
            account: ``[B, A]`` account observations.

        Returns:
            ``(mean [B, act], log_sigma [B, act], value [B])``.
        """
        extractors = self._extractors()
        d = extractors[0].encoding_dim
        pi_features = extractors[0].combine(encoded[:, :d], account)  # [B, features_dim]
        vf_features = (
            pi_features if len(extractors) == 1 else extractors[1].combine(encoded[:, d:], account)
        )
        mean, log_sigma = self._actor_heads(pi_features)
        latent_vf = self.mlp_extractor.forward_critic(vf_features)
        return mean, log_sigma, self.value_net(latent_vf).squeeze(-1)

    def actor_from_encoded(
        self, encoded: th.Tensor, account: th.Tensor
    ) -> tuple[th.Tensor, th.Tensor]:
        """The actor half of :meth:`heads_from_encoded` (no critic): what a backtest needs.

        Returns:
            ``(mean [B, act], log_sigma [B, act])``, equal to :meth:`heads_from_encoded`'s.
        """
        extractor = self._extractors()[0]
        pi_features = extractor.combine(encoded[:, : extractor.encoding_dim], account)
        return self._actor_heads(pi_features)

    def actor_program(self) -> ActorProgram | None:
        """The actor as plain layers (:class:`~agents.actor.ActorProgram`) for a backtest.

        :func:`~agents.actor.stack_actors` runs the programs of several policies in one
        batched call per layer, where one module call per policy per step would cost more
        in dispatch than in math. ``None`` when a part is not a ``Linear`` / ``Tanh`` /
        ``ReLU`` stack or the extractor combines its parts differently (then use
        :meth:`actor_from_encoded`). The weights are read when the program is stacked.
        """
        extractor = self._extractors()[0]
        if type(extractor).combine is not MLKVExtractor.combine:
            return None
        parts = [extractor.account_net, self.mlp_extractor.policy_net, self.log_sigma_net,
                 self.action_net]
        return actor_program(parts, extractor.encoding_dim, self.log_std_range)

    def _actor_heads(self, pi_features: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        latent_pi = self.mlp_extractor.forward_actor(pi_features)
        log_sigma = self.log_sigma(latent_pi)
        self._last_log_sigma = log_sigma.detach()
        return self.action_net(latent_pi), log_sigma

    def act_from_encoded(
        self, encoded: th.Tensor, account: th.Tensor, deterministic: bool = False
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor, th.Tensor]:
        """:meth:`forward` on bar encodings: the same sampling, so the same RNG draws.

        Args:
            encoded: ``[B, encoding_dim]``.
            account: ``[B, A]``.
            deterministic: return the mean instead of a sample.

        Returns:
            ``(actions [B, act], values [B, 1], log_prob [B])`` as :meth:`forward` returns
            them, and ``sigma [B, act]``.
        """
        mean, log_sigma, values = self.heads_from_encoded(encoded, account)
        distribution = self.distribution(mean, log_sigma)
        actions = distribution.get_actions(deterministic=deterministic)
        log_prob = distribution.log_prob(actions)
        actions = actions.reshape((-1, *self.action_space.shape))
        return actions, values[:, None], log_prob, log_sigma.exp()

    def evaluate_segments(
        self, x: th.Tensor, account: th.Tensor, actions: th.Tensor
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """:meth:`evaluate_actions` on ``S`` segments of one length, tensors only.

        What :meth:`compile_update` compiles: one graph from the gathered bars to the
        log-probs, with no numpy and no data-dependent branch.

        Args:
            x: ``[S, ctx + L, F]`` each segment's ``L`` bars after its ``ctx =
                receptive_field - 1`` bars of context (:func:`~agents.extractor.span_bars`).
            account: ``[S * L, A]`` account observations, segment by segment.
            actions: ``[S * L, act]``.

        Returns:
            ``(values [S * L, 1], log_prob [S * L], entropy [S * L])``.
        """
        ctx = self.receptive_field - 1
        encoded = th.cat(
            [e.encoder.encode_series(x, outputs_from=ctx) for e in self._extractors()], dim=-1
        )  # [S, L, encoding_dim]
        encoded = encoded.reshape(-1, encoded.shape[-1])  # [S * L, encoding_dim]
        mean, log_sigma, values = self.heads_from_encoded(encoded, account)
        normal = Normal(mean, log_sigma.exp(), validate_args=False)  # as self.distribution
        log_prob, entropy = normal.log_prob(actions).sum(-1), normal.entropy().sum(-1)
        return values[:, None], log_prob, entropy

    def compile_update(self, backend: str = "inductor") -> None:
        """``torch.compile`` the PPO update's forward for whole segments of one length.

        :meth:`evaluate_actions` then runs minibatches made of whole segments of one length
        (a PPO minibatch when ``segment_len`` divides ``batch_size`` and no env resets
        inside the rollout) through :meth:`evaluate_segments` compiled with static shapes:
        encoder, heads and the Gaussian's log-prob in one graph, its backward in another.
        On a CPU core this removes most of the ~1,600 small ops of an eager gradient step:
        2.3x on forward + backward (``update_profile.py --compiled``; the encoder hands
        inductor plain attention, a sigmoid-form GELU, and its rotary tables and band mask as
        buffers, see :mod:`models.encoder`) for a one-off compile of 30-70 s. Each new
        minibatch shape compiles once more (up to dynamo's cache limit, then it runs eager),
        and other minibatches run eager. Same losses up to float rounding.

        Args:
            backend: ``torch.compile`` backend (tests use ``"aot_eager"``).
        """
        # on the CPU, inductor's C++ wrapper calls the graph's ~200 matmuls and kernels
        # without a Python call each: ~0.7 ms less per gradient step of ~5
        # (experiments/studies/bench/compiled_cpu_bench.py)
        cpu = backend == "inductor" and self.device.type == "cpu"
        self._compiled_segments = th.compile(
            self.evaluate_segments,
            dynamic=False,
            backend=backend,
            options={"cpp_wrapper": True} if cpu else None,
        )

    def evaluate_actions(
        self, obs: PyTorchObs | SegmentObs, actions: th.Tensor
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        """Values ``[M, 1]``, log-probs ``[M]`` and entropies ``[M]`` of ``actions``.

        ``obs`` is an SB3 observation dict (one window per sample) or a :class:`SegmentObs`
        (one ``encode_series`` pass over the minibatch's spans, see :meth:`encode_samples`;
        same result).
        """
        if not isinstance(obs, SegmentObs):
            return super().evaluate_actions(obs, actions)
        if self._compiled_segments is not None and obs.context is None:
            lengths = np.asarray(obs.lengths)
            if np.all(lengths == lengths[0]):  # whole segments of one length: one shape
                x = span_bars(obs.features, obs.starts, self.receptive_field - 1, int(lengths[0]))
                return self._compiled_segments(x, obs.account, actions)
        encoded = self.encode_samples(obs.features, obs.starts, obs.lengths, obs.context)
        mean, log_sigma, values = self.heads_from_encoded(encoded, obs.account)
        distribution = self.distribution(mean, log_sigma)
        return values[:, None], distribution.log_prob(actions), distribution.entropy()
