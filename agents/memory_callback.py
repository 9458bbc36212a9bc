"""SB3 callback: value-table usage of the encoder's product-key memory layers, in TensorBoard.

The known failure of product-key memories (Lample et al. 2019; UltraMem, arXiv 2411.12364)
is a few slots doing all the work. Every memory layer counts the slots its tokens read
(:meth:`models.MLKVEncoder.memory_usage`); this callback logs, at each rollout end,

* ``memory/layer{i}_slot_share`` -- share of the ``n_keys ** 2`` slots read at least once;
* ``memory/layer{i}_read_entropy`` -- entropy (nats) of the reads' distribution over slots;
* ``memory/layer{i}_read_entropy_ratio`` -- the same over ``log(n_slots)`` (1 = even reads);

and resets the counters, so each point covers the reads since the previous rollout end
(PPO: the last update's epochs and this rollout's encodings).

Usage::

    model.learn(total_timesteps, callback=[other_callback, MemoryUsageCallback()])

The callback does nothing for a policy without memory layers, so it can always be added.
"""

from __future__ import annotations

from stable_baselines3.common.callbacks import BaseCallback

from models import MLKVEncoder

__all__ = ["MemoryUsageCallback"]


class MemoryUsageCallback(BaseCallback):
    """Logs and resets the memory-layer usage statistics of the policy's encoders.

    Keys are ``memory/layer{i}_...`` when the policy has one encoder (actor and critic
    sharing a features extractor); with several (separate actor/critic extractors, SAC's
    actor, critic and target critic) each gets its module path in the key, e.g.
    ``memory/vf_features_extractor/layer4_slot_share``.

    Args:
        verbose: SB3 verbosity (0: silent).
    """

    def __init__(self, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.encoders: dict[str, MLKVEncoder] = {}  # key prefix -> encoder with memories

    def _init_callback(self) -> None:
        found = [
            (name, m)
            for name, m in self.model.policy.named_modules()  # shared modules appear once
            if isinstance(m, MLKVEncoder) and m.memories
        ]
        self.encoders = {
            "memory/"
            if len(found) == 1
            else "memory/" + name.removesuffix(".encoder").replace(".", "/") + "/": enc
            for name, enc in found
        }

    def _on_training_start(self) -> None:
        for enc in self.encoders.values():  # drop reads made before training started
            enc.reset_memory_usage()

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        for prefix, enc in self.encoders.items():
            for layer, usage in enc.memory_usage(reset=True).items():
                if usage.reads == 0:
                    continue
                self.logger.record(f"{prefix}layer{layer}_slot_share", usage.slot_share)
                self.logger.record(f"{prefix}layer{layer}_read_entropy", usage.read_entropy)
                self.logger.record(
                    f"{prefix}layer{layer}_read_entropy_ratio", usage.read_entropy_ratio
                )
