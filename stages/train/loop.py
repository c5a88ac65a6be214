"""The training loop: one optimizer step at a time, with the schedule and the late switches.

Per step: compute the schedule (progress -> LR scale, Muon momentum), flip the switches that
depend on it (depth recurrence from ``loop_start_frac``, late QAT below ``qat_lr_scale``), run
the micro-batches, average the gradients over the ranks, clip, step the optimizers, then update
the EMA and tight SWA averages. Only the step itself is timed; the caller books the seconds to the
ledger. The compiled loss is one graph (fullgraph) per switch setting, and the untimed warm-up
compiles every setting the run can reach, so nothing recompiles inside the timed loop.

As the records run it, the step never waits on the host: the loss is summed on the device and
handed back as a tensor (the caller reads it once, ``read_loss``, after the step), the gradients
travel in a few flat buckets and Muon's reduce-scattered by shape, the optimizers work on lists
(fused AdamW on CUDA, foreach elsewhere) and so does the EMA. On CUDA the lookup tables train in
bf16 and everything else in float32 (``use_record_precision``). Each phase is a
``record_function`` region (data, forward, backward, communication, optimizer, ema) for
bench/profile_step.py. The gradient collectives start after the backward, not during it.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.distributed as dist
from torch.profiler import record_function

from ..data.loader import Batch, packed_batch
from ..distributed import rank_and_world, start_mean
from ..errors import GolfError
from ..model.attention_backends import unbounded_reason
from ..model.gpt import GPT
from ..model.layers import Linear
from .averaging import EMA, TightSWA
from .config import RunConfig, resolve_grad_accum
from .muon import Muon
from .optim import build_optimizers, use_record_precision
from .schedule import lr_multiplier, muon_momentum, progress


def float32_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A detached copy with every floating tensor in float32: what the weight files hold, whatever
    dtype a weight trained in (bf16 embeddings on CUDA)."""
    return {name: t.detach().to(torch.float32 if t.is_floating_point() else t.dtype, copy=True)
            for name, t in state.items()}


