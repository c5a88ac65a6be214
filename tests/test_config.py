import dataclasses

import pytest

from stages.config import apply_overrides, field_docs, from_dict, to_dict
from stages.errors import GolfError
from stages.evaluate.config import EvalConfig
from stages.evaluate.ttt.config import ChunkSGDConfig, LoRAConfig, PhasedConfig, TTTConfig
from stages.model.config import ModelConfig
from stages.pack.config import PackConfig
from stages.quantize.config import CalibrationConfig, GroupQuant, QuantizeConfig
from stages.tokenize.config import TokenizeConfig
from stages.train.config import RunConfig, TrainConfig
from stages.train.presets import PRESETS

CONFIGS = [ModelConfig, TrainConfig, RunConfig, TokenizeConfig, QuantizeConfig, GroupQuant, CalibrationConfig,
           PackConfig, EvalConfig, TTTConfig, ChunkSGDConfig, LoRAConfig, PhasedConfig]


@pytest.mark.parametrize("cls", CONFIGS)
def test_every_field_has_a_docstring(cls):
    docs = field_docs(cls)
    missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
    assert not missing


def test_overrides_are_typed_and_nested():
    config = apply_overrides(RunConfig(), ["model.num_layers=6", "train.grad_clip=0.3", "model.tie_embeddings=false"])
    assert config.model.num_layers == 6 and config.train.grad_clip == 0.3 and config.model.tie_embeddings is False
    assert RunConfig().model.num_layers == 9  # the original is untouched


@pytest.mark.parametrize("override, message", [
    ("model.num_layer=6", "unknown config key 'model.num_layer'"),
    ("train.seq_len=abc", "expected int"),
    ("model.num_heads=7", "model.num_heads: must divide model_dim 512, got 7"),
    ("model=3", "is a group"),
    ("nonsense", "key=value"),
])
def test_bad_overrides_are_one_line_errors(override, message):
    with pytest.raises(GolfError, match=message):
        apply_overrides(RunConfig(), [override])


def test_optional_fields_take_a_value_or_none():
    assert apply_overrides(EvalConfig(), ["stride=5"]).stride == 5
    assert apply_overrides(EvalConfig(stride=5), ["stride=none"]).stride is None
    assert apply_overrides(QuantizeConfig(), ["calibration.seq_len=128"]).calibration.seq_len == 128


def test_round_trip_through_dict():
    config = apply_overrides(RunConfig(), ["model.model_dim=256"])
    assert from_dict(RunConfig, to_dict(config)) == config
    with pytest.raises(GolfError, match="unknown field"):
        from_dict(ModelConfig, {"hidden": 3})


def test_presets_state_their_source():
    assert {"tiny", "baseline"} <= set(PRESETS)
    assert all(p.source for p in PRESETS.values())


def test_overrides_are_checked_together_whatever_their_order():
    # seq_len first would leave batch_tokens 524,288 not a multiple of 1,000 if checked one by one.
    config = apply_overrides(RunConfig(), ["train.seq_len=1000", "train.batch_tokens=8000"])
    assert (config.train.seq_len, config.train.batch_tokens) == (1000, 8000)
    assert apply_overrides(RunConfig(), ["model.num_layers=3", "model.num_layers=4"]).model.num_layers == 4


def test_from_dict_names_the_dotted_field_and_the_source():
    data = to_dict(RunConfig())
    data["model"]["num_heads"] = 0
    with pytest.raises(GolfError, match=r"^model\.num_heads: must be >= 1, got 0$"):
        from_dict(RunConfig, data)
    with pytest.raises(GolfError, match=r"^ckpt/config\.json: model\.num_heads: must be >= 1, got 0$"):
        from_dict(RunConfig, data, "ckpt/config.json")


def test_no_wall_clock_cap_is_none_and_zero_is_refused():
    config = apply_overrides(RunConfig(), ["train.max_seconds=none", "train.schedule=steps"])
    assert config.train.max_seconds is None
    with pytest.raises(GolfError, match=r"^train\.max_seconds: must be > 0, got 0\.0$"):
        apply_overrides(RunConfig(), ["train.max_seconds=0"])
    with pytest.raises(GolfError, match=r"^train\.schedule: 'time' needs a wall-clock budget"):
        apply_overrides(RunConfig(), ["train.max_seconds=none", "train.schedule=time"])
    with pytest.raises(GolfError, match=r"^train\.gptq_reserve_seconds: must be below max_seconds 4"):
        apply_overrides(RunConfig(), ["train.max_seconds=4", "train.gptq_reserve_seconds=4"])
    # An empty value (a typo, an unset shell variable) used to read as none and lift the cap.
    with pytest.raises(GolfError, match=r"^train\.max_seconds: empty value; write train\.max_seconds=none to unset it$"):
        apply_overrides(RunConfig(), ["train.max_seconds="])


@pytest.mark.parametrize("make, message", [
    (lambda: EvalConfig(stride=100, seq_len=64), "stride: must be at most seq_len 64, got 100"),
    (lambda: EvalConfig(seq_len=64, eval_tokens=10), "eval_tokens: must be 0 (all) or at least seq_len 64, got 10"),
    (lambda: QuantizeConfig(eval_seq_len=64, eval_stride=65), "eval_stride: must be at most eval_seq_len 64"),
    (lambda: TrainConfig(seq_len=64, batch_tokens=1024, val_tokens=10), "val_tokens: must be 0 (all) or at least"),
    (lambda: TrainConfig(qat_bits=1), "qat_bits: must be 0 (off) or in [2, 8], got 1"),
    (lambda: GroupQuant(clip_quantile=0.5), "clip_quantile: must be in (0.5, 1], got 0.5"),
    (lambda: ModelConfig(model_dim=64, num_heads=4, bos_id=5000), "bos_id: must be below vocab_size 1024, got 5000"),
    (lambda: ModelConfig(value_embed_layers=(1, -1)), "value_embed_layers: each item must be >= 0, got -1"),
    (lambda: ModelConfig(model_dim="512"), "model_dim: must be a number, got '512'"),
    (lambda: PackConfig(codec="zlib", level=11), "level: must be at most 9 for zlib, got 11"),
    (lambda: TokenizeConfig(vocab_size=100), "vocab_size: must be in [260, 65536], got 100"),
])
def test_cross_field_rules_and_range_messages(make, message):
    with pytest.raises(GolfError) as error:
        make()
    assert str(error.value).startswith(message)
