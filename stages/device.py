"""Which torch device a stage runs on, from the name a config gives, and whether a size fits its memory."""

from __future__ import annotations

import re
from contextlib import contextmanager

import torch

from .errors import GolfError


def resolve_device(name: str) -> torch.device:
    """'auto' is cuda when available, else cpu; asking for cuda without it is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GolfError(f"device {name!r} requested but CUDA is not available")
    if name != "cpu" and not name.startswith("cuda"):
        raise GolfError(f"unknown device {name!r}: use cpu, cuda or auto")
    return torch.device(name)


GIB = 2**30
_ALLOCATION_SIZE = re.compile(r"allocate ([0-9.]+ ?[A-Za-z]+)")


def available_bytes(device: torch.device) -> int | None:
    """Bytes a stage can still allocate on ``device``: CUDA's free memory, else the OS's MemAvailable
    (Linux); None where neither is known."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_fits(needed: int, device: torch.device, what: str) -> None:
    """Refuse before allocating when ``needed`` bytes (a lower bound of what ``what`` takes) exceed
    what ``device`` has free: an absurd size is one line, not a failed allocation or the OOM killer."""
    available = available_bytes(device)
    if available is not None and needed > available:
        raise GolfError(f"{what} needs at least {needed / GIB:,.1f} GiB, more than the {available / GIB:,.1f} GiB "
                        f"available on {device.type}")


@contextmanager
def allocation_failures(what: str):
    """An allocation that fails in the block (CPU or CUDA) as one line naming ``what`` sized it."""
    try:
        yield
    except (RuntimeError, MemoryError) as exc:  # torch's CPU and CUDA (OutOfMemoryError) failures; numpy's
        if not (isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)) or "can't allocate memory" in str(exc)):
            raise
        size = _ALLOCATION_SIZE.search(str(exc))
        tried = f"; it tried to allocate {size.group(1)}" if size else ""
        raise GolfError(f"out of memory with {what}{tried}: make it smaller") from None
