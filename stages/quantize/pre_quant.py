"""The pre-quant score of `golf quantize`: taken from the train stage when its final validation
scored these very weights on these very windows, else measured here.

Scoring the val split is the slowest part of quantizing a small model on CPU, and the train
stage has often just done it: its final validation runs on the exported weights (the ones
model.safetensors holds), with non-overlapping windows of train.seq_len over the first
train.val_tokens val tokens of the tokenize folder it read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from ..contract.stage_dir import StageDir
from ..model.config import ModelConfig
from ..progress import Reporter
from ..scoring.bpb import BpbSums, stream_bytes
from ..scoring.val_data import ValData
from ..scoring.validate import scored_prefix
from ..scoring.windows import plan_windows, usable_targets


@dataclass(frozen=True)
class Windows:
    """Which val positions a score covers: equal Windows score exactly the same targets."""

    seq_len: int
    """Window length."""
    stride: int
    """Positions between window starts (seq_len: non-overlapping windows)."""
    targets: int
    """Targets scored: the val prefix cut to whole windows."""

    def describe(self) -> dict:
        return {"tokens": self.targets, "windows": len(plan_windows(self.targets, self.seq_len, self.stride)),
                "seq_len": self.seq_len, "stride": self.stride}


def scoring_windows(val: ValData, seq_len: int, stride: int, max_tokens: int) -> Windows:
    """The windows ``validate`` scores with these settings."""
    return Windows(seq_len, stride, usable_targets(len(scored_prefix(val.tokens, max_tokens)), seq_len))


def pre_quant_score(measure: Callable[[], BpbSums], train: StageDir, data: StageDir, val: ValData,
                    windows: Windows, model: ModelConfig, device_type: str,
                    reporter: Reporter) -> tuple[BpbSums, dict]:
    """The pre-quant sums and a record of where they came from (for the manifest)."""
    sums, why = train_score(train, data, val, windows, model, device_type)
    source = "measured" if sums is None else "train"
    if sums is None:
        sums = measure()
    else:
        reporter.log(pre_quant_val_loss=sums.loss, pre_quant_val_bpb=sums.bpb)
    record = {"source": source, **windows.describe(), "why": why}
    reporter.log(pre_quant_from=source, **{key: value for key, value in record.items() if key != "source"})
    return sums, record


def train_score(train: StageDir, data: StageDir, val: ValData, windows: Windows, model: ModelConfig,
                device_type: str) -> tuple[BpbSums | None, str]:
    """The train stage's final val score as sums over ``windows``, or None; and why."""
    mismatch = _mismatch(train, data, val, windows, model, device_type)
    if mismatch:
        return None, mismatch
    metrics = train.manifest.metrics
    sums = BpbSums(metrics["val_loss"] * windows.targets, target_bytes(val, windows.targets), windows.targets)
    # The bytes are recounted here; they must give back the bpb train recorded from its own sums.
    if not math.isclose(sums.bpb, metrics["val_bpb"], rel_tol=1e-9):
        return None, f"train's val_bpb {metrics['val_bpb']:.8f} is not its val_loss over these windows' bytes"
    return sums, "train's final validation scored these weights on these windows"


def target_bytes(val: ValData, targets: int) -> int:
    """Bytes of val targets 1..targets as scoring counts them: from the sidecar, else the byte table."""
    if val.sidecar is not None:
        return int(val.sidecar[1 : targets + 1].sum())
    stream = val.tokens[: targets + 1]
    # stream_bytes takes the first token to follow a boundary, as a target never does: drop it.
    return stream_bytes(val.table, stream) - stream_bytes(val.table, stream[:1])


def _mismatch(train: StageDir, data: StageDir, val: ValData, windows: Windows, model: ModelConfig,
              device_type: str) -> str | None:
    """Why train's final val score is not this score (None: it is)."""
    manifest = train.manifest
    tcfg, metrics = manifest.config["train"], manifest.metrics
    record = manifest.inputs.get("data")
    if record is None or record.manifest_sha256 != data.manifest_sha256:
        return "train validated on another tokenize folder"
    if "val_loss" not in metrics or "val_bpb" not in metrics:
        return "the train manifest records no final val score"
    trained = scoring_windows(val, tcfg["seq_len"], tcfg["seq_len"], tcfg["val_tokens"])
    if trained != windows:
        return (f"train scored {trained.targets} tokens in windows of {trained.seq_len} (stride {trained.stride}), "
                f"this scores {windows.targets} in windows of {windows.seq_len} (stride {windows.stride})")
    if model.looped and model.loop_start_frac > 0 and metrics.get("loop_on_step") is None:
        return "train's final validation ran before the layer loop switched on; scoring always loops"
    trained_on = _device_type(tcfg["device"], manifest.environment)
    if trained_on != device_type:  # validate autocasts to bf16 on cuda only
        return f"train scored on {trained_on}, this scores on {device_type}: another precision"
    return None


def _device_type(name: str, environment: dict) -> str:
    """The device type a stage configured with ``name`` ran on ('auto': cuda where it saw GPUs)."""
    if name == "auto":
        return "cuda" if environment.get("gpus") else "cpu"
    return "cuda" if name.startswith("cuda") else "cpu"
