"""GPTQ calibration: H = X^T X / n for the input X of every matrix that gets quantized.

Forward hooks read each layer's input as the model runs on calibration batches: the normed block
input for q/k/v, the attention output for its projection, the MLP input and hidden activation
for up and down, and for the tied embedding (used as the output head) the final-norm output.
A looped block runs several times per forward pass and its hooks accumulate every pass.

The batches are windows of the training shards (the records' choice; those seconds count toward
the training budget) or text the model samples itself from BOS (no training data is read).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..model.gpt import GPT
from ..model.layers import Linear
from .config import CalibrationConfig


@dataclass
class Hessians:
    """Per-weight input Hessians and what they were collected from."""

    matrices: dict[str, torch.Tensor]
    """Parameter name -> H (in_features x in_features), float32."""
    tokens: int
    """Calibration tokens per matrix (a looped layer sees them once per pass)."""


def hooked_inputs(model: GPT) -> dict[str, torch.nn.Module]:
    """Parameter name -> the module whose input multiplies that weight."""
    points = {f"{name}.weight": module for name, module in model.named_modules() if isinstance(module, Linear)}
    if model.lm_head is None:
        points["tok_emb.weight"] = model.head_input
    return points


def collect_hessians(model: GPT, batches: Iterator[torch.Tensor], names: set[str], device) -> Hessians:
    """Run ``model`` over ``batches`` of token ids and average X^T X at the inputs of ``names``."""
    sums: dict[str, torch.Tensor] = {}
    rows: dict[str, int] = {}

    def accumulate(name: str):
        def hook(module, inputs, output):
            x = inputs[0].detach().reshape(-1, inputs[0].size(-1)).float()
            if name not in sums:
                sums[name] = torch.zeros(x.size(1), x.size(1), device=x.device)
                rows[name] = 0
            sums[name].addmm_(x.T, x)
            rows[name] += x.size(0)
        return hook

    handles = [module.register_forward_hook(accumulate(name))
               for name, module in hooked_inputs(model).items() if name in names]
    tokens = 0
    device = torch.device(device)
    try:
        with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            for input_ids in batches:
                model(input_ids.to(device))
                tokens += input_ids.numel()
    finally:
        for handle in handles:
            handle.remove()
    return Hessians({name: (sums[name] / rows[name]).cpu() for name in sums}, tokens)


def training_batches(loader, config: CalibrationConfig, seq_len: int, device) -> Iterator[torch.Tensor]:
    """``config.batches`` windows batches from the training-shard loader."""
    for _ in range(config.batches):
        yield loader.next_batch(config.batch_tokens, seq_len, device).inputs


def generated_batches(model: GPT, config: CalibrationConfig, seq_len: int, device) -> Iterator[torch.Tensor]:
    """Batches the model samples from BOS, one token at a time (a full forward pass per token:
    the cost grows with seq_len^2, so keep calibration.seq_len modest for this source)."""
    generator = torch.Generator().manual_seed(config.seed)
    rows = max(1, config.batch_tokens // seq_len)
    for _ in range(config.batches):
        ids = torch.full((rows, 1), model.config.bos_id, dtype=torch.long, device=device)
        with torch.no_grad():
            for _ in range(seq_len - 1):
                logits = model(ids)[:, -1].float().cpu() / config.temperature
                next_ids = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)
                ids = torch.cat([ids, next_ids.to(device)], dim=1)
        yield ids
