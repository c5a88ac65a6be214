"""The numbers and statements of a submission, all read from the runs' manifests (never typed).

``seed_row`` is one seed's line of results, ledgers and verdicts; ``compliance`` turns the rows
and the data's split record into the statements README.md and submission.json make; ``recipe_text``
describes the recipe in a few lines. The size of a seed is the real bytes of train_gpt.py plus the
real bytes of its packed artifact.
"""

from __future__ import annotations

from ..contract.environment import hardware_name
from ..contract.ledger import BUDGET_LIMIT_SECONDS, budget_report
from ..pack.gate import SizeVerdict
from ..results.significance import Summary
from ..results.stats import Baseline
from .runs import SeedRun
from .summary import significance

CHALLENGE_GPUS = 8
CHALLENGE_GPU = "H100"


def seed_row(run: SeedRun, code_bytes: int, limit: int) -> dict:
    """One seed: steps, the three scores, seconds per budget, artifact bytes and every verdict."""
    budgets = budget_report(run.ledgers())
    artifact_bytes = run.artifact.stat().st_size
    train, quantize, evaluation = (stage.manifest.metrics for stage in (run.train, run.quantize, run.eval))
    size = SizeVerdict(code_bytes + artifact_bytes, limit)
    return {
        "seed": run.seed,
        "steps": train["steps"],
        "train_time_s": budgets["train"]["seconds"],
        "pre_quant_val_bpb": quantize["pre_quant_val_bpb"],
        "post_quant_val_bpb": quantize["post_quant_val_bpb"],
        "val_loss": evaluation["val_loss"],
        "val_bpb": evaluation["val_bpb"],
        "artifact_bytes": artifact_bytes,
        "bytes_total": size.bytes_total,
        "eval_time_s": budgets["eval"]["seconds"],
        "tokens_scored": evaluation["tokens_scored"],
        "byte_source": evaluation["byte_source"],
        "verdicts": {"size": size.verdict, "train_budget": budgets["train"]["verdict"],
                     "eval_budget": budgets["eval"]["verdict"]},
    }


def on_challenge_hardware(environment: dict) -> bool:
    gpus = environment.get("gpus") or []
    return len(gpus) == CHALLENGE_GPUS and all(CHALLENGE_GPU in gpu for gpu in gpus)


def compliance(runs: list[SeedRun], rows: list[dict], code_bytes: int, limit: int,
               baseline: Baseline = Baseline("none")) -> dict:
    """Every compliance statement, each a value computed from the manifests and its verdict."""
    split = runs[0].tokenize.manifest.metrics.get("split", {})
    environment = runs[0].train.manifest.environment
    worst = {key: max(row[key] for row in rows) for key in ("bytes_total", "train_time_s", "eval_time_s")}

    def verdict(name: str) -> str:
        return "PASS" if all(row["verdicts"][name] == "PASS" for row in rows) else "FAIL"

    return {
        "size": {"bytes_code": code_bytes, "bytes_total_max": worst["bytes_total"], "limit": limit,
                 "verdict": verdict("size")},
        "train_budget": {"seconds_max": worst["train_time_s"], "limit": BUDGET_LIMIT_SECONDS["train"],
                         "verdict": verdict("train_budget")},
        "eval_budget": {"seconds_max": worst["eval_time_s"], "limit": BUDGET_LIMIT_SECONDS["eval"],
                        "verdict": verdict("eval_budget")},
        "measured_on": hardware_name(environment),
        "on_challenge_hardware": on_challenge_hardware(environment),
        "train_val": {"val_docs": split.get("val_docs"), "train_docs": split.get("train_docs"),
                      "val_docs_in_train": split.get("val_docs_in_train"),
                      "disjoint": bool(split.get("disjoint")) and split.get("val_docs_in_train") == 0},
        "lineage_verified": True,  # load_run refuses a run whose lineage does not verify
        "byte_source": sorted({row["byte_source"] for row in rows}),
        "full_val_scored": True,  # load_run refuses a partial score
        "significance": significance([run.eval.path for run in runs], baseline),
    }


def totals(rows: list[dict]) -> dict:
    """Mean and standard deviation over the seeds of every score."""
    out = {}
    for key in ("val_loss", "val_bpb", "pre_quant_val_bpb", "post_quant_val_bpb"):
        summary = Summary.of([row[key] for row in rows])
        out[key], out[f"{key}_std"] = summary.mean, summary.std
    return out


def recipe_text(run: SeedRun) -> list[str]:
    """A few lines describing the recipe; the full resolved config is RECIPE in train_gpt.py."""
    train = run.train.manifest.config
    model, loop = train["model"], train["train"]
    quantize, pack, evaluation = run.quantize.manifest.config, run.pack.manifest.config, run.eval.manifest.config
    metrics = run.eval.manifest.metrics
    groups = ", ".join(f"{group} int{quantize[group]['bits']}" for group in ("attention", "mlp", "embedding", "other")
                       if isinstance(quantize.get(group), dict))
    return [
        f"- preset `{train.get('preset')}`; model {model['num_layers']} layers x {model['model_dim']}, "
        f"{model['num_heads']} heads / {model['num_kv_heads']} KV heads, MLP {model['mlp_mult']}x "
        f"{model['mlp_activation']}, vocab {model['vocab_size']}, "
        f"{run.train.manifest.metrics.get('params', 0):,} parameters",
        f"- training: seq {loop['seq_len']}, {loop['batch_tokens']:,} tokens/step, at most {loop['max_steps']} steps"
        f"{_time_cap(loop['max_seconds'])}, schedule {loop['schedule']}",
        f"- quantization: {quantize['method']} ({groups}); artifact: {pack['codec']} (codes {pack['codes_codec']}), "
        f"code {pack['code_codec']}",
        f"- evaluation: {metrics['mode']} windows of {metrics['seq_len']} (stride {metrics['stride']}), "
        f"test-time training {evaluation['ttt']['mode']}, bytes from the {metrics['byte_source']}",
        f"- data: tokenizer sha256 {run.tokenize.lineage['tokenizer_sha256'][:16]}..., vocab "
        f"{run.tokenize.lineage['vocab_size']}, {run.tokenize.manifest.metrics.get('val_tokens', 0):,} val tokens",
    ]


def _time_cap(max_seconds: float | None) -> str:
    """The wall-clock cap as the recipe line says it (none: the run ends by steps)."""
    return "" if max_seconds is None else f" or {max_seconds:g} s"
