"""The quantizers: SDClip and quantile grids, GPTQ against RTN, LQER, the entropy predictor and
the --target-bytes fit."""

import math
import typing
from dataclasses import replace

import pytest
import torch

from stages.config import apply_overrides
from stages.contract.stage_dir import StageDir
from stages.data.folder import train_shard_paths
from stages.model.checkpoint import load_model_weights, load_tensors
from stages.model.gpt import GPT
from stages.artifact.quantized import QuantizedMetadata
from stages.artifact.writer import build_artifact
from stages.quantize.calibration import collect_hessians, training_batches
from stages.quantize.config import CalibrationConfig, GroupQuant, QuantizeConfig
from stages.quantize.dequant import dequantize_state, lqer_factors
from stages.quantize.entropy import code_entropy_bits, gaussian_bits, predicted_code_bytes, predicted_value_bytes
from stages.quantize.gptq import GptqSettings, gptq_codes, hessian_error
from stages.quantize.lqer import FORMATS, correction_bytes, lqer_correction
from stages.quantize.methods import METHODS, method_for
from stages.quantize.quantizer import is_quantized, predicted_rtn_bytes, quantize_state
from stages.quantize.rows import code_max, quantile_scales, rtn_codes, sdclip_scales
from stages.quantize.tensor_report import TensorReport
from stages.quantize.config import get_scheme
from stages.data.loader import make_loader

from .conftest import tiny_run_config

ALL_MATRICES = QuantizeConfig(keep_float_max_numel=0)


def correlated_hessian(cols: int, samples: int = 2048, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=generator) * 0.3 + torch.eye(cols)
    x = torch.randn(samples, cols, generator=generator) @ mix * torch.linspace(0.2, 3.0, cols)
    return x.T @ x / samples


