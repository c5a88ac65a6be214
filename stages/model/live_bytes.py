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
        self.peak_label = label  # the label in force when the peak was reached
        self.created = 0  # storages counted so far: a storage made before the peak's is in at_peak
        self.created_at_peak = 0
        self.storages = WeakIdKeyDictionary()  # storage -> [label, bytes, creation number] while it lives

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

    def add(self, tensor: torch.Tensor) -> None:
        """Count ``tensor``'s storage (once) under the current label until it is freed."""
        storage = tensor.untyped_storage()
        if storage in self.storages:
            return
        self.created += 1
        record = [self.current, storage.nbytes(), self.created]
        self.storages[storage] = record
        self.live[record[0]] = self.live.get(record[0], 0) + record[1]
        weakref.finalize(storage, self._free, record)
        if self.total > self.peak:
            self.peak, self.at_peak, self.peak_label = self.total, dict(self.live), self.current
            self.created_at_peak = self.created

    def relabel(self, tensor: torch.Tensor, name: str) -> None:
        """Count ``tensor``'s storage under ``name`` from now on, and at the peak if it was alive then
        (a gradient is made by the backward's ops and becomes a gradient once accumulated)."""
        record = self.storages.get(tensor.untyped_storage())
        if record is None or record[0] == name:
            return
        old, size, number = record
        moves = [self.live] + ([self.at_peak] if number <= self.created_at_peak else [])
        for table in moves:
            table[old] -= size
            table[name] = table.get(name, 0) + size
        record[0] = name

    def _free(self, record: list) -> None:
        self.live[record[0]] -= record[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.add(leaf)
        return out
