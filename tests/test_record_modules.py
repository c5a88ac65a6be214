"""The record modules as the records' code has them (docs/REFERENCE.md section 8): two-lane parallel
residuals, SmearGate's placement, forms and BOS mask, PR #401's BigramHash, shared value embedding,
RoPE stretch and init. bench/record_fidelity.py compares whole models with the records' own code."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from stages.model.embeddings import SMEAR_WIDTH, bigram_buckets, document_starts
from stages.model.gpt import GPT
from stages.model.layers import Rotary, rms_norm
from stages.ranges import ConfigError
from stages.train.presets import FULL_PRESETS, PRESETS

from .test_model_switches import BASE, ids, liven

BOS = BASE.bos_id


def build(**changes) -> GPT:
    torch.manual_seed(0)
    return GPT(dataclasses.replace(BASE, **changes))


def randomize_controls(model: GPT, seed: int = 5) -> GPT:
    """Move every small control tensor off its init so that each one matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim < 2 or param.numel() <= 4:
                param.add_(0.3 * torch.randn(param.shape, generator=generator))
    return model


# ---- two-lane parallel residuals ----

# 5 layers, layers 1-2 looped twice: virtual layers [0, 1, 2, 1, 2, 3, 4]; lanes from layer 3.
TWO_LANE = dict(num_layers=5, loop_first=1, loop_last=2, loop_passes=2, skip_gates=True,
                parallel_residual="two_lane", parallel_residual_from=3)


def reference_hidden(model: GPT, input_ids, skip_lane=0, final="mean"):
    """The #1667 forward written out from docs/REFERENCE.md section 8 (U-Net halves, gated skips,
    lanes from the start layer), with the skip's lane and the final readout as parameters."""
    cfg, blocks = model.config, model.blocks
    x = x0 = model._embed(input_ids)
    sequence = cfg.layer_sequence(model.looping)
    encoder = len(sequence) // 2
    skips, lanes = [], None
    for layer in sequence[:encoder]:
        x = blocks[layer](x, x0)
        skips.append(x)
    for index, layer in enumerate(sequence[encoder:]):
        block = blocks[layer]
        if layer < cfg.parallel_residual_from:
            x = model._add_skip(x, skips.pop(), index) if skips else x
            x = block(x, x0)
            continue
        lanes = lanes or [x, x]
        if skips:
            lanes[skip_lane] = model._add_skip(lanes[skip_lane], skips.pop(), index)
        mix = block.resid_mix
        attn = block.attn_scale * block.attn(rms_norm(mix[0] * lanes[0] + mix[1] * x0) * block.input_scale)
        mlp = block.mlp_scale * block.mlp(rms_norm(lanes[1]) * block.input_scale)
        r, p = block.lane_resid, block.lane_post
        lanes = [r[0] * lanes[0] + p[0, 0] * attn + p[1, 0] * mlp, r[1] * lanes[1] + p[0, 1] * attn + p[1, 1] * mlp]
    return 0.5 * (lanes[0] + lanes[1]) if final == "mean" else lanes[0]


def logits_of(model: GPT, hidden):
    return 30 * torch.tanh(F.linear(rms_norm(hidden), model.tok_emb.weight) / 30)


@pytest.mark.parametrize("looping", [True, False])
def test_two_lane_forward_is_the_records(looping):
    model = randomize_controls(liven(build(**TWO_LANE)))
    model.looping = looping
    with torch.no_grad():
        got = model(ids())
        assert torch.allclose(got, logits_of(model, reference_hidden(model, ids())), atol=1e-5)
        # The test can tell the skip's lane and the readout apart.
        assert not torch.allclose(got, logits_of(model, reference_hidden(model, ids(), skip_lane=1)), atol=1e-3)
        assert not torch.allclose(got, logits_of(model, reference_hidden(model, ids(), final="lane0")), atol=1e-3)


def test_two_lane_parameters_start_at_the_records_values():
    model = build(**TWO_LANE)
    for layer, block in enumerate(model.blocks):
        assert block.two_lane == (layer >= 3)
        if block.two_lane:
            assert torch.equal(block.lane_resid, torch.full((2,), 1.1))
            assert torch.equal(block.lane_post, torch.ones(2, 2))
        else:
            assert not hasattr(block, "lane_resid") and not hasattr(block, "lane_post")


