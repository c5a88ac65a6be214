"""The eval's compiled forwards (stages/scoring/compiled.py): the scores equal the eager ones for
plain scoring and every TTT mode, each compiled function is one graph (fullgraph: a break raises),
and after the warm-up the timed pass compiles nothing (dynamo's error_on_recompile).

CPU runs them with the 'aot_eager' backend: the same dynamo graphs as inductor, no kernels built.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.utils import counters

from stages.config import apply_overrides
from stages.scoring.compiled import compiled, forget_compiled, mean_loss, token_nll
from stages.scoring.setup import ScoringSetup
from stages.scoring.receipts import TokenReceipts
from stages.scoring.scorer import score_stream, warm_up_scoring
from stages.evaluate.stage import compile_backend, run_eval
from stages.evaluate.config import EvalConfig
from stages.evaluate.ttt import score_with_ttt, warm_up_ttt
from stages.ranges import ConfigError

from .test_lora_adapters import adapters_for, preset_model
from .test_ttt import (BATCH_WINDOWS, FAST_TTT, SEQ, STRIDE, byte_table, eval_config, merged, synthetic_docs,
                       tiny_gpt)
from .test_ttt_lora import FAST_LORA
from .test_ttt_phased import PHASED

BACKEND = "aot_eager"
TOLERANCE = 1e-5  # compiled and eager differ by float rounding only
# Each mode with a partial last batch/step (so padding is exercised) and short chunks.
MODES = {
    "none": None,
    "chunk-sgd": merged(FAST_TTT, chunk_sgd={"batch_seqs": 3}),
    "lora": merged(FAST_LORA, lora={"batch_docs": 5, "warm_start_a": True}),
    "phased": merged(PHASED, lora={"batch_docs": 5}, phased={"global_batch_seqs": 3}),
}


@pytest.fixture(autouse=True)
def fresh_compiles():
    forget_compiled()
    counters.clear()
    yield
    forget_compiled()


def scored(model, stream, ttt: dict | None, backend: str | None) -> tuple[dict, object]:
    """Warm up, then score ``stream`` (receipts, sums); compiled, any recompile in the pass raises."""
    table, receipts = byte_table(), TokenReceipts()
    setup = ScoringSetup(SEQ, STRIDE, BATCH_WINDOWS, compile_backend=backend)
    if ttt is None:
        warm_up_scoring(model, table, setup)
    else:
        warm_up_ttt(model, table, setup, config=ttt)
    graphs = counters["stats"]["unique_graphs"]
    with torch._dynamo.config.patch(error_on_recompile=True):
        if ttt is None:
            sums = score_stream(model, stream, table, setup, receipts=receipts)
        else:
            sums = score_with_ttt(model, stream, table, setup, config=ttt, receipts=receipts)
    assert counters["stats"]["unique_graphs"] == graphs, "the timed pass compiled a graph"
    return receipts.tensors(), sums


@pytest.mark.parametrize("mode", MODES)
def test_compiled_scores_equal_eager_with_every_graph_built_in_the_warm_up(mode):
    model = tiny_gpt(smear_gate=True, doc_mask=True)
    stream = synthetic_docs(num_tokens=6 * 128 + 1)
    eager, eager_sums = scored(copy.deepcopy(model), stream, MODES[mode], None)
    assert counters["stats"]["unique_graphs"] == 0
    compiled, sums = scored(copy.deepcopy(model), stream, MODES[mode], BACKEND)
    assert counters["stats"]["unique_graphs"] >= 1
    assert not counters["graph_break"]
    for name in ("position", "bytes", "order", "update_after_order", "update_first_position", "update_last_position"):
        assert torch.equal(compiled[name], eager[name]), name
    torch.testing.assert_close(compiled["nll"], eager["nll"], rtol=0, atol=TOLERANCE)
    assert sums.tokens == eager_sums.tokens and sums.bytes == eager_sums.bytes
    assert sums.bpb == pytest.approx(eager_sums.bpb, rel=1e-6)


def test_the_top_architecture_compiles_whole():
    """Every switch of `top` (looping, two-lane blocks, value embeddings, per-channel smear, gates)
    at its CPU size: the LoRA-adapted NLL and the doc-masked training loss are each one graph
    (fullgraph: a break raises) and equal the eager values. Dynamo's 'eager' backend: the graphs
    are what is checked, and tracing this model is slow enough already."""
    model = preset_model("top")
    lora = adapters_for(model, batch=2, b_std=0.05)
    tokens = torch.randint(2, 64, (2, 25), generator=torch.Generator().manual_seed(0))
    tokens[:, [0, 9]] = model.config.bos_id
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    adapted = compiled(token_nll, "eager")(model, inputs, targets, dynamic_width=True, adapters=lora)
    torch.testing.assert_close(adapted, token_nll(model, inputs, targets, adapters=lora), rtol=0, atol=TOLERANCE)
    model.train()
    loss = compiled(mean_loss, "eager")(model, inputs, targets, doc_mask=True)
    torch.testing.assert_close(loss, model.loss(inputs, targets, doc_mask=True), rtol=0, atol=TOLERANCE)
    assert counters["stats"]["unique_graphs"] == 2 and not counters["graph_break"]


def test_compile_switch_auto_is_cuda_only_and_a_bad_value_is_one_line():
    assert compile_backend(EvalConfig(), "cpu") is None
    assert compile_backend(EvalConfig(compile="on", compile_backend="eager"), "cpu") == "eager"
    assert compile_backend(EvalConfig(compile="off"), "cuda") is None
    with pytest.raises(ConfigError, match="compile"):
        EvalConfig(compile="yes")


def test_the_stage_compiles_the_shipped_scorer_in_its_warm_up_and_scores_as_eager(pack_dir, tmp_path):
    eager = run_eval(eval_config(), pack_dir, None, tmp_path / "eager")
    config = apply_overrides(eval_config(), ["compile=on", "compile_backend=eager"])
    compiled_run = run_eval(config, pack_dir, None, tmp_path / "compiled")
    assert compiled_run.metrics["compiled"] == "eager" and eager.metrics["compiled"] == "off"
    assert compiled_run.ledger["warmup"]["counts_toward"] == "eval" and "warmup" not in eager.ledger
    assert compiled_run.metrics["val_bpb"] == pytest.approx(eager.metrics["val_bpb"], rel=1e-6)
    assert compiled_run.metrics["tokens_scored"] == eager.metrics["tokens_scored"]
