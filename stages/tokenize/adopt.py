"""`golf tokenize --import DIR`: adopt an existing export in the challenge layout, copying nothing.

Every shard header and size is checked, token ids are checked against the tokenizer, the val
split gets the byte audit (table == decoded text) and the content overlap check, and the manifest
points at the files where they are. A sidecar (``fineweb_val_bytes_*``, never read as tokens) is
audited exactly against the text the val tokens rebuild (``scoring/sidecar.py``; CaseOps data
is recognised by its tokenizer reserving the four controls). With an exact tokenizer a sidecar
that fails is refused. A normalizing tokenizer rebuilds normalized text, so a sidecar of original
bytes (the challenge's CaseOps export) is checked against the original val documents given with
``--docs`` (docs_selected.jsonl: its first documents are the val split), which are then kept as
``val_text.jsonl`` for every later reader to check again. Without them the sidecar is not used
(the byte table is, and the log says why), and CaseOps data, which only a sidecar can score, is refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..contract.hashing import sha256_bytes
from ..contract.stage_dir import StageWriter, relative_path
from ..contract.stage_dir import atomic_write_bytes
from ..data.corpus import load_corpus
from ..data.overlap import iter_documents, shared_documents
from ..data.shards import read_shard, shard_index
from ..errors import GolfError
from ..progress import Reporter
from ..scoring.bpb import build_byte_table
from ..scoring.sidecar import VAL_TEXT_FILE, SidecarMismatch, audit_against_text, audit_sidecar, control_ids, val_text_bytes
from .audit import audit_val_bytes
from .spm import BOS_ID, load_processor, spec_of


def _shards(folder: Path, split: str) -> list[Path]:
    return sorted(p for p in folder.glob("*.bin") if shard_index(p.name, split) is not None)


def _tokenizer_path(folder: Path, explicit: str | None) -> Path:
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise GolfError(f"{path}: no such tokenizer model")
        return path
    models = sorted(folder.glob("*.model"))
    if len(models) != 1:
        raise GolfError(f"{folder}: expected exactly one *.model tokenizer, found {len(models)}; pass --tokenizer")
    return models[0]


def run_import(folder: str | Path, out_dir: str | Path, tokenizer: str | None = None, force: bool = False,
               reporter: Reporter | None = None, max_shared_docs: int = 0, docs: str | Path | None = None):
    """Adopt the export in ``folder``; ``docs`` (JSONL with a 'text' field) holds the original documents,
    the val split first, to check a normalizing tokenizer's sidecar of original bytes against."""
    reporter = reporter or Reporter()
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise GolfError(f"{folder}: no such folder")
    train, val, sidecar_paths = _shards(folder, "train"), _shards(folder, "val"), _shards(folder, "val_bytes")
    if not train or not val:
        raise GolfError(f"{folder}: needs fineweb_train_*.bin and fineweb_val_*.bin shards")
    tok_path = _tokenizer_path(folder, tokenizer)
    model_bytes = tok_path.read_bytes()
    sp = load_processor(model_bytes, str(tok_path))
    with StageWriter(out_dir, "tokenize", force, reporter, {"--import": folder, "--tokenizer": tok_path}) as writer:
        with writer.ledger.measure("verify", note="data preparation: outside both budgets"):
            counts = {}
            with reporter.progress("verify shards", len(train) + len(val) + len(sidecar_paths)) as advance:
                for path in [*train, *val, *sidecar_paths]:
                    tokens = read_shard(path)
                    if path not in sidecar_paths and tokens.size and int(tokens.max()) >= sp.vocab_size():
                        raise GolfError(f"{path}: token id {int(tokens.max())} outside the tokenizer vocab ({sp.vocab_size()})")
                    counts[path] = int(tokens.size)
                    advance(1)
            val_tokens = np.concatenate([np.asarray(read_shard(p)) for p in val]).astype(np.int64)
            sidecar = None
            if sidecar_paths:
                sidecar = np.concatenate([np.asarray(read_shard(p)) for p in sidecar_paths]).astype(np.int64)
                if sidecar.size != val_tokens.size:
                    raise GolfError(f"{folder}: sidecar has {sidecar.size} entries for {val_tokens.size} val tokens")
            val_docs = list(iter_documents([val_tokens], BOS_ID))
            table = build_byte_table(sp)
            spec, is_caseops = spec_of(sp), control_ids(sp) is not None
            audit = audit_val_bytes(sp, table, val_docs, None, None)
            sidecar_audit, unused = _audit_sidecar(sp, table, val_tokens, sidecar, spec, is_caseops, folder)
            texts = None
            if unused and docs is not None:  # the original text vouches for it, or refuses it
                texts = _val_texts(docs, len(val_docs))
                sidecar_audit, unused = _audit_with_text(sp, val_tokens, sidecar, texts, is_caseops, folder), ""
            if unused and is_caseops:
                raise GolfError(f"{folder}: CaseOps data is scored only with its byte sidecar, and this normalizing "
                                "tokenizer's tokens cannot vouch for one of original bytes: pass the original "
                                "documents with --docs")
            overlap = shared_documents(val_docs, iter_documents((read_shard(p) for p in train), BOS_ID))
        if overlap["val_docs_in_train"] > max_shared_docs:
            raise GolfError(f"leak: {overlap['val_docs_in_train']} val documents also occur verbatim in train")
        if unused:
            reporter.log(byte_source="tokenizer table", reason=unused)
            sidecar_paths = []
        writer.add_output("tokenizer", tok_path)
        if texts is not None:
            atomic_write_bytes(writer.path(VAL_TEXT_FILE), val_text_bytes(texts))
            writer.add_output("val_text", writer.path(VAL_TEXT_FILE))
        for path in [*train, *val, *sidecar_paths]:
            writer.add_output(path.name.removesuffix(".bin"), path)
        lineage = {"tokenizer_sha256": sha256_bytes(model_bytes), "vocab_size": sp.vocab_size(),
                   "bos_id": sp.bos_id(), "tokenizer_spec": spec, "caseops": is_caseops}
        n_val = len(val_docs)
        scored_bytes = sidecar_audit["sidecar_bytes"] if sidecar_audit else audit["decoded_bytes"]
        metrics = {
            "imported_from": relative_path(folder, writer.run_root),
            "val_tokens": int(val_tokens.size),
            "train_tokens": int(sum(counts[p] for p in train)),
            "val_bytes_per_token": scored_bytes / max(1, val_tokens.size),
            "byte_audit": audit,
            "sidecar": "imported" if sidecar_audit else f"not used: {unused}" if unused else "none",
            "sidecar_audit": sidecar_audit,
            "split": {"val_docs": [0, n_val], "train_docs": [n_val, n_val + overlap["train_docs_checked"]],
                      "disjoint": True, "rule": "challenge layout: val shards hold the first documents", **overlap},
        }
        if sidecar_audit is not None:
            reporter.log(byte_source="sidecar", sidecar_audit="passed", caseops=is_caseops,
                         **{k: v for k, v in sidecar_audit.items() if k not in ("rule", "passed")})
        config = {"import": relative_path(folder, writer.run_root), "tokenizer": relative_path(tok_path, writer.run_root)}
        manifest = writer.commit(config, lineage, metrics, reporter.text())
    reporter.log(stage="tokenize", imported=str(folder), val_tokens=metrics["val_tokens"], train_tokens=metrics["train_tokens"])
    return manifest


