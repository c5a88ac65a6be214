"""Every preset carries its record's values: one row per (preset, value) of docs/REFERENCE.md section 8.

The rows are the section's recipe table, the #401 module facts that are config values, and each
record's evaluation (windows and TTT: docs/TTT_CASEOPS.md sections B.1, C, D, G.1 and the seeds).
Packing (pack) values belong to the pack stage's config and are not rows here.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from golf_cli.quantize import _base_settings as base_settings
from stages.config import to_dict
from stages.model.config import ModelConfig
from stages.progress import Reporter
from stages.quantize.config import GroupQuant, QuantizeConfig
from stages.quantize.dequant import KIND_FLOAT, KIND_ROWS, dequantize_entry
from stages.quantize.quantizer import quantize_state
from stages.quantize.rows import SEARCH_QUANTILES, quantile_scales, rtn_codes, searched_quantile_scales
from stages.quantize.config import DEFAULT_SCHEME, SCHEMES
from stages.train.config import TrainConfig
from stages.train.presets import CPU_VAL_DOCS, FULL_PRESETS, PRESETS, RECORD_VAL_DOCS, STEP_RATIO

from .conftest import golf, rewrite_manifest

LINEAGE = ("pr1413", "pr1776", "pr1880", "pr1790", "top")  # section 8's table columns, left to right


def across(key: str, *values) -> list:
    """One row per table column: ``values`` in LINEAGE order."""
    assert len(values) == len(LINEAGE)
    return [pytest.param(name, key, value, id=f"{name}-{key}") for name, value in zip(LINEAGE, values)]


def only(name: str, key: str, value) -> list:
    return [pytest.param(name, key, value, id=f"{name}-{key}")]


ROWS = [
    # ---- the recipe table ----
    *across("train.matrix_lr", 0.02, 0.022, 0.026, 0.026, 0.026),
    *across("train.muon_momentum", 0.99, 0.99, 0.97, 0.97, 0.97),
    *across("train.muon_momentum_start", 0.92, 0.92, 0.92, 0.92, 0.92),
    *across("train.muon_momentum_warmup_steps", 1500, 1500, 1500, 1500, 1500),
    *across("train.adam_beta2", 0.95, 0.95, 0.95, 0.95, 0.99),
    *across("train.muon_weight_decay", 0.085, 0.095, 0.095, 0.095, 0.095),
    *across("train.embed_weight_decay", 0.085, 0.085, 0.085, 0.085, 0.085),
    *across("train.scalar_weight_decay", 0.02, 0.02, 0.02, 0.02, 0.02),
    *across("train.warmdown_frac", 0.667, 0.72, 0.75, 0.75, 0.85),
    *across("train.min_lr", 0.0, 0.0, 0.0, 0.0, 0.1),
    *across("train.ema_decay", 0.997, 0.9965, 0.9965, 0.9965, 0.9965),
    *across("model.qk_gain_init", 5.0, 5.25, 5.25, 5.25, 5.0),
    *across("model.logit_softcap", 30.0, 30.0, 15.0, 30.0, 30.0),
    *across("model.loop_first", 4, 3, 3, 3, 3),
    *across("model.loop_last", 5, 5, 5, 5, 5),
    *across("model.loop_passes", 3, 3, 3, 3, 3),  # NUM_LOOPS=2 in every record: two passes more than one
    *across("model.loop_start_frac", 0.5, 0.35, 0.35, 0.35, 0.35),
    *only("pr1413", "model.parallel_residual_from", -1),
    *only("pr1776", "model.parallel_residual_from", 7),
    *only("pr1776", "model.parallel_residual", "shared"),
    *[row for name in ("pr1880", "pr1790", "top") for row in [
        *only(name, "model.parallel_residual", "two_lane"),
        *only(name, "model.parallel_residual_from", 8),
    ]],
    *across("model.attn_gate_width", 0, 0, 12, 24, 12),
    *across("model.attn_gate_sparse", False, False, False, False, True),  # sparse: sigmoid(0.5 W x), scale 0.5
    *across("train.gptq_reserve_seconds", 12.0, 12.0, 13.0, 4.0, 0.5),
    *across("quantize.calibration.batches", 64, 64, 64, 16, 16),
    *across("quantize.calibration.batch_tokens", *[786_432 // 8] * 5),  # one rank's training batch
    *across("quantize.method", *["gptq"] * 5),
    *across("quantize.attention.clip_sigmas", 12.85, 12.85, 13.0, 13.0, 13.0),
    *across("quantize.mlp.clip_sigmas", 12.85, 12.85, 12.0, 12.0, 11.5),
    *across("quantize.embedding.clip_sigmas", 20.0, 20.0, 15.0, 15.0, 14.0),
    *across("quantize.attention.bits", 6, 6, 6, 6, 6),
    *across("quantize.mlp.bits", 6, 6, 6, 6, 6),
    *across("quantize.embedding.bits", 8, 8, 7, 7, 7),
    *across("quantize.gate_bits", 0, 0, 0, 0, 8),
    *across("quantize.control_dtype", *["float16"] * 5),  # every tensor <= 65,536 elements passes as fp16
    *across("model.doc_mask", False, False, True, True, True),
    *[row for name in ("pr1880", "pr1790", "top") for row in only(name, "train.loader", "doc_packed")],
    # ---- the paragraphs under the table ----
    *across("train.muon_coefficients", "stock", "stock", "stock", "stock", "polar_express"),
    *across("quantize.lqer_rank", 0, 0, 0, 0, 4),
    *only("top", "quantize.lqer_top_k", 3),
    *only("top", "quantize.lqer_a_bits", 2),
    *only("top", "quantize.lqer_b_bits", 4),
    *only("top", "quantize.lqer_group", 64),
    *[row for name in ("pr1880", "pr1790", "top") for row in [
        *only(name, "model.smear_gate", True),
        *only(name, "model.smear_form", "gated"),  # on the raw embedding, before the first norm
        *only(name, "model.smear_bos_mask", True),  # on in every preset (pr1790's record ran without)
    ]],
    # ---- the #401 modules ----
    *only("pr401", "model.xsa_last_n", 4),
    *only("pr401", "model.mlp_mult", 3.0),
    *only("pr401", "model.mlp_activation", "relu2"),
    *only("pr401", "model.qk_gain_init", 1.5),
    *only("pr401", "model.rope_dims", 16),
    *only("pr401", "model.bigram_hash_buckets", 2048),
    *only("pr401", "model.bigram_hash_dim", 128),
    *only("pr401", "model.value_embed_dim", 128),
    *only("pr401", "model.value_embed_layers", (9, 10)),
    *only("pr401", "model.tied_embed_init_std", 0.005),
    *only("pr401", "model.smear_gate", True),
    *only("pr401", "model.smear_form", "per_channel"),
    *only("pr401", "model.rope_train_len", 1024),
    *only("pr401", "model.orthogonal_init", True),
    *only("pr401", "train.swa_every", 50),
    *only("pr401", "train.qat_bits", 6),
    *only("pr401", "train.qat_lr_scale", 0.15),
    *only("pr401", "train.warmdown_steps", 3500),
    *only("pr401", "quantize.method", "rtn"),
    *only("pr401", "quantize.attention.clip", "quantile_search"),
    *only("pr401", "quantize.mlp.clip", "quantile_search"),
    # ---- evaluation: windows and test-time training ----
    *only("pr401", "eval.ttt.mode", "none"),
    *only("pr401", "eval.seq_len", 2048),
    *only("pr401", "eval.stride", 64),
    *across("eval.ttt.mode", "chunk-sgd", "chunk-sgd", "chunk-sgd", "phased", "phased"),
    *across("eval.seq_len", 2048, 2048, 2048, 2048, 2048),
    *[row for name in ("pr1413", "pr1776", "pr1880") for key, value in (
        ("eval.stride", 64), ("eval.ttt.chunk_sgd.chunk_tokens", 32768), ("eval.ttt.chunk_sgd.lr", 0.005),
        ("eval.ttt.chunk_sgd.momentum", 0.9), ("eval.ttt.chunk_sgd.epochs", 3), ("eval.ttt.chunk_sgd.batch_seqs", 32),
        ("eval.ttt.chunk_sgd.grad_clip", 1.0), ("eval.ttt.chunk_sgd.freeze_blocks", 0),
    ) for row in only(name, key, value)],
    # pr1790 (seed 000): #1767's LoRA and 3 phases over 2,000 documents; top: the G.1 table and log.
    *[row for name, rank, decay, beta2, docs in (("pr1790", 128, 1.0, 0.999, 2000), ("top", 80, 0.5, 0.99, 2500))
      for key, value in (
        ("eval.ttt.lora.rank", rank), ("eval.ttt.lora.alpha", 144.0), ("eval.ttt.lora.weight_decay", decay),
        ("eval.ttt.lora.beta1", 0.0), ("eval.ttt.lora.beta2", beta2), ("eval.ttt.lora.warm_start_a", True),
        ("eval.ttt.phased.docs", docs), ("eval.ttt.phased.phases", 3), ("eval.ttt.lora.chunk", 48),
        ("eval.ttt.lora.batch_docs", 64), ("eval.ttt.lora.lr", 1e-4), ("eval.ttt.phased.global_lr", 0.001),
        ("eval.ttt.phased.global_momentum", 0.9), ("eval.ttt.phased.global_epochs", 1),
        ("eval.ttt.phased.global_chunk_tokens", 32768), ("eval.ttt.phased.global_batch_seqs", 32),
        ("eval.ttt.phased.global_grad_clip", 1.0), ("eval.ttt.phased.global_doc_mask", True),
      ) for row in only(name, key, value)],
]


def resolve(name: str, key: str):
    """A dotted key of a preset: model.*, train.*, quantize.* or eval.*."""
    root, *path = key.split(".")
    value = PRESETS[name] if root in ("quantize", "eval") else PRESETS[name].config
    for part in [root, *path]:
        value = getattr(value, part)
    return value


@pytest.mark.parametrize("name, key, value", ROWS)
def test_preset_has_its_records_value(name, key, value):
    assert resolve(name, key) == value


# ---- the CPU forms: the same values, except what scales with size and steps ----

# Keys whose CPU value is derived from the full one (layer indices and widths follow the smaller model,
# step counts the 500-step budget, the GPTQ reserve the step schedule, calibration the CPU batch).
SCALED = {"model.loop_first", "model.loop_last", "model.parallel_residual_from", "model.xsa_last_n", "model.rope_dims",
          "model.bigram_hash_dim", "model.value_embed_dim", "model.value_embed_layers", "model.bigram_hash_buckets",
          "model.rope_train_len",  # the same ratio to the training length (1024 of 2048 -> 128 of 256)
          "train.muon_momentum_warmup_steps", "train.warmdown_steps", "train.ema_decay", "train.swa_every",
          "train.gptq_reserve_seconds", "quantize.calibration.batch_tokens",
          # the CPU window (256), token counts with it, the phased prefix with the val documents
          "eval.seq_len", "eval.ttt.chunk_sgd.chunk_tokens", "eval.ttt.phased.global_chunk_tokens",
          "eval.ttt.phased.docs"}


# The CPU form matches its full preset whatever the value.
CPU_ROWS = [pytest.param(f"{p.values[0]}-cpu", p.values[1], id=f"{p.values[0]}-cpu-{p.values[1]}")
            for p in ROWS if p.values[1] not in SCALED]


@pytest.mark.parametrize("cpu_name, key", CPU_ROWS)
def test_cpu_form_keeps_the_value(cpu_name, key):
    full_name = cpu_name.removesuffix("-cpu")
    assert resolve(cpu_name, key) == resolve(full_name, key)
    assert PRESETS[cpu_name].config.model.model_dim < PRESETS[full_name].config.model.model_dim


@pytest.mark.parametrize("name", [n for n in FULL_PRESETS if n != "baseline"])
def test_cpu_form_scales_step_counts_and_sizes(name):
    full, cpu = PRESETS[name], PRESETS[f"{name}-cpu"]
    assert cpu.config.train.muon_momentum_warmup_steps == full.config.train.muon_momentum_warmup_steps // STEP_RATIO
    assert cpu.config.train.warmdown_steps == full.config.train.warmdown_steps // STEP_RATIO
    assert cpu.quantize.calibration.batch_tokens == cpu.config.train.batch_tokens
    # The same tensors stay float: the limit scales with the matrices' area (512 -> 128 wide: / 16).
    assert cpu.quantize.keep_float_max_numel == full.quantize.keep_float_max_numel // 16
    assert cpu.quantize.device == "cpu"


@pytest.mark.parametrize("name", [n for n in FULL_PRESETS if n != "baseline"])
def test_cpu_form_scales_the_eval_with_the_window_and_the_val_documents(name):
    full, cpu = PRESETS[name].eval, PRESETS[f"{name}-cpu"].eval
    assert cpu.seq_len == PRESETS[f"{name}-cpu"].config.train.seq_len == 256 and cpu.stride == full.stride
    assert cpu.ttt.chunk_sgd.chunk_tokens == full.ttt.chunk_sgd.chunk_tokens // 8 == 4096  # 16 sequences per chunk
    assert cpu.ttt.phased.global_chunk_tokens == full.ttt.phased.global_chunk_tokens // 8
    assert cpu.ttt.phased.docs == round(full.ttt.phased.docs * CPU_VAL_DOCS / RECORD_VAL_DOCS)
    assert (full.device, cpu.device) == ("auto", "cpu")


@pytest.mark.parametrize("name", ["baseline", "tiny"])
def test_baseline_and_tiny_score_non_overlapping_windows_without_ttt(name):
    evaluation = PRESETS[name].eval
    assert (evaluation.ttt.mode, evaluation.stride, evaluation.seq_len) == ("none", None, None)


def test_baseline_exports_int8_and_tiny_keeps_the_default_scheme():
    assert PRESETS["baseline"].quantize == SCHEMES["baseline-int8"]
    assert PRESETS["tiny"].quantize == SCHEMES[DEFAULT_SCHEME]


# ---- golf train --print-config ----

def as_text(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


@pytest.mark.parametrize("name", ["pr401", "top"])
def test_print_config_lists_every_row(name, tmp_path):
    result = golf("train", "--preset", name, "--print-config", "--data", tmp_path / "absent", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = set(result.stdout.splitlines())
    assert f"preset: {name}" in lines
    for row in ROWS:
        row_name, key, value = row.values
        if row_name == name:
            assert f"{key}: {as_text(value)}" in lines, key
    assert not (tmp_path / "artifacts").exists()  # nothing read, nothing written


def test_print_config_shows_overrides_and_every_field(tmp_path):
    result = golf("train", "--preset", "top-cpu", "--print-config", "--max-steps", "7", "--set", "train.min_lr=0.2",
                  cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    pairs = dict(line.split(": ", 1) if ": " in line else (line.rstrip(":"), "") for line in result.stdout.splitlines())
    assert pairs["train.max_steps"] == "7" and pairs["train.min_lr"] == "0.2"
    model_fields = {f"model.{f.name}" for f in dataclasses.fields(ModelConfig)}
    train_fields = {f"train.{f.name}" for f in dataclasses.fields(TrainConfig)}
    assert model_fields | train_fields <= set(pairs)
    assert {"quantize.gate_bits", "quantize.calibration.batches", "quantize.embedding.clip_sigmas"} <= set(pairs)


# ---- golf eval --preset ----

@pytest.mark.parametrize("name", ["pr1413", "pr1790", "top"])
def test_eval_print_config_lists_every_eval_row(name, tmp_path):
    result = golf("eval", "--preset", name, "--print-config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = set(result.stdout.splitlines())
    assert f"preset: {name}" in lines
    rows = [row.values for row in ROWS if row.values[0] == name and row.values[1].startswith("eval.")]
    assert len(rows) >= 10
    for _, key, value in rows:
        assert f"{key.removeprefix('eval.')}: {as_text(value)}" in lines, key
    assert not list(tmp_path.iterdir())  # nothing read, nothing written


def test_eval_flags_and_set_override_the_preset(tmp_path):
    result = golf("eval", "--preset", "top", "--set", "ttt.lora.rank=8", "--stride", "32", "--ttt", "lora",
                  "--eval-budget-s", "450", "--over-budget", "fail", "--print-config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    pairs = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    assert (pairs["ttt.lora.rank"], pairs["stride"], pairs["ttt.mode"]) == ("8", "32", "lora")
    assert (pairs["budget_s"], pairs["over_budget"]) == ("450.0", "fail")
    assert pairs["ttt.phased.docs"] == "2500" and pairs["ttt.lora.beta2"] == "0.99"  # the rest stays the preset's
    default = golf("eval", "--print-config", cwd=tmp_path)
    assert "preset: none" in default.stdout and "ttt.mode: none" in default.stdout


@pytest.mark.parametrize("args, message", [
    (["--preset", "nope"], "unknown preset 'nope'; available: tiny, baseline"),
    (["--preset", "top", "--set", "ttt.lora.rank=0"], "ttt.lora.rank: must be >= 1, got 0"),
    (["--preset", "top", "--set", "ttt.lora_rank=8"], "config key 'ttt.lora_rank' was renamed: use 'ttt.lora.rank'"),
    (["--over-budget", "later"], "over_budget: expected one of stop-adapting, fail, got 'later'"),
    (["--eval-budget-s", "0"], "budget_s: must be > 0, got 0.0"),
])
def test_eval_bad_preset_or_setting_is_one_line(args, message, tmp_path):
    result = golf("eval", *args, "--print-config", cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error:") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_eval_preset_runs_with_its_settings_under_the_flags(pack_dir, tmp_path):
    result = golf("eval", pack_dir, "--preset", "pr1413-cpu", "--seq-len", "64", "--stride", "16",
                  "--set", "eval_tokens=4096", "--set", "ttt.chunk_sgd.chunk_tokens=1024", "--out", tmp_path / "eval")
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "eval" / "manifest.json").read_text())["config"]
    assert (config["seq_len"], config["stride"], config["ttt"]["chunk_sgd"]["chunk_tokens"]) == (64, 16, 1024)
    assert config["ttt"]["mode"] == "chunk-sgd" and config["ttt"]["chunk_sgd"]["lr"] == 0.005
    assert config["device"] == "cpu"


def test_print_config_refuses_a_bad_override_in_one_line(tmp_path):
    result = golf("train", "--preset", "top", "--print-config", "--set", "train.min_lr=2", cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "train.min_lr: must be" in result.stderr


# ---- the export rules the presets need ----

def test_gates_become_int8_rows_only_when_asked():
    torch.manual_seed(0)
    gate = torch.randn(4, 12) * 0.3
    state = {"blocks.0.attn.gate.weight": gate, "blocks.0.attn_scale": torch.ones(8)}
    tensors, index, report = quantize_state(state, QuantizeConfig(method="rtn", gate_bits=8))
    entry = index["blocks.0.attn.gate.weight"]
    assert entry["kind"] == KIND_ROWS and entry["bits"] == 8
    restored = dequantize_entry("blocks.0.attn.gate.weight", entry, tensors)
    step = tensors["blocks.0.attn.gate.weight.scale"].float()[:, None]
    assert torch.allclose(step, gate.abs().amax(dim=1, keepdim=True) / 127, rtol=1e-3)  # the row's max |w| is 127
    assert ((restored - gate).abs() <= step / 2 + 1e-6).all()
    assert index["blocks.0.attn_scale"]["kind"] == KIND_FLOAT  # other control tensors stay float
    _, plain, _ = quantize_state(state, QuantizeConfig(method="rtn"))
    assert plain["blocks.0.attn.gate.weight"]["kind"] == KIND_FLOAT


def test_quantile_search_keeps_the_ladder_entry_with_the_least_error():
    torch.manual_seed(1)
    weight = torch.randn(32, 256)
    weight[0, 0] = 40.0  # one outlier: clipping it beats stretching the whole row's grid
    errors = []
    for quantile in SEARCH_QUANTILES:
        scale = quantile_scales(weight, 6, quantile)
        errors.append(float((weight - rtn_codes(weight, scale, 6).float() * scale.float()[:, None]).pow(2).mean()))
    chosen = searched_quantile_scales(weight, 6)
    best = quantile_scales(weight, 6, SEARCH_QUANTILES[errors.index(min(errors))])
    assert torch.equal(chosen, best) and min(errors) < errors[-1]
    settings = QuantizeConfig(method="rtn", keep_float_max_numel=0, mlp=GroupQuant(bits=6, clip="quantile_search"))
    tensors, _, _ = quantize_state({"blocks.0.mlp.fc.weight": weight}, settings)
    assert torch.equal(tensors["blocks.0.mlp.fc.weight.scale"], best)


# ---- golf quantize takes the settings of the preset a checkpoint was trained with ----

@pytest.fixture
def top_cpu_train_dir(train_dir, tmp_path):
    """The session's tiny train folder, recorded as trained with the top-cpu preset."""
    copy = tmp_path / "train"
    shutil.copytree(train_dir, copy)
    rewrite_manifest(copy, lambda manifest: manifest["config"].update(preset="top-cpu"))
    return copy


