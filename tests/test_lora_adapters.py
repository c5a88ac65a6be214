"""Batched LoRA adapters run through the model's own forward (stages/model/lora.py).

The records' LoRA TTT ran a second copy of the forward, and one that forgot a gate scored 1.908
instead of ~1.07 (docs/TTT_CASEOPS.md section C.3, H.3.9). Here adapters enter the one forward, and
these tests pin it: with every adapter at zero the logits of every preset's model are bitwise the
plain ones, every target adapter is wired in, each row only sees its own adapter, and the
SmearGate BOS mask holds with adapters on. Parameter counts match the closed form of C.4.
"""

from __future__ import annotations

import pytest
import torch
from dataclasses import replace

from stages.model.config import ModelConfig
from stages.model.gpt import GPT
from stages.model.lora import BLOCK_TARGETS, HEAD, LoRASet
from stages.train.presets import CPU_DIM, PRESETS, cpu_model

ALL_TARGETS = (*BLOCK_TARGETS, HEAD)
BATCH, SEQ, RANK = 2, 12, 4


def preset_model(name: str) -> GPT:
    """The preset's model with every switch as the preset sets it, at its CPU size, every weight
    perturbed so that zero-init gates and projections act too."""
    config = PRESETS[name].config.model
    if config.model_dim > CPU_DIM:
        config = cpu_model(config)
    torch.manual_seed(0)
    model = GPT(replace(config, vocab_size=256)).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model


def adapters_for(model: GPT, targets=ALL_TARGETS, batch: int = BATCH, b_std: float = 0.0) -> LoRASet:
    lora = LoRASet(model.config, len(model.config.layer_sequence(model.looping)), batch, RANK, 8.0, targets)
    generator = torch.Generator().manual_seed(1)
    for row in range(batch):
        lora.draw_a(row, generator)
    with torch.no_grad():
        for b in lora.b:
            b.normal_(0, b_std, generator=generator)
    return lora


def rows(model: GPT, seed: int = 0) -> torch.Tensor:
    """Two rows of random tokens, a BOS inside each (document starts, smear and bigram masks)."""
    tokens = torch.randint(2, model.config.vocab_size, (BATCH, SEQ), generator=torch.Generator().manual_seed(seed))
    tokens[:, 0] = tokens[0, 5] = tokens[1, 7] = model.config.bos_id
    return tokens


@pytest.mark.parametrize("name", list(PRESETS))
def test_zero_adapters_leave_every_preset_bitwise_unchanged(name):
    model = preset_model(name)
    assert model.looping and len(model.config.layer_sequence(True)) >= model.config.num_layers
    tokens = rows(model)
    with torch.no_grad():
        plain = model(tokens)
        assert torch.equal(model(tokens, adapters=adapters_for(model)), plain)
        changed = model(tokens, adapters=adapters_for(model, b_std=0.1))
    assert (changed - plain).abs().amax() > 1e-3


@pytest.mark.parametrize("name", ["top", "pr401", "pr1776"])
def test_every_adapter_of_every_slot_is_wired_in(name):
    """Each adapter alone changes the logits: none is silently ignored, in sequential, shared
    parallel and two-lane blocks, looped slots, with value embeddings (among these presets)."""
    model = preset_model(name)
    tokens = rows(model)
    lora = adapters_for(model)
    with torch.no_grad():
        plain = model(tokens)
        for (slot, target), j in lora.index.items():
            lora.b[j].normal_(0, 0.1)
            changed = model(tokens, adapters=lora)
            lora.b[j].zero_()
            assert (changed - plain).abs().amax() > 1e-4, f"the {target} adapter of slot {slot} does nothing"


def test_each_row_sees_only_its_own_adapter():
    model = preset_model("top")
    tokens = rows(model)
    lora = adapters_for(model, b_std=0.1)
    with torch.no_grad():
        before = model(tokens, adapters=lora)
        for b in lora.b:
            b[1].add_(0.1)
        lora.a[1].mul_(2)
        after = model(tokens, adapters=lora)
    assert torch.equal(after[0], before[0])
    assert (after[1] - before[1]).abs().amax() > 1e-3


def test_adapters_train_and_the_base_takes_no_gradient():
    model = preset_model("top")
    lora = adapters_for(model, b_std=0.1)
    for param in model.parameters():
        param.requires_grad_(False)
    tokens = rows(model)
    model.loss(tokens[:, :-1], tokens[:, 1:], adapters=lora).backward()
    assert lora.a.grad.abs().amax() > 0 and all(b.grad.abs().amax() > 0 for b in lora.b)
    assert all(param.grad is None for param in model.parameters())


@pytest.mark.parametrize("mask", [True, False])
def test_smeargate_bos_mask_holds_with_adapters(mask):
    """The first tokens of a document have the same logits whatever the last token of the document
    before was (#1851's fix), in the adapted forward too; without the mask they do not."""
    model = GPT(replace(preset_model("top").config, smear_bos_mask=mask))
    model.load_state_dict(preset_model("top").state_dict())
    lora = adapters_for(model, b_std=0.1)
    tokens = rows(model)
    changed = tokens.clone()
    changed[0, 4] = (changed[0, 4] + 1) % (model.config.vocab_size - 2) + 2  # the token before row 0's BOS at 5
    with torch.no_grad():
        before, after = model(tokens, adapters=lora), model(changed, adapters=lora)
    moved = (after[0, 5:] - before[0, 5:]).abs().amax()
    assert (moved == 0) if mask else (moved > 1e-4)


def per_document_formula(config: ModelConfig, slots: int, rank: int) -> int:
    """C.4: r (in + out) per adapter; every adapter reads model_dim."""
    d, kv = config.model_dim, config.num_kv_heads * config.head_dim
    per_slot = rank * ((d + d) + (d + kv) + (d + kv) + (d + d) + (d + d))  # q, k, v, o, mlp
    return slots * per_slot + rank * (d + config.vocab_size)


def test_parameter_count_matches_the_closed_form():
    config = ModelConfig(vocab_size=96, num_layers=4, model_dim=24, num_heads=4, num_kv_heads=2,
                         loop_first=1, loop_last=2, loop_passes=3)
    slots = len(config.layer_sequence(True))
    assert slots == 8  # 0, 1, 2, 1, 2, 1, 2, 3: a physical layer visited twice gets two adapters
    lora = LoRASet(config, slots, batch=3, rank=5, alpha=10.0, targets=ALL_TARGETS)
    assert sum(p.numel() for p in lora.parameters()) == 3 * per_document_formula(config, slots, 5)
    only_q = LoRASet(config, slots, batch=1, rank=5, alpha=10.0, targets=("q",))
    assert sum(p.numel() for p in only_q.parameters()) == slots * 5 * (24 + 24)


def test_top_record_shapes_give_its_6963200_parameters_per_document():
    """TOP: 11 layers, 3 passes over layers 3-5 (17 slots), d 512, kv 256, vocab 8192, rank 80."""
    config = PRESETS["top"].config.model
    slots = len(config.layer_sequence(True))
    lora = LoRASet(config, slots, batch=1, rank=80, alpha=144.0, targets=ALL_TARGETS, device="meta")
    assert slots == 17
    assert sum(p.numel() for p in lora.parameters()) == per_document_formula(config, slots, 80) == 6_963_200
