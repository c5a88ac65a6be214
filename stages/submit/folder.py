"""`golf submit`: runs of several seeds -> a records folder the challenge accepts.

The folder holds README.md and submission.json (generated from the manifests), each seed's train
and eval log, requirements.txt and train_gpt.py (see ``script.py``). It is written like a stage
folder (``StageWriter``: a temporary sibling renamed into place, a manifest of every file's hash,
stage 'submit' with one input per seed's eval folder), so an existing --out is replaced only with
--force and only when it is golf's own submission folder, and `golf inspect` audits it. Nothing
is written when the runs do not verify, disagree, or any seed is over the size limit.
``check_submission`` is `golf pack --check FOLDER`: the real bytes of train_gpt.py plus each
seed's artifact bytes, against the limit.
"""

from __future__ import annotations

import ast
import json
import sys
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from ..contract.stage_dir import StageDir, StageWriter, atomic_write_text
from ..errors import GolfError
from ..pack.config import SIZE_LIMIT
from ..pack.gate import SIZE_EXIT_CODE, SizeCheck, SizeVerdict
from ..progress import Reporter
from ..results.stats import Baseline
from .readme import render_readme
from .records import compliance, seed_row, totals
from .runs import SeedRun, check_agreement, data_identity, load_run, recipe
from .script import PACKAGE, render_script, shipped_sources

STAGE = "submit"
SCRIPT_FILE = "train_gpt.py"
SUBMISSION_FILE = "submission.json"
README_FILE = "README.md"
REQUIREMENTS_FILE = "requirements.txt"
TRACK = "10min_16mb"
# Where train_gpt.py looks for data unless told otherwise: the challenge's layout for an imported
# export, a copied tokenize folder otherwise.
CHALLENGE_DATA = "./data/datasets/fineweb10B_sp{vocab}"
CHALLENGE_TOKENIZER = "./data/tokenizers/fineweb_{vocab}_bpe.model"
TOKENIZE_DIR = "./data/tokenize"


@dataclass(frozen=True)
class SubmissionInfo:
    """The fields of submission.json a person chooses."""

    name: str
    """Title of the submission."""
    author: str = ""
    """Author's name."""
    github_id: str = ""
    """Author's GitHub handle."""
    blurb: str = ""
    """One paragraph on what is new."""


def make_submission(run_names: list[str], out: str | Path, info: SubmissionInfo, limit: int = SIZE_LIMIT,
                    force: bool = False, reporter: Reporter | None = None, baseline: Baseline = Baseline("none")):
    """Verify the runs, render every file and write the folder (with the record test against
    ``baseline`` when one is given); returns its manifest."""
    reporter = reporter or Reporter()
    if not run_names:
        raise GolfError("give at least one run")
    runs = [load_run(name) for name in run_names]
    check_agreement(runs)
    runs.sort(key=lambda run: run.seed)
    info = replace(info, name=info.name or f"golf {runs[0].train.manifest.config.get('preset')}, {len(runs)} seeds")
    files = shipped_sources()
    script = render_script(info.name, script_recipe(runs), files)
    code_bytes = len(script.encode("utf-8"))
    rows = [seed_row(run, code_bytes, limit) for run in runs]
    for row in rows:
        if row["verdicts"]["size"] == "FAIL":
            verdict = SizeVerdict(row["bytes_total"], limit)
            raise GolfError(f"seed {row['seed']}: {verdict.over_limit_message('code + artifact')} "
                            f"(train_gpt.py {code_bytes:,} + artifact {row['artifact_bytes']:,}); nothing written",
                            exit_code=SIZE_EXIT_CODE)
    facts = compliance(runs, rows, code_bytes, limit, baseline)
    submission = submission_fields(info, runs, rows, facts, code_bytes)
    with StageWriter(out, STAGE, force, reporter) as writer:
        texts = {SCRIPT_FILE: script, SUBMISSION_FILE: json.dumps(submission, indent=2) + "\n",
                 REQUIREMENTS_FILE: requirements(files, runs[0]),
                 README_FILE: render_readme(info, runs, rows, facts, submission)}
        for run in runs:
            texts[f"train_seed{run.seed}.log"] = run.train.file("log").read_text(encoding="utf-8")
            texts[f"eval_seed{run.seed}.log"] = run.eval.file("log").read_text(encoding="utf-8")
        for name, text in texts.items():
            atomic_write_text(writer.path(name), text)
            writer.add_output(name)
        for run in runs:
            writer.add_input(f"seed{run.seed}", run.eval)
        reporter.log(stage=STAGE, seeds=",".join(str(row["seed"]) for row in rows), val_bpb=submission["val_bpb"],
                     bytes_code=code_bytes, bytes_total=submission["bytes_total"], limit=limit,
                     files_shipped=len(files), out=str(out))
        return writer.commit({"runs": [str(name) for name in run_names], "limit": limit, **asdict(info)},
                             dict(runs[0].tokenize.lineage),
                             {key: submission[key] for key in ("val_bpb", "val_loss", "bytes_total", "bytes_code")},
                             reporter.text())


