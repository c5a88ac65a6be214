"""What `golf inspect` re-derives instead of taking a manifest's word for it.

Content hashes are unkeyed: they catch a careless edit, not a forger who recomputes them. So
inspect re-derives what the files present can prove:

- a pack folder's artifact decodes to exactly its quantize stage's tensors (``artifact/decoded.py``);
- an eval's score is finite and whole (not an ``eval_tokens`` prefix);
- it scored its lineage's val data: the tokenize folder its train and quantize stages read;
- its counts are the data's: ``tokens_scored`` and ``bytes_scored`` are recounted from the val
  shards (and sidecar) with the recorded window length, and ``val_bpb`` must equal
  ``val_loss * tokens / (ln 2 * bytes)``;
- with ``--token-nll`` receipts, val_loss and val_bpb are recomputed from them row by row.

What no file can prove is the sum of the NLLs itself: a forger who edits val_loss and val_bpb
together passes all of the above. ``rescore`` reruns the eval (the same function, the recorded
settings, the artifact and the lineage's data, into a temporary folder) and compares: the one way
a number is proven. Runs in golf, never shipped.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.torch import load_file

from ..artifact.decoded import decoded_mismatch
from ..artifact.verify import read_artifact
from ..config import from_dict
from ..contract.audit import StageCheck
from ..contract.hashing import sha256_file
from ..contract.stage_dir import StageDir
from ..errors import GolfError
from ..progress import silent_reporter
from ..scoring.bpb import token_bytes
from ..scoring.val_data import load_val
from ..scoring.validate import scored_prefix
from ..scoring.windows import usable_targets
from .config import EvalConfig
from .stage import run_eval

# Two numbers computed from the same counts in float64 agree far closer than this.
COUNTS_TOLERANCE = 1e-9
# A rescore must give the recorded score to this (the in-memory comparison's tolerance).
RESCORE_TOLERANCE = 1e-6
# Stages whose data input is the lineage's val data (what the model was trained and quantized on).
DATA_READERS = ("train", "quantize")


def rederive_lineage(checks: list[StageCheck]) -> list[dict]:
    """Add to each check the problems and notes of what can be re-derived in its folder; return the
    facts to print (one dict per line)."""
    stages = [StageDir(check.path, strict=False) for check in checks]
    facts = []
    for stage, check in zip(stages, checks):
        if stage.stage == "pack":
            _check_pack(stage, check)
        elif stage.stage == "eval":
            facts += _check_eval(stage, stages, check)
    return facts


def _check_pack(stage: StageDir, check: StageCheck) -> None:
    """The artifact must decode to exactly the quantized tensors of the quantize stage it names."""
    record = stage.manifest.inputs.get("quantized")
    artifact = stage.manifest.outputs.get("artifact")
    if record is None or artifact is None or "quantized" not in record.files:
        return  # nothing to compare: the audit names what is missing
    quantized = stage.run_root / record.path / record.files["quantized"].path
    try:
        mismatch = decoded_mismatch(read_artifact(stage.resolve(artifact)), quantized)
    except GolfError:
        return  # an unreadable artifact is the code check's problem
    if mismatch:
        check.problems.append(f"pack: its artifact is not the packing of its quantize stage's tensors: {mismatch}")


def _check_eval(stage: StageDir, lineage: list[StageDir], check: StageCheck) -> list[dict]:
    metrics = stage.manifest.metrics
    for key in ("val_loss", "val_bpb"):
        value = metrics.get(key)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            check.problems.append(f"eval: {key} is {value!r}: not a finite score, never a result")
    check.problems += _data_problems(stage, lineage)
    try:
        counts = recount(stage)
    except GolfError as exc:
        check.notes.append(f"eval: counts not re-derived ({exc})")
        return []
    check.problems += counts.problems(metrics, stage.manifest.config.get("eval_tokens", 0))
    check.notes += counts.notes(metrics)
    facts = [{"rederived": "eval_counts", "tokens_scored": counts.tokens, "bytes_scored": counts.bytes,
              "partial": counts.partial}]
    receipts = _receipt_check(metrics, counts, check)
    return facts + ([receipts] if receipts else [])


def _data_problems(stage: StageDir, lineage: list[StageDir]) -> list[str]:
    """The eval must have scored the tokenize folder its train and quantize stages read."""
    record = stage.manifest.inputs.get("data")
    if record is None:
        return ["eval: records no data input: which val data it scored is unknown"]
    problems = []
    if stage.manifest.metrics.get("data_source") == "foreign":
        problems.append(f"eval: scored with --foreign-data ({record.path}): a foreign-data score, not the "
                        "model's val_bpb")
    for upstream in lineage:
        theirs = upstream.manifest.inputs.get("data") if upstream.stage in DATA_READERS else None
        if theirs is not None and theirs.manifest_sha256 != record.manifest_sha256:
            problems.append(f"eval: scored data {record.path} (tokenize manifest {record.manifest_sha256[:12]}), "
                            f"not its lineage's val data ({upstream.stage} read {theirs.path}, "
                            f"{theirs.manifest_sha256[:12]})")
            break
    return problems


@dataclass(frozen=True)
class Recount:
    """What an eval scored, recounted from the val data it recorded and its window length."""

    tokens: int
    """Targets scored: the whole windows of the (eval_tokens prefix of the) val stream."""
    bytes: int
    """Their bytes (the sidecar's, or the tokenizer table's as the eval counted them)."""
    partial: bool
    """Whether that is fewer targets than the whole split holds."""
    target_bytes: np.ndarray
    """Bytes of each stream position 0..tokens (position 0 is no target)."""

    def problems(self, metrics: dict, eval_tokens: int) -> list[str]:
        found = []
        if self.partial or metrics.get("partial"):
            found.append(f"eval: a partial score (eval_tokens={eval_tokens}: {self.tokens} targets, not the "
                         "whole val split): not the split's val_bpb")
        for key, value in (("tokens_scored", self.tokens), ("bytes_scored", self.bytes)):
            if key in metrics and metrics[key] != value:
                found.append(f"eval: {key} is {metrics[key]}, but its val data gives {value}")
        loss, bpb = metrics.get("val_loss"), metrics.get("val_bpb")
        if _numbers(loss, bpb) and self.bytes and not _close(loss * self.tokens / (math.log(2) * self.bytes), bpb):
            found.append(f"eval: val_bpb {bpb} does not follow from val_loss {loss} over {self.tokens} targets "
                         f"and {self.bytes} bytes ({loss * self.tokens / (math.log(2) * self.bytes)!r})")
        return found

    def notes(self, metrics: dict) -> list[str]:
        missing = [key for key in ("tokens_scored", "bytes_scored") if key not in metrics]
        return [f"eval: its manifest records no {', '.join(missing)}: val_bpb is not re-derivable from counts"] \
            if missing else []


def recount(stage: StageDir) -> Recount:
    """Recount the targets and bytes an eval folder scored, from the val data it recorded."""
    record = stage.manifest.inputs.get("data")
    if record is None:
        raise GolfError("no data input")
    config, metrics = stage.manifest.config, stage.manifest.metrics
    seq_len = metrics.get("seq_len")
    if not isinstance(seq_len, int) or seq_len < 1:
        raise GolfError("no window length recorded")
    data = StageDir(stage.run_root / record.path, "tokenize", strict=False)
    val = load_val(data, stage.manifest.lineage.get("vocab_size"), bool(config.get("use_sidecar", True)))
    tokens = usable_targets(len(scored_prefix(val.tokens, int(config.get("eval_tokens", 0)))), seq_len)
    stream = val.tokens[: tokens + 1]
    per_position = val.sidecar[: tokens + 1] if val.sidecar is not None else token_bytes(val.table, stream)
    per_position = np.asarray(per_position, dtype=np.int64)
    return Recount(tokens, int(per_position[1:].sum()), tokens < usable_targets(len(val.tokens), seq_len),
                   per_position)


def _receipt_check(metrics: dict, counts: Recount, check: StageCheck) -> dict | None:
    """With --token-nll receipts: val_loss and val_bpb recomputed from them, each target once with
    the data's bytes. A receipts file that is gone is a note; one that changed, a problem."""
    name = metrics.get("token_nll_file")
    if not name:
        return None
    path = Path(name)
    if not path.is_file():
        check.notes.append(f"eval: its receipts {path} are gone: not re-derived from them")
        return None
    if sha256_file(path) != metrics.get("token_nll_sha256"):
        check.problems.append(f"eval: its receipts {path} are not the file it wrote (sha256 differs)")
        return None
    rows = load_file(str(path))
    positions = np.sort(rows["position"].numpy())
    if not np.array_equal(positions, np.arange(1, counts.tokens + 1)):
        check.problems.append(f"eval: its receipts do not hold each of its {counts.tokens} targets exactly once")
        return None
    if not np.array_equal(rows["bytes"].numpy().astype(np.int64), counts.target_bytes[rows["position"].numpy()]):
        check.problems.append("eval: its receipts' bytes are not its val data's")
    nll = rows["nll"].double().sum().item()
    loss, bpb = nll / counts.tokens, nll / (math.log(2) * counts.bytes)
    for key, value in (("val_loss", loss), ("val_bpb", bpb)):
        if not _numbers(metrics.get(key)) or not _close(value, metrics[key]):
            check.problems.append(f"eval: {key} {metrics.get(key)} is not its receipts' {value!r}")
    return {"rederived": "eval_receipts", "rows": len(positions), "val_loss": loss, "val_bpb": bpb}


