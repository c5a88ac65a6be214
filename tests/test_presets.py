import pytest
import torch

from stages.model.gpt import GPT, count_parameters
from stages.train.presets import FULL_PRESETS, PRESETS, cpu_model

SWITCHES = ("smear_gate", "doc_mask", "attn_gate_sparse", "skip_gates", "ln_scale", "orthogonal_init",
            "mlp_activation", "logit_softcap", "qk_gain_init", "tie_embeddings", "qk_norm", "smear_form",
            "smear_bos_mask", "parallel_residual", "loop_passes")


def test_every_seed_recipe_has_a_full_and_a_cpu_preset():
    for name in ("baseline", "pr401", "pr1413", "pr1776", "pr1880", "pr1790", "top"):
        assert name in PRESETS and PRESETS[name].source
        assert name == "baseline" or f"{name}-cpu" in PRESETS
    assert "tiny" in PRESETS


def test_top_has_the_reference_size():
    assert abs(count_parameters(GPT(PRESETS["top"].config.model)) - 35.9e6) < 0.1e6


@pytest.mark.parametrize("name", [n for n in FULL_PRESETS if n != "baseline"])
def test_cpu_form_keeps_every_switch(name):
    full, cpu = FULL_PRESETS[name].config.model, cpu_model(FULL_PRESETS[name].config.model)
    for field in SWITCHES:
        assert getattr(cpu, field) == getattr(full, field), field
    for field in ("attn_gate_width", "xsa_last_n", "bigram_hash_buckets", "value_embed_dim", "rope_dims", "rope_train_len"):
        assert bool(getattr(cpu, field)) == bool(getattr(full, field)), field
    assert cpu.looped == full.looped and (cpu.parallel_residual_from >= 0) == (full.parallel_residual_from >= 0)
    cpu_train, full_train = PRESETS[f"{name}-cpu"].config.train, FULL_PRESETS[name].config.train
    for field in ("muon_coefficients", "muon_row_normalize", "qat_bits", "loader"):
        assert getattr(cpu_train, field) == getattr(full_train, field), field
    assert bool(cpu_train.ema_decay) == bool(full_train.ema_decay) and bool(cpu_train.swa_every) == bool(full_train.swa_every)


@pytest.mark.parametrize("name", [n for n in PRESETS if n.endswith("-cpu") or n == "tiny"])
def test_cpu_presets_run_forward_and_backward(name):
    config = PRESETS[name].config
    model = GPT(config.model)
    ids = torch.randint(0, config.model.vocab_size, (2, 65))
    ids[:, 0] = config.model.bos_id
    loss = model.loss(ids[:, :-1], ids[:, 1:])
    loss.backward()
    assert torch.isfinite(loss)
