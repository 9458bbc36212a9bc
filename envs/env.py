"""``MarketReplayEnv``: a gymnasium environment that replays candles to a trading agent."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pandas as pd
from gymnasium import spaces

from envs.config import EnvConfig
from envs.features import FEATURE_CLIP, FEATURE_NAMES
from envs.kernels import (
    ACCOUNT_CLIP,
    ACCOUNT_NAMES,
    C_BAR,
    C_START,
    C_STEP,
    C_TRUNCATED,
    L_COST,
    L_EQUITY,
    L_FILL,
    L_POSITION,
    L_REWARD,
    L_UNITS,
    LEDGER_COLUMNS,
    M_CLOSE,
    M_OPEN,
    N_COUNTERS,
    N_STATE,
    S_COST,
    S_EQUITY,
    S_POSITION,
    S_REWARD,
    MarketArrays,
    make_params,
    reset_kernel,
    step_kernel,
)

ENV_ID = "mlkv_trader/MarketReplay-v0"
_ONE = (1,)


class MarketReplayEnv(gym.Env):
    """Replay of a candle series to an agent that sets a target position at every bar close.

    Registered as ``"mlkv_trader/MarketReplay-v0"``:
    ``gymnasium.make(ENV_ID, candles=df, config=EnvConfig(...))``.

    **Observation** ``Dict(candles=Box(-10, 10, (T, F)), account=Box(-10, 10, (A,)))``, float32:

    * ``candles``: features (:data:`envs.features.FEATURE_NAMES`, F = 9, scale-free, O(1)) of
      the ``T = config.window`` bars ending at bar ``bar_index`` (the decision bar), i.e.
      exactly ``features[bar_index - T + 1 : bar_index + 1]``. Bars before
      ``first_valid`` (indicator warm-up) never appear.
    * ``account`` (A = 8, :data:`ACCOUNT_NAMES`): position held at the last close as a
      fraction of equity / ``max_position``; unrealised log PnL of the open position and log
      equity change since the episode start, each as a z-score (divided by ``max_position *
      ATR/close * sqrt(bars)``); bars in position ``h`` as ``h / (h + T)``; sin/cos of the
      time of day and of the day of week of the last bar (UTC). Clipped to +-10.

    **Action** ``Box(-1, 1, (1,))`` float32: the target position as a fraction of equity,
    times ``max_position`` (negative = short). Out-of-range values are clipped to [-1, 1];
    NaN/inf or a shape other than ``(1,)`` or ``()`` raises ``ValueError``. With
    ``config.action="discrete"``: ``Discrete(3)``, 0 = short, 1 = flat, 2 = long (+-max_position).

    **Dynamics.** The decision made at bar ``t``'s close fills at bar ``t + 1``'s open; the
    position is then marked at bar ``t + 1``'s close. Filling rebalances to the target
    fraction of the post-cost equity (:func:`envs.costs.rebalance`), paying
    ``(commission + half_spread + slippage) bps`` of the traded notional, plus
    ``financing bps`` of the held notional per bar. Repeating a target only trades the drift
    of the position fraction (none at 0 or at +1 with no leverage). Positions are not
    liquidated at the end of an episode.

    **Reward** ``log(equity_{t+1} / equity_t)``, net of all costs, so an episode's rewards sum
    to ``log(final equity / initial equity)``.

    **Episodes.** ``mode="train"``: the first observation ends at a bar drawn uniformly by
    ``self.np_random`` (seeded by ``reset(seed=...)``) and the episode lasts
    ``episode_length`` steps. ``mode="test"``: one deterministic walk from the first full
    window after the warm-up to the last bar. The end of the episode **truncates**; equity
    falling to ``1e-9 * initial_equity`` or below (ruin) **terminates**, with the equity
    recorded at that floor.

    **Info** (from ``reset`` and ``step``): ``equity`` (currency), ``position`` (fraction of
    equity at the last close), ``cost`` (paid this step, currency; 0 at reset) and ``time``
    (``pd.Timestamp`` of bar ``bar_index``). :meth:`ledger` returns the episode so far.

    Attributes:
        config: the :class:`EnvConfig`.
        features: float32 ``[n_bars, F]`` array observations are sliced from.
        first_valid: first bar with defined features.
        bar_index: index into ``features`` of the last bar of the current observation.
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 - gymnasium's convention

    def __init__(
        self,
        candles: pd.DataFrame | MarketArrays,
        config: EnvConfig | dict[str, Any] | None = None,
        render_mode: str | None = None,
    ) -> None:
        if render_mode is not None:
            raise ValueError(f"render_mode must be None (no rendering), got {render_mode!r}.")
        self.render_mode = render_mode
        self.config = as_config(config)
        self.market = (
            candles if isinstance(candles, MarketArrays) else MarketArrays.from_candles(candles)
        )
        self._first, self._last_start = episode_starts(self.config, self.market)
        self.observation_space, self.action_space = make_spaces(self.config)
        cfg = self.config
        self._window = cfg.window
        self._discrete = cfg.action == "discrete"
        self._params = make_params(cfg)
        self._counters = np.zeros((1, N_COUNTERS), dtype=np.int64)
        self._state = np.zeros((1, N_STATE), dtype=np.float64)
        rows = episode_capacity(cfg, self.market) if cfg.record_ledger else 0
        self._ledger = np.zeros((1, rows, 1, len(LEDGER_COLUMNS)), dtype=np.float64)
        self._action = np.zeros(1, dtype=np.float64)
        self._reward = np.zeros(1, dtype=np.float32)
        self._done = np.zeros(1, dtype=bool)
        self._obs_shapes = ((1, cfg.window, len(FEATURE_NAMES)), (1, len(ACCOUNT_NAMES)))
        self._kind = "i" if self._discrete else "f"  # dtype kind of fast-path array actions
        self._kernel_inputs = (
            self._action,
            self.market.features,
            self.market.market,
            self._params,
            self._counters,
            self._state,
            self._ledger,
        )
        self._times = self.market.times
        self._ready = False

    # ------------------------------------------------------------------ public attributes
    @property
    def features(self) -> np.ndarray:
        """float32 ``[n_bars, F]``: every bar's features; observations are slices of it."""
        return self.market.features

    @property
    def first_valid(self) -> int:
        """First bar whose features are defined (earlier rows are warm-up zeros)."""
        return self.market.first_valid

    @property
    def bar_index(self) -> int:
        """Index into ``features`` of the last bar of the current observation."""
        return self._counters.item(C_BAR)

    # ------------------------------------------------------------------ gymnasium API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode (a random start in train mode, the split's start in test mode).

        Args:
            seed: seeds ``self.np_random`` (only train-mode starts are random).
            options: unused; must be empty.
        """
        super().reset(seed=seed)
        if options:
            raise ValueError(f"reset options are not supported, got {sorted(options)}.")
        start, end = draw_episode(self.config, self.market, self.np_random)
        candles = np.empty(self._obs_shapes[0], dtype=np.float32)
        account = np.empty(self._obs_shapes[1], dtype=np.float32)
        reset_kernel(
            np.zeros(1, dtype=np.int64),
            np.array([start], dtype=np.int64),
            np.array([end], dtype=np.int64),
            float(self.config.initial_equity),
            self.market.features,
            self.market.market,
            self._params,
            self._counters,
            self._state,
            candles,
            account,
        )
        self._ready = True
        obs = {"candles": candles[0], "account": account[0]}
        return obs, self._info(0.0)

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Fill ``action`` at the next bar's open, mark at its close (see the class docstring).

        Raises:
            ValueError: NaN/inf, wrong shape or (discrete) not one of 0, 1, 2.
            RuntimeError: the episode is over (or never started): call ``reset()``.
        """
        if not self._ready:
            raise RuntimeError("the episode is over or was never started: call reset() first.")
        buf = self._action
        kind = type(action)
        if kind is float and not self._discrete:
            buf[0] = action
        elif kind is np.ndarray and action.shape == _ONE and action.dtype.kind == self._kind:
            buf[0] = action[0]  # the common case, fast; NaN/inf and bad codes: the kernel
        else:
            buf[0] = self._parse_action(action)
        candles = np.empty(self._obs_shapes[0], dtype=np.float32)
        account = np.empty(self._obs_shapes[1], dtype=np.float32)
        status = step_kernel(*self._kernel_inputs, candles, account, self._reward, self._done)
        if status < 0:
            raise ValueError(invalid_action_message(action, self._discrete))
        terminated = truncated = False
        if status:
            self._ready = False
            truncated = bool(self._counters.item(C_TRUNCATED))
            terminated = not truncated
        state = self._state
        info = {
            "equity": state.item(S_EQUITY),
            "position": state.item(S_POSITION),
            "cost": state.item(S_COST),
            "time": self._times[self._counters.item(C_BAR)],
        }
        # the float64 reward (the kernel's float32 output is for VecEnvs)
        obs = {"candles": candles[0], "account": account[0]}
        return obs, state.item(S_REWARD), terminated, truncated, info

    def render(self) -> None:
        """No rendering (``render_mode`` is always None); see :meth:`ledger` instead."""
        return None

    # ------------------------------------------------------------------ ledger
    def ledger(self) -> pd.DataFrame:
        """The episode so far, one row per step (the bar the position was held in).

        Columns: ``time`` (the bar's timestamp), ``price`` (its close: the mark),
        ``fill_price`` (its open: where the rebalance filled), ``position`` (target held
        through the bar, fraction of post-cost equity), ``fill`` (signed traded notional /
        pre-trade equity), ``units`` (quantity held), ``costs`` (paid at the fill, currency),
        ``equity`` (at the close) and ``reward`` (net log return of the step).

        Raises:
            RuntimeError: ``config.record_ledger`` is False.
        """
        if not self.config.record_ledger:
            raise RuntimeError("the ledger is off: build the env with record_ledger=True.")
        steps = int(self._counters[0, C_STEP])
        start = int(self._counters[0, C_START])
        return ledger_frame(self.market, start, self._ledger[0, :steps, 0])

    # ------------------------------------------------------------------ helpers
    def _parse_action(self, action: Any) -> float:
        if self._discrete:
            if isinstance(action, bool | np.bool_):
                raise ValueError(invalid_action_message(action, True))
            if isinstance(action, int | np.integer):
                return float(action)
            arr = np.asarray(action)
            if arr.shape not in ((), (1,)) or arr.dtype.kind not in "iu":
                raise ValueError(invalid_action_message(action, True))
            return float(arr.reshape(-1)[0])
        try:
            arr = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(invalid_action_message(action, False)) from None
        if arr.shape != (1,) and arr.shape != ():
            raise ValueError(invalid_action_message(action, False))
        return float(arr.reshape(-1)[0])

    def _info(self, cost: float) -> dict[str, Any]:
        state = self._state
        return {
            "equity": state.item(S_EQUITY),
            "position": state.item(S_POSITION),
            "cost": cost,
            "time": self._times[self._counters.item(C_BAR)],
        }


