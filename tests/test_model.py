import torch

from stages.model.config import ModelConfig
from stages.model.gpt import GPT, count_parameters
from stages.train.presets import get_preset
from stages.train.optim import build_optimizers

from .conftest import fit_batch


def test_baseline_has_the_reference_parameter_count():
    assert count_parameters(GPT(ModelConfig())) == 17_059_912


def small():
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=64, num_layers=3, model_dim=32, num_heads=4, num_kv_heads=2))


def test_causal_future_tokens_do_not_change_past_logits():
    model = small()
    for block in model.blocks:  # make every block non-trivial
        torch.nn.init.normal_(block.attn.proj.weight, std=0.1)
        torch.nn.init.normal_(block.mlp.proj.weight, std=0.1)
    ids = torch.randint(0, 64, (1, 12))
    changed = ids.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 64
    assert torch.allclose(model(ids)[0, :8], model(changed)[0, :8], atol=1e-6)
    assert not torch.allclose(model(ids)[0, 8:], model(changed)[0, 8:])


def test_zero_init_blocks_are_transparent():
    """At init every block is the identity, so the net is embedding -> (skip-doubled) -> tied head."""
    model = small()
    ids = torch.randint(0, 64, (2, 10))
    x = torch.nn.functional.rms_norm(model.tok_emb(ids), (32,))
    # One encoder block pushes x; the first decoder block adds it back (skip weight 1): 2x,
    # which the final RMSNorm maps back to x.
    stream = torch.nn.functional.rms_norm(x + model.skip_weights[0] * x, (32,))
    expected = 30 * torch.tanh(torch.nn.functional.linear(stream, model.tok_emb.weight) / 30)
    assert torch.allclose(model(ids), expected, atol=1e-5)


def test_optimizer_groups_cover_every_parameter_once():
    model = small()
    optimizers = build_optimizers(model, get_preset("tiny").config.train)
    seen = [id(p) for opt in optimizers for group in opt.param_groups for p in group["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())


def test_a_few_steps_lower_the_loss():
    losses = fit_batch(small(), torch.randint(0, 64, (4, 17)), 15)
    assert losses[-1] < losses[0] - 0.5
