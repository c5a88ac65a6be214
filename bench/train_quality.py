"""Post-quantization val bpb of the baseline and every seed preset's CPU form at equal CPU time.

    python bench/train_quality.py --seconds 150          # the comparison the README quotes
    python bench/train_quality.py --steps 200            # diagnostic: equal steps instead of equal time

Each preset trains for the same wall-clock budget on the embedded news corpus (time-based
schedule, as the records), then `golf quantize` with the records' scheme (GPTQ int6 on the SDClip
grid) scores pre- and post-quant bpb on the whole val split. The tied embedding goes on a max-abs
int8 grid, as in run_all.sh: at these sizes the records' int8 k-20 embedding grid alone costs
~0.04 bpb (bench/quant_quality.py) and would swamp the differences between presets. Every other
matrix is quantized int6, whatever its size. The train folders stay under
artifacts/bench/train_quality_<budget>/ and are reused (`--retrain` trains again), so the
quantization can be rerun on them. Run it on an idle
machine: the budget is wall-clock time. Prints one table and saves bench/results/train_quality.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import ROOT, news_data, print_table, save

from stages.config import apply_overrides
from stages.contract.stage_dir import StageDir
from stages.quantize.config import GroupQuant
from stages.quantize.config import get_scheme
from stages.quantize.stage import run_quantize
from stages.train.presets import get_preset
from stages.train.stage import run_train

# Every matrix quantized: at CPU sizes most are under the records' 65,536-element float threshold,
# and what the records' techniques (late QAT among them) buy after int6 quantization is the point.
SCHEME = get_scheme("gptq-int6", embedding=GroupQuant(bits=8, clip="quantile"), keep_float_max_numel=0)
PRESETS = ["tiny", "pr401-cpu", "pr1413-cpu", "pr1776-cpu", "pr1880-cpu", "pr1790-cpu", "top-cpu"]


def budget(seconds: float, steps: int) -> list[str]:
    """Equal wall-clock time (time-based schedule, as the records) or, with ``steps``, equal steps."""
    if steps:
        return [f"train.max_steps={steps}", "train.max_seconds=none", "train.schedule=steps"]
    return [f"train.max_seconds={seconds}", "train.max_steps=1000000", "train.schedule=time"]


def measure(name: str, seconds: float, steps: int, data: Path, work: Path, retrain: bool) -> dict:
    config = apply_overrides(get_preset(name).config, [*budget(seconds, steps), "train.log_every=100000"])
    start = time.perf_counter()
    if retrain or not (work / name / "train" / "manifest.json").is_file():
        run_train(config, data, work / name / "train", preset=name, force=True)
    train = StageDir(work / name / "train", "train").manifest
    quant = run_quantize(SCHEME, work / name / "train", work / name / "quantize", force=True)
    return {
        "preset": name,
        "params": train.metrics["params"],
        "steps": train.metrics["steps"],
        "ms_per_step": train.metrics["ms_per_step"],
        "pre_quant_bpb": quant.metrics["pre_quant_val_bpb"],
        "post_quant_bpb": quant.metrics["post_quant_val_bpb"],
        "quant_gap_bpb": quant.metrics["quant_gap_bpb"],
        "wall_seconds": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=180.0, help="training seconds per preset")
    parser.add_argument("--steps", type=int, default=0, help="equal step budget instead of equal time")
    parser.add_argument("--presets", nargs="*", default=PRESETS)
    parser.add_argument("--retrain", action="store_true", help="train again even where a train folder exists")
    parser.add_argument("--data", type=Path, default=ROOT / "artifacts" / "bench" / "tokenize")
    args = parser.parse_args()
    data = news_data(args.data)
    work = ROOT / "artifacts" / "bench" / (f"train_quality_{args.steps}steps" if args.steps else f"train_quality_{args.seconds:g}s")
    rows = []
    for name in args.presets:
        rows.append(measure(name, args.seconds, args.steps, data, work, args.retrain))
        baseline = rows[0]["post_quant_bpb"]
        for row in rows:
            row["vs_baseline"] = row["post_quant_bpb"] - baseline
        title = f"{args.steps} steps" if args.steps else f"{args.seconds:g} s of CPU training"
        print_table(f"post-quant val bpb at {title}", rows,
                    ["preset", "params", "steps", "ms_per_step", "pre_quant_bpb", "post_quant_bpb", "quant_gap_bpb",
                     "vs_baseline"])
        save("train_quality_steps" if args.steps else "train_quality", rows,
             {"seconds": args.seconds, "steps": args.steps, "data": args.data, "work": work})

if __name__ == "__main__":
    main()