class RandomTokens:
    """Dummy batches for the compile warm-up: never training or val data; rows as long as the real
    loader's (``row_tokens``), with segments when its rows are doc-packed (cut every
    ``max_doc_len``), so the warm-up compiles the shapes the timed loop runs."""

    def __init__(self, vocab_size: int, seed: int, bos_id: int = 1, max_doc_len: int | None = None):
        self.vocab_size, self.bos_id, self.max_doc_len = vocab_size, bos_id, max_doc_len
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self, local_tokens: int, row_tokens: int, device) -> Batch:
        rows = torch.randint(0, self.vocab_size, (local_tokens // row_tokens, row_tokens + 1), generator=self.generator)
        if self.max_doc_len is not None:
            return packed_batch(rows.numpy(), self.bos_id, self.max_doc_len, device)
        return Batch(rows[:, :-1].to(device), rows[:, 1:].to(device))


class Trainer:
    def __init__(self, model: GPT, config: RunConfig, loader, device: torch.device):
        self.model, self.config, self.loader, self.device = model, config, loader, device
        self.tcfg = config.train
        if device.type == "cuda":  # before the optimizers and averages take the weights in
            use_record_precision(model)
        self.optimizers = build_optimizers(model, self.tcfg)
        self.ema = EMA(model, self.tcfg.ema_decay) if self.tcfg.ema_decay else None
        self.swa = TightSWA(self.tcfg.swa_every, self.tcfg.swa_lr_scale) if self.tcfg.swa_every else None
        self.grad_accum = resolve_grad_accum(self.tcfg, self.world_size())
        # Packed rows hold many documents: attention splits long ones every seq_len tokens, as the records do
        # (the loader's segments cut them).
        self.max_doc_len = self.tcfg.seq_len if self.tcfg.loader == "doc_packed" else 0
        if self.max_doc_len and getattr(loader, "max_doc_len", self.max_doc_len) != self.max_doc_len:
            raise GolfError(f"the doc-packed loader cuts documents every {loader.max_doc_len} tokens, "
                            f"training needs every {self.max_doc_len} (train.seq_len)")
        self.step = 0
        self.elapsed = 0.0
        self.qat_on_step: int | None = None
        self.switches_held = False
        self.loop_on_step: int | None = None
        self.model.looping = config.model.loop_start_frac <= 0
        # The attention kernel, chosen once (autocast runs bf16 on CUDA); rows it could only mask
        # with a (T, T) tensor are refused here, before any step.
        model.choose_attention(device, torch.bfloat16 if device.type == "cuda" else next(model.parameters()).dtype)
        refusal = unbounded_reason(model.attention_backend, config.model.doc_mask, self.tcfg.row_tokens, self.max_doc_len)
        if refusal:
            raise GolfError(refusal)
        # Compiled once here as one graph: the warm-up pays the compile cost outside the timed loop.
        self.loss_fn = torch.compile(model.loss, fullgraph=True) if self.tcfg.compile else model.loss

    # ---- budget and schedule ----
    def usable_seconds(self) -> float | None:
        """The wall-clock budget less the seconds reserved for GPTQ calibration (None: no clock)."""
        if self.tcfg.max_seconds is None:
            return None
        return self.tcfg.max_seconds - self.tcfg.gptq_reserve_seconds

    def done(self) -> str | None:
        if self.step >= self.tcfg.max_steps:
            return "max_steps"
        usable = self.usable_seconds()
        if usable is not None and self.elapsed >= usable:
            return "max_seconds"
        return None

    def progress(self) -> float:
        return progress(self.tcfg, self.step, self.elapsed)

    def lr_scale(self) -> float:
        return lr_multiplier(self.tcfg, self.progress(), self.step)

    # ---- one step ----
    def train_step(self) -> torch.Tensor:
        """One optimizer step; returns the mean micro-batch loss over every rank, a 0-d float64
        tensor left on the device: reading it (``read_loss``) is the caller's one host sync."""
        tcfg = self.tcfg
        frac, scale = self.progress(), self.lr_scale()
        self._apply_switches(frac, scale)
        momentum = muon_momentum(tcfg, self.step)
        for optimizer in self.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * scale
                if "momentum" in group:
                    group["momentum"] = momentum
            optimizer.zero_grad(set_to_none=True)
        local_tokens = tcfg.batch_tokens // (self.grad_accum * self.world_size())
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for _ in range(self.grad_accum):
            with record_function("data"):
                x, y, segments = self.loader.next_batch(local_tokens, tcfg.row_tokens, self.device)
                if segments is not None and self.tcfg.compile:  # any bucket count runs the same graph
                    torch._dynamo.mark_dynamic(segments.cu_seqlens, 0)
            with record_function("forward"), torch.autocast(device_type=self.device.type, dtype=torch.bfloat16,
                                                            enabled=self.device.type == "cuda"):
                loss = self.loss_fn(x, y, self.max_doc_len, segments=segments)
            with record_function("backward"):
                (loss / self.grad_accum).backward()
            total += loss.detach()
        with record_function("communication"):
            total = self._reduce(total / self.grad_accum)
        with record_function("optimizer"):
            if tcfg.grad_clip > 0:
                self._clip_gradients(tcfg.grad_clip)
            for optimizer in self.optimizers:
                optimizer.step()
        self.step += 1
        with record_function("ema"):
            if self.ema is not None:
                self.ema.update(self.model)
            if self.swa is not None and self.swa.due(self.step, scale):  # the snapshot copies every weight
                self.swa.maybe_collect(self.step, scale, self.ema.state_dict() if self.ema else self.model.state_dict())
        return total

    def read_loss(self, loss: torch.Tensor) -> float:
        """The step's loss as a float, refusing a non-finite one. ``loss`` is already the mean over
        the ranks, so every rank reads the same value and all stop on the same step, none left
        waiting in a collective. The timed loop synchronizes after each step anyway (its clock), so
        this read costs no extra drain of the GPU queue; the step itself never waits on the host."""
        value = float(loss)
        if not math.isfinite(value):
            raise GolfError(f"train loss became {value} at step {self.step}: lower the learning rates")
        return value

    def _apply_switches(self, frac: float, scale: float) -> None:
        if self.switches_held:  # the warm-up sets them itself
            return
        cfg = self.config.model
        if cfg.looped and not self.model.looping and frac >= cfg.loop_start_frac:
            self.model.looping, self.loop_on_step = True, self.step
        if self.tcfg.qat_bits and self.qat_on_step is None and scale < self.tcfg.qat_lr_scale:
            self._set_fake_quant(self.tcfg.qat_bits)
            self.qat_on_step = self.step

    def _set_fake_quant(self, bits: int) -> None:
        for module in self.model.modules():
            if isinstance(module, Linear):
                module.fake_quant_bits = bits

    # ---- compile warm-up ----
    def switch_settings(self) -> list[tuple[bool, bool]]:
        """Every (looping, QAT) setting the run can reach: each is its own compiled graph."""
        cfg = self.config.model
        loops = (False, True) if cfg.looped and cfg.loop_start_frac > 0 else (self.model.looping,)
        qat = (False, True) if self.tcfg.qat_bits else (False,)
        return [(loop, quantized) for loop in loops for quantized in qat]

    def warm_up(self, steps: int) -> None:
        """Run ``steps`` steps on random tokens (at least one per switch setting, spread evenly),
        then restore every weight, optimizer state, average, switch and counter: only compile caches stay."""
        saved = copy.deepcopy({
            "model": self.model.state_dict(), "optimizers": [o.state_dict() for o in self.optimizers],
            "ema": self.ema.shadow if self.ema else None, "looping": self.model.looping,
        })
        packed = self.max_doc_len if self.tcfg.loader == "doc_packed" else None
        real_loader, self.loader = self.loader, RandomTokens(self.config.model.vocab_size, self.tcfg.seed,
                                                             self.config.model.bos_id, packed)
        settings = self.switch_settings()
        steps = max(steps, len(settings))
        self.switches_held = True
        try:
            for i in range(steps):
                self.model.looping, quantized = settings[i * len(settings) // steps]
                self._set_fake_quant(self.tcfg.qat_bits if quantized else 0)
                self.train_step()
        finally:
            self.loader, self.switches_held = real_loader, False
            self._set_fake_quant(0)
        self.model.load_state_dict(saved["model"])
        for optimizer, state in zip(self.optimizers, saved["optimizers"]):
            optimizer.load_state_dict(state)
        if self.ema is not None:
            self.ema.shadow = saved["ema"]
        if self.swa is not None:
            self.swa.count, self.swa.mean = 0, {}
        self.model.looping = saved["looping"]
        self.step, self.elapsed, self.qat_on_step, self.loop_on_step = 0, 0.0, None, None

    # ---- distributed: gradients and the loss averaged over the ranks ----
    def world_size(self) -> int:
        return rank_and_world()[1]

    @property
    def muon(self) -> Muon:
        return next(o for o in self.optimizers if isinstance(o, Muon))

    def _replicated_grads(self) -> list[torch.Tensor]:
        """The gradients every rank holds whole after the reduction: all but Muon's matrices."""
        sharded = {p for group in self.muon.param_groups for p in group["params"]}
        return [p.grad for p in self.model.parameters() if p.grad is not None and p not in sharded]

    def _reduce(self, loss: torch.Tensor) -> torch.Tensor:
        """Average the loss and every gradient over the ranks so every rank steps identically: the
        Adam-trained gradients and the loss in a few flat buckets, Muon's reduce-scattered by shape
        (each rank receives the share it orthogonalizes, waited on by Muon's step). All are started
        before any is waited on. One process: nothing to do."""
        if self.world_size() == 1:
            return loss
        self.muon.reduce_gradients()
        for work in start_mean([loss, *self._replicated_grads()]):
            work.wait()
        return loss

    def _clip_gradients(self, max_norm: float) -> None:
        """Scale every gradient so that their global L2 norm is at most ``max_norm``. Multi-rank, the
        Muon gradients are this rank's reduce-scattered shares: their squares are summed over the
        ranks (the padding is zeros) and added to the replicated gradients', as clip_grad_norm_ does."""
        if self.world_size() == 1:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
            return
        replicated, shares = self._replicated_grads(), self.muon.gradient_shares()
        zero = torch.zeros((), device=self.device)
        squares = sum((g.float().square().sum() for g in shares), zero)
        dist.all_reduce(squares)
        squares = squares + sum((g.float().square().sum() for g in replicated), zero)
        scale = (max_norm / (squares.sqrt() + 1e-6)).clamp(max=1.0)
        torch._foreach_mul_(replicated + shares, scale)

    def gather_state(self) -> None:
        """Make this rank's optimizer state whole (Muon keeps momentum for its share only), so a
        checkpoint written by rank 0 resumes on any number of ranks. Every rank must call it."""
        self.muon.gather_momentum()

    # ---- what gets exported ----
    def export_state(self) -> tuple[dict[str, torch.Tensor], str]:
        """The weights to save and which average they are: SWA over EMA, else EMA, else raw."""
        if self.swa is not None and self.swa.count:
            return self.swa.average(), f"tight SWA of {self.swa.count} EMA snapshots"
        if self.ema is not None:
            return self.ema.state_dict(), f"EMA (decay {self.tcfg.ema_decay})"
        return float32_copy(self.model.state_dict()), "raw"
