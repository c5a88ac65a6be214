"""The fused, chunked head + softcap + cross-entropy equals the plain logits path, values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stages.model.config import ModelConfig
from stages.model.gpt import GPT
from stages.model.head_loss import head_nll

TOKENS, DIM, VOCAB = 37, 16, 50  # chunks of 8 or 16 leave a short last chunk


def plain_nll(x, weight, targets, softcap, reduction):
    logits = F.linear(x, weight.to(x.dtype))
    if softcap > 0:
        logits = softcap * torch.tanh(logits / softcap)
    nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction=reduction)
    return nll.view_as(targets) if reduction == "none" else nll


def inputs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(1, TOKENS, DIM, generator=generator, requires_grad=True)
    weight = (0.5 * torch.randn(VOCAB, DIM, generator=generator)).requires_grad_()
    targets = torch.randint(VOCAB, (1, TOKENS), generator=generator)
    return x, weight, targets


def values_and_grads(loss_fn, x, weight, targets, reduction):
    out = loss_fn(x, weight, targets, reduction)
    weights = torch.linspace(0.5, 1.5, targets.numel()).view_as(targets)  # distinct per-token upstream grads
    (out * weights).sum().backward() if reduction == "none" else out.backward()
    grads = (x.grad.clone(), weight.grad.clone())
    x.grad = weight.grad = None
    return out.detach(), grads


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("softcap", [30.0, 0.0])
@pytest.mark.parametrize("chunk", [8, 16, 1000])
def test_fused_equals_plain_in_float32(reduction, softcap, chunk):
    x, weight, targets = inputs()
    want, want_grads = values_and_grads(lambda *a: plain_nll(*a[:3], softcap, a[3]), x, weight, targets, reduction)
    got, got_grads = values_and_grads(lambda *a: head_nll(*a[:3], softcap, a[3], chunk=chunk), x, weight, targets,
                                      reduction)
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_a_wrong_gradient_would_be_seen():
    """The comparison is sharp enough: dropping the softcap's derivative fails it."""
    x, weight, targets = inputs()
    _, capped = values_and_grads(lambda *a: plain_nll(*a[:3], 5.0, a[3]), x, weight, targets, "mean")
    _, uncapped = values_and_grads(lambda *a: plain_nll(*a[:3], 0.0, a[3]), x, weight, targets, "mean")
    assert not torch.allclose(capped[0], uncapped[0], rtol=1e-5, atol=1e-6)


def test_ignored_targets_count_as_cross_entropy_does():
    x, weight, targets = inputs()
    targets[0, ::3] = -100
    for reduction in ("mean", "none"):
        want, want_grads = values_and_grads(lambda *a: plain_nll(*a[:3], 30.0, a[3]), x, weight, targets, reduction)
        got, got_grads = values_and_grads(lambda *a: head_nll(*a[:3], 30.0, a[3], chunk=8), x, weight, targets,
                                          reduction)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(got_grads[0], want_grads[0], rtol=1e-5, atol=1e-6)


def test_bf16_autocast_is_as_close_to_exact_as_the_plain_path():
    """Under CPU autocast both run the matmuls in bfloat16 (the plain path also rounds the softcap's
    backward to bfloat16, the fused one keeps it float32): against float64 math on the same
    bfloat16-rounded inputs, the fused values and gradients are no further off than the plain ones."""
    x, weight, targets = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = values_and_grads(lambda *a: plain_nll(*a[:3], 30.0, a[3]), x, weight, targets, "none")
        fused = values_and_grads(lambda *a: head_nll(*a[:3], 30.0, a[3], chunk=8), x, weight, targets, "none")
    x64 = x.detach().bfloat16().double().requires_grad_()
    weight64 = weight.detach().bfloat16().double().requires_grad_()
    exact = values_and_grads(lambda *a: plain_nll(*a[:3], 30.0, a[3]), x64, weight64, targets, "none")
    for got, plain_got, want in zip((fused[0], *fused[1]), (plain[0], *plain[1]), (exact[0], *exact[1])):
        assert got.dtype == torch.float32  # values in float32; the casts' gradients reach the float32 leaves
        fused_error = (got.double() - want).abs().max()
        plain_error = (plain_got.double() - want).abs().max()
        assert fused_error <= 1.5 * plain_error + 1e-6
        assert fused_error <= 0.02 * want.abs().max()