def restored(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return codes.float() * scale.float()[:, None]


# ---- grids ----
def test_sdclip_scale_is_k_sigma_over_r_and_rtn_is_within_half_a_step():
    torch.manual_seed(0)
    w = torch.randn(32, 400)
    scale = sdclip_scales(w, 6, 12.0)
    assert scale.dtype == torch.float16
    expected = 12.0 * w.std(dim=1, correction=0) / code_max(6)
    assert torch.allclose(scale.float(), expected, rtol=1e-3)
    codes = rtn_codes(w, scale, 6)
    assert codes.abs().max() <= 31
    inside = w.abs() <= 31 * scale.float()[:, None]
    assert ((restored(codes, scale) - w).abs()[inside] <= scale.float()[:, None].expand_as(w)[inside] / 2 + 1e-6).all()


def test_quantile_grid_ignores_a_single_outlier():
    w = torch.ones(2, 1000)
    w[0, 0] = 1000.0
    assert float(quantile_scales(w, 8, 0.99)[0]) < 1.0


def test_clip_rule_is_per_group_and_the_target_knob_leaves_quantile_groups_alone():
    torch.manual_seed(0)
    state = {"tok_emb.weight": torch.randn(64, 32), "blocks.0.mlp.fc.weight": torch.randn(64, 32)}
    config = replace(ALL_MATRICES, method="rtn", embedding=GroupQuant(bits=8, clip="quantile"))
    _tensors, _index, report = quantize_state(state, config)
    _tensors, _index, wider = quantize_state(state, config, clip_scale=2.0)
    rows = {row.name: row for row in report}
    wider_rows = {row.name: row for row in wider}
    assert rows["tok_emb.weight"].clip == "quantile" and rows["tok_emb.weight"].clip_sigmas is None
    assert rows["blocks.0.mlp.fc.weight"].clip == "sdclip"
    assert wider_rows["tok_emb.weight"].relative_error == rows["tok_emb.weight"].relative_error
    assert wider_rows["blocks.0.mlp.fc.weight"].clip_sigmas == 2 * rows["blocks.0.mlp.fc.weight"].clip_sigmas


def test_size_prediction_equals_the_reports_predicted_bytes():
    torch.manual_seed(0)
    state = {"tok_emb.weight": torch.randn(96, 32), "blocks.0.attn.c_q.weight": torch.randn(32, 32),
             "blocks.0.attn_scale": torch.randn(32)}
    config = replace(ALL_MATRICES, method="rtn", embedding=GroupQuant(bits=8, clip="quantile"))
    for clip_scale in (0.5, 1.0, 2.0):
        _tensors, _index, report = quantize_state(state, config, clip_scale=clip_scale)
        assert predicted_rtn_bytes(state, config, clip_scale) == sum(row.predicted_bytes for row in report)


def test_small_and_control_tensors_stay_float_and_dequantize_back():
    # bigram.proj.weight: a matrix (not a control tensor) small enough to stay float.
    state = {"blocks.0.attn_scale": torch.randn(8), "bigram.proj.weight": torch.randn(4, 4),
             "blocks.0.mlp.fc.weight": torch.randn(300, 300)}
    tensors, index, report = quantize_state(state, QuantizeConfig(method="rtn"))
    assert index["blocks.0.mlp.fc.weight"] == {"kind": "rows", "shape": [300, 300], "bits": 6}
    assert tensors["blocks.0.mlp.fc.weight.q"].dtype == torch.int8
    assert tensors["blocks.0.attn_scale"].dtype == torch.float32 and tensors["bigram.proj.weight"].dtype == torch.float16
    assert set(dequantize_state(tensors, index)) == set(state)
    assert {r.name: r.bits for r in report}["blocks.0.mlp.fc.weight"] == 6


# ---- GPTQ ----
@pytest.fixture(scope="module")
def trained(train_dir, data_dir):
    """The tiny trained model, its weights and Hessians from 4 batches of training data."""
    config = tiny_run_config()
    state = load_tensors(StageDir(train_dir).file("weights"))
    model = load_model_weights(GPT(config.model), state, "tiny").eval()
    names = {name for name, tensor in state.items() if is_quantized(name, tensor, ALL_MATRICES)}
    loader = make_loader("shuffled", train_shard_paths(StageDir(data_dir)), seed=1)
    calib = CalibrationConfig(batches=4, batch_tokens=2048)
    hessians = collect_hessians(model, training_batches(loader, calib, config.train.seq_len, "cpu"), names, "cpu")
    return state, hessians


def test_every_matrix_has_a_hessian_and_the_tied_head_reads_the_final_norm(trained):
    state, hessians = trained
    quantized = {name for name, tensor in state.items() if is_quantized(name, tensor, ALL_MATRICES)}
    assert set(hessians.matrices) == quantized
    assert "tok_emb.weight" in hessians.matrices
    for name, h in hessians.matrices.items():
        assert h.shape == (state[name].shape[1],) * 2 and torch.allclose(h, h.T, atol=1e-5)


def test_gptq_beats_rtn_on_every_matrix_of_a_trained_model(trained):
    state, hessians = trained
    _tensors, _index, report = quantize_state(state, ALL_MATRICES, hessians.matrices)
    rows = [row for row in report if row.kind == "rows"]
    assert rows and all(row.method == "gptq" for row in rows)
    for row in rows:
        assert row.hessian_error < row.rtn_hessian_error, row.name


def test_looped_layers_accumulate_every_pass():
    config = replace(tiny_run_config().model, num_layers=3, loop_first=1, loop_last=1, loop_passes=3)
    model = GPT(config).eval()
    calls = []
    model.blocks[1].attn.c_q.register_forward_hook(lambda *args: calls.append(1))
    ids = torch.randint(0, config.vocab_size, (2, 16))
    hessians = collect_hessians(model, iter([ids]), {"blocks.1.attn.c_q.weight", "blocks.0.attn.c_q.weight"}, "cpu")
    assert len(calls) == 3
    assert set(hessians.matrices) == {"blocks.1.attn.c_q.weight", "blocks.0.attn.c_q.weight"}


def test_diagonal_hessian_makes_gptq_round_to_nearest_with_or_without_act_order():
    torch.manual_seed(1)
    w = torch.randn(16, 200)
    h = torch.diag(torch.rand(200) + 0.1)  # no correlation: no error to push anywhere
    scale = sdclip_scales(w, 4, 6.0)
    for act_order in (True, False):
        codes = gptq_codes(w, h, scale, GptqSettings(bits=4, damping=0.0, act_order=act_order, block_size=32))
        assert torch.equal(codes, rtn_codes(w, scale, 4))


def test_act_order_and_blocks_both_lower_the_error_on_correlated_inputs():
    torch.manual_seed(2)
    w = torch.randn(64, 256)
    h = correlated_hessian(256)
    scale = sdclip_scales(w, 4, 6.0)
    rtn = hessian_error(w, restored(rtn_codes(w, scale, 4), scale), h)
    for act_order in (True, False):
        for block in (256, 32, 7):
            codes = gptq_codes(w, h, scale, GptqSettings(bits=4, act_order=act_order, block_size=block))
            assert hessian_error(w, restored(codes, scale), h) < 0.8 * rtn


def test_block_size_only_reorders_arithmetic():
    torch.manual_seed(3)
    w = torch.randn(8, 96, dtype=torch.float32)
    h = correlated_hessian(96)
    scale = sdclip_scales(w, 6, 12.0)
    whole = gptq_codes(w, h, scale, GptqSettings(bits=6, block_size=96))
    blocked = gptq_codes(w, h, scale, GptqSettings(bits=6, block_size=16))
    assert (whole != blocked).float().mean() < 0.02  # float rounding order only


def test_dead_columns_get_zero_weight():
    torch.manual_seed(4)
    w = torch.randn(8, 64)
    h = correlated_hessian(64)
    h[5, :] = 0
    h[:, 5] = 0
    codes = gptq_codes(w, h, sdclip_scales(w, 6, 12.0), GptqSettings(bits=6))
    assert (codes[:, 5] == 0).all()


def test_singular_hessian_without_damping_is_damped_until_it_factors():
    torch.manual_seed(5)
    w = torch.randn(8, 64)
    x = torch.randn(16, 64)  # 16 samples for 64 columns: rank 16
    codes = gptq_codes(w, x.T @ x / 16, sdclip_scales(w, 6, 12.0), GptqSettings(bits=6, damping=0.0))
    assert codes.abs().max() <= 31


# ---- LQER ----
@pytest.mark.parametrize("storage", FORMATS)
def test_lqer_lowers_the_error_of_the_tensors_it_corrects(trained, storage):
    state, hessians = trained
    config = QuantizeConfig(keep_float_max_numel=0, lqer_rank=4, lqer_top_k=2, lqer_group=16, lqer_format=storage)
    tensors, index, report = quantize_state(state, config, hessians.matrices)
    corrected = [row for row in report if row.lqer_rank]
    assert len(corrected) == 2
    for row in corrected:
        assert row.relative_error < row.relative_error_before_lqer  # what the SVD minimizes
        if storage == "asymmetric":  # the record's coarser int2 A (one scale) need not lower the H-weighted error
            assert row.hessian_error < row.hessian_error_before_lqer
        assert index[row.name]["lqer"]["format"] == storage
    rebuilt = dequantize_state(tensors, index)
    for row in corrected:  # the reported error is the error of what the artifact rebuilds
        name = row.name
        error = (rebuilt[name] - state[name]).norm() / state[name].norm()
        assert float(error) == pytest.approx(row.relative_error, rel=1e-5)


def test_gptq_lqer_scheme_stores_the_records_format():
    assert get_scheme("gptq-lqer").lqer_format == "record" and get_scheme("gptq-lqer").lqer_rank == 4


def low_rank_error(rows: int = 96, cols: int = 128, seed: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 6, generator=generator) @ torch.randn(6, cols, generator=generator) * 1e-3


def test_record_lqer_codes_scales_and_shapes_follow_the_record():
    error = low_rank_error()
    stored = lqer_correction(error, rank=4, a_bits=2, b_bits=4, group=64, storage="record")
    assert set(stored) == {"a.q", "a.scale", "b.q", "b.scale"}
    a_q, a_scale, b_q, b_scale = stored["a.q"], stored["a.scale"], stored["b.q"], stored["b.scale"]
    assert a_q.shape == (96, 4) and b_q.shape == (4, 128) and a_q.dtype == b_q.dtype == torch.int8
    assert a_scale.shape == (1,) and b_scale.shape == (4 * 128 // 64,)
    assert a_scale.dtype == b_scale.dtype == torch.float16
    assert int(a_q.min()) == -2 and int(a_q.max()) <= 1  # int2: [-2, 1]; the largest |A| maps to +-1.5
    assert int(b_q.min()) >= -8 and int(b_q.max()) <= 7 and int(b_q.abs().max()) >= 7
    u, s, vh = torch.linalg.svd(error, full_matrices=False)
    a, b = u[:, :4] * s[:4], vh[:4]  # the record's split: S on A, B = Vh (rows of unit norm)
    expected_a_scale = (a.abs().max() / 1.5).half()
    assert torch.equal(a_scale, expected_a_scale.reshape(1))
    assert torch.equal(a_q, torch.clamp(torch.round(a / expected_a_scale.float()), -2, 1).to(torch.int8))
    expected_b_scale = (b.reshape(-1, 64).abs().amax(dim=1) / 7.5).half()
    assert torch.equal(b_scale, expected_b_scale)


@pytest.mark.parametrize("storage", FORMATS)
def test_lqer_round_trip_rebuilds_the_correction_and_costs_the_formula(storage):
    rows, cols, rank, group = 96, 100, 4, 64  # 400 elements of B: the last group of 64 is padded
    error = low_rank_error(rows, cols)
    stored = lqer_correction(error, rank, 2, 4, group, storage)
    lqer = {"rank": rank, "group": group, "format": storage}
    a, b = lqer_factors("w", lqer, (rows, cols), {f"w.lqer.{key}": tensor for key, tensor in stored.items()})
    assert a.shape == (rows, rank) and b.shape == (rank, cols)
    assert float((a @ b - error).norm() / error.norm()) < 0.9
    assert sum(t.numel() * t.element_size() for t in stored.values()) == correction_bytes(rows, cols, rank, group, storage)
    if storage == "record":
        assert correction_bytes(rows, cols, rank, group, storage) == rows * rank + 2 + rank * cols + 2 * 7


def test_older_lqer_entries_without_a_format_read_as_asymmetric():
    error = low_rank_error()
    stored = lqer_correction(error, 4, 2, 4, 64, "asymmetric")
    tensors = {f"w.lqer.{key}": tensor for key, tensor in stored.items()}
    old = lqer_factors("w", {"rank": 4, "group": 64}, (96, 128), tensors)
    new = lqer_factors("w", {"rank": 4, "group": 64, "format": "asymmetric"}, (96, 128), tensors)
    assert torch.equal(old[0] @ old[1], new[0] @ new[1])


def test_lqer_report_adds_the_stored_correction_bytes(trained):
    state, hessians = trained
    for storage in FORMATS:
        config = QuantizeConfig(keep_float_max_numel=0, lqer_rank=4, lqer_top_k=1, lqer_format=storage)
        _tensors, _index, report = quantize_state(state, config, hessians.matrices)
        plain = {row.name: row for row in quantize_state(state, replace(config, lqer_rank=0), hessians.matrices)[2]}
        row = next(row for row in report if row.lqer_rank)
        rows, cols = row.shape
        assert row.stored_bytes - plain[row.name].stored_bytes == correction_bytes(rows, cols, 4, 64, storage)


# ---- the entropy predictor ----
def test_entropy_of_uniform_codes_is_log2_of_their_count():
    codes = torch.arange(-8, 8).repeat(100).to(torch.int8)
    assert code_entropy_bits(codes) == pytest.approx(4.0)


def test_gaussian_formula_predicts_sdclip_entropy():
    torch.manual_seed(6)
    w = torch.randn(512, 512)
    for bits, k in ((6, 12.0), (6, 8.0), (8, 20.0)):
        codes = rtn_codes(w, sdclip_scales(w, bits, k), bits)
        assert code_entropy_bits(codes) == pytest.approx(gaussian_bits(bits, k), rel=0.02)
    assert gaussian_bits(6, 1.0) == 6.0  # capped at the code width
    assert math.isclose(gaussian_bits(6, 12.0), math.log2(math.sqrt(2 * math.pi * math.e) * 31 / 12))


def test_scale_bytes_are_predicted_at_their_order0_entropy():
    assert predicted_value_bytes(torch.full((100,), 0.25).half()) == 0
    assert predicted_value_bytes(torch.arange(256).half()) == pytest.approx(256)  # 8 bits each
    state = {"blocks.0.mlp.fc.weight": torch.randn(1, 300).repeat(64, 1)}  # equal rows: one scale value
    tensors, _index, report = quantize_state(state, QuantizeConfig(method="rtn", keep_float_max_numel=0))
    codes = tensors["blocks.0.mlp.fc.weight.q"]
    assert report[0].predicted_bytes == pytest.approx(predicted_code_bytes(codes))


def test_prediction_is_within_1pct_of_the_packed_weights():
    torch.manual_seed(7)
    state = {f"blocks.{i}.{kind}.weight": torch.randn(256, 384) for i in range(3) for kind in ("attn.c_q", "mlp.fc")}
    state["tok_emb.weight"] = torch.randn(512, 384) * 0.02
    config = apply_overrides(QuantizeConfig(method="rtn"), ["embedding.bits=7", "embedding.clip_sigmas=14"])
    tensors, index, report = quantize_state(state, config)
    metadata = QuantizedMetadata(quant_index=index, model_config={"vocab_size": 512},
                                 lineage={"tokenizer_sha256": "0" * 64, "vocab_size": 512}, train_seq_len=16)
    packed = build_artifact(tensors, metadata)[1].bytes_weights  # the default pack (PackConfig())
    assert sum(row.predicted_bytes for row in report) == pytest.approx(packed, rel=0.01)


# ---- the report row in the manifest ----
ROW_KEYS = ["name", "group", "kind", "shape", "method", "bits", "clip", "clip_sigmas", "relative_error",
            "predicted_bits_per_weight", "gaussian_bits_per_weight", "predicted_bytes", "stored_bytes"]
HESSIAN_KEYS = ["hessian_error", "rtn_hessian_error"]
LQER_KEYS = ["lqer_rank", "relative_error_before_lqer", "hessian_error_before_lqer"]


def test_report_rows_serialize_with_the_keys_the_manifest_always_had():
    """The keys (and their order) of metrics.tensors rows as the dicts before TensorReport had them:
    optional keys only where they have a value, compressed_bytes last once measured."""
    torch.manual_seed(8)
    state = {"blocks.0.mlp.fc.weight": torch.randn(48, 64), "blocks.0.attn.c_q.weight": torch.randn(48, 64),
             "blocks.0.attn_scale": torch.randn(64)}
    hessians = {name: correlated_hessian(64, seed=i) for i, name in enumerate(state) if name.endswith("weight")}
    rtn = {row.name: row for row in quantize_state(state, replace(ALL_MATRICES, method="rtn"))[2]}
    lqer = replace(ALL_MATRICES, lqer_rank=2, lqer_top_k=1, lqer_group=16)
    gptq = {row.name: row for row in quantize_state(state, lqer, hessians)[2]}
    corrected = next(row for row in gptq.values() if row.lqer_rank)
    plain = next(row for row in gptq.values() if row.kind == "rows" and not row.lqer_rank)
    assert list(rtn["blocks.0.mlp.fc.weight"].to_dict()) == ROW_KEYS
    assert list(rtn["blocks.0.attn_scale"].to_dict()) == ROW_KEYS
    assert rtn["blocks.0.attn_scale"].to_dict()["clip"] is None  # a required key is there even when None
    assert list(plain.to_dict()) == ROW_KEYS + HESSIAN_KEYS and plain.method == "gptq"
    assert list(corrected.to_dict()) == ROW_KEYS + HESSIAN_KEYS + LQER_KEYS and corrected.method == "gptq"
    measured = replace(corrected, compressed_bytes=123)
    assert list(measured.to_dict()) == ROW_KEYS + HESSIAN_KEYS + LQER_KEYS + ["compressed_bytes"]
    row = measured.to_dict()
    assert row["lqer_rank"] == 2 and row["compressed_bytes"] == 123 and row["shape"] == [48, 64]
    assert TensorReport.from_dict(row) == measured
    rtn_row = rtn["blocks.0.mlp.fc.weight"].to_dict()
    assert rtn_row["method"] == "rtn" and rtn_row["clip_sigmas"] == 12.0 and rtn_row["stored_bytes"] == 48 * 64 + 2 * 48


def test_every_method_the_config_accepts_has_an_implementation():
    accepted = typing.get_args(typing.get_type_hints(QuantizeConfig)["method"])
    assert set(accepted) == set(METHODS)
    assert [name for name, method in METHODS.items() if method.needs_hessians] == ["gptq"]
    assert method_for("gptq", None) == "rtn" and method_for("gptq", torch.eye(2)) == "gptq"
