"""The runs a submission is made of: one full run per seed, verified, and what they must agree on.

A run is found from its eval folder and walked up its lineage (eval -> pack -> quantize -> train
-> tokenize). It is refused when any hash in that lineage no longer matches (``audit_lineage``),
when eval scored a bare artifact file or only a prefix of val, when train resumed another run, or
when its stages did not all read the same tokenize folder. Runs agree when their recipes (every
resolved config but the training seed, and the data) and their code are the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..contract.audit import audit_lineage
from ..contract.environment import code_hash
from ..contract.ledger import TimeLedger
from ..contract.lineage import Lineage
from ..contract.stage_dir import StageDir, default_stage_dir
from ..errors import GolfError
from .reproduce import val_hashes

SEED_KEY = "seed"


@dataclass(frozen=True)
class SeedRun:
    """One verified full run: its five stage folders, nearest (eval) last."""

    name: str
    """How the run was named on the command line."""
    tokenize: StageDir
    train: StageDir
    quantize: StageDir
    pack: StageDir
    eval: StageDir

    @property
    def stages(self) -> tuple[StageDir, ...]:
        return (self.tokenize, self.train, self.quantize, self.pack, self.eval)

    @property
    def seed(self) -> int:
        return int(self.train.manifest.config["train"][SEED_KEY])

    @property
    def artifact(self) -> Path:
        """The packed artifact, hash-checked against its pack manifest."""
        return self.pack.file("artifact")

    def ledgers(self) -> list[TimeLedger]:
        return [TimeLedger.from_dict(stage.manifest.ledger) for stage in self.stages]


def eval_folder(run: str | Path) -> Path:
    """The eval folder of a run given as a run folder, an eval folder, or a run name (artifacts/<name>)."""
    path = Path(run)
    for candidate in (path / "eval", path, default_stage_dir(str(run), "eval")):
        if _is_eval(candidate):
            return candidate
    raise GolfError(f"{run}: no eval folder (give a run folder holding eval/, an eval folder, or a run name)")


def _is_eval(path: Path) -> bool:
    try:
        return StageDir(path, strict=False).stage == "eval"
    except GolfError:
        return False


def load_run(run: str | Path) -> SeedRun:
    """Open and verify one run; a one-line error names the first problem found."""
    evaluation = StageDir(eval_folder(run), "eval")
    problems = [problem for check in audit_lineage(evaluation.path) for problem in check.problems]
    problems.sort(key=lambda problem: problem.startswith("link "))  # a stage's own problem is the cause of its links'
    if problems:
        more = f" (and {len(problems) - 1} more; see golf inspect)" if len(problems) > 1 else ""
        raise GolfError(f"{run}: its manifests do not verify: {problems[0]}{more}")
    if evaluation.manifest.inputs["artifact"].stage != "pack":
        raise GolfError(f"{run}: eval scored a bare artifact file; a submission needs the run's pack folder")
    if evaluation.manifest.metrics.get("partial"):
        raise GolfError(f"{run}: eval scored only a prefix of val (eval_tokens); a submission needs the full val score")
    lineage = Lineage.of(evaluation)
    if "resume" in lineage.train.manifest.inputs:
        raise GolfError(f"{run}: train resumed another run; one script cannot repeat that, train it in one go")
    for stage in (lineage.quantize, evaluation):
        if stage.input_path("data").resolve() != lineage.tokenize.path:
            raise GolfError(f"{run}: {stage.stage} read other data ({stage.input_path('data')}) than train "
                            f"({lineage.tokenize.path})")
    return SeedRun(str(run), lineage.tokenize, lineage.train, lineage.quantize, lineage.pack, evaluation)


def data_identity(data: StageDir) -> dict:
    """What fixes the data a recipe trains and scores on: the tokenizer and every val shard's hash."""
    return {**{key: data.lineage[key] for key in ("tokenizer_sha256", "vocab_size", "bos_id")},
            "val_sha256": val_hashes(data),
            "imported": "import" in data.manifest.config}


def recipe(run: SeedRun) -> dict:
    """Every resolved setting of the run except its training seed, and the data it used."""
    train = dict(run.train.manifest.config)
    preset = train.pop("preset", None)
    train["train"] = {key: value for key, value in train["train"].items() if key != SEED_KEY}
    return {"preset": preset, "train": train, "quantize": run.quantize.manifest.config,
            "pack": run.pack.manifest.config, "eval": run.eval.manifest.config, "data": data_identity(run.tokenize)}


def code_identity(run: SeedRun) -> dict:
    """The golf code that ran each stage, and the code bundle inside the artifact."""
    return {"code_sha256": sorted({stage.manifest.environment.get("code_sha256") for stage in run.stages[1:]},
                                  key=str),
            "bundle_sha256": run.eval.manifest.metrics.get("code_sha256")}


def first_difference(a, b, where: str = "") -> str | None:
    """The dotted key of the first value that differs between two nested dicts (None if equal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            found = first_difference(a.get(key), b.get(key), f"{where}.{key}" if where else str(key))
            if found:
                return found
        return None
    return None if a == b else where


def check_agreement(runs: list[SeedRun]) -> None:
    """Refuse runs that differ in recipe or code, repeat a seed, or were made by other code than this golf."""
    first = runs[0]
    seeds = [run.seed for run in runs]
    if len(set(seeds)) != len(seeds):
        raise GolfError(f"runs repeat a seed ({', '.join(map(str, seeds))}); give one run per seed")
    for run in runs[1:]:
        key = first_difference(recipe(first), recipe(run))
        if key:
            raise GolfError(f"runs disagree on recipe: {key} differs between {first.name} and {run.name}")
        key = first_difference(code_identity(first), code_identity(run))
        if key:
            raise GolfError(f"runs disagree on code: {key} differs between {first.name} and {run.name}")
    made_by = code_identity(first)["code_sha256"]
    if made_by != [code_hash()]:
        raise GolfError(f"the runs were made by golf code {', '.join(str(c)[:12] for c in made_by)}, not by this "
                        f"checkout's ({code_hash()[:12]}): train_gpt.py would carry other code; submit from the "
                        "checkout that made them")
