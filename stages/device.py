"""Which torch device a stage runs on, from the name a config gives."""

from __future__ import annotations

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
