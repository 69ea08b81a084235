"""Device tensors that outlive a batch.

A captured CUDA graph replays fixed kernels on fixed addresses, so everything a decode step reads
or writes (tokens, sampler state, patch targets, capture buffers) is taken from a Store: the next
batch of the same shape gets the same tensors back and can replay the graphs of the last one.
"""

from __future__ import annotations

import torch


class Store:
    """Named tensors, reallocated only when the shape, dtype or device asked for changes."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self.version = 0  # bumped on every reallocation: graphs recorded before it are stale

    def zeros(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
              ) -> torch.Tensor:
        """The tensor called name, of this shape, zeroed."""
        return self._slot(name, tuple(shape), dtype, torch.device(device)).zero_()

    def put(self, name: str, value: torch.Tensor) -> torch.Tensor:
        """The tensor called name, holding a copy of value."""
        return self._slot(name, tuple(value.shape), value.dtype, value.device).copy_(value)

    def _slot(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
              ) -> torch.Tensor:
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        t = self.tensors.get(name)
        if t is None or tuple(t.shape) != shape or t.dtype != dtype or t.device != device:
            self.tensors.pop(name, None)  # free the old one before the new one is allocated
            t = self.tensors[name] = torch.empty(shape, dtype=dtype, device=device)
            self.version += 1
        return t
