"""The MLKV transformer: KV-sharing plans, sliding-window attention, encoder, KV cache.

Depends on torch only.

* :class:`KVSharingPlan` -- which layer's K/V every layer uses (MHA, GQA, MQA, CLA, MLKV);
* :class:`EncoderConfig`, :class:`MLKVEncoder` -- the candle encoder, runnable on windows
  (``forward``), whole series (``encode_series``) or streamed bars (``step``);
* :class:`KVCache`, :func:`cache_bytes` -- the streaming cache and its memory formula;
* :class:`StreamingEncoder` -- ``step`` on a cache and input buffer it owns (CUDA graphs);
* :class:`PKMConfig`, :class:`ProductKeyMemory`, :class:`MemoryUsage`,
  :func:`product_key_topk` -- the sparse product-key memory that replaces the MLP of the
  layers in ``EncoderConfig.memory_layers``, and its value-table usage statistics.
"""

from .cache import KVCache, cache_bytes
from .encoder import EncoderConfig, MLKVEncoder
from .memory import MemoryUsage, PKMConfig, ProductKeyMemory, product_key_topk
from .plan import KVSharingPlan
from .streaming import StreamingEncoder

__all__ = [
    "EncoderConfig",
    "KVCache",
    "KVSharingPlan",
    "MLKVEncoder",
    "MemoryUsage",
    "PKMConfig",
    "ProductKeyMemory",
    "StreamingEncoder",
    "cache_bytes",
    "product_key_topk",
]
