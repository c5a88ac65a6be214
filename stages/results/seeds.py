"""One seed's score, read from a verified eval folder: val_bpb, val_loss and the bytes per token.

A RUN given on the command line is an eval folder or a run folder (artifacts/<run>) holding one;
which folder was read is kept with the score, so the output can say so. Only a folder whose
manifest and outputs verify is read, and scores are only compared when they were measured on the
same tokenizer and the same val data: lineage, the hashes of the data files the eval read, and the
number of targets and bytes scored (a shorter val prefix is other val data).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..contract.lineage import lineage_folder
from ..contract.manifest import MANIFEST_NAME
from ..contract.stage_dir import StageDir
from ..errors import GolfError

DEFAULT_EVAL = "eval"


@dataclass(frozen=True)
class SeedScore:
    """One seed's eval, as recorded in its manifest."""

    run: str
    """The RUN given (a run folder or an eval folder), relative to the working folder."""
    eval_dir: str
    """The eval folder read, relative to the working folder."""
    val_bpb: float
    """Bits per byte of the scored val targets."""
    val_loss: float
    """Nats per token of the same targets."""
    bytes_per_token: float
    """Scored bytes over scored tokens: the bpb <-> nats factor of this eval."""
    bytes_source: str
    """Where bytes_per_token came from: the recorded counts, or derived from val_loss / (ln 2 * val_bpb)."""
    tokens: int | None
    """Targets scored (None when the manifest does not record it)."""
    seed: int | None
    """The training seed, from the train manifest upstream (None when that folder is not at hand)."""
    partial: bool
    """Whether only a prefix of the val split was scored."""
    identity: dict = field(default_factory=dict, repr=False)
    """What must agree between compared runs: the data lineage and the data files' hashes."""

    def to_dict(self) -> dict:
        return {"run": self.run, "eval_dir": self.eval_dir, "seed": self.seed, "val_bpb": self.val_bpb,
                "val_loss": self.val_loss, "bytes_per_token": self.bytes_per_token,
                "bytes_source": self.bytes_source, "tokens": self.tokens, "partial": self.partial}


def eval_folder(run: str | Path, eval_name: str = DEFAULT_EVAL) -> Path:
    """The eval folder a RUN names: itself if it is a stage folder, else ``run/eval_name``."""
    run = Path(run)
    if (run / MANIFEST_NAME).is_file():
        return run
    if (run / eval_name / MANIFEST_NAME).is_file():
        return run / eval_name
    found = sorted(p.parent.name for p in run.glob(f"*/{MANIFEST_NAME}") if p.parent.name.startswith("eval"))
    hint = f" (eval folders there: {', '.join(found)}; choose one with --eval NAME)" if found else ""
    raise GolfError(f"{run}: neither an eval folder nor a run folder with {eval_name}/{hint}")


def open_verified(path: Path, stage: str | None = None) -> StageDir:
    """A stage folder whose manifest verifies and whose every output still matches its hash."""
    folder = StageDir(path, stage)
    for name in folder.manifest.outputs:
        folder.file(name)
    return folder


def read_score(run: str | Path, eval_name: str = DEFAULT_EVAL) -> SeedScore:
    """The score of one seed, from its verified eval folder."""
    folder = open_verified(eval_folder(run, eval_name), "eval")
    metrics = folder.manifest.metrics
    for key in ("val_bpb", "val_loss"):
        if not isinstance(metrics.get(key), (int, float)):
            raise GolfError(f"{folder.path}: the eval manifest records no {key}")
    per_token, source = _bytes_per_token(metrics)
    data = folder.manifest.inputs.get("data")
    files = {name: record.sha256 for name, record in sorted(data.files.items())} if data else {}
    return SeedScore(os.path.relpath(run), os.path.relpath(folder.path), float(metrics["val_bpb"]), float(metrics["val_loss"]),
                     per_token, source, metrics.get("tokens_scored"), _seed(folder), bool(metrics.get("partial")),
                     {"lineage": folder.lineage, "data_files": files})


def _bytes_per_token(metrics: dict) -> tuple[float, str]:
    """Scored bytes per scored token, from the counts when recorded, else from the two scores."""
    tokens, scored = metrics.get("tokens_scored"), metrics.get("bytes_scored")
    if tokens and scored:
        return scored / tokens, "bytes_scored / tokens_scored"
    if not metrics["val_bpb"]:
        raise GolfError("the eval manifest records neither the scored bytes and tokens nor a non-zero val_bpb")
    return metrics["val_loss"] / (math.log(2) * metrics["val_bpb"]), "derived: val_loss / (ln 2 * val_bpb)"


def _seed(folder: StageDir) -> int | None:
    """The train config's seed, walking eval -> pack -> quantize -> train (None if a link is missing)."""
    try:
        train = lineage_folder(folder, "train")
    except GolfError:
        return None
    return train.manifest.config.get("train", {}).get("seed")


def require_same_data(scores: list[SeedScore]) -> None:
    """Refuse scores measured on different tokenizers or val data: their nats are not comparable."""
    first = scores[0]
    for other in scores[1:]:
        for key in sorted(set(first.identity["lineage"]) | set(other.identity["lineage"])):
            a, b = first.identity["lineage"].get(key), other.identity["lineage"].get(key)
            if a != b:
                raise GolfError(f"{first.eval_dir} and {other.eval_dir} disagree on {key} ({_short(a)} vs "
                                f"{_short(b)}): scores on different tokenizers or val data are not comparable")
        if (first.tokens, first.bytes_per_token) != (other.tokens, other.bytes_per_token):
            raise GolfError(f"{first.eval_dir} and {other.eval_dir} scored different targets ({first.tokens} vs "
                            f"{other.tokens} tokens, {first.bytes_per_token:.6f} vs {other.bytes_per_token:.6f} "
                            "bytes/token; another val prefix or windows): their scores are not comparable")
        if first.identity["data_files"] != other.identity["data_files"]:
            raise GolfError(f"{first.eval_dir} and {other.eval_dir} read different data files (val shards or "
                            "tokenizer hashes differ): scores on different val data are not comparable")


def _short(value) -> str:
    text = str(value)
    return text[:12] if len(text) == 64 else text
