"""`golf train`: tokenized data -> trained weights, with an auditable time ledger.

setup (untimed) -> timed loop (counts toward the 600 s training budget; validation pauses the
clock) -> save ``model.safetensors``, ``curves.json`` and the manifest.
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..config import to_dict
from ..contract.ledger import TimeLedger
from ..contract.output_path import check_output_path
from ..contract.stage_dir import StageDir, StageWriter, atomic_write_text, relative_path
from ..data.folder import split_files, train_shard_paths
from ..data.shards import read_shard
from ..device import allocation_failures, check_fits, resolve_device
from ..errors import GolfError
from ..model.checkpoint import model_metadata, save_tensors
from ..model.gpt import GPT, count_parameters
from ..progress import Reporter, silent_reporter
from ..scoring.val_data import load_val
from ..scoring.validate import scoring_setup, validate
from .config import RunConfig, resolve_grad_accum
from .checkpointing import (
    STATE_FILE, TENSORS_FILE, Resumed, data_identity, restore_checkpoint, run_checkpoint_dir, save_checkpoint,
)
from ..data.loader import make_loader
from ..distributed import DistContext, all_reduce_max, barrier, init_distributed, shutdown
from .loop import Trainer, float32_copy
from .plot import plot_curves
from .presets import PRESETS

WEIGHTS_FILE = "model.safetensors"
RAW_WEIGHTS_FILE = "model_raw.safetensors"
CURVES_FILE = "curves.json"
PLOT_FILE = "curves.png"
# The timed loop's clock (monotonic; tests put a fake one here to show that no result depends on it).
clock: Callable[[], float] = time.perf_counter
# Dense bf16 peak of the GPUs we quote MFU against (docs/REFERENCE.md section 7).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12}


def flops_per_token(model: GPT, seq_len: int) -> float:
    """Training FLOPs per token: 6N + 12 L d T (docs/REFERENCE.md section 7), where a looped block counts
    once per pass in both N and L (depth recurrence reuses weights, not compute)."""
    cfg = model.config
    sequence = cfg.layer_sequence(model.looping)
    repeated = sum(count_parameters(model.blocks[layer]) for layer in sequence) - count_parameters(model.blocks)
    return 6 * (count_parameters(model) + repeated) + 12 * len(sequence) * cfg.model_dim * seq_len


def run_train(config: RunConfig, data_dir: str | Path, out_dir: str | Path, force: bool = False,
              reporter: Reporter | None = None, preset: str | None = None, resume: str | Path | None = None):
    """Train on every rank torchrun started (or alone); rank 0 writes the stage folder."""
    reporter = reporter or Reporter()
    data = StageDir(data_dir, "tokenize")
    tokenizer_vocab = int(data.lineage["vocab_size"])
    if config.model.vocab_size < tokenizer_vocab:
        raise GolfError(f"model.vocab_size {config.model.vocab_size} is smaller than the tokenizer's {tokenizer_vocab}")
    inputs = train_inputs(data_dir, resume)
    check_output_path(out_dir, "train", force, inputs)  # on every rank, before any rank waits on another
    check_token_ids(data, config.model.vocab_size)
    ctx = init_distributed(resolve_device(config.train.device))
    if ctx.is_main:
        _note_data(preset, data, reporter)
    try:
        with allocation_failures(f"a model of {model_sizing(config)}, train.batch_tokens={config.train.batch_tokens}"):
            if not ctx.is_main:
                _fit(config, data, ctx, TimeLedger(), silent_reporter(), None, resume)
                return None
            with StageWriter(out_dir, "train", force, reporter, inputs) as writer:
                checkpoints = Checkpoints(run_checkpoint_dir(out_dir, writer.run_id), data_identity(data), writer.run_id,
                                          preset)
                fit = _fit(config, data, ctx, writer.ledger, reporter, checkpoints, resume)
                writer.add_input("data", data)
                if fit.resumed is not None:
                    folder = fit.resumed.folder
                    writer.add_file_input("resume", "checkpoint", folder,
                                          {"tensors": folder / TENSORS_FILE, "state": folder / STATE_FILE})
                return _save(writer, fit, config, data, ctx, reporter, preset, out_dir)
    finally:
        shutdown(ctx)


def train_inputs(data_dir: str | Path, resume: str | Path | None) -> dict:
    """What training reads, which its output must not be, hold or go inside (``check_output_path``)."""
    return {"the data folder": data_dir, "--resume": resume}


def check_token_ids(data: StageDir, vocab_size: int) -> None:
    """Refuse a train or val shard holding an id the model has no embedding row for.

    One pass over each shard's memory map (reading the hashes costs as much), so a foreign or
    corrupt shard is a one-line error naming it before anything is built, not an index error
    inside the first step or the last validation."""
    for path in [*train_shard_paths(data), *split_files(data, "val")]:
        tokens = read_shard(path)
        if tokens.size and (largest := int(tokens.max())) >= vocab_size:
            raise GolfError(f"{path}: token id {largest} is outside the model's vocab (model.vocab_size {vocab_size})")


@dataclass
class Checkpoints:
    """Where and with what identity this run writes its resumable checkpoints (rank 0 only)."""

    folder: Path
    """This run's own checkpoint folder, <train>.checkpoints/<run id>."""
    data: dict
    """The training data's identity, stored in each checkpoint and checked on resume."""
    run_id: str
    """The run id of the train stage writing them."""
    preset: str | None = None
    """The preset the run started from (a resumed run: its checkpoint's), kept in each checkpoint."""


