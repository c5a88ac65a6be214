"""The train stage end to end: resume, torchrun on 2 CPU processes, and the late switches."""

import json

import pytest
import torch
from safetensors.torch import load_file

from stages.config import apply_overrides
from stages.train.presets import get_preset
from stages.train.stage import run_train

from .conftest import TINY_OVERRIDES, golf, sets, tiny_run_config


def losses(train_dir):
    return [entry["loss"] for entry in json.loads((train_dir / "curves.json").read_text())["train"]]


def test_resume_continues_the_exact_loss_sequence(data_dir, tmp_path):
    config = apply_overrides(tiny_run_config(), ["train.max_steps=6", "train.checkpoint_every=3", "train.schedule=steps"])
    full_manifest = run_train(config, data_dir, tmp_path / "full")
    checkpoint = tmp_path / full_manifest.metrics["checkpoints"] / "step_000003"
    assert checkpoint.parent.name == full_manifest.run_id  # the run's own checkpoints, keyed by its id
    assert (checkpoint / "tensors.safetensors").is_file() and (checkpoint / "state.json").is_file()
    resumed_manifest = run_train(config, data_dir, tmp_path / "resumed", resume=checkpoint)
    assert losses(tmp_path / "resumed") == losses(tmp_path / "full")[3:]
    full, resumed = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "resumed" / "model.safetensors")
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    # The resumed ledger is the sum of its parts: the 3 steps before the checkpoint plus the 3 after.
    state = json.loads((checkpoint / "state.json").read_text())
    before = state["ledger"]["train_loop"]["seconds"]
    resumed_loop = resumed_manifest.ledger["train_loop"]["seconds"]
    assert resumed_loop > before and abs(resumed_loop - before - resumed_manifest.metrics["train_seconds"] + state["elapsed"]) < 0.05
    assert resumed_manifest.metrics["train_seconds"] > state["elapsed"]
    # The checkpoint is an input, pinned by hashes.
    record = resumed_manifest.inputs["resume"]
    assert record.stage == "checkpoint" and set(record.files) == {"tensors", "state"}
    assert resumed_manifest.metrics["resumed_from"]["step"] == 3


@pytest.mark.parametrize("loader", [[], ["train.loader=doc_packed", "model.doc_mask=true", "train.pack_tokens=256"]],
                         ids=["contiguous", "doc_packed"])
def test_two_gloo_processes_match_one_process_with_accumulation(data_dir, tmp_path, loader):
    common = ["--data", data_dir, *sets([*TINY_OVERRIDES, *loader]), "--set", "train.max_steps=4"]
    two = golf("train", *common, "--nproc", "2", "--out", tmp_path / "two", cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-2000:]
    one = golf("train", *common, "--set", "train.grad_accum=2", "--out", tmp_path / "one", cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-2000:]
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["metrics"]["world_size"] == 2
    a, b = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    one_losses, two_losses = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one_losses) == len(two_losses) == 4
    assert all(abs(x - y) < 1e-5 for x, y in zip(one_losses, two_losses))


def test_late_switches_fire_and_averages_are_exported(data_dir, tmp_path):
    config = apply_overrides(get_preset("pr401-cpu").config, [
        f"model.vocab_size={tiny_run_config().model.vocab_size}", "train.max_steps=6", "train.val_tokens=2048",
        "train.qat_lr_scale=0.7", "train.swa_lr_scale=0.7", "train.swa_every=1", "train.warmdown_frac=1.0",
    ])
    metrics = run_train(config, data_dir, tmp_path / "pr401").metrics
    assert metrics["qat_on_step"] is not None and metrics["exported_weights"].startswith("tight SWA")
    config = apply_overrides(get_preset("top-cpu").config, [
        f"model.vocab_size={tiny_run_config().model.vocab_size}", "train.max_steps=6", "train.val_tokens=2048",
        "model.loop_start_frac=0.5",
    ])
    metrics = run_train(config, data_dir, tmp_path / "top").metrics
    assert metrics["loop_on_step"] == 3 and metrics["exported_weights"].startswith("EMA")


def test_compile_warmup_restores_the_initial_state(data_dir, tmp_path):
    plain = apply_overrides(tiny_run_config(), ["train.max_steps=4", "train.schedule=steps"])
    warmed = apply_overrides(plain, ["train.warmup_steps=3"])
    run_train(plain, data_dir, tmp_path / "plain")
    manifest = run_train(warmed, data_dir, tmp_path / "warmed")
    assert losses(tmp_path / "warmed") == losses(tmp_path / "plain")
    assert manifest.ledger["compile_warmup"]["counts_toward"] is None
    assert (tmp_path / "warmed" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_flops_count_every_pass_of_a_looped_layer():
    from stages.model.gpt import GPT, count_parameters
    from stages.train.stage import flops_per_token

    cfg = get_preset("top-cpu").config.model
    model = GPT(cfg)
    model.looping = False
    plain = flops_per_token(model, 256)
    assert plain == 6 * count_parameters(model) + 12 * cfg.num_layers * cfg.model_dim * 256
    model.looping = True
    extra_passes = (cfg.loop_passes - 1) * (cfg.loop_last - cfg.loop_first + 1)
    block = count_parameters(model.blocks[cfg.loop_first])
    assert flops_per_token(model, 256) - plain == 6 * extra_passes * block + 12 * extra_passes * cfg.model_dim * 256


def test_without_a_wall_clock_cap_only_steps_end_training():
    from stages.model.gpt import GPT
    from stages.train.loop import RandomTokens, Trainer

    def trainer(*overrides):
        config = apply_overrides(tiny_run_config(), ["train.max_steps=100", "train.schedule=auto", *overrides])
        made = Trainer(GPT(config.model), config, RandomTokens(config.model.vocab_size, 0), torch.device("cpu"))
        made.step, made.elapsed = 50, 1e9
        return made

    uncapped = trainer("train.max_seconds=none")
    assert uncapped.done() is None and uncapped.progress() == 0.5
    capped = trainer("train.max_seconds=10", "train.gptq_reserve_seconds=4")
    capped.elapsed = 6.0
    assert capped.done() == "max_seconds" and capped.progress() == 1.0