def test_quantize_defaults_to_the_train_folders_preset(top_cpu_train_dir, data_dir, tmp_path):
    result = golf("quantize", "--train", top_cpu_train_dir, "--data", data_dir, "--out", tmp_path / "q",
                  "--set", "eval_tokens=4096")
    assert result.returncode == 0, result.stderr
    assert "preset top-cpu (the train folder's)" in result.stdout
    used = json.loads((tmp_path / "q" / "manifest.json").read_text())["config"]
    assert used == to_dict(dataclasses.replace(PRESETS["top-cpu"].quantize, eval_tokens=4096))


@pytest.mark.parametrize("flags, expected", [
    ((), PRESETS["top-cpu"].quantize),
    (("--preset", "pr1413-cpu"), PRESETS["pr1413-cpu"].quantize),
    (("--scheme", "rtn-int6"), SCHEMES["rtn-int6"]),
])
def test_quantize_settings_follow_the_flags(top_cpu_train_dir, flags, expected):
    preset = flags[1] if flags[:1] == ("--preset",) else None
    scheme = flags[1] if flags[:1] == ("--scheme",) else None
    assert base_settings(preset, scheme, top_cpu_train_dir, Reporter()) == expected


def test_quantize_without_a_known_preset_uses_the_default_scheme(train_dir):
    assert base_settings(None, None, train_dir, Reporter()) == SCHEMES[DEFAULT_SCHEME]  # trained as "tiny-test"


def test_quantize_refuses_a_preset_and_a_scheme_together(train_dir, tmp_path):
    result = golf("quantize", "--train", train_dir, "--out", tmp_path / "q", "--preset", "top", "--scheme", "rtn-int6")
    assert result.returncode != 0 and "give --preset or --scheme, not both" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "q").exists()
