"""The train stage end to end: resume, torchrun on 2 CPU processes, the late switches, and a run
that does not depend on the clock (fake clocks: no test times anything)."""

import io
import itertools
import json
import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from stages.config import apply_overrides
from stages.contract.ledger import TimeLedger, budget_report
from stages.progress import Reporter
from stages.train import stage as train_stage
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


# ---- the clock: run_all's preset ends by steps; a time cap says so; checkpoints are not training ----


def slow_clock(seconds_per_read: float = 1000.0):
    """A clock on which every step takes ``seconds_per_read`` (a machine under any load)."""
    reads = itertools.count()
    return lambda: next(reads) * seconds_per_read


def test_the_tiny_preset_ends_by_steps_with_the_same_result_on_a_slow_clock(data_dir, tmp_path, monkeypatch):
    """run_all.sh's preset: a loaded machine used to hit the 300 s cap at step 100 of 500 and score
    worse. Now it runs every step with the same learning rates; the ledger still counts the seconds
    and judges them."""
    config = apply_overrides(tiny_run_config(), ["train.max_steps=5"])
    fast = run_train(config, data_dir, tmp_path / "fast")
    monkeypatch.setattr(train_stage, "clock", slow_clock())
    slow = run_train(config, data_dir, tmp_path / "slow")
    assert fast.metrics["steps"] == slow.metrics["steps"] == 5 and slow.metrics["stop_reason"] == "max_steps"
    assert losses(tmp_path / "fast") == losses(tmp_path / "slow")
    a, b = load_file(tmp_path / "fast" / "model.safetensors"), load_file(tmp_path / "slow" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert slow.metrics["val_bpb"] == fast.metrics["val_bpb"]
    assert slow.metrics["train_seconds"] == 5000.0  # the slow clock was the one timing the steps
    verdict = budget_report([TimeLedger.from_dict(slow.ledger)])["train"]
    assert verdict["seconds"] == 5000.0 and verdict["verdict"] == "FAIL"


def test_a_run_stopped_by_its_time_cap_says_so_in_one_plain_line(data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(train_stage, "clock", slow_clock())
    config = apply_overrides(tiny_run_config(), ["train.max_steps=6", "train.max_seconds=1500"])
    reporter = Reporter(stream=io.StringIO())
    manifest = run_train(config, data_dir, tmp_path / "capped", reporter=reporter)
    assert manifest.metrics["stop_reason"] == "max_seconds" and manifest.metrics["steps"] == 2
    stops = [line for line in reporter.lines if line.startswith("stopped:")]
    assert stops == ["stopped:train reason:time_cap step:2 of:6 train_seconds:2000 max_seconds:1500"]
    uncapped = Reporter(stream=io.StringIO())
    run_train(apply_overrides(config, ["train.max_seconds=none"]), data_dir, tmp_path / "uncapped", reporter=uncapped)
    assert not [line for line in uncapped.lines if line.startswith("stopped:")]


def checkpoint_rank(rank: int, store: str, data_dir: str, out: str, now, rank1_reads) -> None:
    """One of 2 gloo ranks training with a checkpoint whose write (rank 0's) takes 1000 s of a
    shared fake clock. The write waits (a few seconds at most) until rank 1 has started timing its
    next step, so a rank that does not wait for the write before that step counts it."""
    torch.set_num_threads(1)
    os.environ.update(WORLD_SIZE="2", RANK=str(rank))
    join = train_stage.init_distributed

    def init_distributed(device):
        dist.init_process_group("gloo", store=dist.FileStore(store, 2), rank=rank, world_size=2)
        return join(device)

    def clock() -> float:
        if rank == 1:
            with rank1_reads.get_lock():
                rank1_reads.value += 1
        return now.value

    save, slowed = train_stage.save_checkpoint, []

    def slow_save(*args, **kwargs):
        if not slowed:
            slowed.append(True)
            seen, deadline = rank1_reads.value, time.monotonic() + 3.0
            while rank1_reads.value == seen and time.monotonic() < deadline:
                time.sleep(0.01)
            with now.get_lock():
                now.value += 1000.0
        return save(*args, **kwargs)

    train_stage.init_distributed, train_stage.clock, train_stage.save_checkpoint = init_distributed, clock, slow_save
    config = apply_overrides(tiny_run_config(), ["train.max_steps=4", "train.checkpoint_every=2"])
    run_train(config, data_dir, out)


def test_rank_0s_checkpoint_write_is_not_training_time_on_any_rank(data_dir, tmp_path):
    """The other ranks used to wait for rank 0's write inside their next timed step (its gradient
    all-reduce), and the clock's all-reduce made that every rank's training time."""
    spawn = mp.get_context("spawn")
    now, rank1_reads = spawn.Value("d", 0.0), spawn.Value("i", 0)
    mp.spawn(checkpoint_rank, args=(str(tmp_path / "store"), str(data_dir), str(tmp_path / "two"), now, rank1_reads),
             nprocs=2)
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert now.value == 1000.0  # the slow write happened
    assert manifest["metrics"]["world_size"] == 2 and manifest["metrics"]["steps"] == 4
    assert manifest["metrics"]["train_seconds"] == 0.0  # steps take no time on the fake clock
    assert manifest["ledger"]["train_loop"]["seconds"] == 0.0
