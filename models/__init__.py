"""The MLKV transformer: KV-sharing plans, sliding-window attention, encoder, KV cache.

Depends on torch only.

* :class:`KVSharingPlan` -- which layer's K/V every layer uses (MHA, GQA, MQA, CLA, MLKV);
* :class:`EncoderConfig`, :class:`MLKVEncoder` -- the candle encoder, runnable on windows
  (``forward``), whole series (``encode_series``) or streamed bars (``step``);
* :class:`KVCache`, :func:`cache_bytes` -- the streaming cache and its memory formula.
"""

from .cache import KVCache, cache_bytes
from .encoder import EncoderConfig, MLKVEncoder
from .plan import KVSharingPlan

__all__ = ["EncoderConfig", "KVCache", "KVSharingPlan", "MLKVEncoder", "cache_bytes"]
