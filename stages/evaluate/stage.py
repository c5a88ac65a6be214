"""`golf eval`: score a packed artifact on the val split, running the code the artifact ships.

Reads only the artifact, the val shards and the tokenizer. The container is parsed, the shipped
code is imported from the artifact's own bytes (after checking that the installed loader equals
the shipped copy), the model is rebuilt from the shipped weights, and every second of it counts
toward the evaluation budget.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..config import check_scoring_window, to_dict
from ..contract.hashing import sha256_bytes
from ..contract.lineage import require_same_tokenizer
from ..contract.manifest import MANIFEST_NAME, FileRecord, InputRecord
from ..contract.stage_dir import StageDir, StageWriter
from ..device import resolve_device
from ..errors import GolfError
from ..pack.bundle import load_bundle
from ..pack.codecs import decompress
from ..pack.container import ContainerError, read_container
from ..pack.stage import CODE_ROOT
from ..progress import Reporter
from ..ranges import check_ranges, ranged
from .val_data import load_val
from .validate import validate

IN_MEMORY_TOLERANCE = 1e-6


@dataclass(frozen=True)
class EvalConfig:
    """How the artifact is scored."""

    stride: int | None = ranged(None, ge=1)
    """Sliding-window stride (None: non-overlapping windows; the records use 64 with seq 2048)."""
    seq_len: int | None = ranged(None, ge=1)
    """Window length (None: the training sequence length recorded in the artifact)."""
    batch_windows: int = ranged(8, ge=1)
    """Windows per forward pass."""
    eval_tokens: int = ranged(0, ge=0)
    """Score only a prefix of this many val tokens (0: the whole val split)."""
    device: str = "cpu"
    """'cpu', 'cuda' or 'auto' (cuda when available)."""
    use_sidecar: bool = True
    """Count bytes from the val byte sidecar when the data has one (else from the tokenizer's table)."""

    def __post_init__(self) -> None:
        check_ranges(self)
        check_scoring_window(self, "seq_len", "eval_tokens", "stride")


def open_artifact(path: str | Path) -> tuple[Path, StageDir | None]:
    """Accept a pack folder or an artifact file; return the file and its pack folder if it has one."""
    path = Path(path)
    if path.is_dir():
        pack = StageDir(path, "pack")
        return pack.file("artifact"), pack
    if not path.is_file():
        raise GolfError(f"{path}: no such artifact")
    if (path.parent / MANIFEST_NAME).is_file():
        pack = StageDir(path.parent, "pack")
        if pack.resolve(pack.manifest.outputs["artifact"]) == path.resolve():
            return pack.file("artifact"), pack
    return path, None


def load_runtime(header: dict, sections: dict[str, bytes]):
    """Import the artifact's shipped code; refuse if the installed loader differs from the shipped one."""
    files = json.loads(decompress(sections["code"], header["code"]["codec"]).decode("utf-8"))
    for rel in header["code"]["bootstrap"]:
        installed = (CODE_ROOT / rel).read_text(encoding="utf-8")
        if files.get(rel) != installed:
            raise GolfError(f"the installed {rel} differs from the copy shipped in the artifact: "
                            "evaluate with the golf version that packed it")
    return load_bundle(files, header["code"]["entry"])


def run_eval(config: EvalConfig, artifact: str | Path, data_dir: str | Path | None, out_dir: str | Path,
             force: bool = False, reporter: Reporter | None = None):
    reporter = reporter or Reporter()
    artifact_path, pack = open_artifact(artifact)
    with StageWriter(out_dir, "eval", force) as writer:
        ledger = writer.ledger
        with ledger.measure("load_artifact", "eval", "read, decompress and dequantize the artifact"):
            data_bytes = artifact_path.read_bytes()
            try:
                header, sections = read_container(data_bytes)
            except ContainerError as exc:
                raise GolfError(f"{artifact_path}: {exc}") from None
            runtime = load_runtime(header, sections)
            model = runtime.build_model(header, sections)
        data = _data_dir(data_dir, pack)
        require_same_tokenizer(header["lineage"], f"artifact {artifact_path}", data.lineage, f"data {data.path}")
        seq_len = config.seq_len or header["train_seq_len"]
        stride = config.stride or seq_len
        with ledger.measure("load_val", "eval", "val shards and tokenizer"):
            val = load_val(data, header["model_config"]["vocab_size"], config.use_sidecar,
                           build_table=runtime.build_byte_table)
        with ledger.measure("score", "eval", "scoring every val target once"):
            device = resolve_device(config.device)
            sums = validate(model.to(device), val, seq_len, stride, config.batch_windows, device,
                            config.eval_tokens, reporter, "eval",
                            score_stream=runtime.score_stream, count_windows=runtime.count_windows)
        writer.inputs["artifact"] = _artifact_input(artifact_path, data_bytes, pack)
        writer.add_input("data", data)
        metrics = {
            "val_loss": sums.loss,
            "val_bpb": sums.bpb,
            "tokens_scored": sums.tokens,
            "bytes_scored": sums.bytes,
            "seq_len": seq_len,
            "stride": stride,
            "mode": "non-overlapping" if stride == seq_len else "sliding",
            "byte_source": "sidecar" if val.sidecar is not None else "tokenizer table",
            "artifact_bytes": len(data_bytes),
            "code_sha256": header["code"]["bundle_sha256"],
            **_compare_in_memory(pack, sums.bpb, seq_len, stride, config),
        }
        manifest = writer.commit(to_dict(config), dict(data.lineage), metrics, reporter.text())
    reporter.log(stage="eval", val_loss=sums.loss, val_bpb=sums.bpb, artifact_bytes=len(data_bytes),
                 mode=metrics["mode"], out=str(out_dir))
    return manifest


def _data_dir(explicit, pack: StageDir | None) -> StageDir:
    if explicit is not None:
        return StageDir(explicit, "tokenize")
    if pack is None:
        raise GolfError("a bare artifact file records no data folder: pass --data")
    quant = StageDir(pack.manifest.inputs["quantized"].path, "quantize")
    return StageDir(quant.manifest.inputs["data"].path, "tokenize")


def _artifact_input(path: Path, data: bytes, pack: StageDir | None) -> InputRecord:
    record = FileRecord(path=str(path.resolve()), sha256=sha256_bytes(data), bytes=len(data))
    if pack is not None:
        return InputRecord(str(pack.path), "pack", pack.manifest_sha256, {"artifact": record})
    return InputRecord(str(path.resolve()), "artifact", "", {"artifact": record})


def _compare_in_memory(pack: StageDir | None, bpb: float, seq_len: int, stride: int, config: EvalConfig) -> dict:
    """Set the artifact's score beside the post-quant bpb quantize measured on the same weights in memory."""
    if pack is None:
        return {}
    quant = StageDir(pack.manifest.inputs["quantized"].path, "quantize")
    measured = quant.manifest.metrics.get("eval", {})
    same_setup = (measured.get("seq_len") == seq_len and measured.get("stride") == stride
                  and quant.manifest.config.get("eval_tokens") == config.eval_tokens)
    if not same_setup:
        return {"in_memory_comparison": "skipped: quantize scored with other windows"}
    in_memory = quant.manifest.metrics["post_quant_val_bpb"]
    return {
        "pre_quant_val_bpb": quant.manifest.metrics["pre_quant_val_bpb"],
        "post_quant_in_memory_val_bpb": in_memory,
        "artifact_minus_in_memory_bpb": bpb - in_memory,
        "matches_in_memory": abs(bpb - in_memory) <= IN_MEMORY_TOLERANCE,
    }
