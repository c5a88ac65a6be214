"""The memory model: the peak device memory of one training step and of each TTT mode's step at a
preset's full size, by component, computed on CPU with no GPU and no real allocation.

The real code runs on fake tensors (``FakeTensorMode``): the model built as the trainer builds it,
``GPT.loss`` under bfloat16 autocast (the CPU's autocast standing in for CUDA's), its backward,
the optimizers of ``build_optimizers``, the EMA and SWA shadows, and for TTT the shipped pieces
(``BatchAdapters``, ``sgd_step``, the scorer's ``model_nll``). ``LiveBytes`` (stages/model/live_bytes.py)
counts every storage an op creates until it is freed, labelled by the component being run, and
keeps the peak. So the model follows the code: a change to the model, the loss, the optimizers
or TTT changes the figures without touching this file.

Attention is the one stand-in: the fake run cannot call a flash kernel, and the CPU paths would
count a mask the GPU never builds. ``flash_attention_stand_in`` replaces ``attention.attend`` by
a function with flash attention's memory: it returns an output like q and saves q, k, v, the
output and a float32 log-sum-exp per query (no score matrix); its backward allocates dq, dk, dv
and a float32 accumulator like q, as FlashAttention's backward does.

Figures are bytes as allocated; the CUDA caching allocator's fragmentation comes on top, hence
``HEADROOM`` in the verdict.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from .evaluate.ttt.adapters import BatchAdapters
from .evaluate.ttt.batch_fit import BatchFit, fit_batch_docs, with_batch_docs
from .evaluate.ttt.common import requires_grad, sgd_step
from .evaluate.ttt.config import TTTConfig
from .model import attention
from .model.gpt import GPT
from .model.live_bytes import LiveBytes
from .scoring.scorer import model_nll
from .train.averaging import EMA, TightSWA
from .train.config import RunConfig, resolve_grad_accum
from .train.optim import build_optimizers

GIB = 2**30
H100_GB = 80.0  # an H100's memory in GB (10^9 bytes), as NVIDIA states it
HEADROOM = 0.9  # the share of the device the allocated peak may take: the caching allocator needs the rest
RECORD_WORLD_SIZE = 8  # the records train and evaluate on 8 GPUs
AUTOCAST = torch.bfloat16  # the records' compute precision on CUDA

# Component labels, in the order the table prints them.
WEIGHTS, GRADIENTS, OPTIMIZER, AVERAGES = "weights", "gradients", "optimizer state", "EMA/SWA shadows"
ACTIVATIONS, HEAD, ATTENTION, BACKWARD = "saved activations", "logits/loss", "attention workspace", "backward transients"
ADAPTERS, ADAPTER_GRADS, ADAPTER_OPTIMIZER = "adapters", "adapter gradients", "adapter optimizer state"
INPUTS = "inputs"
COMPONENTS = (WEIGHTS, GRADIENTS, OPTIMIZER, AVERAGES, ADAPTERS, ADAPTER_GRADS, ADAPTER_OPTIMIZER, INPUTS,
              ACTIVATIONS, HEAD, ATTENTION, BACKWARD)


@dataclass(frozen=True)
class MemoryReport:
    """One step's peak: ``name`` ('train', 'ttt lora', ...) and ``shape`` (its batch, in words) say
    what ran; ``peak`` is the most bytes allocated at once, ``at_peak`` each component's bytes at that
    moment, ``peak_phase`` the component being run then."""

    name: str
    shape: str
    peak: int
    at_peak: dict[str, int]
    peak_phase: str

    def fits(self, device_gb: float) -> bool:
        return self.peak <= HEADROOM * device_gb * 1e9


# ---- the stand-ins and the counting ----


class FlashStandIn(torch.autograd.Function):
    """Flash attention's memory, not its values: see the module docstring."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(q)
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        q, k, v, _, _ = ctx.saved_tensors
        accumulator = torch.empty(q.shape, dtype=torch.float32, device=q.device)  # dq in float32
        grads = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        del accumulator
        return grads


def flash_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """``attention.attend``'s signature, flash attention's memory (document masks cost nothing)."""
    return FlashStandIn.apply(q, k, v)


@contextmanager
def flash_attention_stand_in():
    """``attention.attend`` is ``flash_attend`` inside the block."""
    original, attention.attend = attention.attend, flash_attend
    try:
        yield
    finally:
        attention.attend = original


@contextmanager
def counting():
    """A ``LiveBytes`` over fake tensors with the flash stand-in: everything made inside is counted."""
    with FakeTensorMode(), flash_attention_stand_in(), LiveBytes() as tracker:
        yield tracker


def label_head(model: GPT, tracker: LiveBytes) -> None:
    """From the head's input on, the forward counts as logits/loss; the backward counts as its
    transients once the head's gradient has reached that input."""
    def forward_hook(module, args, output):
        tracker.current = HEAD
        if output.requires_grad:
            output.register_hook(lambda grad: setattr(tracker, "current", BACKWARD))
    model.head_input.register_forward_hook(forward_hook)


