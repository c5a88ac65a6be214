"""The figures of `./run_all.sh`, read back from its manifests into one table and one JSON file.

    ./run_all.sh && python bench/run_all_summary.py            # artifacts/news -> bench/results/run_all.json

Nothing is measured here: every number comes from a stage manifest that `golf inspect` verifies
(this script refuses a lineage that does not), so the README's run_all table has a file to point
at and a command that regenerates it.
"""

from __future__ import annotations

import argparse

from common import ROOT, print_table, save

from stages.contract.audit import audit_lineage
from stages.contract.ledger import TimeLedger, budget_report
from stages.contract.stage_dir import StageDir


def summarize(run_dir) -> list[dict]:
    """One row per figure the README quotes, each naming the manifest field it comes from."""
    stage = {name: StageDir(run_dir / name) for name in ("tokenize", "train", "quantize", "pack", "eval")}
    sliding = StageDir(run_dir / "eval-sliding64")
    tok, train, quant, pack, ev = (stage[name].manifest.metrics for name in ("tokenize", "train", "quantize", "pack", "eval"))
    ledgers = [TimeLedger.from_dict(stage[name].manifest.ledger) for name in stage]
    budgets = budget_report(ledgers)
    figures = [
        ("documents", tok["documents"], "tokenize.metrics.documents"),
        ("val_tokens", tok["val_tokens"], "tokenize.metrics.val_tokens"),
        ("val_bytes", tok["byte_audit"]["table_bytes"], "tokenize.metrics.byte_audit.table_bytes"),
        ("train_tokens", tok["train_tokens"], "tokenize.metrics.train_tokens"),
        ("params", train["params"], "train.metrics.params"),
        ("train_steps", train["steps"], "train.metrics.steps"),
        ("train_seconds", train["train_seconds"], "train.metrics.train_seconds"),
        ("ms_per_step", train["ms_per_step"], "train.metrics.ms_per_step"),
        ("pre_quant_val_bpb", quant["pre_quant_val_bpb"], "quantize.metrics.pre_quant_val_bpb"),
        ("post_quant_val_bpb", quant["post_quant_val_bpb"], "quantize.metrics.post_quant_val_bpb"),
        ("artifact_val_bpb", ev["val_bpb"], "eval.metrics.val_bpb"),
        ("artifact_minus_in_memory_bpb", ev["artifact_minus_in_memory_bpb"], "eval.metrics.artifact_minus_in_memory_bpb"),
        ("sliding64_val_bpb", sliding.manifest.metrics["val_bpb"], "eval-sliding64.metrics.val_bpb"),
        ("artifact_bytes", pack["bytes_total"], "pack.metrics.bytes_total"),
        ("artifact_code_bytes", pack["bytes_code"], "pack.metrics.bytes_code"),
        ("artifact_margin", pack["margin"], "pack.metrics.margin"),
        ("train_budget_seconds", budgets["train"]["seconds"], "sum of ledger buckets counted toward train"),
        ("eval_budget_seconds", budgets["eval"]["seconds"], "sum of ledger buckets counted toward eval"),
    ]
    return [{"figure": name, "value": value, "source": source} for name, value, source in figures]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="news", help="the run name run_all.sh used (RUN, default news)")
    args = parser.parse_args()
    run_dir = ROOT / "artifacts" / args.run
    problems = [p for check in audit_lineage(run_dir / "eval") for p in check.problems]
    if problems:
        raise SystemExit(f"error: the run does not verify: {problems[0]}")
    rows = summarize(run_dir)
    shown = [{**row, "value": f"{row['value']:.8f}" if isinstance(row["value"], float) else f"{row['value']:,}"}
             for row in rows]  # bpb to 8 decimals, as the leaderboard quotes it
    print_table(f"./run_all.sh (artifacts/{args.run})", shown, ["figure", "value", "source"])
    print(save("run_all", rows, {"run": args.run, "command": "./run_all.sh && python bench/run_all_summary.py"}))


if __name__ == "__main__":
    main()
