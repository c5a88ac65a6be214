"""README.md of a submission, rendered from the rows, the compliance statements and the ledgers.

Every number and every PASS/FAIL comes from the manifests (``records.py``); only the
submission's name and blurb are the author's words.
"""

from __future__ import annotations

from ..contract.manifest import STAGES
from .records import recipe_text, totals
from .runs import SeedRun

RESULT_COLUMNS = (("seed", "Seed"), ("steps", "Steps"), ("train_time_s", "Train s"),
                  ("pre_quant_val_bpb", "Pre-quant BPB"), ("post_quant_val_bpb", "Post-quant BPB"),
                  ("val_bpb", "**val_bpb**"), ("artifact_bytes", "Artifact bytes"), ("eval_time_s", "Eval s"))
MEAN_KEYS = ("pre_quant_val_bpb", "post_quant_val_bpb", "val_bpb")


def render_readme(info, runs: list[SeedRun], rows: list[dict], facts: dict, submission: dict) -> str:
    summary = totals(rows)
    std = summary["val_bpb_std"]
    lines = [f"# {info.name}", "",
             f"**val_bpb {summary['val_bpb']:.8f}** (mean of {len(rows)} seed{'s' if len(rows) > 1 else ''}"
             f"{f', std {std:.8f}' if std is not None else ''}), val_loss {summary['val_loss']:.8f} nats/token.", ""]
    if info.blurb:
        lines += [info.blurb, ""]
    lines += ["## Recipe", "", *recipe_text(runs[0]),
              "- every resolved setting: `RECIPE` in train_gpt.py", "",
              "## Results", "", *results_table(rows, summary), "",
              "## Time ledgers", "", "Seconds per stage and bucket, per seed; the budget each bucket counts toward.",
              "", *ledger_table(runs), "",
              "## Compliance", "", "Computed by `golf submit` from the runs' manifests.", "",
              *compliance_lines(facts, submission), "",
              "## What is counted", "",
              f"The counted code is train_gpt.py's real bytes ({submission['bytes_code']:,}): it carries golf's code "
              "for every stage, lzma-compressed and base85-encoded, and the full recipe in plain text. The model "
              "bytes are the real bytes of each seed's packed artifact (model.golf), which itself ships the code "
              "that evaluates it (counted a second time). `golf pack --check <this folder>` repeats the sum with the "
              "file as it is now.", "",
              "## Reproduce", "",
              "```bash", "pip install -r requirements.txt", f"SEED={rows[0]['seed']} {launch_command(runs[0])}",
              "```", "",
              "It trains, quantizes, packs and evaluates one seed with the settings above and prints val_bpb beside "
              "the submitted one; with the runs' process count "
              f"({runs[0].train.manifest.metrics.get('world_size', 1)}), as the data order depends on it. "
              "Data locations: see the top of train_gpt.py.", ""]
    return "\n".join(lines)


def launch_command(run: SeedRun) -> str:
    """How the runs were launched: one process, or torchrun with as many as train had."""
    world = run.train.manifest.metrics.get("world_size", 1)
    return "python train_gpt.py" if world == 1 else f"torchrun --standalone --nproc_per_node={world} train_gpt.py"


def results_table(rows: list[dict], summary: dict) -> list[str]:
    lines = ["| " + " | ".join(title for _, title in RESULT_COLUMNS) + " |",
             "|" + "-|" * len(RESULT_COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(key, row[key]) for key, _ in RESULT_COLUMNS) + " |")
    means = [_cell(key, summary[key]) if key in MEAN_KEYS else "" for key, _ in RESULT_COLUMNS[1:]]
    lines.append("| **Mean** | " + " | ".join(means) + " |")
    return lines


def _cell(key: str, value) -> str:
    if key == "val_bpb":
        return f"**{value:.8f}**"
    if isinstance(value, float):
        return f"{value:.8f}" if "bpb" in key else f"{value:.2f}"
    return f"{value:,}" if isinstance(value, int) and key != "seed" else str(value)


def ledger_table(runs: list[SeedRun]) -> list[str]:
    """One row per stage and bucket, one column per seed."""
    rows: dict[tuple[str, str], dict] = {}
    for column, run in enumerate(runs):
        for stage, ledger in zip(STAGES, run.ledgers()):
            for name, bucket in ledger.buckets.items():
                row = rows.setdefault((stage, name), {"counts": bucket.counts_toward or "-", "seconds": {}})
                row["seconds"][column] = bucket.seconds
    header = ["Stage", "Bucket", "Counts toward", *(f"seed {run.seed}" for run in runs)]
    lines = ["| " + " | ".join(header) + " |", "|" + "-|" * len(header)]
    for (stage, name), row in rows.items():
        seconds = [f"{row['seconds'][c]:.2f}" if c in row["seconds"] else "" for c in range(len(runs))]
        lines.append("| " + " | ".join([stage, name, row["counts"], *seconds]) + " |")
    return lines


def compliance_lines(facts: dict, submission: dict) -> list[str]:
    size, train, evaluation, split = facts["size"], facts["train_budget"], facts["eval_budget"], facts["train_val"]
    hardware = facts["measured_on"]
    where = "" if facts["on_challenge_hardware"] else (" These seconds were measured on this hardware, not on "
                                                       "8xH100 SXM: the verdict says nothing about the challenge's.")
    disjoint = "PASS" if split["disjoint"] else "FAIL"
    return [
        f"- **Size: {size['verdict']}.** Largest seed: {size['bytes_total_max']:,} bytes (train_gpt.py "
        f"{size['bytes_code']:,} + artifact) of {size['limit']:,}.",
        f"- **Training budget: {train['verdict']}.** At most {train['seconds_max']:.2f} s of {train['limit']:g} s "
        f"count toward it (every seed's ledgers), measured on {hardware}.{where}",
        f"- **Evaluation budget: {evaluation['verdict']}.** At most {evaluation['seconds_max']:.2f} s of "
        f"{evaluation['limit']:g} s, measured on {hardware}.",
        f"- **Train/val disjoint: {disjoint}.** Val documents {_span(split['val_docs'])}, train documents "
        f"{_span(split['train_docs'])}; {split['val_docs_in_train']} val documents occur verbatim in train.",
        f"- **Lineage verified: {'PASS' if facts['lineage_verified'] else 'FAIL'}.** Every hash from tokenize to "
        f"eval of every seed matched when this folder was written; all seeds ran the same code "
        f"(golf {str(submission['golf']['code_sha256'])[:12]}, artifact bundle "
        f"{str(submission['golf']['bundle_sha256'])[:12]}).",
        f"- **Full val scored: {'PASS' if facts['full_val_scored'] else 'FAIL'}**, bytes counted from the "
        f"{', '.join(facts['byte_source'])}.",
        f"- **Significance:** {facts['significance']['note']} ({facts['significance']['rule']}).",
    ]


def _span(pair) -> str:
    """A half-open document range as [start, end)."""
    return f"[{pair[0]:,}, {pair[1]:,})" if pair else "(not recorded)"
