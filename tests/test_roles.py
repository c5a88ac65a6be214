"""Parameter roles (stages/model/roles.py): every parameter of every preset has exactly one; the
optimizer groups, the quantizer's decisions and the packing groups they give are the ones golf made
from name substrings before roles (reproduced below as the oracle); a parameter no role covers is
an error, not Muon and int6 codes."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from stages.errors import GolfError
from stages.model.gpt import GPT
from stages.model.groups import tensor_group
from stages.model.roles import BLOCK_ROLES, MODEL_ROLES, Role, block_part, parameter_role
from stages.quantize.config import GroupQuant, QuantizeConfig
from stages.quantize.quantizer import FLOAT_DTYPES, quantize_state, storage_grid
from stages.train.optim import build_optimizers
from stages.train.presets import PRESETS, get_preset

# ---- the substring rules before roles (commit f624ddf), the oracle ----

# stages/model/gpt.py: matched anywhere in a name; the records' CONTROL_TENSOR_PATTERNS.
OLD_CONTROL_TENSOR_NAMES = ("attn_scale", "mlp_scale", "resid_mix", "q_gain", "skip_weights", "skip_gates",
                            "attn.gate", "smear", "lane_resid", "lane_post", "value_scale", "bigram.scale",
                            "value_embed.scale")
# stages/train/optim.py is_embedding, and stages/model/groups.py's name prefixes.
OLD_EMBEDDINGS = ("tok_emb.weight", "bigram.embed.weight", "value_embed.embed.weight")
OLD_EMBEDDING_PREFIXES = ("tok_emb.", "bigram.embed.", "value_embed.embed.", "lm_head.")


def old_is_control(name: str) -> bool:
    return any(c in name for c in OLD_CONTROL_TENSOR_NAMES)


def old_tensor_group(name: str) -> str:
    if name.startswith(OLD_EMBEDDING_PREFIXES):
        return "embedding"
    if ".attn." in name:
        return "attention"
    if ".mlp." in name:
        return "mlp"
    return "other"


def old_optimizer_names(model: GPT) -> tuple[list[list[str]], list[str]]:
    """(Adam's groups: embeddings, scalars[, head]; Muon's matrices), as names."""
    matrices, embeddings, scalars = [], [], []
    for name, param in model.named_parameters():
        if name == "lm_head.weight":
            continue
        if name in OLD_EMBEDDINGS:
            embeddings.append(name)
        elif param.ndim == 2 and not old_is_control(name):
            matrices.append(name)
        else:
            scalars.append(name)
    head = [["lm_head.weight"]] if model.lm_head is not None else []
    return [embeddings, scalars, *head], matrices


def old_storage_grid(name: str, tensor: torch.Tensor, config: QuantizeConfig) -> GroupQuant | None:
    if tensor.ndim == 2 and tensor.numel() > config.keep_float_max_numel and not old_is_control(name):
        return config.group(old_tensor_group(name))
    if config.gate_bits and tensor.ndim == 2 and name.endswith(".attn.gate.weight"):
        return GroupQuant(bits=config.gate_bits, clip="quantile", clip_quantile=1.0)
    return None


# ---- every preset's model, plus the forms no preset builds ----

def model_configs():
    """Each preset's model, its untied-head form, and its other SmearGate form."""
    for name, preset in PRESETS.items():
        model = preset.config.model
        yield name, model
        yield f"{name}/untied", replace(model, tie_embeddings=False)
        if model.smear_gate:
            other = "gated" if model.smear_form == "per_channel" else "per_channel"
            yield f"{name}/{other}", replace(model, smear_form=other)


MODELS = dict(model_configs())


def meta_model(config) -> GPT:
    """The model's parameters without their storage: names and shapes are all a role needs."""
    with torch.device("meta"):
        return GPT(config)


@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_of_every_preset_has_exactly_one_role(name):
    for param_name, param in meta_model(MODELS[name]).named_parameters():
        inner = block_part(param_name)
        declared = (param_name in MODEL_ROLES) + (inner is not None and inner in BLOCK_ROLES)
        assert declared == 1, param_name
        assert isinstance(parameter_role(param_name, param), Role)


