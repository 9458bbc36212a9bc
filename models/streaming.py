"""Streaming ``step`` with static buffers: the shape CUDA graphs need (the gpt-fast pattern).

A CUDA graph replays fixed kernels on fixed memory. :meth:`MLKVEncoder.step` takes its cache
as an argument, so a graph captured around it would bake in one cache's addresses, and
``torch.compile(mode="reduce-overhead")`` treats the mutated cache buffers as mutated
*inputs*, which CUDA graph trees refuse. :class:`StreamingEncoder` instead **owns** the
cache and a static input buffer as its own (non-persistent) buffers, like gpt-fast's
``model.setup_caches``: the captured step reads ``self.x_t``, reads and writes
``self.cache`` in place and returns a tensor in the graph's memory pool, which the next
replay overwrites, so :meth:`StreamingEncoder.forward` returns a clone.

On CUDA the step is captured once into a ``torch.cuda.CUDAGraph`` (after warm-up runs on a
side stream, with the cache restored afterwards) and replayed per bar; with
``config.compile="reduce-overhead"`` torch.compile's CUDA graph trees do the capturing
instead. On the CPU the same module runs eagerly or compiled, so everything but the
capture itself is tested there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from .encoder import MLKVEncoder

__all__ = ["StreamingEncoder"]


class StreamingEncoder(nn.Module):
    """Step ``batch`` streams through ``encoder`` with a cache and input buffer it owns.

    Inference only: call it under ``torch.inference_mode()`` (or ``no_grad``).

    Args:
        encoder: the encoder (shared, not copied: weight updates are seen by the next step).
        batch: number of streams ``B`` (environments).
        device: defaults to the encoder's device.
        cuda_graph: capture the step into a CUDA graph; default: on a CUDA device unless
            ``encoder.config.compile == "reduce-overhead"`` (which captures by itself).

    Example:
        >>> stream = StreamingEncoder(encoder, batch=1024)
        >>> with torch.inference_mode():
        ...     out = stream(x_t)  # [1024, D], a fresh tensor
        ...     stream.reset(dones)  # rows whose episode restarts
    """

    def __init__(
        self,
        encoder: MLKVEncoder,
        batch: int,
        device: torch.device | str | None = None,
        cuda_graph: bool | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.cache = encoder.new_cache(batch, device=device)
        dev = self.cache.pos.device
        n_features = encoder.config.n_features
        self.register_buffer("x_t", torch.zeros(batch, n_features, device=dev), persistent=False)
        compile_mode = encoder.config.compile
        if cuda_graph is None:
            cuda_graph = dev.type == "cuda" and compile_mode != "reduce-overhead"
        if cuda_graph and dev.type != "cuda":
            raise ValueError(f"StreamingEncoder: cuda_graph=True needs a CUDA device, got {dev}.")
        self.cuda_graph = cuda_graph
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_out: torch.Tensor | None = None

    @property
    def batch(self) -> int:
        """Number of streams ``B``."""
        return self.cache.batch

    def forward(self, x_t: torch.Tensor) -> torch.Tensor:
        """Encode the next bar of every stream: ``[B, F] -> [B, D]``.

        Equals :meth:`MLKVEncoder.step` with this module's cache. The result is a new tensor
        (a clone of the graph's output), so it stays valid after the next step.
        """
        if x_t.shape != self.x_t.shape:
            raise ValueError(
                f"StreamingEncoder: expected x_t of shape {tuple(self.x_t.shape)} [B, F], got "
                f"{tuple(x_t.shape)}."
            )
        self.x_t.copy_(x_t)
        if self.cuda_graph:
            if self._graph is None:
                self._capture()
            assert self._graph is not None and self._graph_out is not None
            self._graph.replay()
            out = self._graph_out
        else:
            out = self._dispatch()()
        return out.clone()

    def reset(self, mask: torch.Tensor | None = None) -> None:
        """Restart streams (all, or the rows ``mask`` marks): see :meth:`KVCache.reset`.

        In place on the owned buffers, so a captured graph sees it.
        """
        self.cache.reset(mask)

    # ------------------------------------------------------------------ implementation
    def _run(self) -> torch.Tensor:
        """One step on the owned buffers (what is compiled or captured): ``[B, D]``."""
        return self.encoder._step(self.x_t, self.cache)

    def _dispatch(self) -> Callable[[], torch.Tensor]:
        """``_run``, compiled with the encoder's mode and backend when it has one."""
        mode = self.encoder.config.compile
        if mode is None:
            return self._run
        compiled = self.__dict__.get("_compiled")
        if compiled is None:
            backend = self.encoder.compile_backend
            compiled = torch.compile(
                self._run,
                mode=mode if backend == "inductor" else None,
                backend=backend,
                fullgraph=True,
            )
            self.__dict__["_compiled"] = compiled
        return compiled

    def _capture(self) -> None:
        """Capture one step into a CUDA graph; the cache is left as it was before."""
        saved = [b.clone() for b in self.cache.buffers()]
        run = self._dispatch()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: lazy inits and allocator state off-graph
            for _ in range(3):
                run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._graph_out = run()  # [B, D], lives in the graph's memory pool
        for buf, old in zip(self.cache.buffers(), saved, strict=True):
            buf.copy_(old)  # the warm-up advanced the cache; capturing runs nothing
        self._graph = graph

    def __getstate__(self) -> dict:
        state = super().__getstate__().copy()
        state.pop("_compiled", None)  # compiled callables and graphs do not pickle or copy
        state["_graph"] = state["_graph_out"] = None
        return state

    def extra_repr(self) -> str:
        return f"batch={self.batch}, cuda_graph={self.cuda_graph}"
