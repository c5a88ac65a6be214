"""What a submission's train_gpt.py runs: train -> quantize -> pack -> eval with the recorded settings.

Runs from the code train_gpt.py unpacked (so this module imports only golf's library, never the
CLI). Under torchrun every rank trains and scores its share; rank 0 alone prepares the data
(challenge layout: adopted as `golf tokenize --import` does), quantizes and packs, while the
other ranks wait for its folders. Before anything trains, the data is held to the recipe: the
tokenizer and every val shard must hash to what the submitted runs used. The last line printed
is the score: ``val_bpb:...`` (with the submitted run's score of that seed beside it).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..config import from_dict
from ..contract.stage_dir import StageDir
from ..data.shards import shard_index
from ..errors import GolfError
from ..evaluate.config import EvalConfig
from ..evaluate.stage import run_eval
from ..pack.config import PackConfig
from ..pack.stage import run_pack
from ..progress import Reporter, format_line
from ..quantize.config import QuantizeConfig
from ..quantize.stage import run_quantize
from ..tokenize.adopt import run_import
from ..train.config import RunConfig
from ..train.stage import run_train

POLL_SECONDS = 1.0


def main(recipe: dict) -> int:
    """Run the recipe for the seed in $SEED; return the exit code (a GolfError is one line, exit 1)."""
    try:
        score = reproduce(recipe, os.environ)
    except GolfError as exc:
        print(f"error: {' '.join(str(exc).split())}")
        return exc.exit_code
    if score is not None:
        print(format_line(score))
    return 0


def reproduce(recipe: dict, env) -> dict | None:
    """The stage folders of one seed under $RUN_DIR, and (on rank 0) the score with the expected one."""
    seed = int(env.get("SEED", recipe["seeds"][0]))
    if str(seed) not in recipe["expected"]:
        raise GolfError(f"SEED={seed} is not one of the submitted seeds ({', '.join(map(str, recipe['seeds']))})")
    run_dir = Path(env.get("RUN_DIR", f"golf_run_seed{seed}"))
    force = env.get("FORCE", "") == "1"
    main_rank = int(env.get("RANK", "0")) == 0
    started = time.time()
    data = prepare_data(recipe["data"], run_dir, env, force, main_rank, started)
    config = from_dict(RunConfig, {**recipe["train"], "train": {**recipe["train"]["train"], "seed": seed}})
    run_train(config, data, run_dir / "train", force, _reporter(main_rank), recipe["preset"])
    if main_rank:
        run_quantize(from_dict(QuantizeConfig, recipe["quantize"]), run_dir / "train", run_dir / "quantize",
                     force=force, reporter=_reporter(True))
        run_pack(from_dict(PackConfig, recipe["pack"]), run_dir / "quantize", run_dir / "pack", force, _reporter(True))
    else:
        wait_for(run_dir / "pack", started)
    manifest = run_eval(from_dict(EvalConfig, recipe["eval"]), run_dir / "pack", data, run_dir / "eval", force,
                        _reporter(main_rank))
    if manifest is None:
        return None
    expected = recipe["expected"][str(seed)]
    got = manifest.metrics["val_bpb"]
    return {"seed": seed, "val_loss": manifest.metrics["val_loss"], "val_bpb": got,
            "submitted_val_bpb": expected["val_bpb"], "difference": got - expected["val_bpb"]}


def _reporter(main_rank: bool) -> Reporter:
    """A fresh reporter per stage (each stage saves the lines it logged); silent off rank 0."""
    return Reporter() if main_rank else Reporter(stream=open(os.devnull, "w"))


def prepare_data(data: dict, run_dir: Path, env, force: bool, main_rank: bool, started: float) -> Path:
    """The tokenize folder to train on, checked against the recipe's tokenizer and val hashes."""
    if data["imported"]:
        folder = run_dir / "tokenize"
        if main_rank:
            tokenizer = env.get("TOKENIZER_PATH", data["tokenizer_path"])
            run_import(env.get("DATA_PATH", data["data_path"]), folder, tokenizer, force, _reporter(True))
        else:
            wait_for(folder, started)
    else:
        folder = Path(env.get("TOKENIZE_DIR", data["tokenize_dir"]))
    check_data(StageDir(folder, "tokenize"), data)
    return folder


def check_data(found: StageDir, data: dict) -> None:
    """Refuse data other than the submitted runs': another tokenizer or any other val shard."""
    if found.lineage["tokenizer_sha256"] != data["tokenizer_sha256"]:
        raise GolfError(f"{found.path}: tokenizer sha256 {found.lineage['tokenizer_sha256'][:12]}..., the submitted "
                        f"runs used {data['tokenizer_sha256'][:12]}...")
    val = val_hashes(found)
    if val != data["val_sha256"]:
        raise GolfError(f"{found.path}: its val shards are not the ones the submitted runs scored "
                        f"({len(val)} found, {len(data['val_sha256'])} expected, hashes differ)")


def val_hashes(data: StageDir) -> dict[str, str]:
    """sha256 of every val shard and val byte sidecar of a tokenize folder, by output name."""
    return {name: record.sha256 for name, record in sorted(data.manifest.outputs.items())
            if shard_index(name, "val") is not None or shard_index(name, "val_bytes") is not None}


def wait_for(folder: Path, since: float) -> None:
    """Wait until rank 0 has written ``folder`` in this launch (its manifest newer than ``since``).
    If rank 0 fails, torchrun stops every rank."""
    manifest = folder / "manifest.json"
    while not (manifest.is_file() and manifest.stat().st_mtime >= since):
        time.sleep(POLL_SECONDS)
