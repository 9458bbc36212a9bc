"""PPO with fast rollouts and fast updates for the MLKV policy.

:class:`MLKVPPO` is SB3's PPO (same constructor, ``learn``, ``save``/``load``) with two
changes that only apply when the env exposes its feature array (``features``, ``[n_bars,
F]``) and the last bar of each env's observation (``bar_index``, ``[n_envs]``):

* **Rollouts** (``fast_rollout``): weights are fixed during a rollout and a bar's encoding
  depends only on the data, so each env's upcoming bars are encoded a chunk at a time with
  ``encode_series`` under ``no_grad`` (:class:`~agents.bars.RolloutEncodings`) and looked up
  by bar index, instead of encoding a ``T``-bar window per step. Sampling consumes the same
  RNG draws as SB3's path, so actions, log-probs and values match it (float rounding
  aside). The buffer (:class:`~agents.buffers.BarRolloutBuffer`) stores bar indices, not
  windows. On a GPU a step syncs with the host once: actions, values, log-probs and sigmas
  come back in one packed copy (timeout bootstrap values once per rollout).
* **Updates** (``fast_update``): minibatches are contiguous time segments of one env's
  trajectory (``segment_len`` steps at most, split wherever the bar index jumps, e.g. at a
  reset). The minibatch's segments, each preceded by exactly ``receptive_field - 1`` bars
  of context, are encoded in one ``encode_series`` pass under autograd
  (:meth:`~agents.MLKVActorCriticPolicy.encode_samples`): one row per segment with the
  context computed only as far as the segment depends on it (a layer in KV group ``g`` of
  ``n`` needs ``(n - 1 - g) * (W - 1)`` context bars: 30 / 15 / 0 with the reference plan
  at ``W = 16``, instead of 45 in every layer), or, for many segments of unequal length,
  packed end to end, whichever computes fewer tokens. A bar costs about ``1 +
  (receptive_field - 1) / segment_len`` tokens per epoch at most instead of ``T``. Losses
  and gradients equal those of the window path on the same minibatch (float rounding
  aside). The gradients live in one flat buffer
  (:meth:`~agents.MLKVActorCriticPolicy.flat_grads`) and the optimiser is
  :class:`~agents.FlatAdam`, so zeroing, grad-norm clipping and the Adam step are a few
  ops on one tensor instead of a loop over ~130 parameter tensors.

**What differs from SB3's PPO** (fast update only; ``fast_update=False`` is SB3's update
sample for sample):

1. *Minibatch composition.* SB3 draws each minibatch uniformly from all ``n_steps *
   n_envs`` samples. Here the rollout is cut into segments (per env, at most
   ``segment_len`` consecutive steps, never across a reset), the segments of *all* envs
   are shuffled together (numpy's global RNG, as SB3) and laid end to end, and
   minibatches cut that sequence every ``batch_size`` samples. Every sample is still used
   once per epoch and minibatch sizes are SB3's, but a minibatch holds
   ``~batch_size / segment_len`` trajectory pieces instead of ``batch_size`` independent
   samples: its gradient is noisier (samples within a segment are correlated). This is the
   approximation that makes the update cheap; ``segment_len`` trades it against speed.
2. *Advantage normalisation.* SB3 normalises advantages per minibatch; here they are
   normalised once over the whole rollout (:func:`normalize_rollout_advantages`, the same
   formula). With segment minibatches, per-minibatch statistics would come from a few
   correlated trajectories and cancel their common trend (a minibatch whose segments all
   did well would be pushed half up, half down).
3. *Optimiser.* :class:`~agents.MLKVActorCriticPolicy` defaults to
   :class:`~agents.FlatAdam` with the fused Adam kernel (``fused=True``; Adam's update and
   state dict, stepped as one flat tensor; same update up to rounding), with SB3's
   ``eps=1e-5``.

Everything else (clipped surrogate, value loss, entropy, grad-norm clipping, ``target_kl``
early stop, logging) is SB3's ``PPO.train``: the fast update runs a copy of its loop
(``MLKVPPO._train_segments``) whose only change is that zeroing and clipping act on the flat
gradient buffer (the same formula; tested equal to ``PPO.train`` on the same minibatches).

With an env that lacks ``features``/``bar_index`` (or whose observations are not plain
slices of ``features``, e.g. under ``VecNormalize``), it warns once and runs SB3's own
rollout and update.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.utils import explained_variance, obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv
from torch.nn import functional as F

from models import EncoderConfig

from .bars import BarSource, RolloutEncodings
from .buffers import BarRolloutBuffer
from .extractor import ACCOUNT_KEY, encoder_spec
from .policy import MLKVActorCriticPolicy

__all__ = ["MLKVPPO", "PlainPathWarning", "normalize_rollout_advantages"]


def normalize_rollout_advantages(advantages: np.ndarray) -> np.ndarray:
    """``(A - mean) / (std + 1e-8)`` over every sample of the rollout (any shape).

    SB3's per-minibatch formula (``th.std`` is the unbiased one: ``ddof=1``) applied once to
    the whole rollout, in float64, returned in the input's dtype.
    """
    a = np.asarray(advantages, dtype=np.float64)
    if a.size < 2:
        return np.asarray(advantages)
    return ((a - a.mean()) / (a.std(ddof=1) + 1e-8)).astype(np.asarray(advantages).dtype)


class PlainPathWarning(UserWarning):
    """The fast rollout/update path is off for this env; SB3's window path runs instead."""


