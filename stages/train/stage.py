"""`golf train`: tokenized data -> trained weights, with an auditable time ledger.

setup (untimed) -> timed loop (counts toward the 600 s training budget; validation pauses the
clock) -> save ``model.safetensors``, ``curves.json`` and the manifest.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import torch

from ..config import to_dict
from ..contract.stage_dir import StageDir, StageWriter, atomic_write_text
from ..errors import GolfError
from ..evaluate.val_data import load_val, train_shard_paths
from ..evaluate.validate import validate
from ..model.checkpoint import model_metadata, save_tensors
from ..model.gpt import GPT, count_parameters
from ..progress import Reporter
from .config import RunConfig
from .loader import make_loader
from .loop import Trainer

WEIGHTS_FILE = "model.safetensors"
CURVES_FILE = "curves.json"
# Dense bf16 peak of the GPUs we quote MFU against (REFERENCE section 7).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GolfError("device 'cuda' requested but CUDA is not available")
    return torch.device(name)


def flops_per_token(model: GPT, seq_len: int) -> float:
    """Training FLOPs per token: 6N + 12 L d T (REFERENCE section 7)."""
    cfg = model.config
    return 6 * count_parameters(model) + 12 * cfg.num_layers * cfg.model_dim * seq_len


def run_train(config: RunConfig, data_dir: str | Path, out_dir: str | Path, force: bool = False,
              reporter: Reporter | None = None, preset: str | None = None):
    reporter = reporter or Reporter()
    data = StageDir(data_dir, "tokenize")
    tokenizer_vocab = int(data.lineage["vocab_size"])
    if config.model.vocab_size < tokenizer_vocab:
        raise GolfError(f"model.vocab_size {config.model.vocab_size} is smaller than the tokenizer's {tokenizer_vocab}")
    tcfg = config.train
    device = resolve_device(tcfg.device)
    with StageWriter(out_dir, "train", force) as writer:
        ledger = writer.ledger
        with ledger.measure("setup", note="model build and input verification: outside the budget"):
            torch.manual_seed(tcfg.seed)
            loader = make_loader(tcfg.loader, train_shard_paths(data), 0, 1, tcfg.seed, tcfg.grad_accum)
            val = load_val(data, config.model.vocab_size)
            model = GPT(config.model).to(device)
            trainer = Trainer(model, config, loader, device)
        writer.add_input("data", data)
        params = count_parameters(model)
        reporter.log(stage="train", preset=preset or "custom", params=params, device=str(device),
                     steps=tcfg.max_steps, max_seconds=tcfg.max_seconds, batch_tokens=tcfg.batch_tokens)

        curves = {"train": [], "val": []}

        def run_validation() -> None:
            with ledger.measure("validation", note="validation with the clock paused: not counted"):
                sums = validate(model, val, tcfg.seq_len, None, tcfg.val_batch_windows, device,
                                tcfg.val_tokens, reporter, "validate")
            curves["val"].append({"step": trainer.step, "val_loss": sums.loss, "val_bpb": sums.bpb})
            reporter.log(step=trainer.step, val_loss=sums.loss, val_bpb=sums.bpb)

        stop_reason = _train_loop(trainer, ledger, reporter, curves, run_validation)
        exported, export_kind = trainer.export_state()
        model.load_state_dict(exported)
        for module in model.modules():  # the exported float weights are scored without fake quantization
            if hasattr(module, "fake_quant_bits"):
                module.fake_quant_bits = 0
        run_validation()

        with ledger.measure("save", note="writing outputs: outside the budget"):
            lineage = {**data.lineage, "model_config": to_dict(config.model)}
            save_tensors(writer.path(WEIGHTS_FILE), exported, model_metadata(config.model, lineage))
            writer.add_output("weights", writer.path(WEIGHTS_FILE))
            atomic_write_text(writer.path(CURVES_FILE), json.dumps(curves, indent=1) + "\n")
            writer.add_output("curves", writer.path(CURVES_FILE))
        metrics = _metrics(model, config, trainer, stop_reason, curves, device, params)
        metrics["exported_weights"] = export_kind
        manifest = writer.commit({"preset": preset, **to_dict(config)}, lineage, metrics, reporter.text())
    reporter.log(stage="train", steps=trainer.step, train_seconds=trainer.elapsed, tok_per_s=metrics["tokens_per_second"],
                 val_bpb=metrics["val_bpb"], exported=export_kind, out=str(out_dir))
    return manifest


def _train_loop(trainer: Trainer, ledger, reporter: Reporter, curves: dict, run_validation) -> str:
    """Step until a budget runs out; only the steps are timed (validation pauses the clock)."""
    tcfg = trainer.tcfg
    with reporter.progress("train", tcfg.max_steps) as advance:
        while (stop_reason := trainer.done()) is None:
            start = time.perf_counter()
            loss = trainer.train_step()
            if trainer.device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            trainer.elapsed += seconds
            ledger.add("train_loop", seconds, "train", "timed optimizer steps on training data")
            advance(1)
            step = trainer.step
            curves["train"].append({"step": step, "loss": loss, "seconds": round(trainer.elapsed, 4),
                                    "lr_scale": round(trainer.lr_scale(), 6)})
            if step % tcfg.log_every == 0 or step == 1:
                reporter.log(step=step, train_loss=loss, train_seconds=round(trainer.elapsed, 2),
                             step_ms=round(1000 * trainer.elapsed / step, 2), lr_scale=round(trainer.lr_scale(), 4))
            if tcfg.val_every and step % tcfg.val_every == 0 and trainer.done() is None:
                run_validation()
    return stop_reason


def _metrics(model, config, trainer: Trainer, stop_reason, curves, device, params) -> dict:
    tcfg = config.train
    step, elapsed = trainer.step, trainer.elapsed
    tokens = step * tcfg.batch_tokens
    tok_s = tokens / elapsed if elapsed > 0 else 0.0
    fpt = flops_per_token(model, tcfg.seq_len)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    peak = next((v for k, v in PEAK_FLOPS.items() if k in gpu), None)
    if device.type == "cuda":
        peak_memory = torch.cuda.max_memory_allocated(device)
    else:
        peak_memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    final_val = curves["val"][-1]
    return {
        "params": params,
        "steps": step,
        "stop_reason": stop_reason,
        "tokens": tokens,
        "train_seconds": round(elapsed, 3),
        "tokens_per_second": round(tok_s, 1),
        "ms_per_step": round(1000 * elapsed / step, 3) if step else None,
        "flops_per_token": fpt,
        "achieved_tflops": round(fpt * tok_s / 1e12, 4),
        "mfu": round(fpt * tok_s / peak, 4) if peak else None,
        "peak_memory_bytes": int(peak_memory),
        "peak_memory_kind": "cuda max allocated" if device.type == "cuda" else "process max RSS",
        "final_train_loss": curves["train"][-1]["loss"] if curves["train"] else None,
        "val_loss": final_val["val_loss"],
        "val_bpb": final_val["val_bpb"],
        "val_tokens_scored": tcfg.val_tokens or "all",
        "loop_on_step": trainer.loop_on_step,
        "qat_on_step": trainer.qat_on_step,
    }
