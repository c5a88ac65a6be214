"""Counting the bytes of live tensors, op by op: a memory model that needs no GPU.

``LiveBytes`` is a dispatch mode: every tensor an op creates inside it is counted until its
storage is freed, under the label in force when it was made (``label('forward')``), and the peak
of the total is kept with what each label held at that moment. Run on fake tensors
(``torch._subclasses.FakeTensorMode``), a full-size step allocates nothing and still counts
every byte the real step would allocate, in the order it would, so its peak is the step's peak
(less what a kernel allocates inside itself, which no op reports: see the flash stand-in in
stages/memory.py). Storages, not tensors, are counted: a view adds nothing. Ships inside the
artifact (document TTT sizes its batches with it on CPU): torch only.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary


class LiveBytes(TorchDispatchMode):
    """Bytes of the storages created inside the mode and still alive, by label, with their peak."""

    def __init__(self, label: str = "other"):
        super().__init__()
        self.current = label
        self.live: dict[str, int] = {}
        self.peak = 0
        self.at_peak: dict[str, int] = {}
        self.seen = WeakIdKeyDictionary()  # storage -> True while it lives

    @property
    def total(self) -> int:
        return sum(self.live.values())

    @contextmanager
    def label(self, name: str):
        """Count what is created inside the block under ``name``."""
        previous, self.current = self.current, name
        try:
            yield
        finally:
            self.current = previous

    def reset_peak(self) -> None:
        """Start a new peak from what is alive now."""
        self.peak, self.at_peak = self.total, dict(self.live)

    def add(self, tensor: torch.Tensor, label: str | None = None) -> None:
        """Count ``tensor``'s storage (once) under ``label`` (default: the current one) until it is freed."""
        storage = tensor.untyped_storage()
        if storage in self.seen:
            return
        self.seen[storage] = True
        label = label or self.current
        size = storage.nbytes()
        self.live[label] = self.live.get(label, 0) + size
        weakref.finalize(storage, self._free, label, size)
        if self.total > self.peak:
            self.peak, self.at_peak = self.total, dict(self.live)

    def _free(self, label: str, size: int) -> None:
        self.live[label] -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.add(leaf)
        return out
