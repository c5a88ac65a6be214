"""`golf tokenize`: documents -> tokenizer -> challenge-format shards, a val byte sidecar, and a byte audit.

Reads: a document source (the embedded news corpus, JSONL, or text files), optionally an
existing tokenizer. Writes: ``tokenizer.model``, ``fineweb_{train,val}_NNNNNN.bin``,
``fineweb_val_bytes_NNNNNN.bin`` and a manifest with the split, the audit and the overlap check.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import to_dict
from ..contract.hashing import sha256_bytes
from ..contract.stage_dir import StageWriter, atomic_write_bytes, relative_path
from ..data import caseops
from ..data.corpus import NEWS_PACKAGE, load_corpus
from ..data.overlap import shared_documents
from ..data.shards import ShardWriter
from ..data.split import make_split
from ..errors import GolfError
from ..scoring.bpb import build_byte_table
from ..scoring.sidecar import (VAL_TEXT_FILE, audit_against_text, audit_sidecar, control_ids, rebuilt_token_bytes,
                                text_token_bytes, val_text_bytes)
from ..progress import Reporter
from .audit import audit_val_bytes
from .config import TokenizeConfig
from .spm import BOS_ID, encode_documents, load_processor, spec_of, train_tokenizer

TOKENIZER_FILE = "tokenizer.model"
ENCODE_BATCH_DOCS = 512


def run_tokenize(config: TokenizeConfig, out_dir: str | Path, force: bool = False, reporter: Reporter | None = None):
    reporter = reporter or Reporter()
    inputs = {"--input": config.input if config.source != "news" else None, "--tokenizer": config.tokenizer}
    with StageWriter(out_dir, "tokenize", force, reporter, inputs) as writer:
        ledger = writer.ledger
        with ledger.measure("read_corpus", note="data preparation: outside both budgets"):
            corpus = load_corpus(config.source, config.input, config.max_docs)
        split = make_split(len(corpus.documents), config.val_docs)
        val_originals = corpus.documents[split.val[0] : split.val[1]]
        # The tokenizer sees CaseOps text when asked; the sidecar counts the original's bytes.
        transform = caseops.encode if config.caseops else (lambda text: text)
        val_texts = [transform(text) for text in val_originals]
        train_texts = [transform(text) for text in corpus.documents[split.train[0] : split.train[1]]]
        val_origins = corpus.origins[split.val[0] : split.val[1]]
        train_origins = corpus.origins[split.train[0] : split.train[1]]
        reporter.log(stage="tokenize", source=config.source, docs=len(corpus.documents), val_docs=len(val_texts), train_docs=len(train_texts))

        with ledger.measure("tokenizer", note="data preparation: outside both budgets"):
            model_bytes = _tokenizer_bytes(config, train_texts)
            atomic_write_bytes(writer.path(TOKENIZER_FILE), model_bytes)
            sp = load_processor(model_bytes, TOKENIZER_FILE)
        spec = spec_of(sp)
        if sp.bos_id() != BOS_ID:
            raise GolfError(f"tokenizer BOS id is {sp.bos_id()}, the challenge format needs {BOS_ID}")
        _check_caseops_pieces(sp, config.caseops)
        vocab = _vocab_sizes(config, sp, reporter)

        with ledger.measure("encode_and_write", note="data preparation: outside both budgets"):
            val_docs = _encode(sp, spec, val_texts, val_origins, reporter, "encode val")
            train_docs = _encode(sp, spec, train_texts, train_origins, reporter, "encode train")
            table = build_byte_table(sp)
            # CaseOps through a normalizing tokenizer: its tokens rebuild normalized text, so the sidecar
            # counts the original bytes each piece covers and the val text is kept to check it against.
            keep_text = config.caseops and spec != "exact"
            sidecar = (np.concatenate([text_token_bytes(sp, text, True)[1] for text in val_originals]) if keep_text
                       else rebuilt_token_bytes(sp, table, np.concatenate(val_docs), config.caseops))
            names = _write_split(writer, "val", val_docs, config.shard_tokens)
            names += _write_split(writer, "val_bytes", [sidecar], config.shard_tokens)
            names += _write_split(writer, "train", train_docs, config.shard_tokens)

        with ledger.measure("audit", note="data preparation: outside both budgets"):
            # Table == decoded text (the CaseOps text, for CaseOps), and the sidecar == the text its
            # tokens rebuild, which for an exact tokenizer is the original: its UTF-8 length in all.
            audit = audit_val_bytes(sp, table, val_docs, val_texts if spec == "exact" else None,
                                    None if config.caseops else sidecar, val_origins)
            stream = np.concatenate(val_docs)
            sidecar_audit = (audit_against_text(sp, stream, sidecar, val_originals, True) if keep_text
                             else audit_sidecar(sp, table, stream, sidecar, config.caseops))
            if keep_text:
                atomic_write_bytes(writer.path(VAL_TEXT_FILE), val_text_bytes(val_originals))
                names.append(VAL_TEXT_FILE)
            original_bytes = sum(len(text.encode("utf-8")) for text in val_originals)
            if "original_bytes" in audit and config.caseops:  # the audit's "original": the CaseOps text it saw
                audit["caseops_text_bytes"], audit["original_bytes"] = audit["original_bytes"], original_bytes
            if spec == "exact" and sidecar_audit["sidecar_bytes"] != original_bytes:
                raise GolfError(f"byte audit failed: sidecar {sidecar_audit['sidecar_bytes']} != original {original_bytes}")
            overlap = shared_documents(val_docs, train_docs)
        counted = {key: value for key, value in audit.items() if key.endswith("bytes")}
        reporter.log(audit="passed", **{**counted, "sidecar_bytes": sidecar_audit["sidecar_bytes"]}, caseops=config.caseops)
        if overlap["val_docs_in_train"] > config.max_shared_docs:
            raise GolfError(
                f"leak: {overlap['val_docs_in_train']} val documents also occur verbatim in train "
                f"(allowed: {config.max_shared_docs}; raise max_shared_docs only for known duplicates)"
            )

        writer.add_output("tokenizer", writer.path(TOKENIZER_FILE))
        for name in names:
            writer.add_output(name.removesuffix(".bin").removesuffix(".jsonl"), writer.path(name))
        val_tokens = int(sum(doc.size for doc in val_docs))
        train_tokens = int(sum(doc.size for doc in train_docs))
        metrics = {
            "documents": len(corpus.documents),
            "val_tokens": val_tokens,
            "train_tokens": train_tokens,
            "val_bytes_per_token": sidecar_audit["sidecar_bytes"] / val_tokens,
            "byte_audit": audit,
            "sidecar": _sidecar_kind(spec, config.caseops),
            "sidecar_audit": sidecar_audit,
            "split": {**split.to_dict(), **overlap},
            "source": _portable_source(corpus.source, writer.run_root),
            **vocab,
        }
        lineage = _lineage(model_bytes, sp, spec, config.caseops)
        manifest = writer.commit(to_dict(config), lineage, metrics, reporter.text())
    reporter.log(stage="tokenize", val_tokens=val_tokens, train_tokens=train_tokens, bytes_per_token=metrics["val_bytes_per_token"], out=str(out_dir))
    return manifest


def _portable_source(source: dict, run_root: Path) -> dict:
    """The source description with its path relative to the run root (the embedded corpus is named)."""
    if source["path"].startswith(NEWS_PACKAGE):
        return source  # the package member's name, not a path
    return {**source, "path": relative_path(source["path"], run_root)}


def _lineage(model_bytes: bytes, sp, spec: str, is_caseops: bool) -> dict:
    return {
        "tokenizer_sha256": sha256_bytes(model_bytes),
        "vocab_size": sp.vocab_size(),
        "bos_id": sp.bos_id(),
        "tokenizer_spec": spec,
        "caseops": is_caseops,
    }


def _sidecar_kind(spec: str, is_caseops: bool) -> str:
    if is_caseops:
        return "original text bytes (CaseOps markers and escapes 0)" + (
            "" if spec == "exact" else ", checked against val_text.jsonl")
    return "original text bytes" if spec == "exact" else "normalized (decoded) text bytes"


def _check_caseops_pieces(sp, is_caseops: bool) -> None:
    """CaseOps data needs its controls as pieces 4-7; other data a tokenizer without them (eval reads a
    tokenizer that reserves them as CaseOps data)."""
    ids = control_ids(sp)
    if is_caseops and (ids is None or ids.tolist() != [4, 5, 6, 7]):
        raise GolfError("--caseops: the tokenizer does not reserve the four CaseOps controls as pieces 4-7")
    if not is_caseops and ids is not None:
        raise GolfError("the tokenizer reserves the CaseOps controls (pieces 4-7): pass --caseops")


def _tokenizer_bytes(config: TokenizeConfig, train_texts: list[str]) -> bytes:
    if config.tokenizer:
        path = Path(config.tokenizer)
        if not path.is_file():
            raise GolfError(f"{path}: no such tokenizer model")
        return path.read_bytes()
    docs = train_texts[: config.tokenizer_train_docs] if config.tokenizer_train_docs else train_texts
    return train_tokenizer(docs, config.vocab_size, config.spec, caseops.CONTROLS if config.caseops else ())


def check_tokenizer_vocab(tokenizer: str | Path, vocab_size: int) -> None:
    """Refuse a --vocab-size that disagrees with the reused tokenizer's (the tokenizer's would win silently)."""
    path = Path(tokenizer)
    if not path.is_file():
        raise GolfError(f"{path}: no such tokenizer model")
    reached = load_processor(path.read_bytes(), str(path)).vocab_size()
    if reached != vocab_size:
        raise GolfError(f"--vocab-size {vocab_size} disagrees with --tokenizer {path} (vocab {reached}): "
                        "a reused tokenizer keeps its own vocab; drop --vocab-size")


def _vocab_sizes(config: TokenizeConfig, sp, reporter: Reporter) -> dict:
    """The size asked for and the size trained, warning when training stopped short.

    With hard_vocab_limit off, SentencePiece stops when the corpus has no more pieces to merge;
    the tokenizer's real size is what lineage records and what the model must use.
    """
    if config.tokenizer:
        return {"vocab_size_requested": None, "vocab_size_reached": sp.vocab_size()}
    if sp.vocab_size() < config.vocab_size:
        reporter.log(warning="vocab_size_not_reached", vocab_size_requested=config.vocab_size,
                     vocab_size_reached=sp.vocab_size(), why="the training documents are too small for more pieces")
    return {"vocab_size_requested": config.vocab_size, "vocab_size_reached": sp.vocab_size()}


def _encode(sp, spec: str, texts: list[str], origins: list[str], reporter: Reporter, label: str) -> list[np.ndarray]:
    """Each document as [BOS] + its tokens, uint16."""
    out = []
    with reporter.progress(label, len(texts)) as advance:
        for start in range(0, len(texts), ENCODE_BATCH_DOCS):
            batch = texts[start : start + ENCODE_BATCH_DOCS]
            for ids in encode_documents(sp, batch, origins[start : start + ENCODE_BATCH_DOCS], spec == "exact"):
                out.append(np.asarray([BOS_ID, *ids], dtype=np.uint16))
            advance(len(batch))
    return out


def _write_split(writer: StageWriter, split: str, arrays: list[np.ndarray], shard_tokens: int) -> list[str]:
    shards = ShardWriter(split, lambda name, data: atomic_write_bytes(writer.path(name), data), shard_tokens)
    for array in arrays:
        shards.add(array)
    return shards.close()
