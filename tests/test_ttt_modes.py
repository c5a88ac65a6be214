"""TTT modes declare themselves (stages/evaluate/ttt/mode.py) and keep their settings in sections of
their own (ttt.chunk_sgd, ttt.lora, ttt.phased); the flat keys of before are refused naming the new key."""

from __future__ import annotations

from dataclasses import replace
from functools import reduce
from typing import get_args

import pytest

from stages.artifact.bundle import load_bundle
from stages.artifact.schema import TTT_ENTRY
from stages.artifact.verify import installed_sources
from stages.config import apply_overrides, from_dict, to_dict, valid_keys
from stages.errors import GolfError
from stages.evaluate.config import EvalConfig
from stages.evaluate.stage import (OTHER_PHASE_NOTE, _stream_bpb_without_adaptation, _windows_kind, memory_sizing,
                                   phase_note)
import stages.evaluate.ttt.mode as registry
from stages.evaluate.ttt.config import LoRAConfig, ModeName, TTTConfig
from stages.evaluate.ttt.mode import REGISTRY, TTTMode, mode_named, register

SECTION_KEYS = [key for key in valid_keys(TTTConfig) if key != "mode"]


# ---- the registry ----


def test_the_registry_holds_every_mode_the_config_accepts_in_its_order():
    assert list(REGISTRY) == list(get_args(ModeName))
    assert all(mode.name == name for name, mode in REGISTRY.items())


@pytest.mark.parametrize("name", list(REGISTRY))
def test_each_mode_declares_what_the_stage_needs(name):
    mode = REGISTRY[name]
    assert mode.help.startswith(f"'{name}'")
    assert (mode.score is None) == (mode.warm_up is None) == (not mode.adapts) == (name == "none")
    assert (mode.fit_batch is None) == (mode.with_batch_docs is None)
    config = TTTConfig(mode=name)
    for key in mode.memory_keys:  # each names a setting, as --set writes it
        assert key in SECTION_KEYS and reduce(getattr, key.split("."), config) is not None
    if mode.with_batch_docs is not None:
        assert mode.with_batch_docs(config, 3) == replace(config, lora=replace(config.lora, batch_docs=3))


@pytest.mark.parametrize("name", ["lora", "phased"])
def test_a_document_mode_compares_with_lora_at_learning_rate_0_and_no_phase(name):
    mode = REGISTRY[name]
    config = TTTConfig(mode=name, lora=LoRAConfig(lr=0.01, rank=8))
    assert mode.scores_documents and _windows_kind(name, 32, 8) == "document chunks"
    assert mode.without_adaptation(config) == replace(config, mode="lora", lora=replace(config.lora, lr=0.0))


def test_a_stream_mode_compares_with_plain_scoring():
    assert REGISTRY["chunk-sgd"].without_adaptation is None and not REGISTRY["chunk-sgd"].scores_documents
    assert _windows_kind("chunk-sgd", 32, 8) == "sliding" and _windows_kind("none", 32, 32) == "non-overlapping"


def test_a_mode_registered_by_its_module_alone_reaches_the_stage(monkeypatch):
    """What a new mode declares is all the stage reads: its windows, its comparison, its memory
    settings and the notes of its own ledger buckets."""
    monkeypatch.setattr(registry, "REGISTRY", dict(REGISTRY))
    register(TTTMode(name="probe", help="'probe' ...", score=lambda *args: None, warm_up=lambda *args: None,
                     scores_documents=True, memory_keys=("lora.rank",), notes={"probe_sweep": "why it counts"}))
    monkeypatch.setattr("stages.evaluate.stage.REGISTRY", registry.REGISTRY)
    assert mode_named("probe", adapting=True).name == "probe"
    assert _windows_kind("probe", 32, 8) == "document chunks"
    assert _stream_bpb_without_adaptation("probe", 2.0, {"val_bpb_no_ttt": 2.1}) is None
    assert phase_note("probe_sweep_2") == "why it counts" and phase_note("elsewhere") == OTHER_PHASE_NOTE
    for cls in (EvalConfig, TTTConfig):  # 'probe' is no ModeName of this config
        monkeypatch.setattr(cls, "__post_init__", lambda self: None)
    config = EvalConfig(ttt=TTTConfig(mode="probe"))
    assert memory_sizing(config) == "ttt.lora.rank=96"
    with pytest.raises(ValueError, match="registered twice"):
        register(TTTMode(name="probe", help=""))


def test_a_mode_the_code_does_not_hold_is_one_line():
    with pytest.raises(GolfError, match=r"^ttt\.mode: 'none' is not built into this code \(built: chunk-sgd, lora, "
                                        r"phased\)$"):
        mode_named("none", adapting=True)


def test_the_shipped_code_reads_its_own_registry():
    """Eval imports the TTT code from the artifact's bytes: its registry is its own, not golf's."""
    shipped = load_bundle(installed_sources(), TTT_ENTRY)
    mode = shipped.mode_named("phased", adapting=True)
    assert mode.name == "phased" and mode is not REGISTRY["phased"]
    assert mode.score.__module__.endswith("evaluate.ttt.phased") and not mode.score.__module__.startswith("stages.")


# ---- the sections, and the flat keys they replaced ----


def test_every_old_flat_key_names_a_setting_and_every_setting_has_one():
    assert sorted(TTTConfig.RENAMED.values()) == sorted(SECTION_KEYS)


@pytest.mark.parametrize("old", list(TTTConfig.RENAMED))
def test_an_old_flat_key_is_refused_naming_its_new_key(old):
    new = TTTConfig.RENAMED[old]
    with pytest.raises(GolfError) as error:
        apply_overrides(EvalConfig(), [f"ttt.{old}=1"])
    assert str(error.value) == f"config key 'ttt.{old}' was renamed: use 'ttt.{new}'"


def test_an_old_manifest_config_is_refused_in_one_line_naming_the_new_keys():
    config = to_dict(EvalConfig(ttt=TTTConfig(mode="phased")))
    sections = {key: value for key, value in config["ttt"].items() if key != "mode"}
    flat = {old: sections[new.split(".")[0]][new.split(".")[1]] for old, new in TTTConfig.RENAMED.items()}
    with pytest.raises(GolfError) as error:
        from_dict(EvalConfig, {**config, "ttt": {"mode": "phased", **flat}}, "eval/manifest.json: config")
    message = str(error.value)
    assert "\n" not in message and message.startswith("eval/manifest.json: config: TTTConfig: renamed field(s): ")
    assert all(f"ttt.{old} is now ttt.{new}" in message for old, new in TTTConfig.RENAMED.items())


def test_the_nested_config_round_trips_through_its_json_form():
    config = apply_overrides(EvalConfig(), ["ttt.mode=lora", "ttt.lora.targets=q,v", "ttt.chunk_sgd.lr=0.01",
                                            "ttt.phased.docs=7"])
    assert from_dict(EvalConfig, to_dict(config)) == config
    assert TTTConfig.from_json(to_dict(config.ttt)) == config.ttt
    assert TTTConfig.from_json({"mode": "lora", "lora": {"rank": 4}}) == TTTConfig(mode="lora", lora=LoRAConfig(rank=4))


def test_a_value_outside_a_section_range_names_the_dotted_key():
    with pytest.raises(GolfError, match=r"^ttt\.lora\.rank: must be >= 1, got 0$"):
        apply_overrides(EvalConfig(), ["ttt.lora.rank=0"])
    with pytest.raises(GolfError, match=r"^lora\.rank: must be >= 1, got 0$"):
        TTTConfig.from_json({"mode": "lora", "lora": {"rank": 0}})