def test_every_declared_role_is_some_presets_parameter():
    seen = set()
    for config in MODELS.values():
        for param_name, _ in meta_model(config).named_parameters():
            seen.add(block_part(param_name) or param_name)
    assert seen == set(MODEL_ROLES) | set(BLOCK_ROLES)


@pytest.mark.parametrize("name", MODELS)
def test_optimizer_groups_are_the_substring_rules(name):
    model = meta_model(MODELS[name])
    train = get_preset(name.split("/")[0]).config.train
    names = {id(param): param_name for param_name, param in model.named_parameters()}
    adam, muon = build_optimizers(model, train)
    old_adam, old_matrices = old_optimizer_names(model)
    assert [[names[id(p)] for p in group["params"]] for group in adam.param_groups] == old_adam
    assert [[names[id(p)] for p in group["params"]] for group in muon.param_groups] == [old_matrices]
    lrs = [train.embed_lr, train.scalar_lr] + ([train.head_lr] if model.lm_head is not None else [])
    assert [group["lr"] for group in adam.param_groups] == lrs


STORED_SUFFIXES = ("", ".q", ".scale", ".lqer.a.q", ".lqer.a.scale", ".lqer.a.offset", ".lqer.b.q")


@pytest.mark.parametrize("name", MODELS)
def test_quantizer_decisions_and_groups_are_the_substring_rules(name):
    schemes = {get_preset(name.split("/")[0]).quantize, QuantizeConfig(), QuantizeConfig(keep_float_max_numel=0),
               QuantizeConfig(gate_bits=8)}
    for param_name, param in meta_model(MODELS[name]).named_parameters():
        for scheme in schemes:
            assert storage_grid(param_name, param, scheme) == old_storage_grid(param_name, param, scheme), param_name
        control = parameter_role(param_name) is Role.CONTROL
        assert control == old_is_control(param_name), param_name
        for suffix in STORED_SUFFIXES:  # what quantize stores for it, as pack groups it
            assert tensor_group(param_name + suffix) == old_tensor_group(param_name + suffix), param_name + suffix


def test_kept_float_tensors_take_their_roles_dtype():
    state = {"blocks.0.resid_mix": torch.randn(2, 8), "bigram.proj.weight": torch.randn(4, 4)}
    config = QuantizeConfig(method="rtn", control_dtype="float32", other_float_dtype="float16")
    tensors, _index, _report = quantize_state(state, config)
    assert tensors["blocks.0.resid_mix"].dtype == FLOAT_DTYPES["float32"]
    assert tensors["bigram.proj.weight"].dtype == FLOAT_DTYPES["float16"]


# ---- a parameter no role covers ----

def with_new_tensor() -> GPT:
    """The tiny model with a new learned 2-D tensor in its first attention module."""
    model = GPT(get_preset("tiny").config.model)
    model.blocks[0].attn.mix = nn.Parameter(torch.zeros(64, 64))
    return model


def test_an_unregistered_2d_tensor_is_not_trained_by_muon():
    with pytest.raises(GolfError, match=r"^parameter blocks\.0\.attn\.mix has no role; declare it in "
                                        r"stages/model/roles\.py$"):
        build_optimizers(with_new_tensor(), get_preset("tiny").config.train)


def test_an_unregistered_2d_tensor_is_not_quantized():
    state = {name: param.detach() for name, param in with_new_tensor().named_parameters()}
    with pytest.raises(GolfError, match=r"^parameter blocks\.0\.attn\.mix has no role"):
        quantize_state(state, QuantizeConfig(method="rtn"))


def test_a_stored_tensor_of_no_parameter_has_no_group():
    with pytest.raises(GolfError, match=r"^stored tensor blocks\.0\.attn\.mix\.q belongs to no parameter"):
        tensor_group("blocks.0.attn.mix.q")


def test_a_matrix_of_the_wrong_shape_is_an_error():
    assert parameter_role("blocks.3.mlp.fc.weight", torch.zeros(4, 4)) is Role.MATRIX
    with pytest.raises(GolfError, match=r"^parameter blocks\.3\.mlp\.fc\.weight is a matrix of shape \[4\]"):
        parameter_role("blocks.3.mlp.fc.weight", torch.zeros(4))
