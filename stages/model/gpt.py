"""The GPT, written to be read top-down: embeddings -> (virtual) layers with U-Net skips -> head.

With every switch off this is the naive baseline (docs/REFERENCE.md section 5, 17,059,912 parameters
at its defaults): RMSNorm'd embedding, blocks that mix their input with the first embedding
(resid_mix) and add scaled attention and relu^2-MLP outputs, U-Net skips (the first half of
the layers push, the second half pop), a tied head and a logit softcap. Output projections start
at zero, so every block is the identity at init. The record techniques (stages/model/config.py)
switch on one by one. Every parameter's role (how it trains, how it is stored) is declared in
stages/model/roles.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .attention import CausalSelfAttention
from .attention_backends import AttentionPlan, Backend, Segments, find_backend, plan_attention
from .config import ModelConfig
from .embeddings import BigramHash, ChannelSmear, SmearGate, ValueEmbedding, document_starts, scaled_orthogonal_
from .head_loss import head_nll
from .layers import Linear, compute_dtype, rms_norm
from .lora import LoRASet, LoRASlot, adapted

# Two-lane parallel blocks (#1667): each lane keeps itself times r (init 1.1) and receives
# attention and MLP outputs through p (init 1.0).
LANE_RESID_INIT, LANE_POST_INIT = 1.1, 1.0


class MLP(nn.Module):
    """act(x W_up)^2 W_down with act = relu or leaky_relu(0.5)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.fc = Linear(config.model_dim, config.mlp_hidden)
        self.proj = Linear(config.mlp_hidden, config.model_dim, zero_init=True)
        self.leaky = config.mlp_activation == "leaky_relu2"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        h = F.leaky_relu(h, 0.5) if self.leaky else torch.relu(h)
        return self.proj(h.square())


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        dim = config.model_dim
        self.attn = CausalSelfAttention(config, layer)
        self.mlp = MLP(config)
        self.attn_scale = nn.Parameter(torch.ones(dim))
        self.mlp_scale = nn.Parameter(torch.ones(dim))
        # Row 0 weighs the running stream, row 1 the first embedding x0.
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(dim), torch.zeros(dim))))
        self.input_scale = 1 / math.sqrt(layer + 1) if config.ln_scale else 1.0
        self.parallel = config.is_parallel(layer)
        self.two_lane = self.parallel and config.two_lane
        if self.two_lane:
            # lane_resid[lane] scales the lane itself; lane_post[source, lane] (source 0: attention,
            # 1: MLP) weighs what each output writes into each lane.
            self.lane_resid = nn.Parameter(torch.full((2,), LANE_RESID_INIT))
            self.lane_post = nn.Parameter(torch.full((2, 2), LANE_POST_INIT))

    def forward(self, x: torch.Tensor, x0: torch.Tensor, plan: AttentionPlan | None = None, value_embed=None,
                adapters: LoRASlot | None = None) -> torch.Tensor:
        """``adapters``: this virtual layer's LoRA adapters (test-time training), if any."""
        x = self._mixed(x, x0)
        h = rms_norm(x) * self.input_scale
        attn_out = self.attn_scale.to(x.dtype) * self.attn(h, plan, value_embed, adapters)
        if self.parallel:  # attention and MLP both read the block's input
            return x + attn_out + self.mlp_scale.to(x.dtype) * self._mlp(h, adapters)
        x = x + attn_out
        return x + self.mlp_scale.to(x.dtype) * self._mlp(rms_norm(x) * self.input_scale, adapters)

    def forward_lanes(self, lanes: tuple[torch.Tensor, torch.Tensor], x0: torch.Tensor, plan=None,
                      value_embed=None, adapters: LoRASlot | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Two-lane parallel block: attention reads lane 0 (mixed with x0), the MLP reads lane 1;
        both outputs go to both lanes."""
        lane0, lane1 = lanes
        attn_in = rms_norm(self._mixed(lane0, x0)) * self.input_scale
        attn_out = self.attn_scale.to(lane0.dtype) * self.attn(attn_in, plan, value_embed, adapters)
        mlp_out = self.mlp_scale.to(lane1.dtype) * self._mlp(rms_norm(lane1) * self.input_scale, adapters)
        keep, post = self.lane_resid.to(lane0.dtype), self.lane_post.to(lane0.dtype)
        return (keep[0] * lane0 + post[0, 0] * attn_out + post[1, 0] * mlp_out,
                keep[1] * lane1 + post[0, 1] * attn_out + post[1, 1] * mlp_out)

    def _mlp(self, h: torch.Tensor, adapters: LoRASlot | None) -> torch.Tensor:
        """The MLP on its normed input ``h``, plus the mlp adapter's delta (before mlp_scale)."""
        return adapted(self.mlp(h), adapters, "mlp", h)

    def _mixed(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        mix = self.resid_mix.to(x.dtype)
        return mix[0] * x + mix[1] * x0


class GPT(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.model_dim)
        nn.init.normal_(self.tok_emb.weight, std=config.tied_embed_init_std)
        self.bigram = BigramHash(config) if config.bigram_hash_buckets else None
        self.smear = None
        if config.smear_gate:
            self.smear = ChannelSmear(config) if config.smear_form == "per_channel" else SmearGate(config)
        self.value_embed = ValueEmbedding(config) if config.value_embed_dim else None
        self.blocks = nn.ModuleList(Block(config, layer) for layer in range(config.num_layers))
        longest = len(config.layer_sequence(looping=True))
        num_skips = config.num_encoder_positions(looping=True)
        self.skip_weights = nn.Parameter(torch.ones(min(num_skips, longest - num_skips), config.model_dim))
        self.skip_gates = nn.Parameter(torch.zeros_like(self.skip_weights)) if config.skip_gates else None
        self.lm_head = None if config.tie_embeddings else Linear(config.model_dim, config.vocab_size, zero_init=True)
        # No weights: a named point where GPTQ calibration hooks the head's input (the final norm).
        self.head_input = nn.Identity()
        # Depth recurrence runs only once the trainer switches it on; a built model (eval) loops.
        self.looping = True
        # The attention kernel (attention_backends.py); None: chosen per forward by device and dtype.
        # Trainers and eval pin it once (and log it) so a compiled forward never looks it up.
        self.attention_backend: Backend | None = None
        if config.orthogonal_init:
            self._orthogonal_init()

    def _orthogonal_init(self) -> None:
        for module in self.modules():
            if isinstance(module, Linear) and not module.zero_init:
                scaled_orthogonal_(module, 1.0)
        # PR #401 overwrites the zero start of these two projections too, scaled like an output
        # projection would be (its output projections themselves stay zero).
        for extra in (self.bigram, self.value_embed):
            if extra is not None:
                extra.record_init(1 / math.sqrt(2 * self.config.num_layers))

    def forward(self, input_ids: torch.Tensor, max_doc_len: int = 0, adapters: LoRASet | None = None,
                doc_mask: bool | None = None, segments: Segments | None = None) -> torch.Tensor:
        """Logits (batch, seq, vocab) after the softcap. With doc_mask, ``max_doc_len`` also splits
        attention inside documents longer than that (doc-packed training rows: the train seq_len).
        ``adapters`` adds each row's own LoRA deltas (document test-time training; stages/model/lora.py).
        ``doc_mask`` overrides the config's switch (test-time training on packed documents).
        ``segments``: the batch's document boundaries, computed by the loader (they imply the mask and
        replace ``max_doc_len``); without them a masked forward finds them in the tokens, once."""
        x = self.hidden(input_ids, max_doc_len, adapters, doc_mask, segments)
        logits = F.linear(x, self.head_weight().to(x.dtype))
        if adapters is not None:
            logits = adapted(logits, adapters.slot(adapters.head_slot), "head", x)
        cap = self.config.logit_softcap
        return cap * torch.tanh(logits / cap) if cap > 0 else logits

    def hidden(self, input_ids: torch.Tensor, max_doc_len: int = 0, adapters: LoRASet | None = None,
               doc_mask: bool | None = None, segments: Segments | None = None) -> torch.Tensor:
        """The final-normed hidden state (batch, seq, dim) the head reads; arguments as ``forward``'s."""
        cfg = self.config
        x0 = self._embed(input_ids)
        masked = cfg.doc_mask if doc_mask is None else doc_mask
        plan = plan_attention(self._backend(x0), input_ids, cfg.bos_id, max_doc_len, segments, masked)
        value_embed = self.value_embed(input_ids) if self.value_embed is not None else None
        x = self._run_layers(x0, x0, plan, value_embed, adapters)
        return self.head_input(rms_norm(x))

    def head_weight(self) -> torch.Tensor:
        """(vocab, dim): the tied embedding or the untied head's weight."""
        return self.tok_emb.weight if self.lm_head is None else self.lm_head.weight

    def choose_attention(self, device: torch.device, dtype: torch.dtype) -> str:
        """Pin the attention backend for ``dtype`` (the autocast dtype when autocast is on) on
        ``device``, so no forward looks it up; returns its name (the ``attention:`` log line)."""
        self.attention_backend = find_backend(torch.device(device), dtype)
        return self.attention_backend.name

    def _backend(self, x: torch.Tensor) -> Backend:
        """The pinned backend, unless it is a flash kernel and this forward is not in half precision."""
        dtype = compute_dtype(x.device, x.dtype)
        pinned = self.attention_backend
        if pinned is not None and pinned.takes(dtype):
            return pinned
        return find_backend(x.device, dtype)

    def _embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """x0: token embedding (+ BigramHash), the gated SmearGate on that raw sum, the first
        RMSNorm, then the per-channel SmearGate (each record's own placement)."""
        cfg = self.config
        # Only BigramHash and the SmearGates read the document starts.
        needs_starts = self.bigram is not None or self.smear is not None
        starts = document_starts(input_ids, cfg.bos_id, cfg.smear_bos_mask) if needs_starts else None
        x = self.tok_emb(input_ids)
        if self.bigram is not None:
            x = x + self.bigram(input_ids, starts)
        if isinstance(self.smear, SmearGate):
            x = self.smear(x, starts)
        x = rms_norm(x)
        if isinstance(self.smear, ChannelSmear):
            x = self.smear(x, starts)
        return x

    def _run_layers(self, x, x0, plan: AttentionPlan, value_embed, adapters: LoRASet | None = None) -> torch.Tensor:
        """Virtual layers in order; the first half push U-Net skips, the second half pop them.
        Two-lane blocks (the decoder's tail) start both lanes from the hidden state, take the skips
        on lane 0, and end as the lanes' mean."""
        sequence = self.config.layer_sequence(self.looping)
        num_encoder = self.config.num_encoder_positions(self.looping)
        skips, lanes = [], None
        for position, layer in enumerate(sequence):
            block = self.blocks[layer]
            if block.two_lane and lanes is None:
                lanes = (x, x)
            if position >= num_encoder and skips:
                skip = skips.pop()
                if lanes is None:
                    x = self._add_skip(x, skip, position - num_encoder)
                else:
                    lanes = (self._add_skip(lanes[0], skip, position - num_encoder), lanes[1])
            slot = None if adapters is None else adapters.slot(position)
            if lanes is None:
                x = block(x, x0, plan, value_embed, slot)
            else:
                lanes = block.forward_lanes(lanes, x0, plan, value_embed, slot)
            if position < num_encoder:
                skips.append(x)
        return x if lanes is None else 0.5 * (lanes[0] + lanes[1])

    def _add_skip(self, x: torch.Tensor, skip: torch.Tensor, index: int) -> torch.Tensor:
        weighted = self.skip_weights[index].to(x.dtype) * skip
        if self.skip_gates is None:
            return x + weighted
        return torch.lerp(weighted, x, torch.sigmoid(self.skip_gates[index]).to(x.dtype))

    def loss(self, input_ids: torch.Tensor, targets: torch.Tensor, max_doc_len: int = 0,
             adapters: LoRASet | None = None, doc_mask: bool | None = None,
             segments: Segments | None = None) -> torch.Tensor:
        """Mean cross-entropy in fp32 over every target."""
        return self.nll(input_ids, targets, max_doc_len, adapters, doc_mask, segments, reduction="mean")

    def nll(self, input_ids: torch.Tensor, targets: torch.Tensor, max_doc_len: int = 0,
            adapters: LoRASet | None = None, doc_mask: bool | None = None, segments: Segments | None = None,
            reduction: str = "none") -> torch.Tensor:
        """Per-target NLL in fp32 shaped like ``targets`` (reduction 'none') or its mean ('mean'). The
        head (with its adapter's delta, if any) and the loss run fused, a chunk of tokens at a time,
        never holding every logit (head_loss.py)."""
        x = self.hidden(input_ids, max_doc_len, adapters, doc_mask, segments)
        low_rank = None if adapters is None else adapters.factors((adapters.head_slot, "head"), x)
        return head_nll(x, self.head_weight(), targets, self.config.logit_softcap, reduction, low_rank=low_rank)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