@pytest.mark.parametrize("tied", [True, False])
def test_gpt_loss_equals_the_logits_path(tied):
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=64, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=2, mlp_mult=2,
                         tie_embeddings=tied)
    model = GPT(config)
    if not tied:
        torch.nn.init.normal_(model.lm_head.weight, std=0.1)  # the untied head starts at zero
    tokens = torch.randint(64, (2, 21))
    inputs_, targets = tokens[:, :-1], tokens[:, 1:]
    fused = model.loss(inputs_, targets)
    fused.backward()
    fused_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    plain = F.cross_entropy(model(inputs_).float().flatten(0, 1), targets.flatten())
    plain.backward()
    torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-6)
    for name, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(fused_grads[name], p.grad, rtol=1e-5, atol=1e-6, msg=name)
    per_token = model.nll(inputs_, targets)
    assert per_token.shape == targets.shape
    torch.testing.assert_close(per_token.mean(), plain.detach(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
@pytest.mark.parametrize("autocast", [False, True])
def test_compiles_without_a_graph_break(backend, autocast):
    torch._dynamo.reset()
    x, weight, targets = inputs()
    compiled = torch.compile(lambda x, w, t, reduction: head_nll(x, w, t, 30.0, reduction, chunk=8),
                             backend=backend, fullgraph=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        got, got_grads = values_and_grads(compiled, x, weight, targets, "mean")
        want, want_grads = values_and_grads(lambda *a: head_nll(*a[:3], 30.0, a[3], chunk=8), x, weight, targets,
                                            "mean")
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_gpt_loss_compiles_as_one_graph():
    """The whole training loss (no document mask) with the fused head: one graph, the plain value."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1, mlp_mult=2))
    tokens = torch.randint(64, (2, 33))
    compiled = torch.compile(model.loss, backend="aot_eager", fullgraph=True)
    got = compiled(tokens[:, :-1], tokens[:, 1:])
    got.backward()
    want = F.cross_entropy(model(tokens[:, :-1]).float().flatten(0, 1), tokens[:, 1:].flatten())
    torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_a_per_row_low_rank_term_equals_adding_it_to_the_logits(reduction):
    """The head's LoRA: row i's logits gain h[i] b[i]^T before the cap, chunks inside each row."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(3, 13, DIM, generator=generator, requires_grad=True)
    weight = (0.5 * torch.randn(VOCAB, DIM, generator=generator)).requires_grad_()
    h = torch.randn(3, 13, 4, generator=generator, requires_grad=True)
    b = (0.3 * torch.randn(3, VOCAB, 4, generator=generator)).requires_grad_()
    targets = torch.randint(VOCAB, (3, 13), generator=generator)
    leaves = (x, weight, h, b)

    def run(fused: bool):
        if fused:
            out = head_nll(x, weight, targets, 30.0, reduction, chunk=5, low_rank=(h, b))
        else:
            logits = 30.0 * torch.tanh((x @ weight.t() + h @ b.transpose(1, 2)) / 30.0)
            out = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction=reduction).view_as(
                targets) if reduction == "none" else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        (out * torch.linspace(0.5, 1.5, out.numel()).view_as(out)).sum().backward()
        grads = [t.grad.clone() for t in leaves]
        for t in leaves:
            t.grad = None
        return out.detach(), grads

    got, got_grads = run(True)
    want, want_grads = run(False)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_gpt_nll_with_a_head_adapter_equals_the_logits_path():
    """GPT.nll with every LoRA adapter (head included): the adapted logits' cross-entropy, values and
    the adapters' gradients."""
    from stages.model.lora import LoRASet

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1, mlp_mult=2))
    lora = LoRASet(model.config, 2, 2, 4, 8.0, ("q", "v", "mlp", "head"))
    torch.nn.init.normal_(lora.a, std=0.3)
    for b in lora.b:
        torch.nn.init.normal_(b, std=0.3)
    tokens = torch.randint(64, (2, 17))
    inputs_, targets = tokens[:, :-1], tokens[:, 1:]
    results = []
    for fused in (True, False):
        if fused:
            nll = model.nll(inputs_, targets, adapters=lora)
        else:
            logits = model(inputs_, adapters=lora)
            nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)
        nll.mean(dim=1).sum().backward()
        results.append((nll.detach(), [p.grad.clone() for p in lora.parameters()]))
        lora.zero_grad(set_to_none=True)
        model.zero_grad(set_to_none=True)
    (got, got_grads), (want, want_grads) = results
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
