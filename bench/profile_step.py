"""Where one training step's time goes: a torch.profiler table per component, and the step's
tokens/s and optimizer share before and after a change, measured side by side.

    python bench/profile_step.py                                  # CPU: tiny and top-cpu, profile + before/after
    python bench/profile_step.py --no-compare                     # the profile only
    python bench/profile_step.py --skip-profile --nproc 2         # before/after on two gloo ranks
    python bench/profile_step.py --device cuda --full-size --presets baseline top --no-compare
                                                                  # one GPU's share of the record batch

Profile: the components are the trainer's own ``record_function`` regions (data, forward, backward,
communication, optimizer, ema) inside a ``step`` region this script adds; a few untimed warm-up
steps, then ``--steps`` profiled ones. ``--full-size`` runs each preset's record shape per GPU (its
batch over 8 GPUs; a doc-packed preset as one packed row of that many tokens, 98,304 for ``top``).
The Chrome trace goes to bench/results/traces/ (not committed), the table to
bench/results/profile_step_<device>.json.

Before/after (CPU): the same timing worker runs against this tree and against ``--base`` (checked
out into a temporary git worktree), alternating, in fresh processes with ``--threads`` threads.
The optimizer share is the time inside the optimizers' ``step()`` over the whole step, measured the
same way in both trees; the gradient averaging (communication) and the EMA update are reported
apart. Saved to bench/results/step_before_after[_nprocN].json.
Synthetic tokens; torch.compile off in the comparison (the step's structure is what is measured).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

COMPONENTS = ("data", "forward", "backward", "communication", "optimizer", "ema")
# The records split their batch over 8 GPUs, one micro-batch each; --full-size runs one GPU's share.
RECORD_GPUS = 8


def run_config(preset: str, device: str, full_size: bool, compile_: bool):
    """The preset's config for a bench step: synthetic data, no budget, looping on from step 0."""
    from stages.config import apply_overrides
    from stages.train.presets import get_preset

    config = get_preset(preset).config
    overrides = ["train.grad_accum=1", f"train.device={device}", f"train.compile={compile_}",
                 "train.max_steps=1000000", "train.max_seconds=none", "train.schedule=steps",
                 "model.loop_start_frac=0"]
    if full_size:
        batch = config.train.batch_tokens // RECORD_GPUS
        overrides.append(f"train.batch_tokens={batch}")
        if config.train.loader == "doc_packed":
            overrides.append(f"train.pack_tokens={batch}")
    return apply_overrides(config, overrides)


def build_trainer(preset: str, device: str, full_size: bool = False, compile_: bool = False):
    from stages.model.gpt import GPT
    from stages.train.loop import RandomTokens, Trainer

    config = run_config(preset, device, full_size, compile_)
    torch.manual_seed(0)
    model = GPT(config.model).to(device)
    return Trainer(model, config, RandomTokens(config.model.vocab_size, 0), torch.device(device))


def finish_step(trainer) -> None:
    """Wait for the step's device work."""
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()


# ---- the timing worker: runs against whichever tree is first on sys.path ----

def time_steps(preset: str, steps: int, warmup: int) -> dict:
    """Median step time and the optimizers' share of the step, by wrapping ``step()`` of each
    optimizer, the gradient averaging and the EMA update with a clock (the same in any tree that
    has a Trainer; the averaging is ``_reduce`` here, ``_sync_gradients`` before)."""
    trainer = build_trainer(preset, "cpu")
    spent = {"optimizer": 0.0, "ema": 0.0, "communication": 0.0}

    def clocked(fn, key):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            spent[key] += time.perf_counter() - start
            return out
        return wrapper

    for optimizer in trainer.optimizers:
        optimizer.step = clocked(optimizer.step, "optimizer")
    if trainer.ema is not None:
        trainer.ema.update = clocked(trainer.ema.update, "ema")
    averaging = "_reduce" if hasattr(trainer, "_reduce") else "_sync_gradients"
    setattr(trainer, averaging, clocked(getattr(trainer, averaging), "communication"))
    for _ in range(warmup):
        float(trainer.train_step())
    spent.update(optimizer=0.0, ema=0.0, communication=0.0)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        float(trainer.train_step())
        times.append(time.perf_counter() - start)
    total = sum(times)
    return {"ms_per_step": 1000 * statistics.median(times), "batch_tokens": trainer.tcfg.batch_tokens,
            "optimizer_share": spent["optimizer"] / total, "ema_share": spent["ema"] / total,
            "communication_share": spent["communication"] / total, "optimizer_ms": 1000 * spent["optimizer"] / steps}


def rank_worker(rank: int, world: int, store: str, out: str, root: str, preset: str, steps: int, warmup: int,
                threads: int) -> None:
    """One gloo rank of a multi-process timing run; rank 0 writes the result."""
    import torch.distributed as dist

    sys.path.insert(0, root)
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", store=dist.FileStore(store, world), rank=rank, world_size=world)
    try:
        result = time_steps(preset, steps, warmup)
        if rank == 0:
            Path(out).write_text(json.dumps(result))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def worker_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--preset", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--warmup", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--nproc", type=int, required=True)
    args = parser.parse_args(argv)
    if args.nproc == 1:
        sys.path.insert(0, args.root)
        torch.set_num_threads(args.threads)
        print(json.dumps(time_steps(args.preset, args.steps, args.warmup)))
        return
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        mp.spawn(rank_worker, args=(args.nproc, str(Path(tmp) / "store"), str(out), args.root, args.preset,
                                    args.steps, args.warmup, args.threads), nprocs=args.nproc)
        print(out.read_text())


# ---- the profile (this tree) ----

