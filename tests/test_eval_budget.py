"""The evaluation budget, its ledger, and the TTT warm-up that runs before the timed loop.

Budget verdicts are checked on a fake clock (no test depends on how fast the machine is) and,
at the stage, with a budget of one microsecond that any real run exceeds at its first check.
The warm-up tests run for every mode in the registry that adapts (ttt/mode.py): whatever a mode does before the timed
loop, it sees no val token, leaves the weights bitwise as they were, and no backward pass or
optimizer step on val data happens outside the adaptation phases.
"""

from __future__ import annotations

import copy
import io
import itertools
import json
import re
import sys
import types
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.optim.optimizer import register_optimizer_step_pre_hook

from stages.config import apply_overrides
from stages.contract.ledger import TimeLedger
from stages.errors import GolfError
from stages.evaluate.budget import UNTIMED_BUCKET, EvalBudget
from stages.scoring.setup import ScoringSetup
from stages.scoring.receipts import TokenReceipts
from stages.scoring.windows import usable_targets
from stages.evaluate.stage import OTHER_PHASE_NOTE, PHASE_NOTES, _scored_pass, run_eval, shipped_errors
from stages.evaluate.ttt import score_with_ttt, warm_up_ttt
from stages.evaluate.ttt.config import TTTConfig
from stages.evaluate.ttt import mode as mode_module
from stages.evaluate.ttt.mode import REGISTRY
from stages.progress import Reporter

from .conftest import golf
from .test_ttt import (BATCH_WINDOWS, CHUNK, FAST_TTT, SEQ, STRIDE, byte_table, eval_config, merged, synthetic_docs,
                       tiny_gpt)

MICROSECOND_BUDGET = "budget_s=0.000001"  # past it at the first check, however fast the machine
# Small settings of every mode (each reads its own fields), sized for tiny_gpt and synthetic_docs.
SMALL_TTT = merged(FAST_TTT, lora={"chunk": 8, "batch_docs": 4, "rank": 4},
                   phased={"docs": 6, "phases": 2, "global_chunk_tokens": CHUNK, "global_batch_seqs": 2})
