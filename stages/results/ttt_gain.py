"""Per-document gain of test-time training, from the per-target receipts of two evals.

`golf eval --token-nll FILE` saves one row per scored target (stream position, nll, bytes). With
the receipts of a TTT eval and of a plain eval of the same artifact, each document's gain is its
bits per byte without TTT minus with TTT, over the targets both scored; documents are cut at the
BOS tokens of the val stream (read from the tokenize folder, hash-checked).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from ..contract.hashing import sha256_file
from ..contract.stage_dir import StageDir
from ..data.folder import split_files
from ..data.shards import read_shards
from .run_folder import RunStages, Unavailable

RECEIPTS_HINT = "run `golf eval --token-nll FILE` once with --ttt MODE and once without, on the same artifact"


@dataclass(frozen=True)
class DocumentGains:
    """Per-document bpb gain of a TTT eval over a plain one."""

    ttt_eval: str
    """The TTT eval folder's name."""
    plain_eval: str
    """The plain eval folder's name."""
    doc_bytes: np.ndarray
    """Scored bytes of each document (documents with none left out)."""
    gain_bpb: np.ndarray
    """bpb without TTT minus bpb with TTT, per document."""
    overall_bpb: float
    """The same over all the documents' targets together."""


def document_gains(run: RunStages) -> DocumentGains:
    evals = [f for f in run.folders.get("eval", []) if f.integrity_problem() is None]
    ttt = [f for f in evals if f.manifest.metrics.get("ttt_mode", "none") != "none"]
    plain = [f for f in evals if f.manifest.metrics.get("ttt_mode", "none") == "none"]
    if not ttt:
        raise Unavailable("not a TTT run: no eval folder scored with test-time training")
    with_ttt = next((f for f in ttt if "token_nll_file" in f.manifest.metrics), None)
    without = next((f for f in plain if "token_nll_file" in f.manifest.metrics), None)
    if with_ttt is None or without is None:
        which = "the TTT eval saved none" if with_ttt is None else "no plain eval saved any"
        raise Unavailable(f"per-target receipts missing ({which}): {RECEIPTS_HINT}")
    a, b = _receipts(with_ttt), _receipts(without)
    common, in_a, in_b = np.intersect1d(a["position"], b["position"], return_indices=True)
    if common.size == 0:
        raise Unavailable(f"{with_ttt.path.name} and {without.path.name} scored no target in common")
    stream = read_shards(split_files(with_ttt.upstream("data", "tokenize"), "val"))
    doc = np.cumsum(stream == with_ttt.lineage.get("bos_id", 1))[common] - 1
    nll_gain = np.bincount(doc, b["nll"][in_b].astype(np.float64) - a["nll"][in_a].astype(np.float64))
    doc_bytes = np.bincount(doc, b["bytes"][in_b].astype(np.float64))
    keep = doc_bytes > 0
    gain = nll_gain[keep] / (math.log(2) * doc_bytes[keep])
    overall = float(nll_gain.sum() / (math.log(2) * doc_bytes.sum()))
    return DocumentGains(with_ttt.path.name, without.path.name, doc_bytes[keep], gain, overall)


def _receipts(folder: StageDir) -> dict[str, np.ndarray]:
    """The eval's receipts file, checked against the hash its manifest recorded."""
    metrics = folder.manifest.metrics
    recorded = Path(metrics["token_nll_file"])
    candidates = [recorded] if recorded.is_absolute() else [recorded, folder.run_root / recorded,
                                                             folder.run_root / recorded.name]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise Unavailable(f"{folder.path.name}: its receipts file {recorded.name} is not at hand")
    if sha256_file(path) != metrics.get("token_nll_sha256"):
        raise Unavailable(f"{folder.path.name}: {path.name} is not the receipts file it wrote (hash differs)")
    return load_file(str(path))
