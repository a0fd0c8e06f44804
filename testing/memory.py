"""The peak bytes of the tensors a piece of torch code creates, on any device (the CPU has no allocator statistics)."""
from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveTensorBytes(TorchDispatchMode):
    """Within `with LiveTensorBytes() as live:`, counts each new storage an op returns from its creation until the
    tensor that brought it is freed; `live.peak` is the most bytes alive at once. Tensors made before the block
    (weights, inputs) are not counted."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._owned: set[int] = set()

    def _freed(self, key: int, size: int) -> None:
        self._owned.discard(key)
        self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
            if size and key not in self._owned:  # a new storage, not a view or an in-place result
                self._owned.add(key)
                self.live += size
                self.peak = max(self.peak, self.live)
                weakref.finalize(tensor, self._freed, key, size)
        return out