# ---------------------------------------------------------------------- shared helpers
def as_config(config: EnvConfig | dict[str, Any] | None) -> EnvConfig:
    """An :class:`EnvConfig` from a config, a mapping (``from_dict``) or None (defaults)."""
    if config is None:
        return EnvConfig()
    if isinstance(config, EnvConfig):
        return config
    if isinstance(config, dict):
        return EnvConfig.from_dict(config)
    raise TypeError(f"config must be an EnvConfig, a dict or None, got {type(config).__name__}.")


def make_spaces(config: EnvConfig) -> tuple[spaces.Dict, spaces.Space]:
    """Observation and action spaces for ``config``."""
    n_feat, n_acc = len(FEATURE_NAMES), len(ACCOUNT_NAMES)
    observation = spaces.Dict(
        {
            "candles": spaces.Box(
                -FEATURE_CLIP, FEATURE_CLIP, (config.window, n_feat), dtype=np.float32
            ),
            "account": spaces.Box(-ACCOUNT_CLIP, ACCOUNT_CLIP, (n_acc,), dtype=np.float32),
        }
    )
    if config.action == "discrete":
        return observation, spaces.Discrete(3)
    return observation, spaces.Box(-1.0, 1.0, (1,), dtype=np.float32)


def episode_starts(config: EnvConfig, market: MarketArrays) -> tuple[int, int]:
    """``(first, last)`` allowed start bar (last bar of the first observation).

    Raises:
        ValueError: the candles are too short for ``window`` (+ ``episode_length`` in train
            mode), naming the fields and the bars needed.
    """
    first = market.first_valid + config.window - 1
    n = market.n_bars
    steps = config.episode_length if config.mode == "train" else 1
    last = n - 1 - steps
    if last < first:
        need = market.first_valid + config.window + steps
        what = f"window={config.window}"
        if config.mode == "train":
            what += f" + episode_length={config.episode_length}"
        raise ValueError(
            f"candles have {n} bars, too few for {what}: an episode needs at least {need} "
            f"({market.first_valid} warm-up bars + the window + the steps). Use more data, a "
            "smaller window" + (" or a shorter episode_length." if config.mode == "train" else ".")
        )
    return first, last


