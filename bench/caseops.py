"""Plain against CaseOps tokenizers of the same vocab on the embedded news corpus, at equal training.

    python bench/caseops.py                             # vocab 1024, 1,500 documents, tiny preset, 20 steps
    python bench/caseops.py --docs 0 --steps 200        # the whole corpus, longer training

For each tokenizer (`golf tokenize` with and without --caseops, exact spec, the same vocab and
split) it reports the val tokens, the original bytes per val token, and the val_bpb of the tiny
preset trained for the same number of steps (step schedule, same seed), scored on the whole val
split over the original bytes (the sidecar). For CaseOps it also gives the bpb the piece byte table
would report (each case marker counted as 3 bytes): the ~9% inflation eval refuses. Folders stay
under artifacts/bench/caseops/. Prints one table and saves bench/results/caseops.json.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
from common import ROOT, print_table, save

from stages.config import apply_overrides
from stages.contract.stage_dir import StageDir
from stages.data.tokenizer import load_processor
from stages.evaluate.bpb import build_byte_table, token_bytes
from stages.evaluate.scoring import usable_targets
from stages.evaluate.val_data import load_val
from stages.tokenize.stage import TokenizeConfig, run_tokenize
from stages.train.presets import get_preset
from stages.train.stage import run_train

PRESET = "tiny"


def tokenize(folder: Path, vocab: int, caseops: bool, docs: int) -> StageDir:
    if not (folder / "manifest.json").is_file():
        run_tokenize(TokenizeConfig(vocab_size=vocab, caseops=caseops, max_docs=docs or None), folder)
    return StageDir(folder, "tokenize")


def measure(name: str, vocab: int, caseops: bool, steps: int, docs: int, work: Path) -> dict:
    start = time.perf_counter()
    data = tokenize(work / name / "tokenize", vocab, caseops, docs)
    overrides = [f"train.max_steps={steps}", "train.max_seconds=none", "train.schedule=steps", "train.log_every=100000"]
    config = apply_overrides(get_preset(PRESET).config, overrides)
    train = run_train(config, data.path, work / name / "train", preset=PRESET, force=True).metrics
    val = load_val(data)
    seq_len = config.train.seq_len
    scored = slice(1, usable_targets(len(val.tokens), seq_len) + 1)
    sidecar_bytes = int(val.sidecar[scored].sum())
    sp = load_processor(data.file("tokenizer").read_bytes())
    table_bytes = int(token_bytes(build_byte_table(sp), val.tokens)[scored].sum())
    nll_nats = train["val_bpb"] * math.log(2) * sidecar_bytes  # the scored targets' summed NLL
    return {
        "tokenizer": name,
        "vocab": sp.vocab_size(),
        "val_tokens": int(val.tokens.size),
        "bytes_per_token": float(np.asarray(val.sidecar).sum() / val.tokens.size),
        "steps": train["steps"],
        "val_loss": train["val_loss"],
        "val_bpb": train["val_bpb"],
        "val_bpb_piece_table": nll_nats / (math.log(2) * table_bytes),
        "byte_source": val.byte_source,
        "sidecar_audit_s": val.sidecar_audit["seconds"],
        "wall_seconds": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=20, help="training steps of each tokenizer's model")
    parser.add_argument("--docs", type=int, default=1500, help="the first N documents of the corpus (0: all 3,824)")
    args = parser.parse_args()
    work = ROOT / "artifacts" / "bench" / f"caseops_v{args.vocab}_d{args.docs}"
    rows = [measure(name, args.vocab, name == "caseops", args.steps, args.docs, work) for name in ("plain", "caseops")]
    columns = ["tokenizer", "vocab", "val_tokens", "bytes_per_token", "steps", "val_loss", "val_bpb",
               "val_bpb_piece_table", "byte_source", "sidecar_audit_s", "wall_seconds"]
    print_table(f"plain vs CaseOps, vocab {args.vocab}, {args.docs or 'all'} documents, preset {PRESET}, "
                f"{args.steps} steps", rows, columns)
    settings = {"vocab": args.vocab, "preset": PRESET, "steps": args.steps, "schedule": "steps", "spec": "exact",
                "seed": get_preset(PRESET).config.train.seed, "documents": args.docs or "all",
                "corpus": "embedded news corpus, val = the first 10% of the documents", "work": work}
    print(f"saved: {save('caseops', rows, settings).relative_to(ROOT)}")


if __name__ == "__main__":
    main()