def test_blocks_below_the_start_layer_are_ordinary():
    """Up to the first parallel layer, two-lane, shared and no parallel residuals are the same network."""
    outputs = {}
    for variant in ("two_lane", "shared", None):
        changes = dict(TWO_LANE, parallel_residual=variant or "shared", parallel_residual_from=3 if variant else -1)
        model = liven(build(**changes))
        seen = []
        hooks = [model.blocks[layer].register_forward_hook(lambda m, i, out: seen.append(out)) for layer in range(3)]
        with torch.no_grad():
            outputs[variant] = (model(ids()), seen)
        for hook in hooks:
            hook.remove()
    for variant in ("shared", None):
        assert all(torch.equal(a, b) for a, b in zip(outputs["two_lane"][1], outputs[variant][1]))
    assert not torch.allclose(outputs["two_lane"][0], outputs["shared"][0], atol=1e-4)


def test_two_lane_is_inert_without_a_start_layer():
    plain, two_lane = liven(build()), liven(build(parallel_residual="two_lane"))
    assert torch.equal(plain(ids()), two_lane(ids()))


@pytest.mark.parametrize("changes", [
    dict(TWO_LANE, parallel_residual_from=1),   # starts in the encoder half
    dict(TWO_LANE, parallel_residual_from=2),   # looping runs layer 1 (ordinary) again after layer 2
    dict(num_layers=5, loop_first=2, loop_last=3, loop_passes=2, parallel_residual="two_lane",
         parallel_residual_from=3),             # layer 2 (ordinary) runs again after layer 3
])
def test_two_lane_must_be_the_decoder_tail(changes):
    with pytest.raises(ConfigError, match="parallel_residual_from: two-lane blocks must be the tail"):
        dataclasses.replace(BASE, **changes)


# ---- SmearGate: placement, forms, BOS mask ----

def smeared(**changes) -> GPT:
    model = build(smear_gate=True, **changes)
    with torch.no_grad():
        for param in model.smear.parameters():
            param.normal_()
    return model


def test_gated_smear_reads_the_raw_embedding_before_the_norm():
    model = smeared()
    x = ids()
    raw = model.tok_emb(x)
    gate = model.smear.smear_lambda * torch.sigmoid(model.smear.gate(raw[..., :SMEAR_WIDTH]))
    previous = torch.cat((torch.zeros_like(raw[:, :1]), raw[:, :-1]), dim=1) * (x != BOS)[..., None]
    with torch.no_grad():
        assert torch.allclose(model._embed(x), rms_norm(raw + gate * previous), atol=1e-6)
        normed = rms_norm(raw)
        after_norm = normed + model.smear.smear_lambda * torch.sigmoid(model.smear.gate(normed[..., :SMEAR_WIDTH])) \
            * torch.cat((torch.zeros_like(normed[:, :1]), normed[:, :-1]), dim=1) * (x != BOS)[..., None]
        assert not torch.allclose(model._embed(x), after_norm, atol=1e-3)


def test_per_channel_smear_blends_after_the_norm():
    model = smeared(smear_form="per_channel", smear_bos_mask=False)
    x = ids()
    normed = rms_norm(model.tok_emb(x))
    share = torch.sigmoid(model.smear.gate)
    previous = torch.cat((torch.zeros_like(normed[:, :1]), normed[:, :-1]), dim=1)
    with torch.no_grad():
        assert torch.allclose(model._embed(x), (1 - share) * normed + share * previous, atol=1e-6)


def test_per_channel_smear_starts_as_an_even_blend():
    model = build(smear_gate=True, smear_form="per_channel", smear_bos_mask=False)
    x = ids()
    normed = rms_norm(model.tok_emb(x))
    with torch.no_grad():
        assert torch.allclose(model._embed(x)[:, 1:], 0.5 * (normed[:, 1:] + normed[:, :-1]), atol=1e-6)
        assert torch.allclose(model._embed(x)[:, 0], 0.5 * normed[:, 0], atol=1e-6)


