"""SB3 glue for the MLKV encoder: features extractor, stochastic actor-critic, fast PPO.

* :class:`MLKVExtractor` -- MLKV encoder on ``obs["candles"]`` + MLP on ``obs["account"]``;
* :class:`MLKVActorCriticPolicy` -- Gaussian actor with state-dependent log-sigma (clamped
  to :data:`LOG_STD_RANGE`) and a critic; ``action_stats``, ``encode_bars``,
  ``heads_from_encoded`` for evaluation;
* :class:`MLKVPPO` -- PPO whose rollouts look bar encodings up instead of re-encoding
  windows and whose updates encode contiguous time segments in one pass;
* :class:`ScaledReward` -- a constant reward multiplier (log returns are ~1e-3 per bar);
* :class:`BarRolloutBuffer`, :class:`SegmentObs` -- the bar-index storage behind it;
* :class:`FlatAdam` -- Adam stepping all parameters as one flat tensor (the policy's
  default optimiser; Adam's state dict).
"""

from .buffers import BarRolloutBuffer
from .extractor import DEFAULT_ENCODER, MLKVExtractor
from .memory_callback import MemoryUsageCallback
from .optim import FlatAdam
from .policy import LOG_STD_RANGE, MLKVActorCriticPolicy, SegmentObs
from .ppo import MLKVPPO, PlainPathWarning
from .reward_scale import ScaledReward

__all__ = [
    "DEFAULT_ENCODER",
    "LOG_STD_RANGE",
    "MLKVPPO",
    "BarRolloutBuffer",
    "FlatAdam",
    "MLKVActorCriticPolicy",
    "MLKVExtractor",
    "MemoryUsageCallback",
    "PlainPathWarning",
    "ScaledReward",
    "SegmentObs",
]
