"""Plain against CaseOps tokenizers of the same vocab on the embedded news corpus, at equal training.

    python bench/caseops.py                             # vocab 1024, 1,500 documents, tiny preset, 20 steps
    python bench/caseops.py --docs 0 --steps 200        # the whole corpus, longer training
    python bench/caseops.py --steps 0                   # the tokenizers only (no training, no bpb)

For each tokenizer (`golf tokenize` with and without --caseops, exact spec, the same vocab and
split) it reports the val tokens, the original bytes per val token, and the val_bpb of the tiny
preset trained for the same number of steps (step schedule, same seed), scored on the whole val
split over the original bytes (the sidecar). It also gives how many bytes the piece byte table would
count against the original bytes, and the bpb it would report (each CaseOps marker counted as 3 bytes:
the ~9% inflation eval refuses). Folders stay
under artifacts/bench/caseops/. Prints one table and saves bench/results/caseops.json.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from common import ROOT, print_table, save

from stages.config import apply_overrides
from stages.contract.stage_dir import StageDir
from stages.data.tokenizer import load_processor
from stages.scoring.bpb import build_byte_table, token_bytes
from stages.scoring.windows import usable_targets
from stages.scoring.val_data import load_val
from stages.tokenize.stage import run_tokenize
from stages.tokenize.config import TokenizeConfig
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
    val = load_val(data)
    sp = load_processor(data.file("tokenizer").read_bytes())
    table_bytes = int(token_bytes(build_byte_table(sp), val.tokens).sum())  # what the piece table would count
    row = {"tokenizer": name, "vocab": sp.vocab_size(), "val_tokens": int(val.tokens.size),
           "bytes_per_token": float(val.sidecar.sum() / val.tokens.size),
           "table_over_original_bytes": table_bytes / int(val.sidecar.sum()),
           "byte_source": val.byte_source, "sidecar_audit_s": val.sidecar_audit["seconds"]}
    if steps:
        row.update(train_and_score(data, val, steps, work / name / "train"))
    return {**row, "wall_seconds": round(time.perf_counter() - start, 1)}


def train_and_score(data: StageDir, val, steps: int, out: Path) -> dict:
    """The tiny preset trained for ``steps``; its val bpb over the original bytes, and what the piece table
    would have made of the same loss."""
    overrides = [f"train.max_steps={steps}", "train.max_seconds=none", "train.schedule=steps", "train.log_every=100000"]
    config = apply_overrides(get_preset(PRESET).config, overrides)
    train = run_train(config, data.path, out, preset=PRESET, force=True).metrics
    seq_len = config.train.seq_len
    scored = slice(1, usable_targets(len(val.tokens), seq_len) + 1)
    sidecar_bytes = int(val.sidecar[scored].sum())
    sp = load_processor(data.file("tokenizer").read_bytes())
    table_bytes = int(token_bytes(build_byte_table(sp), val.tokens)[scored].sum())
    nll_nats = train["val_bpb"] * math.log(2) * sidecar_bytes  # the scored targets' summed NLL
    return {"steps": train["steps"], "val_loss": train["val_loss"], "val_bpb": train["val_bpb"],
            "val_bpb_piece_table": nll_nats / (math.log(2) * table_bytes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=20, help="training steps of each tokenizer's model")
    parser.add_argument("--docs", type=int, default=1500, help="the first N documents of the corpus (0: all 3,824)")
    args = parser.parse_args()
    work = ROOT / "artifacts" / "bench" / f"caseops_v{args.vocab}_d{args.docs}"
    rows = [measure(name, args.vocab, name == "caseops", args.steps, args.docs, work) for name in ("plain", "caseops")]
    columns = ["tokenizer", "vocab", "val_tokens", "bytes_per_token", "table_over_original_bytes", "byte_source",
               "sidecar_audit_s",
               *(["steps", "val_loss", "val_bpb", "val_bpb_piece_table"] if args.steps else []), "wall_seconds"]
    print_table(f"plain vs CaseOps, vocab {args.vocab}, {args.docs or 'all'} documents, preset {PRESET}, "
                f"{args.steps} steps", rows, columns)
    settings = {"vocab": args.vocab, "preset": PRESET, "steps": args.steps, "schedule": "steps", "spec": "exact",
                "seed": get_preset(PRESET).config.train.seed, "documents": args.docs or "all",
                "corpus": "embedded news corpus, val = the first 10% of the documents", "work": work}
    print(f"saved: {save('caseops', rows, settings).relative_to(ROOT)}")


if __name__ == "__main__":
    main()
