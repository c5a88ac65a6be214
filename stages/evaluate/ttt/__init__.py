"""Score-first test-time training (TTT): adapt the model on val tokens it has already scored.

Every mode scores the val stream chunk by chunk through the plain scorer (``scoring.WindowScorer``:
the model's own forward, with the mode's adapters if it has any) and only then adapts on that
chunk, so a target's NLL is committed before any update that used it, every target is scored
exactly once, and nothing is rescored. One module per mode, each declaring itself in the registry
(``mode.py``: its scorer, warm-up, windows, notes and help); ``common.py`` holds what they share.
Ships inside the artifact: the code that adapts is the code that is counted.

Each mode also has a warm-up (``warm_up_ttt``), run before the timed loop on random tokens only:
it is handed no val data at all, so it cannot train on (or even see) a val token.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Callable

import torch

from ...scoring.bpb import BpbSums, ByteTable
from ...scoring.stream import WindowScorer, score_stream
from . import plain, chunk_sgd, lora, phased  # noqa: F401  each registers its TTTMode, in this order
from .common import TTTPass, always
from .config import TTTConfig
from .mode import mode_named


def score_with_ttt(
    *stream_args,
    config: dict,
    phase=None,
    may_adapt: Callable[[], bool] = always,
    on_fact: Callable[[str, object], None] | None = None,
    **stream_kwargs,
) -> BpbSums:
    """``score_stream(*stream_args, **stream_kwargs)`` (the same arguments, bound to its signature,
    so the two cannot drift apart) with the adaptation ``config['mode']`` names: a TTTConfig as a
    dict, rebuilt and range-checked by the shipped TTTConfig. ``phase``, ``may_adapt`` and
    ``on_fact`` are TTTPass's."""
    ttt = ttt_config(config)
    stream = inspect.signature(score_stream).bind(*stream_args, **stream_kwargs)
    stream.apply_defaults()
    args = stream.arguments
    scorer = WindowScorer(args["tokens"], args["table"], args["seq_len"], args["device"], args["sidecar"],
                          args["autocast_dtype"], args["compile_backend"])
    run = TTTPass(scorer, args["stride"], args["batch_windows"], args["rank"], args["world_size"], args["receipts"],
                  args["on_windows"], phase, may_adapt, on_fact)
    with training_mode_kept(args["model"]):
        return mode_named(ttt.mode, adapting=True).score(args["model"], run, ttt)


def warm_up_ttt(
    model: torch.nn.Module,
    table: ByteTable,
    seq_len: int,
    stride: int,
    batch_windows: int = 8,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
    autocast_dtype: torch.dtype | None = None,
    compile_backend: str | None = None,
    *,
    config: dict,
    seed: int = 0,
) -> None:
    """Run mode ``config['mode']``'s warm-up at the eval's shapes, before the timed loop.

    The pass it gets scores a stream of random tokens (``batch_windows`` windows long), not the
    val stream: the records that warmed up on val tokens were challenged, later ones used random
    tokens (docs/TTT_CASEOPS.md sections A.3, E). The tokens come from a generator of their own,
    so the global random state (adapter init) is what it would be without a warm-up. With
    ``compile_backend`` the mode's compiled forwards are compiled here, at the pass's shapes.
    """
    ttt = ttt_config(config)
    generator = torch.Generator().manual_seed(seed)
    stream = torch.randint(0, model.config.vocab_size, (batch_windows * seq_len + 1,), generator=generator)
    scorer = WindowScorer(stream.numpy(), table, seq_len, device, None, autocast_dtype, compile_backend)
    run = TTTPass(scorer, stride, batch_windows, rank, world_size)
    with training_mode_kept(model):
        mode_named(ttt.mode, adapting=True).warm_up(model, run, ttt)
    if torch.device(device).type == "cuda":  # its kernels finish inside the 'warmup' bucket
        torch.cuda.synchronize(device)


def fit_ttt_batch(model: torch.nn.Module, seq_len: int, device: torch.device | str = "cpu",
                  autocast_dtype: torch.dtype | None = None, *, config: dict) -> dict:
    """The documents per batch a document mode (one that declares ``fit_batch``: lora, phased) runs
    with on ``device`` and the rule that chose them (batch_fit.py), as JSON facts: 'ttt_batch_docs',
    'ttt_batch_docs_rule', ..."""
    ttt = ttt_config(config)
    with training_mode_kept(model):
        return mode_named(ttt.mode, adapting=True).fit_batch(model, ttt, seq_len, device, autocast_dtype).facts()


def ttt_config(config: dict) -> TTTConfig:
    """The shipped TTTConfig from its dict form (a golf config's ``to_dict``)."""
    return TTTConfig.from_json(config)


@contextmanager
def training_mode_kept(model: torch.nn.Module):
    """Give the model back in the train/eval mode it came in."""
    was_training = model.training
    try:
        yield
    finally:
        model.train(was_training)
