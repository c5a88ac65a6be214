"""Model weights on disk as safetensors, with the model config and lineage in the metadata."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import GolfError
from .config import ModelConfig
from .gpt import GPT


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path), metadata=metadata)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file; a corrupt or foreign file is a one-line GolfError."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise GolfError(f"{path}: not a readable safetensors file ({str(exc).splitlines()[0]})") from None


def model_metadata(config: ModelConfig, lineage: dict) -> dict[str, str]:
    from ..config import to_dict

    return {"model_config": json.dumps(to_dict(config)), "lineage": json.dumps(lineage)}


def load_model_weights(model: GPT, state: dict[str, torch.Tensor], where: str) -> GPT:
    """Load a full state dict, refusing missing or unexpected tensors and shape mismatches."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise GolfError(f"{where}: weights do not fit the model config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise GolfError(f"{where}: {name} has shape {tuple(tensor.shape)}, model expects {tuple(expected[name].shape)}")
    model.load_state_dict(state)
    return model


def load_tensors_and_metadata(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors plus the str->str metadata of a safetensors file."""
    from safetensors import safe_open

    tensors = load_tensors(path)
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    return tensors, metadata
