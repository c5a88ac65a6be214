import dataclasses

import pytest

from stages.config import apply_overrides, field_docs, from_dict, to_dict
from stages.errors import GolfError
from stages.evaluate.stage import EvalConfig
from stages.model.config import ModelConfig
from stages.pack.stage import PackConfig
from stages.quantize.config import CalibrationConfig, GroupQuant, QuantizeConfig
from stages.tokenize.stage import TokenizeConfig
from stages.train.config import RunConfig, TrainConfig
from stages.train.presets import PRESETS

CONFIGS = [ModelConfig, TrainConfig, RunConfig, TokenizeConfig, QuantizeConfig, GroupQuant, CalibrationConfig,
           PackConfig, EvalConfig]


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
    ("model.num_heads=7", "not divisible"),
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