def episode_capacity(config: EnvConfig, market: MarketArrays) -> int:
    """Most steps one episode can take (ledger rows)."""
    if config.mode == "train":
        return config.episode_length
    return market.n_bars - 1 - (market.first_valid + config.window - 1)


def draw_episode(
    config: EnvConfig, market: MarketArrays, rng: np.random.Generator
) -> tuple[int, int]:
    """``(start, end)`` bars of a new episode: random start in train mode (one draw from
    ``rng``), the whole split in test mode (no draw)."""
    first, last = episode_starts(config, market)
    if config.mode == "train":
        start = int(rng.integers(first, last + 1))
        return start, start + config.episode_length
    return first, market.n_bars - 1


def ledger_frame(market: MarketArrays, start: int, rows: np.ndarray) -> pd.DataFrame:
    """Ledger DataFrame of one episode from its ``[steps, 6]`` ledger rows."""
    bars = np.arange(start + 1, start + 1 + rows.shape[0])
    return pd.DataFrame(
        {
            "time": market.index[bars],
            "price": market.market[bars, M_CLOSE],
            "fill_price": market.market[bars, M_OPEN],
            "position": rows[:, L_POSITION],
            "fill": rows[:, L_FILL],
            "units": rows[:, L_UNITS],
            "costs": rows[:, L_COST],
            "equity": rows[:, L_EQUITY],
            "reward": rows[:, L_REWARD],
        }
    )


def invalid_action_message(action: Any, discrete: bool) -> str:
    """A message saying what is wrong with ``action`` and what is expected."""
    shown = repr(action.item() if isinstance(action, np.generic) else action)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    if discrete:
        return (
            f"invalid action {shown}: expected one integer in {{0, 1, 2}} "
            "(0 = short, 1 = flat, 2 = long)."
        )
    return (
        f"invalid action {shown}: expected a finite float array of shape (1,) (target position "
        "in [-1, 1]; values outside are clipped), without NaN or inf."
    )