def script_recipe(runs: list[SeedRun]) -> dict:
    """What train_gpt.py embeds: the shared recipe, the first seed's training config, where the data
    is expected, and each seed's submitted score."""
    first = runs[0]
    shared = recipe(first)
    train = {key: value for key, value in first.train.manifest.config.items() if key != "preset"}
    vocab = first.tokenize.lineage["vocab_size"]
    data = {**data_identity(first.tokenize), "data_path": CHALLENGE_DATA.format(vocab=vocab),
            "tokenizer_path": CHALLENGE_TOKENIZER.format(vocab=vocab), "tokenize_dir": TOKENIZE_DIR,
            "tokenize_args": tokenize_args(first.tokenize.manifest.config)}
    return {"seeds": [run.seed for run in runs], "preset": shared["preset"], "train": train,
            "quantize": shared["quantize"], "pack": shared["pack"], "eval": shared["eval"], "data": data,
            "expected": {str(run.seed): {key: run.eval.manifest.metrics[key] for key in ("val_loss", "val_bpb")}
                         for run in runs}}


def tokenize_args(config: dict) -> str:
    """The `golf tokenize` flags that made a tokenize folder (from its recorded config)."""
    if "import" in config:
        return f"--import {config['import']} --tokenizer {config['tokenizer']}"
    flags = (("source", "--source"), ("input", "--input"), ("vocab_size", "--vocab-size"), ("spec", "--spec"),
             ("val_docs", "--val-docs"), ("max_docs", "--max-docs"), ("tokenizer", "--tokenizer"))
    return " ".join(f"{flag} {config[key]}" for key, flag in flags if config.get(key) is not None)


def submission_fields(info: SubmissionInfo, runs: list[SeedRun], rows: list[dict], facts: dict,
                      code_bytes: int) -> dict:
    """submission.json: the challenge's fields, then per-seed results, hardware, versions and compliance."""
    summary = totals(rows)
    environment = runs[0].train.manifest.environment
    return {
        **asdict(info),
        "date": datetime.now(timezone.utc).date().isoformat(),
        "track": TRACK,
        "val_loss": summary["val_loss"],
        "val_bpb": summary["val_bpb"],
        "val_loss_std": summary["val_loss_std"],
        "val_bpb_std": summary["val_bpb_std"],
        "bytes_total": max(row["bytes_total"] for row in rows),
        "bytes_code": code_bytes,
        "seeds": [row["seed"] for row in rows],
        "seed_results": {str(row["seed"]): {key: value for key, value in row.items() if key != "seed"} for row in rows},
        "hardware": facts["measured_on"],
        "pytorch_version": environment.get("torch"),
        "compliance": facts,
        "golf": {"generator": "golf submit", "preset": runs[0].train.manifest.config.get("preset"),
                 "code_sha256": environment.get("code_sha256"), "git_commit": environment.get("git_commit"),
                 "bundle_sha256": runs[0].eval.manifest.metrics.get("code_sha256")},
    }


def requirements(files: dict[str, str], run: SeedRun) -> str:
    """The third-party packages the shipped code imports, at the versions installed here; torch as a
    comment with the version the runs used (its build depends on the machine)."""
    imported = {module.split(".")[0] for source in files.values() for module in third_party_imports(source)}
    distributions = metadata.packages_distributions()
    lines = [f"# torch=={run.train.manifest.environment.get('torch')} was used; install the build for your machine first"]
    missing = []
    for module in sorted(imported - {"torch"}):
        names = distributions.get(module)
        if names:
            lines.append(f"{names[0]}=={metadata.version(names[0])}")
        else:
            missing.append(module)
    if missing:
        lines.append(f"# imported only where available (GPU kernels): {', '.join(missing)}")
    return "\n".join(lines) + "\n"


def third_party_imports(source: str) -> list[str]:
    """Top-level modules ``source`` imports that are neither golf's nor the standard library's."""
    modules = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.append(node.module)
    return [m for m in modules if m.split(".")[0] not in sys.stdlib_module_names and m.split(".")[0] != PACKAGE]


def check_submission(folder: str | Path, limit: int = SIZE_LIMIT) -> SizeCheck:
    """`golf pack --check FOLDER`: train_gpt.py's real bytes plus the largest artifact of the seeds
    (as packed, recorded in the hash-checked submission.json), against the limit."""
    submitted = StageDir(folder, STAGE)
    fields = json.loads(submitted.file(SUBMISSION_FILE).read_text(encoding="utf-8"))
    script = submitted.path / SCRIPT_FILE
    if not script.is_file():
        raise GolfError(f"{folder}: no {SCRIPT_FILE}")
    code_bytes = script.stat().st_size
    artifact_bytes = max(result["artifact_bytes"] for result in fields["seed_results"].values())
    counts = {"bytes_code": code_bytes, "bytes_artifact": artifact_bytes,
              "code_as_submitted": code_bytes == fields["bytes_code"]}
    return SizeCheck(SizeVerdict(code_bytes + artifact_bytes, limit), "code + artifact", counts)