def profile(preset: str, args, traces: Path) -> dict:
    from torch.profiler import ProfilerActivity, record_function

    trainer = build_trainer(preset, args.device, args.full_size, args.compile)
    for _ in range(args.warmup):
        trainer.train_step()
    finish_step(trainer)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if trainer.device.type == "cuda" else [])
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(args.steps):
            with record_function("step"):
                trainer.train_step()
                finish_step(trainer)
    trace = traces / f"profile_step_{preset}_{args.device}.json"
    prof.export_chrome_trace(str(trace))
    events = {event.key: event for event in prof.key_averages()}

    def ms(name: str, kind: str) -> float:
        event = events.get(name)
        if event is None:
            return 0.0
        total = event.cpu_time_total if kind == "cpu" else getattr(event, "device_time_total",
                                                                    getattr(event, "cuda_time_total", 0.0))
        return total / 1000 / args.steps

    step_ms = ms("step", "cpu")
    row = {"config": preset, "device": args.device, "batch_tokens": trainer.tcfg.batch_tokens,
           "row_tokens": trainer.tcfg.row_tokens, "step_ms": round(step_ms, 3),
           "tokens_per_second": round(trainer.tcfg.batch_tokens / (step_ms / 1000), 1),
           "trace": str(trace.relative_to(ROOT))}
    for name in COMPONENTS:
        row[f"{name}_ms"] = round(ms(name, "cpu"), 3)
        row[f"{name}_share"] = round(ms(name, "cpu") / step_ms, 4)
        if trainer.device.type == "cuda":
            row[f"{name}_device_ms"] = round(ms(name, "device"), 3)
    if trainer.device.type == "cuda":
        row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return row


# ---- before / after, alternating ----

def timed_in(root: Path, preset: str, args) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--root", str(root), "--preset", preset,
               "--steps", str(args.steps_compare), "--warmup", str(args.warmup), "--threads", str(args.threads),
               "--nproc", str(args.nproc)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=root)
    if done.returncode:
        raise SystemExit(f"timing worker failed in {root}:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(args) -> list[dict]:
    """Alternate before and after ``args.rounds`` times per preset; medians over the rounds."""
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.base],
                       check=True, capture_output=True)
        try:
            rows = []
            for preset in args.presets:
                runs = {"before": [], "after": []}
                for round_ in range(args.rounds):
                    order = [("before", base), ("after", ROOT)]
                    for label, root in order if round_ % 2 == 0 else order[::-1]:
                        runs[label].append(timed_in(root, preset, args))
                rows.extend(summarize(preset, label, results, args.base) for label, results in runs.items())
            return rows
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=False,
                           capture_output=True)


def summarize(preset: str, label: str, results: list[dict], base: str) -> dict:
    ms = statistics.median(r["ms_per_step"] for r in results)
    return {"config": preset, "code": f"{label} ({base})" if label == "before" else "after (this tree)",
            "ms_per_step": round(ms, 2), "tokens_per_second": round(results[0]["batch_tokens"] / (ms / 1000), 1),
            "optimizer_ms": round(statistics.median(r["optimizer_ms"] for r in results), 3),
            "optimizer_share": round(statistics.median(r["optimizer_share"] for r in results), 4),
            "communication_share": round(statistics.median(r["communication_share"] for r in results), 4),
            "ema_share": round(statistics.median(r["ema_share"] for r in results), 4), "rounds": len(results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="*", default=["tiny", "top-cpu"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--full-size", action="store_true", help="the record's per-GPU shape (batch / 8)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the loss in the profile")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-compare", action="store_true", help="skip the before/after timing")
    parser.add_argument("--base", default="f9d32a8", help="the git revision 'before' is")
    parser.add_argument("--rounds", type=int, default=3, help="before/after alternations per preset")
    parser.add_argument("--steps-compare", type=int, default=8, help="timed steps per worker run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on CPU (profile and timing workers)")
    parser.add_argument("--nproc", type=int, default=1, help="gloo ranks of each timing run (batch split over them)")
    parser.add_argument("--skip-profile", action="store_true", help="only the before/after timing")
    args = parser.parse_args()
    if args.device == "cpu":  # the profile and the comparison on the same thread count
        torch.set_num_threads(args.threads)
    traces = RESULTS / "traces"
    traces.mkdir(parents=True, exist_ok=True)
    if not args.skip_profile:
        rows = [profile(preset, args, traces) for preset in args.presets]
        columns = ["config", "step_ms", "tokens_per_second", *[f"{c}_share" for c in COMPONENTS]]
        print_table(f"one training step by component on {args.device} (profiler CPU time)", rows, columns)
        if args.device == "cuda":
            print_table("device time per component (ms)", rows,
                        ["config", "step_ms", *[f"{c}_device_ms" for c in COMPONENTS], "peak_memory_gib"])
        save(f"profile_step_{args.device}{'_full' if args.full_size else ''}", rows, vars(args))
    if args.no_compare or args.device != "cpu":
        return
    rows = compare(args)
    print_table(f"before ({args.base}) and after, alternating, {args.nproc} process(es) x {args.threads} thread(s)",
                rows, ["config", "code", "ms_per_step", "tokens_per_second", "optimizer_ms", "optimizer_share",
                       "communication_share", "ema_share", "rounds"])
    save(f"step_before_after{f'_nproc{args.nproc}' if args.nproc > 1 else ''}", rows, vars(args))


if __name__ == "__main__":
    if "--worker" in sys.argv:  # a timing worker: import nothing of this tree before --root is on the path
        sys.argv.remove("--worker")
        worker_main(sys.argv[1:])
    else:
        from common import RESULTS, ROOT, print_table, save
        main()