STEPS_PER_CHUNK = FAST_TTT["chunk_sgd"]["epochs"] * -(-(CHUNK // SEQ) // FAST_TTT["chunk_sgd"]["batch_seqs"])
ADAPTING = [mode.name for mode in REGISTRY.values() if mode.adapts]


def ticking_clock(step: float = 1.0):
    """A clock that reads 0, step, 2 * step, ... on successive calls."""
    ticks = itertools.count()
    return lambda: next(ticks) * step


# ---- the budget's verdicts (fake clock) ----


def test_past_the_budget_adaptation_stops_and_every_target_is_still_scored():
    stream = synthetic_docs()
    receipts = TokenReceipts()
    # start 0; checks read 1, 2 (within 2.5), then 3: the third check stops adaptation.
    budget = EvalBudget(2.5, "stop-adapting", receipts=receipts, clock=ticking_clock())
    score_with_ttt(tiny_gpt(), stream, byte_table(), ScoringSetup(SEQ, STRIDE, BATCH_WINDOWS), config=FAST_TTT,
                   receipts=receipts, may_adapt=budget.may_adapt)
    saved = receipts.tensors()
    targets = usable_targets(len(stream), SEQ)
    assert np.array_equal(np.sort(saved["position"].numpy()), np.arange(1, targets + 1))
    metrics = budget.finish()
    assert metrics["adaptation_stopped_at_s"] == 3.0 and metrics["adaptation_stopped_at_check"] == 3
    assert metrics["within_budget"] is False and metrics["budgeted_s"] == 4.0
    # Chunks 0 and 1 adapted; from chunk 2 on, no update, though the stage kept asking.
    assert len(saved["update_after_order"]) == 2 * STEPS_PER_CHUNK
    assert (saved["update_after_order"] < metrics["adaptation_stopped_after_order"]).all()
    assert budget.checks == -(-targets // CHUNK) - 1  # asked after every chunk but the last


def test_within_the_budget_nothing_stops():
    budget = EvalBudget(100.0, "stop-adapting", clock=ticking_clock())
    score_with_ttt(tiny_gpt(), synthetic_docs(), byte_table(), ScoringSetup(SEQ, STRIDE, BATCH_WINDOWS),
                   config=FAST_TTT, may_adapt=budget.may_adapt)
    metrics = budget.finish()
    assert metrics["within_budget"] is True and metrics["adaptation_stopped_at_s"] is None


def test_a_stop_agreed_from_another_rank_is_recorded_here_too():
    """Where ranks update together, one rank's budget can stop the update while this rank's own
    clock still allows it (``TTTPass.may_adapt_together``): this rank's metrics must say so too
    (rank 0 writes them), and it adapts no more."""
    budget = EvalBudget(100.0, "stop-adapting", clock=ticking_clock())
    assert budget.may_adapt() is True
    assert budget.may_adapt(stopped_elsewhere=True) is False
    assert budget.may_adapt() is False
    metrics = budget.finish()
    assert metrics["adaptation_stopped_at_check"] == 1 and metrics["adaptation_stopped_at_s"] is not None
    assert metrics["within_budget"] is True  # this rank's own clock stayed within it


def test_fail_raises_one_line_at_the_first_check_past_the_budget():
    budget = EvalBudget(2.5, "fail", clock=ticking_clock())
    with pytest.raises(GolfError, match=r"over the eval budget: 3 s .* --eval-budget-s 2.5 at check 3") as raised:
        score_with_ttt(tiny_gpt(), synthetic_docs(), byte_table(), ScoringSetup(SEQ, STRIDE, BATCH_WINDOWS),
                       config=FAST_TTT, may_adapt=budget.may_adapt)
    assert "\n" not in str(raised.value) and budget.checks == 3


def test_fail_also_judges_the_total_without_adaptation():
    budget = EvalBudget(0.5, "fail", clock=ticking_clock())
    with pytest.raises(GolfError, match="at the end of scoring"):
        budget.finish()


def test_budget_is_the_clock_less_the_diagnostic_and_the_ledger_adds_up_to_it():
    ledger = TimeLedger()
    budget = EvalBudget(100.0, "stop-adapting", ledger, clock=ticking_clock(10.0))
    ledger.add("score_no_ttt", 5.0, None, "diagnostic")
    ledger.add("score", 1.0, "eval", "scoring")
    metrics = budget.finish()  # the clock reads 10: 10 s less the 5 s diagnostic
    assert metrics["budgeted_s"] == 5.0
    assert ledger.buckets[UNTIMED_BUCKET].seconds == 4.0 and ledger.counted("eval") == 5.0


# ---- the ledger takes any phase the shipped code names ----


class PhasedRuntime:
    """A runtime whose TTT scorer times the phases a phased mode would."""

    @staticmethod
    def score_with_ttt(*, config, receipts, phase, may_adapt, on_fact):
        for name in ("score", "global_sgd_1", "global_sgd_2", "score", "rescue"):
            with phase(name):
                pass
        return "sums"


def test_ledger_takes_any_phase_name_with_the_note_of_its_prefix():
    ledger = TimeLedger()
    sums = _scored_pass(lambda label, score_stream: score_stream(), None, PhasedRuntime, TTTConfig(mode="chunk-sgd"),
                        ledger, None, {}, lambda: True)
    assert sums == "sums"
    assert list(ledger.buckets) == ["score", "adapt", "global_sgd_1", "global_sgd_2", "rescue"]
    assert all(bucket.counts_toward == "eval" for bucket in ledger.buckets.values())
    assert ledger.buckets["global_sgd_2"].note == REGISTRY["phased"].notes["global_sgd"]
    assert ledger.buckets["score"].note == PHASE_NOTES["score"]
    assert ledger.buckets["rescue"].note == OTHER_PHASE_NOTE


# ---- the stage: a budget of one microsecond ----


def budgeted_config(*settings: str, **ttt):
    return apply_overrides(eval_config(**ttt), [MICROSECOND_BUDGET, *settings])


def test_stage_past_the_budget_scores_everything_with_no_update(pack_dir, tmp_path):
    config = budgeted_config("compare_no_ttt=true", mode="chunk-sgd", chunk_sgd={"chunk_tokens": 1024})
    manifest = run_eval(config, pack_dir, None, tmp_path / "eval", token_nll=tmp_path / "nll.safetensors")
    metrics, ledger = manifest.metrics, manifest.ledger
    receipts = load_file(tmp_path / "nll.safetensors")
    assert np.array_equal(np.sort(receipts["position"].numpy()), np.arange(1, metrics["tokens_scored"] + 1))
    assert len(receipts["update_after_order"]) == 0
    # No update at all: the pass scored exactly what plain scoring does.
    assert metrics["val_bpb"] == metrics["val_bpb_no_ttt"]
    first_chunk_orders = receipts["order"][receipts["position"] <= 1024]
    assert metrics["adaptation_stopped_after_order"] == int(first_chunk_orders.max())
    assert metrics["adaptation_stopped_at_check"] == 1 and metrics["adaptation_stopped_at_s"] > 1e-6
    assert metrics["within_budget"] is False and metrics["budget_s"] == 1e-6
    assert metrics["over_budget"] == "stop-adapting" and manifest.status == "ok"
    assert list(ledger)[:4] == ["load_artifact", "load_val", "warmup", "score_no_ttt"]
    counted = sum(b["seconds"] for b in ledger.values() if b["counts_toward"] == "eval")
    assert counted == pytest.approx(metrics["budgeted_s"], abs=1e-9)
    assert ledger["adapt"]["seconds"] == 0.0 and ledger["score_no_ttt"]["counts_toward"] is None


def test_stage_within_budget_records_it_and_plain_scoring_has_no_warm_up(pack_dir, tmp_path):
    metrics = run_eval(eval_config(), pack_dir, None, tmp_path / "plain").metrics
    assert metrics["within_budget"] is True and metrics["budget_s"] == 600.0
    assert metrics["adaptation_stopped_at_s"] is None
    over = run_eval(budgeted_config(), pack_dir, None, tmp_path / "over")
    assert over.metrics["within_budget"] is False and over.metrics["adaptation_stopped_at_s"] is None
    assert "warmup" not in over.ledger and over.status == "ok"


def test_stage_times_the_warm_up_apart_and_can_switch_it_off(pack_dir, tmp_path):
    config = apply_overrides(eval_config(mode="chunk-sgd", chunk_sgd={"chunk_tokens": 1024}), ["warmup=false"])
    assert "warmup" not in run_eval(config, pack_dir, None, tmp_path / "eval").ledger


@pytest.mark.parametrize("ttt", ["chunk-sgd", "none"])
def test_cli_over_budget_fail_is_one_line_and_keeps_the_old_folder(pack_dir, tmp_path, ttt):
    out = tmp_path / "eval"
    run_eval(eval_config(), pack_dir, None, out)
    before = (out / "manifest.json").read_bytes()
    result = golf("eval", pack_dir, "--ttt", ttt, "--stride", "16", "--set", "eval_tokens=4096",
                  "--set", "ttt.chunk_sgd.chunk_tokens=1024", "--eval-budget-s", "0.000001", "--over-budget", "fail",
                  "--out", out, "--force")
    assert result.returncode != 0
    assert result.stderr.startswith("error: over the eval budget") and len(result.stderr.strip().splitlines()) == 1
    where = "check 1 before an adaptation step" if ttt == "chunk-sgd" else "the end of scoring"
    assert where in result.stderr and "nothing was written" in result.stderr
    assert (out / "manifest.json").read_bytes() == before  # the forced replacement never happened
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"]  # no temporary folder left


def test_cli_a_setting_the_shipped_code_refuses_is_one_line(pack_dir, tmp_path):
    result = golf("eval", pack_dir, "--ttt", "chunk-sgd", "--set", "eval_tokens=4096",
                  "--set", "ttt.chunk_sgd.freeze_blocks=99", "--out", tmp_path / "eval")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ttt.chunk_sgd.freeze_blocks: must be at most the model's 2 blocks, got 99")
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "eval").exists()


def test_the_shipped_copy_of_golf_error_becomes_golfs(monkeypatch):
    """The artifact's code is imported under a package of its own, with its own GolfError class."""
    shipped = types.ModuleType("golf_artifact_probe.errors")
    shipped.GolfError = type("GolfError", (Exception,), {})
    monkeypatch.setitem(sys.modules, shipped.__name__, shipped)
    runtime = types.ModuleType("golf_artifact_probe.runtime")
    with pytest.raises(GolfError, match="^ttt.mode: 'phased' is not built") as raised:
        with shipped_errors(runtime):
            raise shipped.GolfError("ttt.mode: 'phased' is not built into this code")
    assert raised.type is GolfError
    with pytest.raises(KeyError), shipped_errors(runtime):  # anything else passes through
        raise KeyError("x")


def test_cli_prints_the_ledger_and_the_budget(pack_dir, tmp_path):
    result = golf("eval", pack_dir, "--ttt", "chunk-sgd", "--stride", "16", "--set", "eval_tokens=4096",
                  "--set", "ttt.chunk_sgd.chunk_tokens=1024", "--eval-budget-s", "0.000001", "--out", tmp_path / "eval")
    assert result.returncode == 0, result.stderr
    ledger_line = next(line for line in result.stdout.splitlines() if line.startswith("ledger:"))
    assert all(f"{name}=" in ledger_line for name in ("load_artifact", "load_val", "warmup", "score", "adapt"))
    line = next(line for line in result.stdout.splitlines() if line.startswith("stage:eval"))
    assert "within_budget:False" in line and "budget_s:1e-06" in line
    metrics = json.loads((tmp_path / "eval" / "manifest.json").read_text())["metrics"]
    assert metrics["adaptation_stopped_at_check"] == 1


def test_eval_help_documents_every_mode_the_budget_and_presets():
    result = golf("eval", "--help")
    assert result.returncode == 0, result.stderr
    text = re.sub(r"[\s│]+", " ", result.stdout)
    assert all(f"'{mode}'" in text for mode in REGISTRY)
    assert all(" ".join(mode.help.split()) in text for mode in REGISTRY.values())
    assert all(record in text for record in ("#1413", "#1530", "#1790", "#1855"))
    for words in ("--eval-budget-s SECONDS", "--over-budget POLICY", "stop-adapting | fail", "--preset",
                  "--print-config", "random tokens only", "the records timed only their scoring and adaptation loop"):
        assert words in text, words


# ---- the warm-up, for every mode ----


@contextmanager
def val_spy(model: torch.nn.Module, stream: np.ndarray, width: int = 8):
    """Records, for every forward, the open phase and whether its rows hold a run of ``width`` val
    tokens (random tokens over 64 ids: a chance match is ~1e-11); for every backward and optimizer
    step, the open phase. ``spy.phase(name)`` is the ledger's phase callback."""
    grams = {tuple(stream[i : i + width]) for i in range(len(stream) - width + 1)}
    spy = type("Spy", (), {})()
    spy.open, spy.forwards, spy.backwards, spy.steps = ["none"], [], [], []

    @contextmanager
    def phase(name):
        spy.open.append(name)
        try:
            yield
        finally:
            spy.open.pop()

    def on_embed(module, args):
        rows = args[0].detach().cpu().numpy()
        holds_val = any(tuple(row[i : i + width]) in grams for row in rows for i in range(rows.shape[1] - width + 1))
        spy.forwards.append((spy.open[-1], holds_val))

    real_backward = torch.autograd.backward

    def backward(*args, **kwargs):
        spy.backwards.append(spy.open[-1])
        return real_backward(*args, **kwargs)

    spy.phase = phase
    embed = model.tok_emb.register_forward_pre_hook(on_embed)
    step = register_optimizer_step_pre_hook(lambda *_: spy.steps.append(spy.open[-1]))
    torch.autograd.backward = backward  # Tensor.backward looks it up here at each call
    try:
        yield spy
    finally:
        torch.autograd.backward = real_backward
        embed.remove()
        step.remove()


def warm_up(model, mode: str) -> None:
    warm_up_ttt(model, byte_table(), ScoringSetup(SEQ, STRIDE, BATCH_WINDOWS), config=merged(SMALL_TTT, mode=mode))


def adapting(name: str) -> bool:
    """The phases in which training on scored val targets belongs."""
    return name == "adapt" or name.startswith("global_sgd")


@pytest.mark.parametrize("mode", ADAPTING)
def test_warm_up_sees_no_val_token_and_leaves_the_weights_bitwise(mode):
    stream = synthetic_docs()
    model = tiny_gpt(smear_gate=True, doc_mask=True)
    before = copy.deepcopy(model.state_dict())
    training = model.training
    with val_spy(model, stream) as spy, spy.phase("warmup"):
        warm_up(model, mode)
    assert spy.forwards and not any(holds_val for _, holds_val in spy.forwards)
    after = model.state_dict()
    assert all(torch.equal(after[key], value) for key, value in before.items())
    assert all(param.grad is None for param in model.parameters()) and model.training == training


@pytest.mark.parametrize("mode", ADAPTING)
def test_no_backward_or_step_on_val_data_outside_adaptation(mode):
    stream = synthetic_docs()
    model = tiny_gpt(smear_gate=True, doc_mask=True)
    with val_spy(model, stream) as spy:
        with spy.phase("warmup"):
            warm_up(model, mode)
        score_with_ttt(model, stream, byte_table(), ScoringSetup(SEQ, STRIDE, BATCH_WINDOWS),
                       config=merged(SMALL_TTT, mode=mode), phase=spy.phase)
    assert any(adapting(name) for name in spy.backwards), "the spy saw no adaptation"
    assert all(adapting(name) or name == "warmup" for name in spy.backwards), spy.backwards
    assert all(adapting(name) or name == "warmup" for name in spy.steps), spy.steps
    assert not any(holds_val for name, holds_val in spy.forwards if name == "warmup")


def test_a_mode_the_code_does_not_hold_is_one_line(monkeypatch):
    # a registry without chunk-sgd (a copy: deleting and restoring an entry would move it to the end)
    monkeypatch.setattr(mode_module, "REGISTRY", {name: mode for name, mode in REGISTRY.items() if name != "chunk-sgd"})
    with pytest.raises(GolfError, match="ttt.mode: 'chunk-sgd' is not built into this code"):
        warm_up(tiny_gpt(), "chunk-sgd")
    with pytest.raises(GolfError, match="ttt.mode: 'chunk-sgd' is not built into this code"):
        score_with_ttt(tiny_gpt(), synthetic_docs(), byte_table(), ScoringSetup(SEQ, STRIDE), config=FAST_TTT)


def test_warm_up_does_not_move_the_global_random_state():
    model = tiny_gpt()
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    warm_up(model, "chunk-sgd")
    assert torch.equal(torch.rand(3), expected)


def test_stage_says_plainly_when_the_budget_stops_adaptation(pack_dir, tmp_path):
    """A stop on the time cap is a plain log line, not only a manifest field."""
    reporter = Reporter(stream=io.StringIO())
    run_eval(budgeted_config(mode="chunk-sgd", chunk_sgd={"chunk_tokens": 1024}), pack_dir, None, tmp_path / "eval", reporter=reporter)
    stops = [line for line in reporter.lines if line.startswith("stopped:")]
    assert len(stops) == 1 and stops[0].startswith("stopped:eval reason:time_cap part:adaptation "), reporter.lines
    assert " check:1 " in stops[0] and stops[0].endswith("scoring:continues")
