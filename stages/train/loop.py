"""The training loop: one optimizer step at a time, with the schedule and the late switches.

Per step: compute the schedule (progress -> LR scale, Muon momentum), flip the switches that
depend on it (depth recurrence from ``loop_start_frac``, late QAT below ``qat_lr_scale``), run
the micro-batches, clip, step the optimizers, then update the EMA and tight SWA averages. Only
the step itself is timed; the caller books the seconds to the ledger. The compiled loss is one
graph (fullgraph) per switch setting, and the untimed warm-up compiles every setting the run can
reach, so nothing recompiles inside the timed loop.
"""

from __future__ import annotations

import copy
import math

import torch

from ..errors import GolfError
from ..model.attention_backends import unbounded_reason
from ..model.gpt import GPT
from ..model.layers import Linear
from .averaging import EMA, TightSWA
from .config import RunConfig, resolve_grad_accum
from .loader import Batch, packed_batch
from .optim import build_optimizers
from .schedule import lr_multiplier, muon_momentum, progress


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
    def train_step(self) -> float:
        """One optimizer step; returns the mean micro-batch loss."""
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
        total = 0.0
        for _ in range(self.grad_accum):
            x, y, segments = self.loader.next_batch(local_tokens, tcfg.row_tokens, self.device)
            if segments is not None and self.tcfg.compile:  # any bucket count runs the same graph
                torch._dynamo.mark_dynamic(segments.cu_seqlens, 0)
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                loss = self.loss_fn(x, y, self.max_doc_len, segments=segments)
            (loss / self.grad_accum).backward()
            total += loss.item() / self.grad_accum
        if not math.isfinite(total):
            raise GolfError(f"train loss became {total} at step {self.step}: lower the learning rates")
        self._sync_gradients()
        if tcfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tcfg.grad_clip)
        for optimizer in self.optimizers:
            optimizer.step()
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.model)
        if self.swa is not None and self.swa.due(self.step, scale):  # the snapshot copies every weight
            self.swa.maybe_collect(self.step, scale, self.ema.state_dict() if self.ema else self.model.state_dict())
        return total

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

    # ---- distributed hooks (single process: no-ops) ----
    def world_size(self) -> int:
        import torch.distributed as dist

        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    def _sync_gradients(self) -> None:
        """Average gradients across ranks so every rank steps identically."""
        if self.world_size() == 1:
            return
        import torch.distributed as dist

        world = self.world_size()
        for param in self.model.parameters():
            if param.grad is not None:
                dist.all_reduce(param.grad)  # SUM: gloo has no AVG
                param.grad /= world

    # ---- what gets exported ----
    def export_state(self) -> tuple[dict[str, torch.Tensor], str]:
        """The weights to save and which average they are: SWA over EMA, else EMA, else raw."""
        if self.swa is not None and self.swa.count:
            return self.swa.average(), f"tight SWA of {self.swa.count} EMA snapshots"
        if self.ema is not None:
            return self.ema.state_dict(), f"EMA (decay {self.tcfg.ema_decay})"
        return self.model.state_dict(), "raw"
