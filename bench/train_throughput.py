"""Training throughput of the baseline and `top` configurations: tok/s, ms/step, MFU, peak memory.

    python bench/train_throughput.py                              # CPU: full widths at seq 256
    python bench/train_throughput.py --device cuda --full-size --compile   # one GPU's share of the record batch

Synthetic tokens (the loader is not what is measured); a few untimed warm-up steps, then the
median of the timed steps. Saves bench/results/train_throughput_<device>.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import print_table, save

from stages.config import apply_overrides
from stages.model.gpt import GPT, count_parameters
from stages.train.loop import RandomTokens, Trainer
from stages.train.presets import get_preset
from stages.train.stage import PEAK_FLOPS, flops_per_token


# The records split their batch over 8 GPUs, one micro-batch each; --full-size times one GPU's share.
RECORD_GPUS = 8


def shape(name: str, args) -> tuple[int, int, list[str]]:
    """(seq_len, batch tokens per step, the overrides that keep the preset's row) for this
    configuration: --full-size keeps a document-packed preset's own rows (top: one packed row of
    98,304 tokens, as its loader gives each GPU), not rows cut from the smaller batch."""
    train = get_preset(name).config.train
    if not args.full_size:
        return args.seq_len, args.batch_tokens, []
    packed = [f"train.pack_tokens={train.row_tokens}"] if train.loader == "doc_packed" else []
    return train.seq_len, train.batch_tokens // RECORD_GPUS, packed


def measure(name: str, args) -> dict:
    seq_len, batch_tokens, row = shape(name, args)
    config = apply_overrides(get_preset(name).config, [
        *row, f"train.seq_len={seq_len}", f"train.batch_tokens={batch_tokens}", "train.grad_accum=1",
        f"train.device={args.device}", f"train.compile={args.compile}", "train.max_steps=1000000",
        "train.max_seconds=none", "train.schedule=steps", "model.loop_start_frac=0",
    ])
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = GPT(config.model).to(device)
    trainer = Trainer(model, config, RandomTokens(config.model.vocab_size, 0), device)
    for _ in range(args.warmup):
        trainer.train_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        trainer.train_step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    tok_s = batch_tokens / step_s
    fpt = flops_per_token(model, seq_len)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    peak = next((v for k, v in PEAK_FLOPS.items() if k in gpu), None)
    return {
        "config": name, "compiled": args.compile, "params": count_parameters(model), "seq_len": seq_len,
        "row_tokens": config.train.row_tokens, "batch_tokens": batch_tokens,
        "ms_per_step": round(1000 * step_s, 2), "tokens_per_second": round(tok_s, 1),
        "achieved_tflops": round(fpt * tok_s / 1e12, 4), "mfu": round(fpt * tok_s / peak, 4) if peak else None,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
        "steps_timed": args.steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="*", default=["baseline", "top"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-tokens", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--full-size", action="store_true",
                        help="each preset's own sequence length and 1/8 of its batch (one GPU of eight)")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--tag", default="", help="suffix of the results file name")
    args = parser.parse_args()
    rows = [measure(name, args) for name in args.configs]
    print_table(f"training throughput on {args.device}", rows,
                ["config", "compiled", "params", "seq_len", "row_tokens", "batch_tokens", "ms_per_step", "tokens_per_second",
                 "achieved_tflops", "mfu", "peak_memory_gib"])
    save(f"train_throughput_{args.device}{args.tag}", rows, vars(args))


if __name__ == "__main__":
    main()