def _audit_sidecar(sp, table, val_tokens: np.ndarray, sidecar: np.ndarray | None, spec: str, is_caseops: bool,
                   folder: Path) -> tuple[dict | None, str]:
    """(the sidecar's audit, or None; why it is not used, or ''), refusing what no rule accepts."""
    if sidecar is None:
        if is_caseops:  # (no sidecar to check)
            raise GolfError(f"{folder}: CaseOps data (the tokenizer reserves the case controls) needs its val byte "
                            "sidecar fineweb_val_bytes_*.bin: the byte table would count each marker as 3 bytes")
        return None, ""
    try:
        return audit_sidecar(sp, table, val_tokens, sidecar, is_caseops), ""
    except SidecarMismatch as exc:
        if spec == "exact":
            raise GolfError(f"{folder}: {exc}") from None
        return None, (f"normalizing tokenizer: the sidecar does not count the text its tokens rebuild ({exc}), and "
                      "without the original text (--docs) it cannot be checked")


def _val_texts(docs: str | Path, count: int) -> list[str]:
    texts = load_corpus("jsonl", str(docs), max_docs=count).documents
    if len(texts) < count:
        raise GolfError(f"{docs}: {len(texts):,} documents, fewer than the {count:,} val documents")
    return texts


def _audit_with_text(sp, val_tokens, sidecar, texts: list[str], is_caseops: bool, folder: Path) -> dict:
    try:
        return audit_against_text(sp, val_tokens, sidecar, texts, is_caseops)
    except SidecarMismatch as exc:
        raise GolfError(f"{folder}: {exc} (checked against --docs)") from None
