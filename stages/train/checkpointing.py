"""Resumable training checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint is a folder ``step_NNNNNN`` beside the train folder (``<train>.checkpoints/``),
written atomically: ``tensors.safetensors`` (model, optimizer state, EMA and SWA tensors) and
``state.json`` (step, elapsed seconds, switches, loader position, optimizer hyperparameters,
the resolved config). No pickles: a checkpoint is as inspectable as any stage output.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import torch

from ..config import to_dict
from ..errors import GolfError
from ..model.checkpoint import load_tensors, save_tensors
from ..model.layers import Linear
from .loop import Trainer

TENSORS_FILE = "tensors.safetensors"
STATE_FILE = "state.json"


def checkpoint_root(out_dir: str | Path) -> Path:
    out = Path(out_dir).resolve()
    return out.parent / f"{out.name}.checkpoints"


def _optimizer_tensors(trainer: Trainer) -> tuple[dict[str, torch.Tensor], list]:
    tensors, meta = {}, []
    for i, optimizer in enumerate(trainer.optimizers):
        state = optimizer.state_dict()
        scalars = {}
        for index, entries in state["state"].items():
            for key, value in entries.items():
                if torch.is_tensor(value):
                    tensors[f"opt{i}.{index}.{key}"] = value
                else:
                    scalars[f"{index}.{key}"] = value
        meta.append({"param_groups": state["param_groups"], "scalars": scalars})
    return tensors, meta


def save_checkpoint(trainer: Trainer, out_dir: str | Path) -> Path:
    """Write ``step_NNNNNN`` atomically under the checkpoint root; return its path."""
    root = checkpoint_root(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{trainer.step:06d}"
    tmp = root / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    tensors = {f"model.{k}": v for k, v in trainer.model.state_dict().items()}
    opt_tensors, opt_meta = _optimizer_tensors(trainer)
    tensors.update(opt_tensors)
    if trainer.ema is not None:
        tensors.update({f"ema.{k}": v for k, v in trainer.ema.shadow.items()})
    if trainer.swa is not None:
        tensors.update({f"swa.{k}": v for k, v in trainer.swa.mean.items()})
    save_tensors(tmp / TENSORS_FILE, tensors, {"kind": "golf-train-checkpoint"})
    state = {
        "step": trainer.step, "elapsed": trainer.elapsed, "loop_on_step": trainer.loop_on_step,
        "qat_on_step": trainer.qat_on_step, "looping": trainer.model.looping,
        "loader": trainer.loader.state_dict(), "optimizers": opt_meta,
        "swa_count": trainer.swa.count if trainer.swa is not None else 0,
        "config": to_dict(trainer.config),
    }
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=1) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    return final


def read_checkpoint_config(folder: str | Path) -> dict:
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise GolfError(f"{folder}: not a golf train checkpoint (no {STATE_FILE})")
    return json.loads(path.read_text())["config"]


def restore_checkpoint(trainer: Trainer, folder: str | Path) -> None:
    """Load model, optimizers, averages, loader position and counters into a fresh trainer."""
    folder = Path(folder)
    state = json.loads((folder / STATE_FILE).read_text())
    tensors = load_tensors(folder / TENSORS_FILE)
    trainer.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    for i, (optimizer, meta) in enumerate(zip(trainer.optimizers, state["optimizers"])):
        per_param: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith(f"opt{i}."):
                _, index, name = key.split(".", 2)
                per_param.setdefault(int(index), {})[name] = value
        for key, value in meta["scalars"].items():
            index, name = key.split(".", 1)
            per_param.setdefault(int(index), {})[name] = value
        optimizer.load_state_dict({"state": per_param, "param_groups": meta["param_groups"]})
    if trainer.ema is not None:
        trainer.ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    if trainer.swa is not None:
        trainer.swa.mean = {k[4:]: v for k, v in tensors.items() if k.startswith("swa.")}
        trainer.swa.count = state["swa_count"]
    trainer.loader.load_state_dict(state["loader"])
    trainer.step, trainer.elapsed = state["step"], state["elapsed"]
    trainer.loop_on_step, trainer.qat_on_step = state["loop_on_step"], state["qat_on_step"]
    trainer.model.looping = state["looping"]
    if trainer.qat_on_step is not None:
        for module in trainer.model.modules():
            if isinstance(module, Linear):
                module.fake_quant_bits = trainer.tcfg.qat_bits