@dataclass
class Fit:
    """What a finished training run hands to saving."""

    model: GPT
    trainer: Trainer
    curves: dict
    stop_reason: str
    exported: dict
    export_kind: str
    raw: dict
    resumed: Resumed | None
    checkpoints: Checkpoints | None


def model_sizing(config: RunConfig) -> str:
    """The settings that size the model's weights, as --set writes them (for messages)."""
    model = config.model
    return (f"model.vocab_size={model.vocab_size}, model.model_dim={model.model_dim}, "
            f"model.num_layers={model.num_layers}, model.mlp_mult={model.mlp_mult}")


def check_model_fits(config: RunConfig, device: torch.device) -> None:
    """Refuse a model whose weights (float32 as built: no less than weights and gradients in bfloat16)
    exceed the device's free memory, before allocating it: counted on the meta device."""
    with torch.device("meta"):
        weights = sum(p.numel() * p.element_size() for p in GPT(config.model).parameters())
    check_fits(weights, device, f"training a model of {model_sizing(config)}")


def _fit(config: RunConfig, data: StageDir, ctx: DistContext, ledger: TimeLedger, reporter: Reporter,
         checkpoints: Checkpoints | None, resume) -> Fit:
    tcfg, device = config.train, ctx.device
    with ledger.measure("setup", note="model build and input verification: outside the budget"):
        check_model_fits(config, device)
        torch.manual_seed(tcfg.seed)
        accum = resolve_grad_accum(tcfg, ctx.world_size)
        loader = make_loader(tcfg.loader, train_shard_paths(data), ctx.rank, ctx.world_size, tcfg.seed, accum,
                             config.model.bos_id, max_doc_len=tcfg.seq_len)
        val = load_val(data, config.model.vocab_size)
        val.check_window_fits(tcfg.seq_len, "train.seq_len")
        model = GPT(config.model).to(device)
        trainer = Trainer(model, config, loader, device)
    if tcfg.warmup_steps:
        with ledger.measure("compile_warmup", note="dummy-data warm-up, state restored after: not counted"):
            trainer.warm_up(tcfg.warmup_steps)
    resumed = None
    if resume is not None:
        resumed = restore_checkpoint(trainer, resume, data)
        # The resumed run's ledger is the sum of its parts: the seconds before the checkpoint count too.
        ledger.merge(TimeLedger.from_dict(resumed.ledger))
    reporter.log(stage="train", params=count_parameters(model), device=str(device), world_size=ctx.world_size,
                 steps=tcfg.max_steps, max_seconds=tcfg.max_seconds, batch_tokens=tcfg.batch_tokens,
                 resumed_from_step=trainer.step, attention=model.attention_backend.name)
    curves = {"train": [], "val": []}

    def run_validation() -> None:
        with ledger.measure("validation", note="validation with the clock paused: not counted"):
            sums = validate(model, val, scoring_setup(tcfg.seq_len, tcfg.seq_len, tcfg.val_batch_windows, device),
                            tcfg.val_tokens, reporter, "validate")
        curves["val"].append({"step": trainer.step, "val_loss": sums.loss, "val_bpb": sums.bpb})
        reporter.log(step=trainer.step, val_loss=sums.loss, val_bpb=sums.bpb)

    stop_reason = _train_loop(trainer, ctx, ledger, reporter, curves, run_validation, checkpoints)
    if stop_reason == "max_seconds":  # said plainly: the run ended before its step budget
        reporter.log(stopped="train", reason="time_cap", step=trainer.step, of=tcfg.max_steps,
                     train_seconds=round(trainer.elapsed, 2), max_seconds=tcfg.max_seconds)
    if tcfg.checkpoint_every and trainer.step % tcfg.checkpoint_every:
        _checkpoint(trainer, ledger, reporter, checkpoints)  # the end state, so a finished run can be extended
    raw = float32_copy(model.state_dict())  # bf16 embeddings on CUDA: saved float32 like the averages
    exported, export_kind = trainer.export_state()
    model.load_state_dict(exported)
    for module in model.modules():  # the exported float weights are scored without fake quantization
        if hasattr(module, "fake_quant_bits"):
            module.fake_quant_bits = 0
    run_validation()
    return Fit(model, trainer, curves, stop_reason, exported, export_kind, raw, resumed, checkpoints)


