"""Every architecture switch builds, trains, and changes the output only when it is on."""

import dataclasses

import pytest
import torch

from stages.model.config import ModelConfig
from stages.model.gpt import GPT

from .conftest import fit_batch

BASE = ModelConfig(vocab_size=64, num_layers=4, model_dim=32, num_heads=4, num_kv_heads=2)
BOS = BASE.bos_id

# Switches whose new parameters start at zero: the model is unchanged at init.
TRANSPARENT = {
    "attn_gate": {"attn_gate_width": 12},
    "smear_gate": {"smear_gate": True},
    "bigram_hash": {"bigram_hash_buckets": 128, "bigram_hash_dim": 16},
    "value_embed": {"value_embed_dim": 16, "value_embed_layers": (2, 3)},
}
# Switches that change the function right away (once blocks are not the identity).
CHANGING = {
    "gqa_off": {"num_kv_heads": 4},
    "no_qk_norm": {"qk_norm": False},
    "partial_rope": {"rope_dims": 4},
    "qk_gain": {"qk_gain_init": 5.0},
    "xsa_all": {"xsa_last_n": 4},
    "xsa_last_2": {"xsa_last_n": 2},
    "sparse_gate": {"attn_gate_width": 12, "attn_gate_sparse": True},
    "ln_scale": {"ln_scale": True},
    "no_unet": {"unet_skips": False},
    "skip_gates": {"skip_gates": True},
    "parallel": {"parallel_residual_from": 2},
    "two_lane": {"parallel_residual_from": 2, "parallel_residual": "two_lane"},
    "channel_smear": {"smear_gate": True, "smear_form": "per_channel"},
    "rope_stretch": {"rope_dims": 4, "rope_train_len": 8},
    "loop": {"loop_first": 1, "loop_last": 2, "loop_passes": 3},
    "leaky": {"mlp_activation": "leaky_relu2"},
    "mlp_4x": {"mlp_mult": 4.0},
    "softcap_15": {"logit_softcap": 15.0},
    "untied": {"tie_embeddings": False},
    "doc_mask": {"doc_mask": True},
}


def build(**changes) -> GPT:
    torch.manual_seed(0)
    return GPT(dataclasses.replace(BASE, **changes))


def liven(model: GPT) -> GPT:
    """Give zero-init output projections real weights so that every block does something."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.proj.weight")) or name == "lm_head.weight":
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
            if name == "tok_emb.weight":  # logits large enough for the softcap to matter
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return model


def with_base_weights(model: GPT, base: GPT) -> GPT:
    """Copy every tensor the two models share, so only the switch differs (q_gain holds a switch's init value)."""
    own = model.state_dict()
    shared = {k: v for k, v in base.state_dict().items() if k in own and own[k].shape == v.shape and "q_gain" not in k}
    model.load_state_dict(shared, strict=False)
    return model


def ids(seed=3, length=24):
    torch.manual_seed(seed)
    x = torch.randint(4, 64, (2, length))
    x[:, 0] = BOS
    x[:, length // 2] = BOS
    return x


@pytest.mark.parametrize("name", TRANSPARENT)
def test_zero_init_switches_are_transparent_at_init(name):
    base = liven(build())
    model = with_base_weights(liven(build(**TRANSPARENT[name])), base)
    assert torch.allclose(model(ids()), base(ids()), atol=1e-6)


@pytest.mark.parametrize("name", CHANGING)
def test_switch_changes_the_output(name):
    base = liven(build())
    model = with_base_weights(liven(build(**CHANGING[name])), base)
    assert not torch.allclose(model(ids()), base(ids()), atol=1e-5)


@pytest.mark.parametrize("name", [*TRANSPARENT, *CHANGING, "orthogonal"])
def test_switch_trains(name):
    changes = {**TRANSPARENT, **CHANGING, "orthogonal": {"orthogonal_init": True}}[name]
    model = build(**changes)
    before = [p.detach().clone() for p in model.parameters()]
    losses = fit_batch(model, ids(length=33), 4)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    changed = [not torch.equal(a, b) for a, b in zip(before, model.parameters()) if a.numel()]
    assert all(changed), "every parameter, the switch's included, receives updates"


def test_orthogonal_init_gives_orthogonal_matrices():
    model = GPT(dataclasses.replace(BASE, model_dim=64, num_heads=4, num_kv_heads=4, orthogonal_init=True))
    w = model.blocks[0].attn.c_q.weight
    assert torch.allclose(w @ w.T, torch.eye(64), atol=1e-5)
    assert not model.blocks[0].attn.proj.weight.any()  # output projections stay zero


def test_loop_sequence_and_switch():
    config = dataclasses.replace(BASE, num_layers=11, loop_first=3, loop_last=5, loop_passes=3)
    assert config.layer_sequence(looping=True) == [0, 1, 2, 3, 4, 5, 3, 4, 5, 3, 4, 5, 6, 7, 8, 9, 10]
    assert config.layer_sequence(looping=False) == list(range(11))
    model = liven(GPT(config))
    looped = model(ids())
    model.looping = False
    assert not torch.allclose(looped, model(ids()))


def cross_document_leak(model: GPT) -> float:
    """Change the last token of document 1 and measure how much document 2's logits move."""
    x = ids()
    changed = x.clone()
    last = x.size(1) // 2 - 1
    changed[:, last] = (changed[:, last] + 1 - 4) % 60 + 4
    return (model(x)[:, last + 1 :] - model(changed)[:, last + 1 :]).abs().max().item()


def smear_model(**extra) -> GPT:
    model = liven(build(smear_gate=True, doc_mask=True, **extra))
    with torch.no_grad():
        model.smear.smear_lambda.fill_(1.0)
        model.smear.gate.weight.normal_()
    return model


def test_smear_gate_never_crosses_bos():
    assert cross_document_leak(smear_model()) == 0.0
    assert cross_document_leak(liven(build(doc_mask=True, bigram_hash_buckets=128, bigram_hash_dim=16))) == 0.0


def test_the_leak_test_catches_the_unfixed_smear_gate():
    model = smear_model(smear_bos_mask=False)  # the pre-#1851 SmearGate: no BOS mask
    assert cross_document_leak(model) > 1e-4


def test_doc_mask_blocks_attention_across_documents():
    assert cross_document_leak(liven(build(doc_mask=True))) == 0.0
    assert cross_document_leak(liven(build())) > 1e-4
