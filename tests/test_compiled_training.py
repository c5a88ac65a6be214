"""The training path as the GPU runs it, proven on CPU: the doc-packed loss of a looped model with
QAT compiles to one graph (fullgraph, no graph break) through the flash calling convention (stand-in
custom ops) and through SDPA; after the warm-up the timed steps never recompile when looping and QAT
switch on; a 98,304-token packed row runs forward and backward with no tensor quadratic in its length."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from stages.model.attention_backends import SDPA, find_segments
from stages.model.config import ModelConfig
from stages.model.gpt import GPT
from stages.model.layers import Linear
from stages.train import loop
from stages.train.config import RunConfig
from stages.data.loader import make_loader

from .conftest import tiny_run_config
from .flash_standins import STAND_IN
from .test_doc_packed import BOS, PACKED_MODEL, random_model, shards  # noqa: F401 (fixture)

CPU = torch.device("cpu")
LOOPED = {"loop_first": 1, "loop_last": 1, "loop_passes": 2}


def packed_tokens(rows: int, row_tokens: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 64, (rows, row_tokens + 1), generator=generator)
    ids[torch.rand(ids.shape, generator=generator) < 0.05] = BOS  # documents of ~20 tokens, cut at 16
    return ids


@pytest.mark.parametrize("backend", [STAND_IN, SDPA], ids=lambda b: b.name)
def test_doc_packed_loss_compiles_to_one_graph(backend):
    """fullgraph=True raises on any graph break; the compiled loss and gradients equal eager SDPA
    over the tokens' own document mask. aot_eager traces the backward too (the stand-ins' autograd)."""
    model = random_model(**LOOPED).train()
    for module in model.modules():
        if isinstance(module, Linear):
            module.fake_quant_bits = 6
    ids = packed_tokens(2, 48)
    x, y = ids[:, :-1], ids[:, 1:]
    segments = find_segments(x, BOS, 16)

    expected = model.loss(x, y, 16)  # SDPA, boundaries from the tokens
    expected.backward()
    expected_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    model.attention_backend = backend
    torch._dynamo.reset()
    compiled = torch.compile(model.loss, fullgraph=True, backend="aot_eager" if backend is STAND_IN else "eager")
    loss = compiled(x, y, 0, segments=segments)
    loss.backward()
    assert torch.allclose(loss, expected, atol=1e-5)
    for param, want in zip(model.parameters(), expected_grads):
        assert torch.allclose(param.grad, want, atol=1e-5)


def test_timed_steps_never_recompile_after_the_warm_up(shards, monkeypatch):  # noqa: F811
    """Looping switches on at 40% and QAT below LR scale 0.5: both flips hit graphs the warm-up compiled."""
    tiny = tiny_run_config()
    model_config = dataclasses.replace(tiny.model, doc_mask=True, num_layers=2, model_dim=32, loop_first=1, loop_last=1,
                                       loop_passes=2, loop_start_frac=0.4)
    config = RunConfig(model_config, dataclasses.replace(
        tiny.train, loader="doc_packed", batch_tokens=256, pack_tokens=128, grad_accum=1, max_steps=6,
        schedule="steps", warmdown_frac=0.8, qat_bits=6, qat_lr_scale=0.5, compile=True))
    monkeypatch.setattr(loop.torch, "compile", functools.partial(torch.compile, backend="eager"))  # dynamo only
    torch._dynamo.reset()
    trainer = loop.Trainer(GPT(config.model), config, make_loader("doc_packed", shards, max_doc_len=64), CPU)
    assert len(trainer.switch_settings()) == 4
    trainer.warm_up(1)
    assert not trainer.model.looping and trainer.qat_on_step is None and trainer.step == 0
    with torch._dynamo.config.patch(error_on_recompile=True):
        while trainer.done() is None:
            trainer.train_step()
    assert trainer.loop_on_step is not None and trainer.qat_on_step is not None


class NoQuadraticTensors(TorchDispatchMode):
    """Fails on any op output with ``limit`` elements or more; records the largest seen."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit, self.largest = limit, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(tensor, torch.Tensor):
                self.largest = max(self.largest, tensor.numel())
                assert tensor.numel() < self.limit, f"{func}: a tensor of {tensor.numel()} elements"
        return out


def test_a_98304_token_packed_row_trains_without_quadratic_tensors():
    """dim 32, 1 layer, segments cut at 128: forward and backward of one record-length row on SDPA's
    block path. The largest tensor stays a small multiple of T * seq_len (T * T would be 9.7e9)."""
    row_tokens, seq_len = 98_304, 128
    config = dataclasses.replace(PACKED_MODEL, num_layers=1, value_embed_layers=(0,), xsa_last_n=0, vocab_size=64)
    torch.manual_seed(0)
    model = GPT(config)
    torch.nn.init.normal_(model.blocks[0].attn.proj.weight, std=0.1)  # zero-init: let gradients reach q and k
    ids = packed_tokens(1, row_tokens)
    x, y = ids[:, :-1], ids[:, 1:]
    segments = find_segments(x, BOS, seq_len)
    limit = 8 * row_tokens * seq_len  # 1e8: heads x T x 2 seq_len scores, far below T * T = 9.7e9
    with NoQuadraticTensors(limit) as watch:
        model.loss(x, y, segments=segments).backward()
    assert watch.largest >= row_tokens * seq_len  # the block scores were seen: the watch can fail
    assert model.blocks[0].attn.c_q.weight.grad.abs().sum() > 0