class MLKVPPO(PPO):
    """PPO whose rollouts and updates encode each bar about once instead of once per window.

    A drop-in :class:`~stable_baselines3.PPO`: the same arguments plus the four below. The
    policy alias ``"MLKVPolicy"`` names :class:`~agents.MLKVActorCriticPolicy`.

    Example:
        >>> model = MLKVPPO("MLKVPolicy", vec_env, n_steps=256, batch_size=64, seed=0,
        ...                 policy_kwargs={"encoder": {"d_model": 64, "window": 16,
        ...                                            "plan": {"kind": "reference"}}})
        >>> model.learn(10_000)

    Args:
        policy: ``"MLKVPolicy"``, or any policy SB3's PPO accepts (then only the plain path
            runs).
        env: the (vec) env.
        *args: PPO's positional arguments.
        fast_rollout: encode rollout bars once and store bar indices (needs an env with
            ``features`` and ``bar_index``).
        fast_update: minibatches of contiguous time segments, one ``encode_series`` pass
            each (needs ``fast_rollout``). ``False`` keeps SB3's random minibatches and
            window encodings (windows rebuilt from the stored bars).
        segment_len: longest time segment of a fast-update minibatch, in steps. A segment
            of ``L`` steps encodes ``L + receptive_field - 1`` bars: longer segments amortise
            the context better, shorter ones mix more trajectories into each minibatch
            (``batch_size / segment_len`` segments at least). With the reference plan at
            ``W = 16`` (receptive field 46) the default 64 costs ~1.7 tokens per sample.
        rollout_chunk: bars encoded at a time per env during rollouts.
        compile_update: ``torch.compile`` the update's forward for minibatches of whole
            segments of one length (:meth:`MLKVActorCriticPolicy.compile_update`): about
            2.3x on a CPU core's forward + backward for a one-off compile of 30-70 s
            (worth it for runs of more than a few minutes). Not with the encoder's own
            ``compile``.
        **kwargs: PPO's keyword arguments.
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        **PPO.policy_aliases,
        "MLKVPolicy": MLKVActorCriticPolicy,
    }

    def __init__(
        self,
        policy: str | type[BasePolicy],
        env: Any,
        *args: Any,
        fast_rollout: bool = True,
        fast_update: bool = True,
        segment_len: int = 64,
        rollout_chunk: int = 256,
        compile_update: bool = False,
        **kwargs: Any,
    ) -> None:
        if segment_len < 1 or rollout_chunk < 1:
            raise ValueError(
                f"MLKVPPO: segment_len and rollout_chunk must be >= 1, got {segment_len} and "
                f"{rollout_chunk}."
            )
        self.fast_rollout = fast_rollout
        self.fast_update = fast_update
        self.segment_len = segment_len
        self.rollout_chunk = rollout_chunk
        self.compile_update = compile_update
        self._features_cache: tuple[np.ndarray, th.Tensor] | None = None
        self._warned_plain = False
        policy_kwargs = kwargs.get("policy_kwargs")
        if policy_kwargs and isinstance(policy_kwargs.get("encoder"), EncoderConfig):
            # saved with the model as plain JSON rather than a pickled object
            kwargs["policy_kwargs"] = {
                **policy_kwargs, "encoder": encoder_spec(policy_kwargs["encoder"])
            }
        super().__init__(policy, env, *args, **kwargs)

    # ------------------------------------------------------------------ setup
    def _setup_model(self) -> None:
        user_class, user_kwargs = self.rollout_buffer_class, self.rollout_buffer_kwargs
        if self._bar_path_possible(self.env)[0]:  # never allocate T-bar windows per sample
            self.rollout_buffer_class = BarRolloutBuffer
            self.rollout_buffer_kwargs = {**user_kwargs, **self._bar_buffer_kwargs()}
        try:
            super()._setup_model()
        finally:
            self.rollout_buffer_class, self.rollout_buffer_kwargs = user_class, user_kwargs
        if self.compile_update:
            self._compile_update()

    #: ``torch.compile`` backend of ``compile_update`` (tests set ``"aot_eager"``).
    compile_backend: ClassVar[str] = "inductor"

    def _compile_update(self) -> None:
        policy = self.policy
        if not isinstance(policy, MLKVActorCriticPolicy):
            raise ValueError("MLKVPPO: compile_update needs the MLKV policy (\"MLKVPolicy\").")
        if policy.features_extractor.config.compile is not None:
            raise ValueError(
                "MLKVPPO: compile_update and the encoder's compile (model.compile) both compile "
                "the update; set one of them (compile_update: the whole forward with static "
                "shapes, fastest on a CPU; model.compile: the encoder, for the CUDA path)."
            )
        policy.compile_update(self.compile_backend)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_features_cache", "_warned_plain"]

    def _bar_buffer_kwargs(self) -> dict[str, Any]:
        return {
            "segment_len": self.segment_len if self.fast_update else None,
            "as_windows": False,
        }

    def _make_rollout_buffer(self, bars: bool) -> RolloutBuffer:
        if bars:
            cls: type[RolloutBuffer] = BarRolloutBuffer
            kwargs = {**self.rollout_buffer_kwargs, **self._bar_buffer_kwargs()}
        else:
            cls = self.rollout_buffer_class or DictRolloutBuffer
            kwargs = self.rollout_buffer_kwargs
        return cls(
            self.n_steps,
            self.observation_space,
            self.action_space,
            device=self.device,
            gamma=self.gamma,
            gae_lambda=self.gae_lambda,
            n_envs=self.n_envs,
            **kwargs,
        )

    def _bar_path_possible(self, env: VecEnv | None) -> tuple[bool, str]:
        """Whether the fast path can run with ``env`` (before looking at observations)."""
        if not self.fast_rollout:
            return False, "fast_rollout=False"
        if not issubclass(self.policy_class, MLKVActorCriticPolicy):
            return False, f"the policy {self.policy_class.__name__} is not MLKVActorCriticPolicy"
        user = self.rollout_buffer_class
        if user is not None and not issubclass(user, BarRolloutBuffer):
            return False, f"rollout_buffer_class={user.__name__} was given"
        if not isinstance(self.action_space, spaces.Box):
            return False, "the action space is not a Box"
        source, reason = BarSource.from_env(env)
        return source is not None, reason

    def _bar_source(self, env: VecEnv) -> BarSource | None:
        """The env's bar source if the fast path applies now, else ``None`` (warns once)."""
        possible, reason = self._bar_path_possible(env)
        source = BarSource.from_env(env)[0] if possible else None
        if source is not None and not source.windows_match(self._last_obs, source.bar_index()):
            source, reason = None, (
                "the observed candles are not the slices of env.features that env.bar_index "
                "names (is the env wrapped, e.g. in VecNormalize?)"
            )
        if source is None and self.fast_rollout and not self._warned_plain:
            warnings.warn(
                f"MLKVPPO: fast rollouts/updates are off because {reason}; running SB3's "
                f"window path (every step encodes a full T-bar window).",
                PlainPathWarning,
                stacklevel=3,
            )
            self._warned_plain = True
        return source

    def _features_tensor(self, features: np.ndarray) -> th.Tensor:
        """``features`` on the policy's device, uploaded once per feature array."""
        cached = self._features_cache
        if cached is None or cached[0] is not features:
            tensor = th.as_tensor(np.asarray(features, dtype=np.float32), device=self.device)
            self._features_cache = cached = (features, tensor)
        return cached[1]

    # ------------------------------------------------------------------ rollouts
    def collect_rollouts(
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: RolloutBuffer,
        n_rollout_steps: int,
    ) -> bool:
        """Fill the rollout buffer: the bar path when the env allows it, else SB3's.

        If the buffer passed in is of the wrong kind for the path that runs,
        ``self.rollout_buffer`` is replaced by one of the right kind and filled instead.
        """
        source = self._bar_source(env)
        bars = source is not None
        if isinstance(rollout_buffer, BarRolloutBuffer) != bars:
            self.rollout_buffer = rollout_buffer = self._make_rollout_buffer(bars)
        if source is None:
            return super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps)
        assert isinstance(rollout_buffer, BarRolloutBuffer)
        return self._collect_bar_rollouts(env, source, callback, rollout_buffer, n_rollout_steps)

    def _collect_bar_rollouts(
        self,
        env: VecEnv,
        source: BarSource,
        callback: BaseCallback,
        rollout_buffer: BarRolloutBuffer,
        n_rollout_steps: int,
    ) -> bool:
        """SB3's ``collect_rollouts`` with bar encodings looked up instead of windows encoded."""
        assert self._last_obs is not None, "No previous observation was provided"
        policy = self.policy
        assert isinstance(policy, MLKVActorCriticPolicy)
        policy.set_training_mode(False)
        features = self._features_tensor(source.features)
        n_steps = 0
        rollout_buffer.reset()
        rollout_buffer.attach(features)
        encodings = RolloutEncodings(policy, features, env.num_envs, self.rollout_chunk)
        callback.on_rollout_start()

        bootstraps: list[tuple[int, np.ndarray, th.Tensor]] = []  # (step, envs, values)
        act_dim = int(np.prod(self.action_space.shape))
        while n_steps < n_rollout_steps:
            bar_index = self._checked_bar_index(source)  # [n_envs]
            with th.no_grad():
                encoded = encodings.lookup(bar_index, horizon=n_rollout_steps - n_steps + 1)
                account = obs_as_tensor(self._last_obs[ACCOUNT_KEY], self.device)  # [n_envs, A]
                actions, values, log_probs, sigmas = policy.act_from_encoded(encoded, account)
                # the step's one device-to-host transfer: actions, values, log-probs, sigmas
                packed = th.cat(
                    (actions.reshape(-1, act_dim), values.reshape(-1, 1),
                     log_probs.reshape(-1, 1), sigmas.reshape(-1, act_dim)), dim=1
                ).cpu().numpy()  # [n_envs, 2 * act + 2]
            actions = packed[:, :act_dim].reshape(-1, *self.action_space.shape)
            values, log_probs = packed[:, act_dim], packed[:, act_dim + 1]  # [n_envs] each
            sigmas = packed[:, act_dim + 2 :]  # [n_envs, act]
            clipped_actions = np.clip(actions, self.action_space.low, self.action_space.high)

            new_obs, rewards, dones, infos = env.step(clipped_actions)
            self.num_timesteps += env.num_envs

            callback.update_locals(locals())
            if not callback.on_step():
                return False
            self._update_info_buffer(infos, dones)
            n_steps += 1

            # Handle timeout by bootstrapping with the value function (SB3 GH#633). Terminal
            # observations are rare: they take the window path, in one batch per step, and
            # their values stay on the device until the rollout ends (no transfer per step).
            truncated = [
                idx
                for idx, done in enumerate(dones)
                if done
                and infos[idx].get("terminal_observation") is not None
                and infos[idx].get("TimeLimit.truncated", False)
            ]
            if truncated:
                terminal = {
                    key: np.stack([infos[i]["terminal_observation"][key] for i in truncated])
                    for key in infos[truncated[0]]["terminal_observation"]
                }
                with th.no_grad():
                    terminal_values = policy.predict_values(policy.obs_to_tensor(terminal)[0])
                bootstraps.append((rollout_buffer.pos, np.asarray(truncated), terminal_values))

            rollout_buffer.add_bars(
                bar_index,
                self._last_obs[ACCOUNT_KEY],
                actions,
                rewards,
                self._last_episode_starts,  # type: ignore[arg-type]
                values,
                log_probs,
                sigmas,
            )
            self._last_obs = new_obs  # type: ignore[assignment]
            self._last_episode_starts = dones

        if bootstraps:  # one transfer for the whole rollout
            flat = th.cat([v.reshape(-1) for _, _, v in bootstraps]).cpu().numpy()
            start = 0
            for pos, envs, _ in bootstraps:
                rollout_buffer.rewards[pos, envs] += self.gamma * flat[start : start + len(envs)]
                start += len(envs)
        bar_index = self._checked_bar_index(source)
        with th.no_grad():
            encoded = encodings.lookup(bar_index, horizon=1)
            account = obs_as_tensor(new_obs[ACCOUNT_KEY], self.device)
            values = policy.heads_from_encoded(encoded, account)[2]  # [n_envs]
        rollout_buffer.compute_returns_and_advantage(last_values=values, dones=dones)
        self.logger.record("rollout/sigma_mean", float(rollout_buffer.sigmas.mean()))
        self.logger.record("rollout/bars_encoded_per_step", encodings.bars_encoded / (
            n_rollout_steps * env.num_envs))

        callback.update_locals(locals())
        callback.on_rollout_end()
        return True

    def _checked_bar_index(self, source: BarSource) -> np.ndarray:
        """``env.bar_index``, after checking it names the bars of the current observation."""
        bar_index = source.bar_index()
        if not source.last_bars_match(self._last_obs, bar_index):
            raise RuntimeError(
                "MLKVPPO: env.bar_index does not name the last bar of the current observation "
                "(obs['candles'][i, -1] != env.features[env.bar_index[i]]); the env breaks the "
                "features/bar_index contract. Pass fast_rollout=False to use SB3's window path."
            )
        return bar_index

    # ------------------------------------------------------------------ updates
    def train(self) -> None:
        """SB3's PPO update; with a bar buffer its minibatches follow ``fast_update``.

        With the fast update, advantages are normalised once over the whole rollout
        (:func:`normalize_rollout_advantages`) instead of per minibatch: a minibatch of
        contiguous segments holds a few trajectories, whose advantages share a trend that
        per-minibatch normalisation would remove.
        """
        buffer = self.rollout_buffer
        fast = isinstance(buffer, BarRolloutBuffer) and self.fast_update
        if isinstance(buffer, BarRolloutBuffer):
            buffer.segment_len = self.segment_len if self.fast_update else None
        normalize = self.normalize_advantage
        if fast and normalize:
            buffer.advantages = normalize_rollout_advantages(buffer.advantages)
            self.normalize_advantage = False  # SB3's per-minibatch pass: already done
        try:
            if fast and isinstance(self.policy, MLKVActorCriticPolicy):
                self._train_segments()
            else:
                super().train()
        finally:
            self.normalize_advantage = normalize
        if isinstance(self.policy, MLKVActorCriticPolicy) and self.policy.last_sigma_mean:
            self.logger.record("train/sigma_mean", self.policy.last_sigma_mean)

    def _train_segments(self) -> None:
        """SB3's ``PPO.train`` (2.x, same losses, logging and ``target_kl`` stop) with the
        gradients in one flat buffer (:meth:`MLKVActorCriticPolicy.flat_grads`).

        ``optimizer.zero_grad()`` becomes one ``zero_()`` and ``clip_grad_norm_`` one norm
        and one scale (the same formula: ``g *= min(1, max_norm / (||g|| + 1e-6))``)
        instead of a loop over ~130 parameter tensors, which on one CPU core costs as much
        as a tenth of the gradient step. Parameters without a gradient in a minibatch
        would get a zero one (there are none: the loss reaches every parameter).
        """
        policy = self.policy
        assert isinstance(policy, MLKVActorCriticPolicy)
        policy.set_training_mode(True)
        self._update_learning_rate(policy.optimizer)
        clip_range = self.clip_range(self._current_progress_remaining)  # type: ignore[operator]
        clip_range_vf = None
        if self.clip_range_vf is not None:
            clip_range_vf = self.clip_range_vf(self._current_progress_remaining)  # type: ignore[operator]
        entropy_losses, pg_losses, value_losses, clip_fractions = [], [], [], []
        approx_kl_divs: list[np.ndarray] = []
        flat = policy.flat_grads()
        continue_training = True
        for epoch in range(self.n_epochs):
            approx_kl_divs = []
            for rollout_data in self.rollout_buffer.get(self.batch_size):
                values, log_prob, entropy = policy.evaluate_actions(
                    rollout_data.observations, rollout_data.actions
                )
                values = values.flatten()
                advantages = rollout_data.advantages
                if self.normalize_advantage and len(advantages) > 1:
                    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
                ratio = th.exp(log_prob - rollout_data.old_log_prob)
                policy_loss_1 = advantages * ratio
                policy_loss_2 = advantages * th.clamp(ratio, 1 - clip_range, 1 + clip_range)
                policy_loss = -th.min(policy_loss_1, policy_loss_2).mean()
                pg_losses.append(policy_loss.item())
                clip_fractions.append(th.mean((th.abs(ratio - 1) > clip_range).float()).item())
                values_pred = values
                if clip_range_vf is not None:
                    values_pred = rollout_data.old_values + th.clamp(
                        values - rollout_data.old_values, -clip_range_vf, clip_range_vf
                    )
                value_loss = F.mse_loss(rollout_data.returns, values_pred)
                value_losses.append(value_loss.item())
                entropy_loss = -th.mean(-log_prob) if entropy is None else -th.mean(entropy)
                entropy_losses.append(entropy_loss.item())
                loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss
                with th.no_grad():
                    log_ratio = log_prob - rollout_data.old_log_prob
                    approx_kl_div = th.mean((th.exp(log_ratio) - 1) - log_ratio).cpu().numpy()
                    approx_kl_divs.append(approx_kl_div)
                if self.target_kl is not None and approx_kl_div > 1.5 * self.target_kl:
                    continue_training = False
                    if self.verbose >= 1:
                        print(f"Early stopping at step {epoch} due to reaching max kl: "
                              f"{approx_kl_div:.2f}")
                    break
                if flat is None:  # parameters on several devices or dtypes: SB3's calls
                    policy.optimizer.zero_grad()
                    loss.backward()
                    th.nn.utils.clip_grad_norm_(policy.parameters(), self.max_grad_norm)
                else:
                    flat.zero_()
                    loss.backward()
                    with th.no_grad():  # clip_grad_norm_'s formula on one tensor
                        norm = th.linalg.vector_norm(flat)
                        flat.mul_((self.max_grad_norm / (norm + 1e-6)).clamp(max=1.0))
                policy.optimizer.step()
            self._n_updates += 1
            if not continue_training:
                break

        explained_var = explained_variance(
            self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten()
        )
        self.logger.record("train/entropy_loss", np.mean(entropy_losses))
        self.logger.record("train/policy_gradient_loss", np.mean(pg_losses))
        self.logger.record("train/value_loss", np.mean(value_losses))
        self.logger.record("train/approx_kl", np.mean(approx_kl_divs))
        self.logger.record("train/clip_fraction", np.mean(clip_fractions))
        self.logger.record("train/loss", loss.item())
        self.logger.record("train/explained_variance", explained_var)
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)
        if clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", clip_range_vf)