def label_gradients(params, tracker: LiveBytes, name: str) -> None:
    """Each parameter's gradient counts as ``name`` once accumulated."""
    for param in params:
        param.register_post_accumulate_grad_hook(lambda p: tracker.relabel(p.grad, name))


def label_state(optimizers, tracker: LiveBytes, name: str) -> None:
    """Every tensor in the optimizers' state counts as ``name``."""
    for optimizer in optimizers:
        for state in optimizer.state.values():
            for value in state.values():
                if isinstance(value, torch.Tensor):
                    tracker.relabel(value, name)


def built_model(config, tracker: LiveBytes) -> GPT:
    """The model as the train stage builds it (stages/train/stage.py), counted as weights."""
    with tracker.label(WEIGHTS):
        return GPT(config)


def tokens(rows: int, width: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(vocab, (rows, width + 1))
    return ids[:, :-1], ids[:, 1:]


def report(name: str, shape: str, tracker: LiveBytes) -> MemoryReport:
    return MemoryReport(name, shape, tracker.peak, {k: v for k, v in tracker.at_peak.items() if v}, tracker.peak_label)


# ---- training ----


def training_memory(config: RunConfig, world_size: int = RECORD_WORLD_SIZE) -> MemoryReport:
    """One rank's training step as the timed loop runs it (the second of two, so the optimizer state
    the first made is alive): micro-batches of the per-rank batch (two when accumulating, so the
    second runs with the first's gradients alive), the optimizers' step, the EMA update and a SWA
    snapshot."""
    tcfg = config.train
    accum = resolve_grad_accum(tcfg, world_size)
    rows = tcfg.batch_tokens // (accum * world_size * tcfg.row_tokens)
    max_doc_len = tcfg.seq_len if tcfg.loader == "doc_packed" else 0
    with counting() as tracker:
        model = built_model(config.model, tracker)
        model.looping = True  # the longest forward: depth recurrence on
        label_head(model, tracker)
        label_gradients(model.parameters(), tracker, GRADIENTS)
        optimizers = build_optimizers(model, tcfg)
        with tracker.label(AVERAGES):
            ema = EMA(model, tcfg.ema_decay) if tcfg.ema_decay else None
            swa = TightSWA(tcfg.swa_every, tcfg.swa_lr_scale) if tcfg.swa_every else None
        for _ in range(2):  # the second step runs with the optimizer state the first one made
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            for _ in range(min(accum, 2)):
                with tracker.label(INPUTS):
                    inputs, targets = tokens(rows, tcfg.row_tokens, config.model.vocab_size)
                with tracker.label(ACTIVATIONS), torch.autocast("cpu", dtype=AUTOCAST):
                    loss = model.loss(inputs, targets, max_doc_len)
                with tracker.label(HEAD):  # until label_head's hook says the head's backward is done
                    (loss / accum).backward()
                del loss
            with tracker.label(OPTIMIZER):
                for optimizer in optimizers:
                    optimizer.step()
            label_state(optimizers, tracker, OPTIMIZER)
            with tracker.label(AVERAGES), torch.no_grad():
                if ema is not None:
                    ema.update(model)
                if swa is not None:
                    swa.maybe_collect(swa.every, 0.0, ema.state_dict() if ema else model.state_dict())
        shape = f"{accum} x {rows} row(s) of {tcfg.row_tokens} tokens per rank, {world_size} ranks"
        return report("train", shape, tracker)


# ---- test-time training ----


def ttt_memory(config: RunConfig, ttt: TTTConfig, seq_len: int | None = None, batch_windows: int = 8,
               world_size: int = RECORD_WORLD_SIZE) -> MemoryReport:
    """One rank's TTT steps at full size, in the order the mode runs them: a scoring forward of
    ``batch_windows`` windows; lora and phased: two adapter steps on ``lora.batch_docs`` windows of
    ``seq_len`` (the second with the first's optimizer state); phased: then two global SGD steps with
    the adapters still alive; chunk-sgd: two SGD steps on its sequences."""
    seq_len = seq_len or config.train.seq_len
    vocab = config.model.vocab_size
    with counting() as tracker:
        model = built_model(config.model, tracker)
        label_head(model, tracker)
        model.eval()
        with tracker.label(ACTIVATIONS), torch.no_grad():
            model_nll(model, *tokens(batch_windows, seq_len, vocab), AUTOCAST)
        shape = f"scoring {batch_windows} windows of {seq_len}"
        adapters = None
        if ttt.mode in ("lora", "phased"):
            adapters = adapter_steps(model, ttt, seq_len, tracker)
            shape += f"; {ttt.lora.batch_docs} documents x {seq_len} with adapters"
        if ttt.mode in ("chunk-sgd", "phased"):
            seqs = ttt.phased.global_batch_seqs if ttt.mode == "phased" else ttt.chunk_sgd.batch_seqs
            doc_mask = ttt.phased.global_doc_mask if ttt.mode == "phased" else None
            momentum = ttt.phased.global_momentum if ttt.mode == "phased" else ttt.chunk_sgd.momentum
            clip = ttt.phased.global_grad_clip if ttt.mode == "phased" else ttt.chunk_sgd.grad_clip
            rows = math.ceil(seqs / world_size)
            base_sgd_steps(model, rows, seq_len, doc_mask, momentum, clip, tracker)
            shape += f"; SGD of the base on {rows} x {seq_len} per rank"
        del adapters  # the phased mode drops them only after its global phase
        return report(f"ttt {ttt.mode}", shape, tracker)


def adapter_steps(model: GPT, ttt: TTTConfig, seq_len: int, tracker: LiveBytes, steps: int = 2) -> BatchAdapters:
    """The lora mode's step (scoring forward with grad, backward into the adapters, AdamW), as the
    warm-up runs it at the eval window's width."""
    with tracker.label(ADAPTERS):
        adapters = BatchAdapters(model, ttt, "cpu")
        adapters.reset(list(range(ttt.lora.batch_docs)))
    label_gradients(adapters.lora.parameters(), tracker, ADAPTER_GRADS)
    with requires_grad(model, False):
        for _ in range(steps):
            with tracker.label(INPUTS):
                inputs, targets = tokens(ttt.lora.batch_docs, seq_len, model.config.vocab_size)
            with tracker.label(ACTIVATIONS):
                nll = model_nll(model, inputs, targets, AUTOCAST, adapters=adapters.lora)
            with tracker.label(HEAD):
                adapters.step(nll.mean(dim=1).sum())
            del nll
            label_state([adapters.optimizer], tracker, ADAPTER_OPTIMIZER)
    return adapters


def base_sgd_steps(model: GPT, rows: int, seq_len: int, doc_mask: bool | None, momentum: float, grad_clip: float,
                   tracker: LiveBytes, steps: int = 2) -> None:
    """SGD steps of every base weight on ``rows`` sequences (phased global SGD, chunk-sgd)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=momentum)
    label_gradients(model.parameters(), tracker, GRADIENTS)
    model.train()
    with requires_grad(model, True):
        for _ in range(steps):
            with tracker.label(INPUTS):
                ids = torch.randint(model.config.vocab_size, (rows, seq_len + 1))
            with tracker.label(ACTIVATIONS):
                sgd_step(partial(model.loss, doc_mask=doc_mask), optimizer, ids, grad_clip, AUTOCAST)
            label_state([optimizer], tracker, OPTIMIZER)
    optimizer.zero_grad(set_to_none=True)
    model.eval()


# ---- the table ----


def memory_lines(reports: list[MemoryReport], device_gb: float) -> list[str]:
    """key:value lines: per report its components at the peak (GiB), the peak and the verdict."""
    lines = [f"device_gb:{device_gb:g}", f"usable_gib:{HEADROOM * device_gb * 1e9 / GIB:.2f}"]
    for rep in reports:
        key = rep.name.replace(" ", "_")
        lines.append(f"{key}.shape:{rep.shape}")
        for component in [c for c in COMPONENTS if c in rep.at_peak] + sorted(set(rep.at_peak) - set(COMPONENTS)):
            lines.append(f"{key}.{component.replace(' ', '_')}_gib:{rep.at_peak[component] / GIB:.3f}")
        lines += [f"{key}.peak_gib:{rep.peak / GIB:.3f}", f"{key}.peak_during:{rep.peak_phase}",
                  f"{key}.fits:{'yes' if rep.fits(device_gb) else 'no'}"]
    return lines


def preset_reports(config: RunConfig, ttt: TTTConfig, device_gb: float, seq_len: int | None = None,
                   batch_windows: int = 8, world_size: int = RECORD_WORLD_SIZE) -> list[MemoryReport]:
    """The training step and, when the preset has one, its TTT mode's steps, document modes with
    the documents per batch the eval's rule picks for a ``device_gb`` device."""
    reports = [training_memory(config, world_size)]
    if ttt.mode != "none":
        if ttt.mode in ("lora", "phased"):
            ttt = with_batch_docs(ttt, fitted_docs(config, ttt, device_gb, seq_len).docs)
        reports.append(ttt_memory(config, ttt, seq_len, batch_windows, world_size))
    return reports


def fitted_docs(config: RunConfig, ttt: TTTConfig, device_gb: float, seq_len: int | None = None) -> BatchFit:
    """The eval's own rule (ttt/batch_fit.py), its probes run on fake tensors for a ``device_gb`` device."""
    with counting() as tracker:
        model = built_model(config.model, tracker)
        limited = replace(ttt, lora=replace(ttt.lora, memory_limit_gb=device_gb))
        return fit_batch_docs(model, limited, seq_len or config.train.seq_len, "cpu", AUTOCAST)

