"""Parameter groups: Muon for 2-D block weights, Adam for the embedding, head and small tensors."""

from __future__ import annotations

import torch

from ..model.gpt import CONTROL_TENSOR_NAMES, GPT
from .config import TrainConfig
from .muon import Muon


def is_matrix(name: str, param: torch.Tensor) -> bool:
    """Block weights trained by Muon: 2-D, inside a block, not a control tensor."""
    return name.startswith("blocks.") and param.ndim == 2 and not any(c in name for c in CONTROL_TENSOR_NAMES)


def build_optimizers(model: GPT, config: TrainConfig) -> list[torch.optim.Optimizer]:
    matrices, scalars = [], []
    for name, param in model.named_parameters():
        if name in ("tok_emb.weight", "lm_head.weight"):
            continue
        (matrices if is_matrix(name, param) else scalars).append(param)
    betas = (config.adam_beta1, config.adam_beta2)
    adam_groups = [
        {"params": [model.tok_emb.weight], "lr": config.embed_lr, "base_lr": config.embed_lr},
        {"params": scalars, "lr": config.scalar_lr, "base_lr": config.scalar_lr},
    ]
    if model.lm_head is not None:
        adam_groups.append({"params": [model.lm_head.weight], "lr": config.head_lr, "base_lr": config.head_lr})
    adam = torch.optim.Adam(adam_groups, betas=betas, eps=config.adam_eps)
    muon = Muon(matrices, lr=config.matrix_lr, momentum=config.muon_momentum, ns_steps=config.muon_ns_steps)
    for group in muon.param_groups:
        group["base_lr"] = config.matrix_lr
    return [adam, muon]
