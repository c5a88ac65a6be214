"""Parameter groups by role (stages/model/roles.py): Muon for the matrices, Adam for the embeddings,
the head and the control tensors; and the precision each role trains in on the GPU."""

from __future__ import annotations

import torch

from ..model.gpt import GPT
from ..model.roles import Role, parameter_role
from .config import TrainConfig
from .muon import Muon


def parameters_by_role(model: GPT) -> dict[Role, list[torch.nn.Parameter]]:
    """Every parameter under its role, each role's in ``named_parameters`` order."""
    groups: dict[Role, list[torch.nn.Parameter]] = {role: [] for role in Role}
    for name, param in model.named_parameters():
        groups[parameter_role(name, param)].append(param)
    return groups


def use_record_precision(model: GPT) -> GPT:
    """The records' CUDA precision, in place: they cast the model with ``.bfloat16()`` and then put
    every linear layer (CastedLinear, which casts its weight to the activations' dtype in the
    forward) and every 1-D or control tensor back to float32, so the lookup tables are what stays
    bf16: the token embedding and the bigram-hash and value embeddings. Their bf16 rows make the
    residual stream bf16 from the first layer. Non-persistent buffers (rotary) stay float32.
    Only for CUDA: the CPU path keeps float32 everywhere."""
    for param in parameters_by_role(model)[Role.EMBEDDING]:
        param.data = param.data.bfloat16()
    return model


def build_optimizers(model: GPT, config: TrainConfig) -> list[torch.optim.Optimizer]:
    by_role = parameters_by_role(model)
    betas = (config.adam_beta1, config.adam_beta2)
    adam_groups = [
        {"params": by_role[Role.EMBEDDING], "lr": config.embed_lr, "base_lr": config.embed_lr,
         "weight_decay": config.embed_weight_decay},
        {"params": by_role[Role.CONTROL], "lr": config.scalar_lr, "base_lr": config.scalar_lr,
         "weight_decay": config.scalar_weight_decay},
    ]
    if by_role[Role.HEAD]:
        adam_groups.append({"params": by_role[Role.HEAD], "lr": config.head_lr, "base_lr": config.head_lr,
                            "weight_decay": config.embed_weight_decay})
    # AdamW's decay is decoupled (p *= 1 - lr * wd); with wd 0 it is exactly the baseline's Adam.
    # One fused kernel per dtype on CUDA (as the records run it); elsewhere the foreach form (a few
    # calls over lists instead of a Python loop over tensors), the same maths.
    on_cuda = model.tok_emb.weight.is_cuda
    adam = torch.optim.AdamW(adam_groups, betas=betas, eps=config.adam_eps,
                             **({"fused": True} if on_cuda else {"foreach": True}))
    muon = Muon(by_role[Role.MATRIX], lr=config.matrix_lr, momentum=config.muon_momentum,
                ns_steps=config.muon_ns_steps, coefficients=config.muon_coefficients,
                row_normalize=config.muon_row_normalize, weight_decay=config.muon_weight_decay)
    for group in muon.param_groups:
        group["base_lr"] = config.matrix_lr
    return [adam, muon]