def first_token_moves(model: GPT) -> float:
    """How much x0 at the BOS that opens document 2 moves when document 1's last token changes."""
    x = ids()
    bos = x.size(1) // 2
    changed = x.clone()
    changed[:, bos - 1] = (changed[:, bos - 1] + 1 - 4) % 60 + 4
    with torch.no_grad():
        return (model._embed(x)[:, bos] - model._embed(changed)[:, bos]).abs().max().item()


@pytest.mark.parametrize("module", [dict(smear_form="gated"), dict(smear_form="per_channel"), dict(bigram=True)])
def test_bos_mask_keeps_the_first_token_of_a_document_to_itself(module):
    def model(mask):
        if module.get("bigram"):
            built = liven(build(bigram_hash_buckets=64, bigram_hash_dim=16, smear_bos_mask=mask))
            with torch.no_grad():
                built.bigram.proj.weight.normal_()
            return built
        return smeared(smear_form=module["smear_form"], smear_bos_mask=mask)

    assert first_token_moves(model(True)) == 0.0
    assert first_token_moves(model(False)) > 1e-3


def test_every_preset_keeps_the_bos_mask_on():
    assert all(p.config.model.smear_bos_mask for p in PRESETS.values())


# ---- BigramHash ----

def test_bigram_hash_is_the_records_formula():
    x = torch.tensor([[5, 7, 1, 9, 8191]])
    starts = document_starts(x, BOS, mask_bos=False)
    expected = [63] + [(36313 * cur ^ 27191 * prev) % 63 for prev, cur in [(5, 7), (7, 1), (1, 9), (9, 8191)]]
    assert bigram_buckets(x, starts, 64).tolist() == [expected]
    assert expected[1] == 43  # (36313 * 7) XOR (27191 * 5) = 254191 XOR 135955 = 127996 = 2031 * 63 + 43


def test_bigram_hash_range_and_determinism():
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 8192, (16, 1024), generator=generator)
    starts = document_starts(x, BOS, mask_bos=True)
    buckets = bigram_buckets(x, starts, 2048)
    assert buckets.min() >= 0 and buckets.max() < 2048
    assert torch.equal(buckets == 2047, starts)  # the last bucket means exactly "no previous token"
    assert torch.equal(buckets, bigram_buckets(x.clone(), starts, 2048))
    assert len(buckets.unique()) > 2000  # ~16,000 bigrams reach nearly every one of the 2047 slots


def test_bigram_output_is_scaled_by_a_learned_scalar():
    model = build(bigram_hash_buckets=64, bigram_hash_dim=16)
    assert torch.equal(model.bigram.scale, torch.tensor([0.05]))
    with torch.no_grad():
        model.bigram.proj.weight.normal_()
        x = ids()
        starts = document_starts(x, BOS, mask_bos=True)
        unscaled = model.bigram.proj(model.bigram.embed(bigram_buckets(x, starts, 64)))
        assert torch.allclose(model.bigram(x, starts), 0.05 * unscaled)


# ---- shared value embedding ----

VE = dict(value_embed_dim=16, value_embed_layers=(2, 3))


def test_value_embedding_has_one_projection_and_per_layer_scales():
    model = build(**VE)
    ve = model.value_embed
    assert ve.proj.weight.shape == (BASE.num_kv_heads * BASE.head_dim, 16)
    assert torch.equal(ve.scale, torch.tensor([0.1]))
    assert not any("value" in name for name, _ in model.blocks.named_parameters() if "value_scale" not in name)
    for layer, block in enumerate(model.blocks):
        scale = block.attn.value_scale
        assert (scale is not None) == (layer in (2, 3))
        assert scale is None or torch.equal(scale, torch.ones(1))
    with torch.no_grad():
        ve.proj.weight.normal_()
        assert torch.allclose(ve(ids()), 0.1 * ve.proj(ve.embed(ids())))


def test_each_layer_weighs_the_shared_value_embedding_by_its_own_scale():
    model = liven(build(**VE))
    attn = model.blocks[2].attn
    h, ve = torch.randn(2, 24, 32), torch.randn(2, 24, BASE.num_kv_heads * BASE.head_dim)
    with torch.no_grad():
        attn.value_scale.fill_(2.0)
        doubled = attn(h, None, ve)
        attn.value_scale.fill_(1.0)
        assert torch.allclose(doubled, attn(h, None, 2 * ve), atol=1e-6)
        assert not torch.allclose(doubled, attn(h, None, ve), atol=1e-4)


