"""The report's figures, each drawn only from what the run's stages recorded.

Every function takes the run's stages and returns a matplotlib figure, or raises ``Unavailable``
with the reason when the data it needs was not recorded (the report then says so in one line:
a plot is never drawn from made-up numbers).
"""

from __future__ import annotations

import json
import math

from ..contract.environment import hardware_name
from ..contract.ledger import BUDGET_LIMIT_SECONDS, TimeLedger
from ..train.schedule import momentum_warmup
from .run_folder import RunStages, Unavailable
from .ttt_gain import document_gains

ARTIFACT_LIMIT = 16_000_000
BUDGET_COLORS = {"train": "tab:blue", "eval": "tab:orange", None: "tab:gray"}


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on training machines
    import matplotlib.pyplot as plt

    return plt


def thousands():
    """An axis formatter writing 16,000,000 rather than 1.6e7."""
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda value, _: f"{value:,.0f}")


def _curves(run: RunStages) -> tuple[dict, dict]:
    """The train stage's logged history (curves.json, hash-checked) and its config."""
    train = run.verified("train")
    if "curves" not in train.manifest.outputs:
        raise Unavailable(f"{train.path.name} records no curves.json (trained by an older golf)")
    curves = json.loads(train.file("curves").read_text())
    if not curves.get("train"):
        raise Unavailable(f"{train.path.name}: curves.json holds no train steps")
    return curves, train.manifest.config


def loss_curves(run: RunStages):
    """Train loss per step and val loss at each validation, both in nats per token."""
    curves, _ = _curves(run)
    fig, axis = pyplot().subplots(figsize=(8, 4.2), dpi=100)
    axis.plot([e["step"] for e in curves["train"]], [e["loss"] for e in curves["train"]], lw=0.8, label="train loss")
    if curves.get("val"):
        axis.plot([e["step"] for e in curves["val"]], [e["val_loss"] for e in curves["val"]], "o-", color="tab:red",
                  label="val loss (last point: the exported weights)")
    axis.set(xlabel="step", ylabel="loss (nats/token)", title="train and val loss")
    axis.legend()
    axis.grid(alpha=0.3)
    return fig


def schedules(run: RunStages):
    """Each optimizer's LR (peak x the logged LR scale) and Muon's momentum, as set for the next step."""
    curves, config = _curves(run)
    train = config.get("train", {})
    steps = [e["step"] for e in curves["train"]]
    if "lr_scale" not in curves["train"][0]:
        raise Unavailable("curves.json records no lr_scale per step (trained by an older golf)")
    fig, (lr_axis, momentum_axis) = pyplot().subplots(1, 2, figsize=(10, 3.8), dpi=100)
    names = ["matrix_lr", "embed_lr", "scalar_lr"]
    if not config.get("model", {}).get("tie_embeddings", True):
        names.append("head_lr")
    for name, style in zip(names, ("-", "--", ":", "-.")):  # equal peaks (matrix, scalar) stay visible
        lr_axis.plot(steps, [train[name] * e["lr_scale"] for e in curves["train"]], style, label=name)
    lr_axis.set(xlabel="step", ylabel="learning rate", title="LR (peak x logged scale)")
    lr_axis.legend()
    momentum = [momentum_warmup(step, train["muon_momentum_start"], train["muon_momentum"],
                                train["muon_momentum_warmup_steps"]) for step in steps]
    momentum_axis.plot(steps, momentum, color="tab:purple")
    momentum_axis.set(xlabel="step", ylabel="momentum", title="Muon momentum (config's warm-up)")
    for axis in (lr_axis, momentum_axis):
        axis.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def time_ledger(run: RunStages):
    """Every bucket of every stage, coloured by the budget it counts toward; each budget against 600 s."""
    rows, totals = [], {}
    for folder in run.all():
        ledger = TimeLedger.from_dict(folder.manifest.ledger)
        for name, bucket in ledger.buckets.items():
            rows.append((f"{folder.path.name}.{name}", bucket.seconds, bucket.counts_toward))
        for budget in BUDGET_LIMIT_SECONDS:
            # train: every stage that reads training data adds up; eval: each eval folder is its own run
            key = "train" if budget == "train" else f"eval ({folder.path.name})"
            if ledger.counted(budget) or (budget == "eval" and folder.stage == "eval"):
                totals[key] = totals.get(key, 0.0) + ledger.counted(budget)
    if not rows:
        raise Unavailable("no stage recorded a time ledger")
    plt = pyplot()
    fig, (bucket_axis, budget_axis) = plt.subplots(1, 2, figsize=(11, max(3.5, 0.28 * len(rows) + 1)), dpi=100,
                                                   gridspec_kw={"width_ratios": [3, 2]})
    bucket_axis.barh([r[0] for r in rows], [r[1] for r in rows], color=[BUDGET_COLORS[r[2]] for r in rows])
    bucket_axis.invert_yaxis()
    bucket_axis.set(xlabel="seconds", title="buckets (blue: train budget, orange: eval, gray: neither)")
    budget_axis.barh(list(totals), list(totals.values()),
                     color=["tab:green" if s <= BUDGET_LIMIT_SECONDS["train"] else "tab:red" for s in totals.values()])
    budget_axis.axvline(BUDGET_LIMIT_SECONDS["train"], color="black", ls="--", label="600 s budget")
    budget_axis.invert_yaxis()
    budget_axis.set(xlabel="counted seconds", title="budgets")
    budget_axis.legend(loc="lower right")
    fig.suptitle(f"measured on {_hardware(run)}", fontsize=9)
    fig.tight_layout()
    return fig


