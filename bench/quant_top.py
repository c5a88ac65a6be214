"""Quantize and pack the `top` preset at its real shapes on this machine: time and bytes.

    python bench/quant_top.py                        # CPU
    python bench/quant_top.py --device cuda          # the quantize time on a GPU

The weights come from a few CPU-sized steps of the `top` preset at full width (36M parameters,
vocab 8192, on the news corpus tokenized at 8192), enough to move every zero-initialized matrix
off zero. Reports the seconds of calibration, the GPTQ solve and packing, and the predicted
against the actual bytes of the weights and of the whole artifact (packed without the gate, so an
oversize artifact is measured; margin_bytes is against 16,000,000), then fits the first scheme
under --target-bytes. Saves
bench/results/quant_top_<device>.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import ROOT, print_table, save

from stages.config import apply_overrides
from stages.contract.stage_dir import StageDir
from stages.pack.stage import SIZE_LIMIT, PackConfig, run_pack
from stages.quantize.schemes import get_scheme
from stages.quantize.stage import run_quantize
from stages.tokenize.stage import TokenizeConfig, run_tokenize
from stages.train.presets import get_preset
from stages.train.stage import run_train

SHORT_RUN = ["train.device=cpu", "train.compile=false", "train.warmup_steps=0", "train.seq_len=256",
             "train.batch_tokens=2048", "train.grad_accum=1", "train.schedule=steps", "train.max_seconds=none",
             "train.val_tokens=8192", "train.log_every=100000", "train.gptq_reserve_seconds=0"]
UNGATED = 2**40


def data_8k(path: Path) -> Path:
    if not (path / "manifest.json").is_file():
        run_tokenize(TokenizeConfig(vocab_size=8192), path)
    return path


def short_top_run(data: Path, out: Path, steps: int) -> Path:
    if not (out / "manifest.json").is_file():
        config = apply_overrides(get_preset("top").config, [*SHORT_RUN, f"train.max_steps={steps}"])
        run_train(config, data, out, preset="top (short CPU run)")
    return out


def measure(scheme: str, target_bytes: int, train: Path, work: Path, device: str, batches: int) -> dict:
    config = apply_overrides(get_scheme(scheme), [f"device={device}", "eval_tokens=16384", f"target_bytes={target_bytes}",
                                                  f"calibration.batches={batches}", "calibration.seq_len=256",
                                                  "calibration.batch_tokens=8192"])
    label = f"{scheme} --target-bytes {target_bytes}" if target_bytes else scheme
    folder = work / label.replace(" ", "_")
    start = time.perf_counter()
    quant = run_quantize(config, train, folder / "quantize", force=True)
    quantize_wall = time.perf_counter() - start
    start = time.perf_counter()
    # Packed without the gate so an over-limit size is measured, not refused; the verdict is reported.
    pack = run_pack(PackConfig(limit=UNGATED), folder / "quantize", folder / "pack", force=True).metrics
    pack_seconds = time.perf_counter() - start
    ledger = quant.ledger
    tensors = quant.metrics["tensors"]
    predicted_weights = sum(row["predicted_bytes"] for row in tensors)
    actual_weights = pack["bytes_total"] - pack["bytes_code"] - pack["bytes_header"]
    return {
        "scheme": label, "device": device, "clip_scale": round(quant.metrics["clip_scale"], 4),
        "calibration_seconds": round(ledger["calibration"]["seconds"], 2),
        "gptq_seconds": round(ledger["quantize"]["seconds"], 2),
        "size_report_seconds": round(ledger["size_report"]["seconds"], 2),
        "quantize_wall_seconds": round(quantize_wall, 2),
        "pack_seconds": round(pack_seconds, 2),
        "predicted_weight_bytes": round(predicted_weights),
        "actual_weight_bytes": actual_weights,
        "weights_error_pct": round(100 * (predicted_weights - actual_weights) / actual_weights, 3),
        "predicted_artifact_bytes": round(predicted_weights + pack["bytes_code"] + pack["bytes_header"]),
        "artifact_bytes": pack["bytes_total"],
        "margin_bytes": SIZE_LIMIT - pack["bytes_total"],
        "gap_bpb_16k_tokens": quant.metrics["quant_gap_bpb"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=6, help="CPU training steps of the short run")
    parser.add_argument("--batches", type=int, default=4, help="calibration batches of 8,192 tokens")
    parser.add_argument("--schemes", nargs="*", default=["gptq-int6", "gptq-lqer"])
    parser.add_argument("--target-bytes", type=int, default=15_990_000,
                        help="also fit the first scheme under this size (0: skip)")
    parser.add_argument("--work", type=Path, default=ROOT / "artifacts" / "bench" / "quant_top")
    args = parser.parse_args()
    data = data_8k(ROOT / "artifacts" / "bench" / "tokenize8k")
    train = short_top_run(data, args.work / "train", args.steps)
    params = StageDir(train).manifest.metrics["params"]
    runs = [(scheme, 0) for scheme in args.schemes] + ([(args.schemes[0], args.target_bytes)] if args.target_bytes else [])
    rows = [{"params": params, **measure(scheme, target, train, args.work, args.device, args.batches)}
            for scheme, target in runs]
    print_table(f"top preset shapes: quantize and pack on {args.device}", rows,
                ["scheme", "params", "calibration_seconds", "gptq_seconds", "pack_seconds", "predicted_weight_bytes",
                 "actual_weight_bytes", "weights_error_pct", "predicted_artifact_bytes", "artifact_bytes", "margin_bytes"])
    save(f"quant_top_{args.device}", rows, {**vars(args), "work": str(args.work)})


if __name__ == "__main__":
    main()
