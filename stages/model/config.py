"""The model's shape and switches: everything needed to rebuild the network from an artifact.

Every record technique (docs/REFERENCE.md section 6) is a field here, off by default; the defaults are
the naive baseline (docs/REFERENCE.md section 5). Presets in stages/train/presets.py turn them on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..ranges import ConfigError, check_ranges, ranged


@dataclass(frozen=True)
class ModelConfig:
    """A GPT of the baseline family plus every switchable record technique."""

    vocab_size: int = ranged(1024, ge=2)
    """Embedding rows; at least the tokenizer's vocab size."""
    num_layers: int = ranged(9, ge=1)
    """Physical transformer blocks (depth recurrence can run some of them more than once)."""
    model_dim: int = ranged(512, ge=1)
    """Residual stream width."""
    num_heads: int = ranged(8, ge=1)
    """Query heads."""
    num_kv_heads: int = ranged(4, ge=1)
    """Key/value heads (grouped-query attention when fewer than num_heads)."""
    mlp_mult: float = ranged(2.0, gt=0)
    """MLP hidden width as a multiple of model_dim."""
    mlp_activation: Literal["relu2", "leaky_relu2"] = "relu2"
    """relu(x)^2 (baseline) or leaky_relu(x, 0.5)^2 (records from PR #549 on)."""
    rope_base: float = ranged(10000.0, gt=0)
    """RoPE frequency base."""
    rope_dims: int = ranged(0, ge=0)
    """Rotary on the first N dims of each head (partial RoPE; records use 16 of 64). 0: all dims."""
    rope_train_len: int = ranged(0, ge=0)
    """Sequence length the rotary frequencies are built for: a longer sequence stretches the base to
    base * (L / rope_train_len)^(d / (d - 2)), d the rotary dims (PR #401: built for 1024, trained
    at 2048). 0: never stretch."""
    qk_norm: bool = True
    """RMSNorm on queries and keys before RoPE."""
    qk_gain_init: float = ranged(1.5, gt=0)
    """Initial learned per-head query scale (baseline 1.5; records 5.0-5.25)."""
    logit_softcap: float = ranged(30.0, ge=0)
    """Logits become softcap * tanh(z / softcap); 0 disables the cap (records: 30, or 15 in PR #1880)."""
    tie_embeddings: bool = True
    """Use the token embedding as the output head."""
    tied_embed_init_std: float = ranged(0.005, gt=0)
    """Init std of the (tied) embedding."""
    orthogonal_init: bool = False
    """The records' init: orthogonal for matrices with both sides >= 64 (output projections stay
    zero); the BigramHash and value-embedding projections, if that large, become orthogonal scaled
    by 1/sqrt(2 num_layers) instead of zero (and the BigramHash table then starts at zero)."""
    xsa_last_n: int = ranged(0, ge=0)
    """Exclusive self attention on the last N physical layers (remove each head's component along
    its own value vector); >= num_layers means all layers. 0: off."""
    attn_gate_width: int = ranged(0, ge=0)
    """Attention output gate: per head y_h *= 2 sigmoid(W_h x[:w]), zero-init (12 or 24). 0: off."""
    attn_gate_sparse: bool = False
    """Sparse gate variant: sigmoid(0.5 W_h x[:w]) (halves the heads' output at init)."""
    smear_gate: bool = False
    """SmearGate: mix each position's embedding with the previous one's (smear_form says how)."""
    smear_form: Literal["gated", "per_channel"] = "gated"
    """'gated' (#1667 lineage): x_t += lambda sigmoid(W x_t[:12]) x_{t-1} on the raw embedding, before
    the first RMSNorm, W and lambda zero-init. 'per_channel' (PR #401): x = (1 - s) x + s x_prev with
    s = sigmoid(g) per channel, g zero-init, after the first RMSNorm."""
    smear_bos_mask: bool = True
    """A BOS token sees no previous token in SmearGate and BigramHash (the legality fix, #1851), so
    no document reads the one before it. Off reproduces the records that ran without it (#401,
    #1667, #1790)."""
    ln_scale: bool = False
    """Scale each block's normalized inputs by 1/sqrt(layer + 1)."""
    unet_skips: bool = True
    """U-Net skips: the first half of the (virtual) layers push, the second half pop."""
    skip_gates: bool = False
    """Gated skips: x = lerp(w * skip, x, sigmoid(g)), gates zero-init (records); off: x += w * skip."""
    parallel_residual_from: int = ranged(-1, ge=-1)
    """From this physical layer on, blocks run attention and MLP in parallel (parallel_residual
    says how). -1: off."""
    parallel_residual: Literal["shared", "two_lane"] = "shared"
    """'shared' (#1493): attention and MLP read the same block input, one stream. 'two_lane'
    (#1667 lineage): attention reads lane 0 (mixed with x0), the MLP reads lane 1, each block writes
    both through learned weights, U-Net skips feed lane 0 and the lanes' mean is the final hidden
    state; the parallel layers must form the tail of the decoder half."""
    loop_first: int = ranged(-1, ge=-1)
    """Depth recurrence: first physical layer of the looped span (-1: off)."""
    loop_last: int = ranged(-1, ge=-1)
    """Depth recurrence: last physical layer of the looped span (inclusive)."""
    loop_passes: int = ranged(1, ge=1)
    """Total passes through the looped span once looping is on (records: 3 for layers 3-5)."""
    loop_start_frac: float = ranged(0.0, ge=0, le=1)
    """Training fraction at which looping switches on (records: 0.35); eval always loops."""
    bigram_hash_buckets: int = ranged(0, ge=2, off=0)
    """BigramHash embedding buckets (seed 003: 2048); the last one means "no previous token". 0: off."""
    bigram_hash_dim: int = ranged(128, ge=1)
    """BigramHash embedding width, projected to model_dim and scaled by a learned scalar (init 0.05)."""
    value_embed_dim: int = ranged(0, ge=0)
    """Shared value embedding width (seed 003: 128), projected once to the KV width and scaled by a
    learned scalar (init 0.1). 0: off."""
    value_embed_layers: tuple[int, ...] = ranged((), ge=0)
    """Physical layers that add the shared value embedding to their values, each times its own
    learned scale (init 1.0) (seed 003: 9, 10)."""
    doc_mask: bool = False
    """Mask attention at BOS so that no position attends across a document boundary."""
    bos_id: int = ranged(1, ge=0)
    """Token id that starts every document (SmearGate, BigramHash and doc_mask use it)."""

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.model_dim % self.num_heads:
            raise ConfigError("num_heads", f"must divide model_dim {self.model_dim}, got {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError("num_kv_heads", f"must divide num_heads {self.num_heads}, got {self.num_kv_heads}")
        if self.rotary_dims % 2 or self.rotary_dims > self.head_dim:
            raise ConfigError("rope_dims", f"rotary dims must be even and at most the head dim {self.head_dim}, "
                                           f"got {self.rotary_dims}")
        if self.rope_train_len and self.rotary_dims < 4:
            raise ConfigError("rope_train_len", f"stretching the RoPE base needs at least 4 rotary dims, got {self.rotary_dims}")
        if self.mlp_hidden < 1:
            raise ConfigError("mlp_mult", f"gives an MLP of {self.mlp_hidden} units at model_dim {self.model_dim}")
        if self.attn_gate_width > self.model_dim:
            raise ConfigError("attn_gate_width", f"must be at most model_dim {self.model_dim}, got {self.attn_gate_width}")
        if self.bos_id >= self.vocab_size:
            raise ConfigError("bos_id", f"must be below vocab_size {self.vocab_size}, got {self.bos_id}")
        if self.looped and not (0 <= self.loop_first <= self.loop_last < self.num_layers and self.loop_passes >= 2):
            raise ConfigError("loop_first", "depth recurrence needs 0 <= loop_first <= loop_last < num_layers "
                                            f"({self.num_layers}) and loop_passes >= 2")
        if any(layer >= self.num_layers for layer in self.value_embed_layers):
            raise ConfigError("value_embed_layers", f"must name layers below num_layers {self.num_layers}, "
                                                    f"got {self.value_embed_layers}")
        if self.two_lane:
            self._check_two_lane_tail()

    def _check_two_lane_tail(self) -> None:
        """Two lanes start once, in the decoder half, and run to the end: no ordinary block and no
        encoder (skip-pushing) block may follow the first parallel one, with looping on or off."""
        for looping in (False, True):
            sequence = self.layer_sequence(looping)
            parallel = [position for position, layer in enumerate(sequence) if self.is_parallel(layer)]
            tail = list(range(parallel[0], len(sequence))) if parallel else []
            if parallel != tail or (parallel and parallel[0] < self.num_encoder_positions(looping)):
                raise ConfigError("parallel_residual_from",
                                  f"two-lane blocks must be the tail of the decoder half; from layer "
                                  f"{self.parallel_residual_from} they are not, in the virtual layers {sequence}")

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    @property
    def rotary_dims(self) -> int:
        return self.rope_dims or self.head_dim

    @property
    def mlp_hidden(self) -> int:
        return int(self.mlp_mult * self.model_dim)

    @property
    def looped(self) -> bool:
        return self.loop_first >= 0

    @property
    def two_lane(self) -> bool:
        return self.parallel_residual == "two_lane" and self.parallel_residual_from >= 0

    def is_parallel(self, layer: int) -> bool:
        """Whether physical block ``layer`` runs attention and MLP in parallel."""
        return 0 <= self.parallel_residual_from <= layer

    def num_encoder_positions(self, looping: bool) -> int:
        """Virtual layers that push a U-Net skip (the first half), 0 without skips."""
        return len(self.layer_sequence(looping)) // 2 if self.unet_skips else 0

    def layer_sequence(self, looping: bool) -> list[int]:
        """Physical block indices in execution order (the 'virtual layers')."""
        layers = list(range(self.num_layers))
        if not (self.looped and looping):
            return layers
        span = layers[self.loop_first : self.loop_last + 1]
        return layers[: self.loop_first] + span * self.loop_passes + layers[self.loop_last + 1 :]
