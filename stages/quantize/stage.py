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

import json
from dataclasses import replace
from pathlib import Path

from ..config import from_dict, to_dict
from ..contract.environment import capture
from ..contract.ledger import BUDGET_LIMIT_SECONDS, TimeLedger
from ..contract.lineage import require_same_tokenizer
from ..contract.stage_dir import StageDir, StageWriter
from ..device import resolve_device
from ..errors import GolfError
from ..scoring.val_data import load_val
from ..data.folder import train_shard_paths
from ..scoring.validate import scoring_setup, validate
from ..model.checkpoint import load_model_weights, load_tensors, save_tensors
from ..model.config import ModelConfig
from ..model.gpt import GPT
from ..pack.stage import build_artifact
from ..pack.config import PackConfig
from ..progress import Reporter
from ..data.loader import make_loader
from .calibration import collect_hessians, generated_batches, training_batches
from .config import QuantizeConfig
from .dequant import KIND_FLOAT, dequantize_state
from .pre_quant import pre_quant_score, scoring_windows
from .quantizer import is_quantized, quantize_state
from .report import compressed_sizes, log_report
from .target import fit_to_target

QUANTIZED_FILE = "quantized.safetensors"


def data_dir_of(stage: StageDir, explicit: str | Path | None) -> StageDir:
    """The tokenize folder to score on: the one given, else the one the upstream stage recorded."""
    if explicit is not None:
        return StageDir(explicit, "tokenize")
    if "data" not in stage.manifest.inputs:
        raise GolfError(f"{stage.path}: records no data input; pass --data")
    return stage.upstream("data", "tokenize")


def run_quantize(config: QuantizeConfig, train_dir: str | Path, out_dir: str | Path,
                 data_dir: str | Path | None = None, force: bool = False, reporter: Reporter | None = None):
    reporter = reporter or Reporter()
    train = StageDir(train_dir, "train")
    data = data_dir_of(train, data_dir)
    require_same_tokenizer(train.lineage, f"checkpoint {train.path}", data.lineage, f"data {data.path}")
    model_config = from_dict(ModelConfig, train.lineage["model_config"], f"{train.path}: lineage.model_config")
    train_seq_len = int(train.manifest.config["train"]["seq_len"])
    seq_len = config.eval_seq_len or train_seq_len
    replace(config, eval_seq_len=seq_len)  # the window rules, now that the window length is known
    stride = config.eval_stride or seq_len
    device = resolve_device(config.device)
    inputs = {"the train folder": train.path, "the data folder": data.path}
    with StageWriter(out_dir, "quantize", force, reporter, inputs) as writer:
        ledger = writer.ledger
        with ledger.measure("load", note="reading the checkpoint and val data: outside both budgets"):
            state = load_tensors(train.file("weights"))
            model = load_model_weights(GPT(model_config), state, str(train.file("weights"))).to(device)
            val = load_val(data, model_config.vocab_size)
        val.check_window_fits(seq_len, "eval_seq_len" if config.eval_seq_len else "the train run's seq_len")
        writer.add_input("checkpoint", train)
        writer.add_input("data", data)

        def score(label: str):
            with ledger.measure(f"evaluate_{label}", note="diagnostic scoring on val: outside both budgets"):
                sums = validate(model, val, scoring_setup(seq_len, stride, config.eval_batch_windows, device),
                                config.eval_tokens, reporter, f"{label} bpb")
            reporter.log(**{f"{label}_val_loss": sums.loss, f"{label}_val_bpb": sums.bpb})
            return sums

        windows = scoring_windows(val, seq_len, stride, config.eval_tokens)
        pre, pre_source = pre_quant_score(lambda: score("pre_quant"), train, data, val, windows, model_config,
                                          device.type, reporter)
        hessians = _calibrate(config, model, state, data, train_seq_len, device, ledger, reporter)
        metadata = {
            "model_config": json.dumps(train.lineage["model_config"]),
            "lineage": json.dumps(dict(train.lineage)),
            "train_seq_len": str(train_seq_len),
        }

        def quantize_at(clip_scale: float):
            return quantize_state(state, config, hessians.matrices if hessians else None, device, clip_scale)

        with ledger.measure("quantize", note="the solve after training: outside both budgets (records: ~10 s)"):
            if config.target_bytes:
                (tensors, index, report), clip_scale, attempts = fit_to_target(
                    state, config, quantize_at, lambda result: _packed_bytes(result, metadata, config))
            else:
                (tensors, index, report), clip_scale, attempts = quantize_at(1.0), 1.0, []
        if all(row["kind"] == KIND_FLOAT for row in report):
            reporter.log(warning="nothing_quantized", method=config.method,
                         why=f"every tensor has at most keep_float_max_numel={config.keep_float_max_numel} elements "
                             "or is not a matrix, so all stay float and the settings change nothing")
        load_model_weights(model, dequantize_state(tensors, index), "dequantized weights")
        post = score("post_quant")
        with ledger.measure("size_report", note="compressing each tensor alone for the report: outside both budgets"):
            for row, size in zip(report, compressed_sizes(tensors, report, config.target_codec)):
                row["compressed_bytes"] = size

        save_tensors(writer.path(QUANTIZED_FILE), tensors, {**metadata, "quant_index": json.dumps(index)})
        writer.add_output("quantized", writer.path(QUANTIZED_FILE))
        metrics = {
            "eval": {"seq_len": seq_len, "stride": stride, "tokens_scored": pre.tokens, "bytes_scored": pre.bytes},
            "pre_quant_val_loss": pre.loss,
            "pre_quant_val_bpb": pre.bpb,
            "pre_quant": pre_source,
            "post_quant_val_loss": post.loss,
            "post_quant_val_bpb": post.bpb,
            "quant_gap_bpb": post.bpb - pre.bpb,
            "clip_scale": clip_scale,
            "target_attempts": [vars(a) for a in attempts],
            "calibration_tokens": hessians.tokens if hessians else 0,
            "raw_stored_bytes": sum(r["stored_bytes"] for r in report),
            "predicted_bytes": round(sum(r["predicted_bytes"] for r in report)),
            "train_budget": _train_budget(train, ledger),
            "tensors": report,
        }
        log_report(report, reporter)
        manifest = writer.commit(to_dict(config), dict(train.lineage), metrics, reporter.text())
    reporter.log(stage="quantize", method=config.method, pre_quant_val_bpb=pre.bpb, post_quant_val_bpb=post.bpb,
                 quant_gap_bpb=post.bpb - pre.bpb, train_budget=metrics["train_budget"]["verdict"], out=str(out_dir))
    return manifest


def _calibrate(config: QuantizeConfig, model: GPT, state, data: StageDir, train_seq_len: int, device,
               ledger: TimeLedger, reporter: Reporter):
    """GPTQ Hessians, timed into the ledger: reading training data counts toward the train budget."""
    names = {name for name, tensor in state.items() if is_quantized(name, tensor, config)}
    if config.method != "gptq" or not names:
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


def _packed_bytes(result, metadata: dict, config: QuantizeConfig) -> int:
    tensors, index, _report = result
    data, _breakdown = build_artifact(tensors, {**metadata, "quant_index": json.dumps(index)},
                                      PackConfig(codec=config.target_codec))
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