def _hardware(run: RunStages) -> str:
    owner = (run.folders.get("train") or run.all())[0]
    return hardware_name(owner.manifest.environment)


def quantization(run: RunStages):
    """Per tensor: the relative error of its stored weights and the bits per weight it is predicted to cost."""
    quantize = run.verified("quantize")
    rows = quantize.manifest.metrics.get("tensors")
    if not rows:
        raise Unavailable(f"{quantize.path.name} records no per-tensor report")
    names = [row["name"] for row in rows]
    colors = ["tab:gray" if row["kind"] == "float" else "tab:blue" for row in rows]
    fig, (error_axis, bits_axis) = pyplot().subplots(1, 2, sharey=True, dpi=100,
                                                     figsize=(11, max(3.5, 0.22 * len(rows) + 1.2)))
    error_axis.barh(names, [max(row["relative_error"], 1e-12) for row in rows], color=colors)
    error_axis.set_xscale("log")
    error_axis.set(xlabel="relative error ||W - Q(W)|| / ||W||", title="quantization error (gray: kept float)")
    bits_axis.barh(names, [row["predicted_bits_per_weight"] for row in rows], color=colors)
    for y, row in enumerate(rows):
        bits_axis.text(row["predicted_bits_per_weight"], y, f" int{row['bits']}" if row["kind"] != "float" else
                       f" {row['method']}", va="center", fontsize=7)
    bits_axis.set(xlabel="predicted bits per weight", title="bits")
    error_axis.invert_yaxis()
    error_axis.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    return fig


def artifact_bytes(run: RunStages):
    """Bytes of each artifact component (code, header, weight groups), and their sum against the limit."""
    pack = run.verified("pack")
    metrics = pack.manifest.metrics
    if "groups" not in metrics or "bytes_total" not in metrics:
        raise Unavailable(f"{pack.path.name} records no byte breakdown")
    parts = {"code": metrics["bytes_code"], "header": metrics["bytes_header"]}
    parts.update({f"weights: {group}": sizes["bytes"] for group, sizes in metrics["groups"].items()})
    limit = metrics.get("limit", ARTIFACT_LIMIT)
    fig, (part_axis, total_axis) = pyplot().subplots(2, 1, figsize=(9, 3.2 + 0.3 * len(parts)), dpi=100,
                                                     gridspec_kw={"height_ratios": [len(parts), 1.4]})
    part_axis.barh(list(parts), list(parts.values()), color="tab:blue")
    for y, value in enumerate(parts.values()):
        part_axis.text(value, y, f" {value:,}", va="center", fontsize=8)
    part_axis.invert_yaxis()
    part_axis.set(xlabel="bytes", title=f"artifact components ({metrics['bytes_total']:,} bytes in all)")
    left = 0
    for name, value in parts.items():
        total_axis.barh(["artifact"], [value], left=left, label=name)
        left += value
    total_axis.axvline(limit, color="red", ls="--", label="limit")
    total_axis.set_xlim(0, max(limit, left) * 1.02)
    total_axis.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.45))
    for axis in (part_axis, total_axis):
        axis.xaxis.set_major_formatter(thousands())
    total_axis.set(xlabel="bytes", title=f"against the {limit:,}-byte limit: {metrics['bytes_total'] / limit:.2%} "
                   f"used, margin {limit - metrics['bytes_total']:,}")
    fig.tight_layout()
    return fig


def ttt_document_gain(run: RunStages):
    """Per document: bits per byte without TTT minus with TTT, on the same targets (above 0: TTT helped)."""
    gains = document_gains(run)
    plt = pyplot()
    fig, (scatter_axis, hist_axis) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100)
    scatter_axis.scatter(gains.doc_bytes, gains.gain_bpb, s=8, alpha=0.6)
    scatter_axis.axhline(0, color="black", lw=0.8)
    scatter_axis.set_xscale("log")
    scatter_axis.set(xlabel="document bytes", ylabel="bpb gain (no TTT - TTT)",
                     title=f"{gains.ttt_eval} vs {gains.plain_eval}")
    hist_axis.hist(gains.gain_bpb, bins=max(10, int(math.sqrt(len(gains.gain_bpb)))), color="tab:green")
    hist_axis.axvline(gains.overall_bpb, color="black", ls="--", label=f"all documents: {gains.overall_bpb:+.4f}")
    hist_axis.set(xlabel="bpb gain", ylabel="documents", title=f"{len(gains.gain_bpb)} documents")
    hist_axis.legend()
    fig.tight_layout()
    return fig


PLOTS = (
    ("loss_curves", "Train and val loss", loss_curves),
    ("schedules", "LR and momentum schedules", schedules),
    ("time_ledger", "Time ledger of every stage against its budget", time_ledger),
    ("quantization", "Per-tensor quantization error and bits", quantization),
    ("artifact_bytes", "Bytes per artifact component against the 16,000,000-byte limit", artifact_bytes),
    ("ttt_document_gain", "Test-time training: gain per document", ttt_document_gain),
)
"""(file stem, heading, figure function) of every plot, in report order."""
