"""The memory model (stages/memory.py), its counter (stages/model/live_bytes.py) and the documents-per-batch
rule of document TTT (stages/evaluate/ttt/batch_fit.py)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from stages.evaluate.ttt.batch_fit import HEADROOM, fit_batch_docs, probe_peak, resident_bytes
from stages.evaluate.ttt.config import LoRAConfig, TTTConfig
from stages.memory import (ACTIVATIONS, ATTENTION, GRADIENTS, HEAD, OPTIMIZER, WEIGHTS, counting, flash_attend,
                           preset_reports, training_memory)
from stages.model.config import ModelConfig
from stages.model.gpt import GPT
from stages.model.live_bytes import LiveBytes
from stages.train.config import RunConfig, TrainConfig
from stages.train.optim import build_optimizers
from stages.train.presets import get_preset

from .conftest import golf
from .test_ttt import VOCAB, tiny_gpt

SMALL = ModelConfig(vocab_size=64, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1, mlp_mult=2)


def small_run(row_tokens: int = 256, **train) -> RunConfig:
    return RunConfig(SMALL, TrainConfig(seq_len=row_tokens, batch_tokens=row_tokens * 8, grad_accum=1, **train))


# ---- the counter ----


def test_counter_counts_storages_once_and_frees_them():
    with LiveBytes() as counter:
        x = torch.zeros(1000)  # 4,000 bytes
        view = x[10:20]
        assert counter.total == 4000
        y = x * 2
        assert counter.total == 8000 and counter.peak == 8000
        del x, view, y
        assert counter.total == 0 and counter.peak == 8000


def test_weights_are_the_parameters_and_buffers_bytes_exactly():
    report = training_memory(small_run())
    model = GPT(SMALL)
    tensors = [*model.parameters(), *model.buffers()]
    assert report.at_peak[WEIGHTS] == sum(t.numel() * t.element_size() for t in tensors)


def test_saved_activations_agree_with_what_autograd_saves():
    """Independent count: the storages autograd's saved-tensor hooks see during the forward (less the
    parameters and the inputs). The counter's forward total may only exceed it by the loss and by
    tensors the forward made and still holds that are not saved (a few small ones)."""
    model = GPT(SMALL)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    ids = torch.randint(64, (2, 129))
    saved: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), LiveBytes() as counter:
        loss = model.loss(ids[:, :-1], ids[:, 1:])
    independent = sum(saved.values())
    assert independent > 0
    assert independent <= counter.total <= 1.05 * independent + 4096
    loss.backward()  # the graph is whole


# ---- the memory model ----


def test_training_step_components():
    report = training_memory(small_run(ema_decay=0.99))
    assert report.at_peak[ACTIVATIONS] > report.at_peak[WEIGHTS]
    assert report.peak == sum(report.at_peak.values())
    assert HEAD in report.at_peak


def test_attention_is_counted_linear_in_the_row_not_quadratic():
    """The flash stand-in saves O(T) per layer: doubling the packed row doubles the activations."""
    short, long = (training_memory(small_run(row)).at_peak[ACTIVATIONS] for row in (1024, 2048))
    assert 1.9 < long / short < 2.1


def test_flash_stand_in_saves_out_and_logsumexp_only():
    with counting() as counter:
        q = torch.empty(1, 2, 4096, 16, requires_grad=True)
        k = v = torch.empty(1, 1, 4096, 16, requires_grad=True)
        with counter.label(ATTENTION):
            out = flash_attend(q, k, v, None)
        assert counter.live[ATTENTION] == out.numel() * 4 + 2 * 4096 * 4  # out + float32 lse; no 4096^2 anything


def test_gradients_and_optimizer_state_are_labelled():
    """With two micro-batches the second runs beside the first's gradients, and the optimizer state
    of the step before is alive at the peak: exactly what a real step leaves behind."""
    config = small_run()
    config = replace(config, train=replace(config.train, grad_accum=2, batch_tokens=256 * 16))
    report = training_memory(config)
    model = GPT(SMALL)
    assert report.at_peak[GRADIENTS] == sum(p.numel() * p.element_size() for p in model.parameters())
    assert report.at_peak[OPTIMIZER] == optimizer_state_bytes(model, config)


def optimizer_state_bytes(model: GPT, config: RunConfig) -> int:
    """The bytes of every optimizer state tensor after one real step on CPU."""
    optimizers = build_optimizers(model, config.train)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    for optimizer in optimizers:
        optimizer.step()
    return sum(t.numel() * t.element_size() for o in optimizers for state in o.state.values()
               for t in state.values() if torch.is_tensor(t))


@pytest.mark.parametrize("name", ["top", "pr1790", "pr1880"])
def test_record_presets_fit_an_h100_for_training_and_ttt(name):
    preset = get_preset(name)
    reports = preset_reports(preset.config, preset.eval.ttt, 80.0, preset.eval.seq_len, preset.eval.batch_windows)
    assert [r.name for r in reports][0] == "train" and len(reports) == 2
    for report in reports:
        assert report.fits(80.0), (report.name, report.peak / 2**30)
    assert reports[0].shape.startswith("1 x 1 row(s) of 98304 tokens")


# ---- documents per batch ----


LORA = TTTConfig(mode="lora", lora=LoRAConfig(chunk=8, batch_docs=16, rank=4, alpha=8.0))


def limited(gb: float) -> TTTConfig:
    """LORA with a memory limit of ``gb``."""
    return replace(LORA, lora=replace(LORA.lora, memory_limit_gb=gb))


def test_without_a_limit_the_configured_documents_stand():
    fit = fit_batch_docs(tiny_gpt(), LORA, 32, "cpu", None)
    assert fit.docs == 16 and fit.rule.startswith("configured")


def test_the_rule_picks_the_most_documents_that_fit():
    """A limit set between what 5 and 6 documents need gives 5 (the measured step is linear in the
    documents), and the measured peak at 5 stays within it while 6 would not."""
    model, seq = tiny_gpt(), 32
    resident = resident_bytes(model, torch.device("cpu"))
    needs = {docs: resident + probe_peak(model, LORA, docs, seq, torch.device("cpu"), None) for docs in (5, 6)}
    limit_gb = (needs[5] + needs[6]) / 2 / HEADROOM / 1e9
    fit = fit_batch_docs(model, limited(limit_gb), seq, "cpu", None)
    assert fit.docs == 5 and fit.rule.startswith("measured")
    assert needs[5] <= HEADROOM * fit.limit_bytes < needs[6]
    assert fit_batch_docs(model, limited(1e-9), seq, "cpu", None).docs == 1


def test_the_eval_manifest_records_the_documents_and_the_rule(pack_dir, tmp_path):
    result = golf("eval", pack_dir, "--ttt", "lora", "--set", "eval_tokens=2048", "--set", "ttt.lora.batch_docs=8",
                  "--set", "ttt.lora.memory_limit_gb=0.000001", "--out", tmp_path / "eval")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "eval" / "manifest.json").read_text())
    metrics = manifest["metrics"]
    assert metrics["ttt_batch_docs"] == 1 and metrics["ttt_batch_docs_configured"] == 8
    assert metrics["ttt_batch_docs_rule"].startswith("measured") and metrics["ttt_bytes_per_doc"] > 0
    assert manifest["config"]["ttt"]["lora"]["batch_docs"] == 1  # the config it ran with


def test_print_memory_prints_the_table_and_the_verdict():
    result = golf("train", "--print-memory", "--preset", "tiny", "--device-gb", "1")
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(":", 1) for line in result.stdout.splitlines() if ":" in line and " " not in line.split(":")[0])
    assert lines["preset"] == "tiny" and lines["device_gb"] == "1"
    assert float(lines["train.weights_gib"]) > 0 and lines["train.fits"] in ("yes", "no")
    assert "saved activations" in result.stdout  # the table
