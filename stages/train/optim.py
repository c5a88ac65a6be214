"""Parameter groups: Muon for 2-D block weights, Adam for the embedding, head and small tensors;
and the precision each role trains in on the GPU."""

from __future__ import annotations

import torch

from ..model.gpt import CONTROL_TENSOR_NAMES, GPT
from .config import TrainConfig
from .muon import Muon


def is_embedding(name: str) -> bool:
    """Lookup tables (token, bigram-hash and value embeddings): Adam at the embedding LR."""
    return name in ("tok_emb.weight", "bigram.embed.weight", "value_embed.embed.weight")


def is_matrix(name: str, param: torch.Tensor) -> bool:
    """Weights trained by Muon: 2-D projections that are neither embeddings nor control tensors."""
    return (param.ndim == 2 and not is_embedding(name) and name != "lm_head.weight"
            and not any(c in name for c in CONTROL_TENSOR_NAMES))


def use_record_precision(model: GPT) -> GPT:
    """The records' CUDA precision, in place: they cast the model with ``.bfloat16()`` and then put
    every linear layer (CastedLinear, which casts its weight to the activations' dtype in the
    forward) and every 1-D or control tensor back to float32, so the lookup tables are what stays
    bf16: the token embedding and the bigram-hash and value embeddings. Their bf16 rows make the
    residual stream bf16 from the first layer. Non-persistent buffers (rotary) stay float32.
    Only for CUDA: the CPU path keeps float32 everywhere."""
    for name, param in model.named_parameters():
        if is_embedding(name):
            param.data = param.data.bfloat16()
    return model


def build_optimizers(model: GPT, config: TrainConfig) -> list[torch.optim.Optimizer]:
    matrices, embeddings, scalars = [], [], []
    for name, param in model.named_parameters():
        if name == "lm_head.weight":
            continue
        if is_embedding(name):
            embeddings.append(param)
        else:
            (matrices if is_matrix(name, param) else scalars).append(param)
    betas = (config.adam_beta1, config.adam_beta2)
    adam_groups = [
        {"params": embeddings, "lr": config.embed_lr, "base_lr": config.embed_lr,
         "weight_decay": config.embed_weight_decay},
        {"params": scalars, "lr": config.scalar_lr, "base_lr": config.scalar_lr,
         "weight_decay": config.scalar_weight_decay},
    ]
    if model.lm_head is not None:
        adam_groups.append({"params": [model.lm_head.weight], "lr": config.head_lr, "base_lr": config.head_lr,
                            "weight_decay": config.embed_weight_decay})
    # AdamW's decay is decoupled (p *= 1 - lr * wd); with wd 0 it is exactly the baseline's Adam.
    # One fused kernel per dtype on CUDA (as the records run it); elsewhere the foreach form (a few
    # calls over lists instead of a Python loop over tensors), the same maths.
    on_cuda = model.tok_emb.weight.is_cuda
    adam = torch.optim.AdamW(adam_groups, betas=betas, eps=config.adam_eps,
                             **({"fused": True} if on_cuda else {"foreach": True}))
    muon = Muon(matrices, lr=config.matrix_lr, momentum=config.muon_momentum, ns_steps=config.muon_ns_steps,
                coefficients=config.muon_coefficients, row_normalize=config.muon_row_normalize,
                weight_decay=config.muon_weight_decay)
    for group in muon.param_groups:
        group["base_lr"] = config.matrix_lr
    return [adam, muon]
