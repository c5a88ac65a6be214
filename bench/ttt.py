"""Every test-time-training mode of `golf eval` on one packed artifact, against sliding windows.

    ./run_all.sh && python bench/ttt.py                          # run_all's artifact (artifacts/news/pack)
    python bench/ttt.py --artifact artifacts/big/pack --name big --settings pr1790-cpu

Each mode runs the real `golf eval` stage (the shipped code, the budget ledger, receipts) on the
whole val split, or on its first ``--eval-tokens``: first plain sliding windows (``--stride``, no
TTT), then chunk-sgd, lora and phased with the TTT settings of the CPU preset ``--settings``
(each preset carries its record's TTT settings scaled to the CPU forms), the window length
being the artifact's training length. One table: mode, val_bpb, its delta against the sliding
windows, the seconds of each ledger bucket the eval budget counts, and scored tokens per second
of the scoring-and-adaptation loop. Saves bench/results/ttt_<name>.json. Run it on an idle
machine: the seconds are wall-clock.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from common import ROOT, print_table, save

from stages.config import apply_overrides, to_dict
from stages.evaluate.stage import run_eval
from stages.evaluate.ttt.mode import REGISTRY
from stages.train.presets import get_preset

MODES = list(REGISTRY)  # every mode golf holds, in its registry's order
# Ledger buckets shown as columns; global SGD phases are summed into one.
PHASES = ["load_artifact", "load_val", "warmup", "score", "adapt", "global_sgd"]
LOOP = ("score", "adapt", "global_sgd")


def eval_config(settings: str, mode: str, stride: int, eval_tokens: int, overrides: list[str]):
    """The preset's eval settings with ``mode``; the window length stays the artifact's."""
    config = replace(get_preset(settings).eval, seq_len=None, stride=stride, eval_tokens=eval_tokens)
    return apply_overrides(config, [f"ttt.mode={mode}", *overrides])


def ledger_seconds(ledger: dict) -> dict[str, float]:
    """Seconds per shown bucket (every global_sgd* bucket in one), and the eval budget's total."""
    seconds = {name: 0.0 for name in PHASES}
    for name, bucket in ledger.items():
        key = "global_sgd" if name.startswith("global_sgd") else name
        if key in seconds:
            seconds[key] += bucket["seconds"]
    seconds["eval_total"] = sum(b["seconds"] for b in ledger.values() if b["counts_toward"] == "eval")
    return seconds


def measure(artifact: Path, work: Path, mode: str, config) -> dict:
    manifest = run_eval(config, artifact, None, work / mode, force=True)
    metrics = manifest.metrics
    seconds = ledger_seconds(manifest.ledger)
    loop = sum(seconds[name] for name in LOOP)
    return {
        "mode": "sliding" if mode == "none" else mode,
        "val_bpb": metrics["val_bpb"],
        **{f"{name}_s": round(value, 2) for name, value in seconds.items()},
        "tokens_scored": metrics["tokens_scored"],
        "tokens_per_s": round(metrics["tokens_scored"] / loop, 1) if loop else None,
        "within_budget": metrics.get("within_budget"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, default=ROOT / "artifacts" / "news" / "pack",
                        help="pack folder (default: run_all.sh's)")
    parser.add_argument("--name", default="run_all", help="result name: bench/results/ttt_<name>.json")
    parser.add_argument("--settings", default="pr1790-cpu", help="CPU preset whose TTT settings every mode uses")
    parser.add_argument("--stride", type=int, default=64, help="sliding-window stride of the no-TTT row and chunk-sgd")
    parser.add_argument("--eval-tokens", type=int, default=0, help="score only this many val tokens (0: all)")
    parser.add_argument("--modes", nargs="*", default=MODES)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="eval config override for every mode (e.g. ttt.lora.lr=0.001)")
    args = parser.parse_args()
    if not (args.artifact / "manifest.json").is_file():
        raise SystemExit(f"error: {args.artifact}: no pack folder (run ./run_all.sh first, or give --artifact)")
    work = ROOT / "artifacts" / "bench" / f"ttt_{args.name}"
    configs = {mode: eval_config(args.settings, mode, args.stride, args.eval_tokens, args.overrides)
               for mode in args.modes}
    rows = [measure(args.artifact, work, mode, config) for mode, config in configs.items()]
    sliding = next((row["val_bpb"] for row in rows if row["mode"] == "sliding"), None)
    for row in rows:
        row["delta_vs_sliding"] = None if sliding is None else row["val_bpb"] - sliding
    columns = ["mode", "val_bpb", "delta_vs_sliding", *(f"{p}_s" for p in PHASES), "eval_total_s", "tokens_per_s"]
    print_table(f"golf eval --ttt on {args.artifact} ({args.settings} TTT settings)", rows, columns)
    settings = {**vars(args), "ttt": {mode: to_dict(config.ttt) for mode, config in configs.items()}}
    print(f"saved {save(f'ttt_{args.name}', rows, settings).relative_to(ROOT)}")

if __name__ == "__main__":
    main()
