"""Shared fixtures: a small tokenized slice of the news corpus and a tiny trained pipeline.

Everything is built once per test session through the library (the CLI end-to-end test
builds its own through the real command line).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stages.config import apply_overrides
from stages.pack.stage import run_pack
from stages.pack.config import PackConfig
from stages.quantize.config import QuantizeConfig
from stages.quantize.stage import run_quantize
from stages.tokenize.stage import run_tokenize
from stages.tokenize.config import TokenizeConfig
from stages.train.presets import get_preset
from stages.train.stage import run_train

SMALL_DOCS = 240
SMALL_VOCAB = 512
# A model small enough to train in seconds on 2 cores, still the baseline architecture.
TINY_OVERRIDES = [
    f"model.vocab_size={SMALL_VOCAB}", "model.num_layers=2", "model.model_dim=64", "model.num_heads=2",
    "model.num_kv_heads=1", "train.seq_len=64", "train.batch_tokens=1024", "train.max_steps=25",
    "train.muon_momentum_warmup_steps=10", "train.val_tokens=4096", "train.log_every=100",
]


def tiny_run_config():
    return apply_overrides(get_preset("tiny").config, TINY_OVERRIDES)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("golf")


@pytest.fixture(scope="session")
def data_dir(workdir) -> Path:
    out = workdir / "tokenize"
    run_tokenize(TokenizeConfig(max_docs=SMALL_DOCS, vocab_size=SMALL_VOCAB), out)
    return out


@pytest.fixture(scope="session")
def train_dir(workdir, data_dir) -> Path:
    out = workdir / "train"
    run_train(tiny_run_config(), data_dir, out, preset="tiny-test")
    return out


@pytest.fixture(scope="session")
def quant_dir(workdir, train_dir) -> Path:
    out = workdir / "quantize"
    run_quantize(QuantizeConfig(), train_dir, out)
    return out


@pytest.fixture(scope="session")
def pack_dir(workdir, quant_dir) -> Path:
    out = workdir / "pack"
    run_pack(PackConfig(), quant_dir, out)
    return out


def fit_batch(model, batch, steps: int) -> list[float]:
    """Train ``model`` on one batch for a few steps with the tiny preset's optimizers; the losses."""
    from stages.train.optim import build_optimizers

    optimizers = build_optimizers(model, get_preset("tiny").config.train)
    losses = []
    for _ in range(steps):
        for opt in optimizers:
            opt.zero_grad()
        loss = model.loss(batch[:, :-1], batch[:, 1:])
        loss.backward()
        for opt in optimizers:
            opt.step()
        losses.append(loss.item())
    return losses


def sets(overrides: list[str]) -> list[str]:
    """--set arguments for a list of key=value overrides."""
    return [arg for item in overrides for arg in ("--set", item)]


def golf(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess; returns the completed process (never raises)."""
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "golf_cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, env=env)


def rewrite_manifest(folder: Path, change, rehash: bool = True) -> None:
    """Apply ``change`` to a stage folder's manifest dict in place; ``rehash`` keeps its content hash
    valid, so that only the check a test aims at can object (without it, the edit shows)."""
    from stages.contract.manifest import content_hash

    path = Path(folder) / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    if rehash:
        manifest["content_sha256"] = content_hash(manifest)
    path.write_text(json.dumps(manifest, indent=2))


@pytest.fixture(scope="session")
def eval_dir(workdir, pack_dir) -> Path:
    """The tiny pipeline's artifact scored on a 1,024-token val prefix (no TTT)."""
    from stages.evaluate.stage import run_eval
    from stages.evaluate.config import EvalConfig

    out = workdir / "eval"
    run_eval(EvalConfig(eval_tokens=1024), pack_dir, None, out)
    return out