def _train_loop(trainer: Trainer, ctx: DistContext, ledger, reporter: Reporter, curves: dict,
                run_validation, checkpoints: Checkpoints | None) -> str:
    """Step until a budget runs out; only the steps are timed (validation pauses the clock)."""
    tcfg = trainer.tcfg
    with reporter.progress("train", tcfg.max_steps - trainer.step) as advance:
        while (stop_reason := trainer.done()) is None:
            start = clock()
            loss = trainer.train_step()
            if trainer.device.type == "cuda":
                torch.cuda.synchronize()
            seconds = clock() - start
            loss = trainer.read_loss(loss)  # the step's one host read, after the clock's sync
            # The slowest rank's clock counts, so a timed budget ends on the same step everywhere.
            trainer.elapsed = all_reduce_max(trainer.elapsed + seconds)
            ledger.add("train_loop", seconds, "train", "timed optimizer steps on training data")
            advance(1)
            step = trainer.step
            curves["train"].append({"step": step, "loss": loss, "seconds": round(trainer.elapsed, 4),
                                    "lr_scale": round(trainer.lr_scale(), 6)})
            if step % tcfg.log_every == 0 or step == 1:
                reporter.log(step=step, train_loss=loss, train_seconds=round(trainer.elapsed, 2),
                             step_ms=round(1000 * trainer.elapsed / step, 2), lr_scale=round(trainer.lr_scale(), 4))
            if tcfg.checkpoint_every and step % tcfg.checkpoint_every == 0:
                _checkpoint(trainer, ledger, reporter, checkpoints)
            if tcfg.val_every and step % tcfg.val_every == 0 and trainer.done() is None:
                run_validation()
    return stop_reason


def _checkpoint(trainer: Trainer, ledger: TimeLedger, reporter: Reporter, checkpoints: Checkpoints | None) -> None:
    """Every rank calls it (the optimizer state is gathered first); rank 0, the one with
    ``checkpoints``, writes. Every rank then waits for the write here, in the untimed 'checkpoint'
    bucket: otherwise the other ranks would wait for it inside their next timed step's gradient
    all-reduce, and the clock's all-reduce would count rank 0's write as training seconds."""
    with ledger.measure("checkpoint", note="writing a resumable checkpoint: outside the budget"):
        trainer.gather_state()
        folder = None
        if checkpoints is not None:
            folder = save_checkpoint(trainer, checkpoints.folder, checkpoints.data, ledger.to_dict(),
                                     checkpoints.run_id, checkpoints.preset)
        barrier()
    if folder is not None:
        reporter.log(step=trainer.step, checkpoint=str(folder))


def data_is_caseops(data: StageDir) -> bool:
    """Whether the tokenize folder holds CaseOps data (its lineage says so; older folders did not record it)."""
    return bool(data.lineage.get("caseops", False))


def _note_data(preset: str | None, data: StageDir, reporter: Reporter) -> None:
    """A preset whose record trained on CaseOps data, run on other data: say so (its numbers will differ)."""
    record = PRESETS.get(preset or "")
    if record is not None and record.caseops_data and not data_is_caseops(data):
        reporter.log(note=f"preset {preset}'s record trained on CaseOps data (golf tokenize --caseops); "
                          f"{data.path} is not CaseOps, so its bpb is not comparable to the record's")


def _save(writer: StageWriter, fit: Fit, config: RunConfig, data: StageDir, ctx: DistContext,
          reporter: Reporter, preset: str | None, out_dir):
    with writer.ledger.measure("save", note="writing outputs: outside the budget"):
        lineage = {**data.lineage, "model_config": to_dict(config.model)}
        save_tensors(writer.path(WEIGHTS_FILE), fit.exported, model_metadata(config.model, lineage))
        writer.add_output("weights", writer.path(WEIGHTS_FILE))
        if fit.export_kind != "raw":  # the averaged weights are what ships; keep the raw ones beside them
            save_tensors(writer.path(RAW_WEIGHTS_FILE), fit.raw, model_metadata(config.model, lineage))
            writer.add_output("raw_weights", writer.path(RAW_WEIGHTS_FILE))
        atomic_write_text(writer.path(CURVES_FILE), json.dumps(fit.curves, indent=1) + "\n")
        writer.add_output("curves", writer.path(CURVES_FILE))
        plot_curves(fit.curves, writer.path(PLOT_FILE), f"golf train: {preset or 'custom'}")
        writer.add_output("curves_plot", writer.path(PLOT_FILE))
    metrics = _metrics(fit.model, config, fit.trainer, fit.stop_reason, fit.curves, ctx.device,
                       count_parameters(fit.model))
    metrics.update(exported_weights=fit.export_kind, world_size=ctx.world_size, data_caseops=data_is_caseops(data))
    if config.train.checkpoint_every:
        metrics["checkpoints"] = relative_path(fit.checkpoints.folder, writer.run_root)
    if fit.resumed is not None:
        metrics["resumed_from"] = {"step": fit.resumed.step, "run_id": fit.resumed.run_id,
                                   "checkpoint": relative_path(fit.resumed.folder, writer.run_root)}
    manifest = writer.commit({"preset": preset, **to_dict(config)}, lineage, metrics, reporter.text())
    reporter.log(stage="train", steps=fit.trainer.step, train_seconds=fit.trainer.elapsed,
                 tok_per_s=metrics["tokens_per_second"], val_bpb=metrics["val_bpb"], exported=fit.export_kind,
                 out=str(out_dir))
    return manifest


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
        "attention": model.attention_backend.name,
    }
