"""`golf quantize`: trained weights -> quantized codes, with pre- and post-quant bpb side by side.

Reads a train folder (never modified) and the tokenize folder it was trained on (or another one
given explicitly, which must share its tokenizer). Steps:
  load -> score pre-quant (or take train's final score of the same weights on the same windows:
  pre_quant.py) -> calibrate (GPTQ: Hessians from training data, counted toward the train
  budget) -> quantize (or fit --target-bytes) -> score post-quant -> per-tensor report.
Writes ``quantized.safetensors`` (codes, scales, kept-float tensors; the index and model config
in its metadata) and a manifest with the metrics, the per-tensor report and the train budget
with calibration added.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable

import torch

from ..artifact.quantized import QuantizedMetadata
from ..artifact.streams import StreamCodecs
from ..artifact.writer import build_artifact
from ..config import from_dict, to_dict
from ..contract.environment import capture
from ..contract.ledger import BUDGET_LIMIT_SECONDS, TimeLedger
from ..contract.lineage import lineage_folder, require_same_tokenizer
from ..contract.stage_dir import StageDir, StageWriter
from ..data.folder import train_shard_paths
from ..data.loader import make_loader
from ..device import resolve_device
from ..errors import GolfError
from ..model.checkpoint import load_model_weights, load_tensors, save_tensors
from ..model.config import ModelConfig
from ..model.gpt import GPT
from ..progress import Reporter
from ..scoring.bpb import BpbSums
from ..scoring.setup import ScoringSetup
from ..scoring.val_data import ValData, load_val
from ..scoring.validate import scoring_setup, validate
from .calibration import Hessians, collect_hessians, generated_batches, training_batches
from .config import QuantizeConfig
from .dequant import KIND_FLOAT, dequantize_state
from .methods import METHODS
from .pre_quant import Windows, pre_quant_score, scoring_windows
from .quantizer import is_quantized, quantize_state
from .report import log_report, with_compressed_sizes
from .target import Attempt, fit_to_target
from .tensor_report import TensorReport

QUANTIZED_FILE = "quantized.safetensors"


def data_dir_of(stage: StageDir, explicit: str | Path | None) -> StageDir:
    """The tokenize folder to score on: the one given, else the one the upstream stage recorded."""
    if explicit is not None:
        return StageDir(explicit, "tokenize")
    if "data" not in stage.manifest.inputs:
        raise GolfError(f"{stage.path}: records no data input; pass --data")
    return lineage_folder(stage, "tokenize")


def run_quantize(config: QuantizeConfig, train_dir: str | Path, out_dir: str | Path,
                 data_dir: str | Path | None = None, force: bool = False, reporter: Reporter | None = None):
    reporter = reporter or Reporter()
    train = StageDir(train_dir, "train")
    data = data_dir_of(train, data_dir)
    require_same_tokenizer(train.lineage, f"checkpoint {train.path}", data.lineage, f"data {data.path}")
    model_config = from_dict(ModelConfig, train.lineage["model_config"], f"{train.path}: lineage.model_config")
    train_seq_len = int(train.manifest.config["train"]["seq_len"])
    seq_len = config.eval_seq_len or train_seq_len
    config.check_window(seq_len)
    device = resolve_device(config.device)
    inputs = {"the train folder": train.path, "the data folder": data.path}
    with StageWriter(out_dir, "quantize", force, reporter, inputs) as writer:
        ledger = writer.ledger
        state, model, scoring = _load(config, train, data, model_config, seq_len, device, ledger, reporter)
        writer.add_input("checkpoint", train)
        writer.add_input("data", data)
        pre, pre_source = pre_quant_score(lambda: scoring.score(model, "pre_quant"), train, data, scoring.val,
                                          scoring.windows(), model_config, device.type, reporter)
        hessians = _calibrate(config, model, state, data, train_seq_len, device, ledger, reporter)
        metadata = _metadata(train, train_seq_len)
        quantized = _quantize(config, state, hessians, metadata, device, ledger, reporter)
        load_model_weights(model, dequantize_state(quantized.tensors, quantized.index), "dequantized weights")
        post = scoring.score(model, "post_quant")
        quantized = _measure_compressed_sizes(quantized, config.target_codec, ledger)
        _save(writer, quantized, metadata)
        metrics = _metrics(scoring, pre, pre_source, post, quantized, hessians, _train_budget(train, ledger))
        log_report(quantized.report, reporter)
        manifest = writer.commit(to_dict(config), dict(train.lineage), metrics, reporter.text())
    reporter.log(stage="quantize", method=config.method, pre_quant_val_bpb=pre.bpb, post_quant_val_bpb=post.bpb,
                 quant_gap_bpb=post.bpb - pre.bpb, train_budget=metrics["train_budget"]["verdict"], out=str(out_dir))
    return manifest


@dataclass(frozen=True)
class Scoring:
    """How the pre- and post-quant bpb are measured: the same val windows, timed into the ledger."""

    val: ValData
    """The val split of the data folder."""
    setup: ScoringSetup
    """The windows (eval_seq_len, else the train run's; eval_stride, else non-overlapping), the batch
    (eval_batch_windows), the device and this process's share."""
    tokens: int
    """Val tokens scored (eval_tokens; 0: all)."""
    ledger: TimeLedger
    """The stage's ledger (scoring is outside both budgets)."""
    reporter: Reporter
    """Where the scores are logged."""

    def score(self, model: GPT, label: str) -> BpbSums:
        """The model's loss and bpb on the windows, logged as ``<label>_val_loss`` and ``<label>_val_bpb``."""
        with self.ledger.measure(f"evaluate_{label}", note="diagnostic scoring on val: outside both budgets"):
            sums = validate(model, self.val, self.setup, self.tokens, self.reporter, f"{label} bpb")
        self.reporter.log(**{f"{label}_val_loss": sums.loss, f"{label}_val_bpb": sums.bpb})
        return sums

    def windows(self) -> Windows:
        """The windows ``score`` covers."""
        return scoring_windows(self.val, self.setup.seq_len, self.setup.stride, self.tokens)


def _load(config: QuantizeConfig, train: StageDir, data: StageDir, model_config: ModelConfig, seq_len: int,
          device, ledger: TimeLedger, reporter: Reporter) -> tuple[dict, GPT, Scoring]:
    """The trained weights, the model holding them on ``device``, and the scoring of val."""
    with ledger.measure("load", note="reading the checkpoint and val data: outside both budgets"):
        state = load_tensors(train.file("weights"))
        model = load_model_weights(GPT(model_config), state, str(train.file("weights"))).to(device)
        val = load_val(data, model_config.vocab_size)
    val.check_window_fits(seq_len, "eval_seq_len" if config.eval_seq_len else "the train run's seq_len")
    setup = scoring_setup(seq_len, config.eval_stride or seq_len, config.eval_batch_windows, device)
    scoring = Scoring(val, setup, config.eval_tokens, ledger, reporter)
    return state, model, scoring


def _metadata(train: StageDir, train_seq_len: int) -> Callable[..., QuantizedMetadata]:
    """What pack builds the artifact from but the quantization index (each quantization's own):
    ``metadata(quant_index=...)`` is the record quantized.safetensors carries (and --target-bytes packs)."""
    return partial(QuantizedMetadata, model_config=train.lineage["model_config"], lineage=dict(train.lineage),
                   train_seq_len=train_seq_len)


@dataclass(frozen=True)
class Quantized:
    """The quantizer's output at the clip scale chosen, and how it was chosen."""

    tensors: dict[str, torch.Tensor]
    """Stored tensors: codes, scales, LQER factors, kept-float tensors."""
    index: dict[str, dict]
    """Parameter name -> how dequant.py rebuilds it."""
    report: list[TensorReport]
    """One row per parameter (with compressed bytes once _measure_compressed_sizes has run)."""
    clip_scale: float
    """The factor on every SDClip k (1.0 unless --target-bytes chose another)."""
    attempts: list[Attempt]
    """The --target-bytes rounds (empty without a target)."""


def _quantize(config: QuantizeConfig, state: dict, hessians: Hessians | None, metadata: Callable[..., QuantizedMetadata],
              device, ledger: TimeLedger, reporter: Reporter) -> Quantized:
    """Quantize at clip scale 1, or at the scale that fits --target-bytes; warn if nothing got codes."""
    quantize_at = partial(quantize_state, state, config, hessians.matrices if hessians else None, device)
    with ledger.measure("quantize", note="the solve after training: outside both budgets (records: ~10 s)"):
        if config.target_bytes:
            (tensors, index, report), clip_scale, attempts = fit_to_target(
                state, config, quantize_at, lambda result: _packed_bytes(result, metadata, config))
        else:
            (tensors, index, report), clip_scale, attempts = quantize_at(1.0), 1.0, []
    if all(row.kind == KIND_FLOAT for row in report):
        reporter.log(warning="nothing_quantized", method=config.method,
                     why=f"every tensor has at most keep_float_max_numel={config.keep_float_max_numel} elements "
                         "or is not a matrix, so all stay float and the settings change nothing")
    return Quantized(tensors, index, report, clip_scale, attempts)


def _measure_compressed_sizes(quantized: Quantized, codec: str, ledger: TimeLedger) -> Quantized:
    """The report with the bytes of each tensor compressed alone (timed: brotli at quality 11 is slow)."""
    with ledger.measure("size_report", note="compressing each tensor alone for the report: outside both budgets"):
        return replace(quantized, report=with_compressed_sizes(quantized.tensors, quantized.report, codec))


def _save(writer: StageWriter, quantized: Quantized, metadata: Callable[..., QuantizedMetadata]) -> None:
    """quantized.safetensors: the stored tensors, with the index and the rest of ``metadata`` in its header."""
    save_tensors(writer.path(QUANTIZED_FILE), quantized.tensors, metadata(quant_index=quantized.index).as_metadata())
    writer.add_output("quantized", writer.path(QUANTIZED_FILE))


def _metrics(scoring: Scoring, pre: BpbSums, pre_source: dict, post: BpbSums, quantized: Quantized,
             hessians: Hessians | None, train_budget: dict) -> dict:
    """The manifest's metrics: both scores and where the pre-quant one came from, the clip scale,
    the bytes, the train budget with calibration, and the per-tensor report."""
    report = quantized.report
    return {
        "eval": {"seq_len": scoring.setup.seq_len, "stride": scoring.setup.stride, "tokens_scored": pre.tokens,
                 "bytes_scored": pre.bytes},
        "pre_quant_val_loss": pre.loss,
        "pre_quant_val_bpb": pre.bpb,
        "pre_quant": pre_source,
        "post_quant_val_loss": post.loss,
        "post_quant_val_bpb": post.bpb,
        "quant_gap_bpb": post.bpb - pre.bpb,
        "clip_scale": quantized.clip_scale,
        "target_attempts": [vars(a) for a in quantized.attempts],
        "calibration_tokens": hessians.tokens if hessians else 0,
        "raw_stored_bytes": sum(row.stored_bytes for row in report),
        "predicted_bytes": round(sum(row.predicted_bytes for row in report)),
        "train_budget": train_budget,
        "tensors": [row.to_dict() for row in report],
    }


def _calibrate(config: QuantizeConfig, model: GPT, state, data: StageDir, train_seq_len: int, device,
               ledger: TimeLedger, reporter: Reporter) -> Hessians | None:
    """Hessians for a method that reads them (GPTQ), timed into the ledger: reading training data counts
    toward the train budget."""
    names = {name for name, tensor in state.items() if is_quantized(name, tensor, config)}
    if not METHODS[config.method].needs_hessians or not names:
        return None
    calib = config.calibration
    seq_len = calib.seq_len or train_seq_len
    model.eval()
    if calib.source == "train":
        bucket, budget, note = "calibration", "train", "GPTQ calibration reads training data: counts toward training"
        loader = make_loader("shuffled", train_shard_paths(data), seed=calib.seed)
        batches = training_batches(loader, calib, seq_len, device)
    else:
        bucket, budget, note = "calibration_generated", None, "calibration on model-generated text: no training data read"
        batches = generated_batches(model, calib, seq_len, device)
    with ledger.measure(bucket, budget, note):
        hessians = collect_hessians(model, batches, names, device)
    reporter.log(calibration_source=calib.source, calibration_tokens=hessians.tokens,
                 calibration_seconds=round(ledger.buckets[bucket].seconds, 3), hessians=len(hessians.matrices))
    return hessians


def _packed_bytes(result, metadata: Callable[..., QuantizedMetadata], config: QuantizeConfig) -> int:
    """The bytes of the artifact `golf pack --codec <target_codec>` would write from ``result``."""
    tensors, index, _report = result
    data, _breakdown = build_artifact(tensors, metadata(quant_index=index),
                                      codecs=StreamCodecs(weights=(config.target_codec,)))
    return len(data)


def _train_budget(train: StageDir, ledger: TimeLedger) -> dict:
    """The train stage's counted seconds plus calibration's, against 600 s, on named hardware."""
    train_seconds = TimeLedger.from_dict(train.manifest.ledger).counted("train")
    calibration = ledger.counted("train")
    total = train_seconds + calibration
    trained_on = train.manifest.environment.get("gpus") or ["cpu"]
    here = capture().get("gpus") or ["cpu"]
    limit = BUDGET_LIMIT_SECONDS["train"]
    return {
        "train_seconds": round(train_seconds, 3),
        "calibration_seconds": round(calibration, 3),
        "total_seconds": round(total, 3),
        "limit": limit,
        "verdict": "PASS" if total <= limit else "FAIL",
        "trained_on": trained_on,
        "calibrated_on": here,
        "same_hardware": trained_on == here,
        "note": "the 600 s rule is about 8xH100; seconds measured on other hardware are indicative only",
    }