# ---- RoPE stretch ----

def test_rope_base_stretches_beyond_the_built_length():
    rotary = Rotary(16, 1e4, train_len=1024)
    assert rotary.base_for(2048) == pytest.approx(22081.8, abs=0.1)
    assert rotary.base_for(1024) == rotary.base_for(100) == 1e4
    assert Rotary(16, 1e4).base_for(4096) == 1e4
    cos, _ = rotary.cos_sin(2048, torch.device("cpu"), torch.float32)
    position = torch.arange(2048.0)
    assert torch.allclose(cos[0, 0, :, 1], torch.cos(position * rotary.base_for(2048) ** (-2 / 16)), atol=1e-4)


def test_rope_train_len_reaches_every_attention_layer():
    model = liven(build(rope_dims=4, rope_train_len=8))
    assert all(block.attn.rotary.train_len == 8 for block in model.blocks)
    assert not torch.allclose(model(ids()), liven(build(rope_dims=4))(ids()), atol=1e-5)  # 24 tokens > 8


# ---- the records' init ----

WIDE = dict(model_dim=64, num_heads=4, num_kv_heads=4, num_layers=4, bigram_hash_buckets=128, bigram_hash_dim=64,
            value_embed_dim=64, value_embed_layers=(3,))


def is_scaled_orthogonal(weight, scale):
    return torch.allclose(weight @ weight.T, scale**2 * torch.eye(weight.size(0)), atol=1e-5)


def test_record_init_at_full_width():
    model = build(**WIDE, orthogonal_init=True)
    scale = 1 / (2 * 4) ** 0.5
    assert is_scaled_orthogonal(model.blocks[0].attn.c_q.weight, 1.0)
    assert is_scaled_orthogonal(model.blocks[0].mlp.fc.weight.T, 1.0)
    assert not model.blocks[0].attn.proj.weight.any() and not model.blocks[0].mlp.proj.weight.any()
    assert is_scaled_orthogonal(model.bigram.proj.weight, scale)
    assert not model.bigram.embed.weight.any()
    assert is_scaled_orthogonal(model.value_embed.proj.weight, scale)
    assert model.value_embed.embed.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert model.tok_emb.weight.std().item() == pytest.approx(0.005, rel=0.05)


@pytest.mark.parametrize("changes", [dict(WIDE), dict(WIDE, orthogonal_init=True, bigram_hash_dim=16, value_embed_dim=16)])
def test_without_the_record_init_extras_start_transparent_but_trainable(changes):
    model = build(**changes)
    assert not model.bigram.proj.weight.any() and not model.value_embed.proj.weight.any()
    assert model.bigram.embed.weight.std().item() == pytest.approx(0.005, rel=0.05)


# ---- presets ----

def test_presets_take_each_records_model():
    model = {name: FULL_PRESETS[name].config.model for name in FULL_PRESETS}
    for name in ("pr1880", "pr1790", "top"):
        assert (model[name].parallel_residual, model[name].parallel_residual_from) == ("two_lane", 8)
        assert model[name].doc_mask and model[name].smear_gate and model[name].smear_form == "gated"
    assert (model["pr1776"].parallel_residual, model["pr1776"].parallel_residual_from) == ("shared", 7)
    assert model["pr1413"].layer_sequence(True) == [0, 1, 2, 3, 4, 5, 4, 5, 4, 5, 6, 7, 8, 9, 10]
    pr401 = model["pr401"]
    assert (pr401.smear_form, pr401.rope_train_len, pr401.orthogonal_init) == ("per_channel", 1024, True)


def test_cpu_forms_map_the_start_layer_and_the_rope_length():
    assert PRESETS["pr1880-cpu"].config.model.parallel_residual_from == 4  # 8 of 0-10 -> 4 of 0-5
    assert PRESETS["pr401-cpu"].config.model.rope_train_len == 128        # built for half the training length
