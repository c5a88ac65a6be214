"""Resumable training checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint is a folder ``step_NNNNNN`` under ``<train>.checkpoints/<run id>/``: each run writes
under its own id (recorded in its manifest), so two runs never share checkpoints and a forced
rerun never picks up an older run's. Written atomically: ``tensors.safetensors`` (model,
optimizer state, EMA and SWA tensors) and ``state.json`` (step, elapsed seconds, switches,
loader position, optimizer hyperparameters, the resolved config, the time ledger so far, the
data it trained on, the sha256 of the tensors). No pickles: a checkpoint is as inspectable as
any stage output.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import to_dict
from ..contract.hashing import sha256_file
from ..contract.stage_dir import StageDir
from ..errors import GolfError
from ..model.checkpoint import load_model_weights, load_tensors, save_tensors
from ..model.layers import Linear
from .loop import Trainer

TENSORS_FILE = "tensors.safetensors"
STATE_FILE = "state.json"


def checkpoint_root(out_dir: str | Path) -> Path:
    """Where the checkpoints of every run aimed at ``out_dir`` live, one subfolder per run id."""
    out = Path(out_dir).resolve()
    return out.parent / f"{out.name}.checkpoints"


def run_checkpoint_dir(out_dir: str | Path, run_id: str) -> Path:
    return checkpoint_root(out_dir) / run_id


def data_identity(data: StageDir) -> dict:
    """What a checkpoint remembers of its training data, so a resume can refuse other data."""
    return {
        "tokenizer_sha256": data.lineage.get("tokenizer_sha256"),
        "vocab_size": data.lineage.get("vocab_size"),
        "train_shards": {name: record.sha256 for name, record in sorted(data.manifest.outputs.items())
                         if name.startswith("fineweb_train_")},
    }


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


def save_checkpoint(trainer: Trainer, root: Path, data: dict, ledger: dict, run_id: str,
                    preset: str | None = None) -> Path:
    """Write ``step_NNNNNN`` atomically under this run's checkpoint folder; return its path.

    ``data`` is ``data_identity`` of the training data, ``ledger`` the stage's time ledger so far,
    ``preset`` the preset the run started from (a resumed run records it, so quantize takes its scheme).
    """
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
        "run_id": run_id, "data": data, "ledger": ledger, "preset": preset,
        "tensors_sha256": sha256_file(tmp / TENSORS_FILE),
    }
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=1) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    return final


@dataclass
class Resumed:
    """What a resumed run carries over from its checkpoint besides the trainer state."""

    folder: Path
    """The checkpoint folder."""
    step: int
    """The step it was saved at."""
    run_id: str
    """The run that wrote it."""
    ledger: dict
    """That run's time ledger up to the checkpoint: the resumed ledger starts from it."""


def read_state(folder: str | Path) -> dict:
    """The checkpoint's state.json, refusing anything that is not one."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise GolfError(f"{folder}: not a golf train checkpoint (no {STATE_FILE})")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GolfError(f"{path}: corrupt checkpoint state ({exc.__class__.__name__}: {str(exc).splitlines()[0]})") from None
    missing = [key for key in REQUIRED_STATE if not isinstance(state, dict) or key not in state]
    if missing:
        raise GolfError(f"{path}: corrupt checkpoint state (missing {', '.join(missing)})")
    return state


REQUIRED_STATE = ("step", "elapsed", "loop_on_step", "qat_on_step", "looping", "loader", "optimizers",
                  "swa_count", "config", "run_id", "data", "ledger", "tensors_sha256")


def read_checkpoint_config(folder: str | Path) -> dict:
    return read_state(folder)["config"]


def checkpoint_preset(folder: str | Path) -> str | None:
    """The preset the checkpoint's run started from (None: not recorded, as before golf kept it)."""
    return read_state(folder).get("preset")


def require_same_data(state: dict, data: StageDir, folder: Path) -> None:
    """A resumed run must train on the tokenizer and the training shards its checkpoint saw."""
    then, now = state["data"], data_identity(data)
    if then["tokenizer_sha256"] != now["tokenizer_sha256"]:
        raise GolfError(f"{folder}: was trained with tokenizer {str(then['tokenizer_sha256'])[:12]}, "
                        f"--data {data.path} has {str(now['tokenizer_sha256'])[:12]}; resume on the same data")
    if then["train_shards"] != now["train_shards"]:
        raise GolfError(f"{folder}: was trained on other training shards than those of {data.path}; "
                        "resume on the same data")


def restore_checkpoint(trainer: Trainer, folder: str | Path, data: StageDir) -> Resumed:
    """Load model, optimizers, averages, loader position and counters into a fresh trainer.

    Refuses a checkpoint of other data, a tensors file that changed since it was written, and
    a model config whose shapes differ from the checkpoint's, each with a one-line error.
    """
    folder = Path(folder)
    state = read_state(folder)
    require_same_data(state, data, folder)
    if sha256_file(folder / TENSORS_FILE) != state["tensors_sha256"]:
        raise GolfError(f"{folder / TENSORS_FILE}: changed since the checkpoint was written")
    tensors = load_tensors(folder / TENSORS_FILE)
    model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    load_model_weights(trainer.model, model_state, f"checkpoint {folder}")
    try:
        _restore_optimizers(trainer, tensors, state)
        _restore_averages(trainer, tensors, state)
        trainer.loader.load_state_dict(state["loader"])
    except (KeyError, ValueError, RuntimeError) as exc:
        raise GolfError(f"{folder}: does not fit this run's config ({str(exc).splitlines()[0]})") from None
    trainer.step, trainer.elapsed = state["step"], state["elapsed"]
    trainer.loop_on_step, trainer.qat_on_step = state["loop_on_step"], state["qat_on_step"]
    trainer.model.looping = state["looping"]
    if trainer.qat_on_step is not None:
        for module in trainer.model.modules():
            if isinstance(module, Linear):
                module.fake_quant_bits = trainer.tcfg.qat_bits
    return Resumed(folder, state["step"], state["run_id"], state["ledger"])


def _restore_optimizers(trainer: Trainer, tensors: dict, state: dict) -> None:
    if len(state["optimizers"]) != len(trainer.optimizers):
        raise ValueError(f"{len(state['optimizers'])} optimizers saved, this run has {len(trainer.optimizers)}")
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


def _restore_averages(trainer: Trainer, tensors: dict, state: dict) -> None:
    """EMA shadows and the SWA mean, float32 on the model's device (the file is read to the CPU)."""
    if trainer.ema is not None:
        trainer.ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    if trainer.swa is not None:
        trainer.swa.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("swa.")},
                                    state["swa_count"], trainer.device)