def rescore(eval_dir: str | Path) -> dict:
    """Rerun an eval from its artifact and its lineage's val data with its recorded settings, into a
    temporary folder; {'recorded_*', 'rescored_*' for val_loss and val_bpb, 'matches'}."""
    stage = StageDir(eval_dir, "eval", strict=False)
    record = stage.manifest.inputs.get("artifact")
    if record is None or record.stage != "pack":
        raise GolfError(f"{eval_dir}: scored a bare artifact file: there is no lineage data to rescore it on")
    config = from_dict(EvalConfig, stage.manifest.config, f"{stage.path}: config")
    with tempfile.TemporaryDirectory(prefix="golf-rescore-") as tmp:
        redone = run_eval(config, stage.run_root / record.path, None, Path(tmp) / "eval",
                          reporter=silent_reporter()).metrics
    result = {}
    for key in ("val_loss", "val_bpb"):
        result[f"recorded_{key}"], result[f"rescored_{key}"] = stage.manifest.metrics.get(key), redone[key]
    result["matches"] = all(_numbers(result[f"recorded_{key}"]) and
                            abs(result[f"recorded_{key}"] - redone[key]) <= RESCORE_TOLERANCE
                            for key in ("val_loss", "val_bpb"))
    return result


def _numbers(*values) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= COUNTS_TOLERANCE * max(1.0, abs(b))
