"""golf tokenize: documents -> tokenizer + challenge-format shards (or adopt an existing export)."""

from __future__ import annotations

from pathlib import Path

import typer

from stages.tokenize.adopt import run_import
from stages.tokenize.stage import check_tokenizer_vocab, run_tokenize
from stages.tokenize.config import TokenizeConfig

from .common import ForceOption, RichReporter, RunOption, SetOption, handle_errors, resolve_config, stage_path


@handle_errors
def tokenize(
    run: str = RunOption,
    out: Path = typer.Option(None, "--out", help="Output folder (default artifacts/<run>/tokenize)."),
    source: str = typer.Option("news", "--source", help="news (embedded corpus), jsonl or text."),
    input: str = typer.Option(None, "--input", help="JSONL file, or a .txt file or folder of them."),
    vocab_size: int = typer.Option(None, "--vocab-size", help="Tokenizer vocabulary size (default 1024; with "
                                   "--tokenizer: that model's, and a different value is an error)."),
    spec: str = typer.Option("exact", "--spec", help="exact (round-trips) or challenge (nmt_nfkc)."),
    val_docs: int = typer.Option(None, "--val-docs", help="Val = first N documents (default 50,000 or 10%)."),
    max_docs: int = typer.Option(None, "--max-docs", help="Use only the first N documents."),
    tokenizer: str = typer.Option(None, "--tokenizer", help="Reuse this SentencePiece model."),
    import_dir: Path = typer.Option(None, "--import", help="Adopt an export in the challenge layout instead."),
    docs: Path = typer.Option(None, "--docs", help="With --import: the original documents (JSONL, val first) to "
                                                   "check a normalizing tokenizer's original-bytes sidecar against."),
    caseops: bool = typer.Option(False, "--caseops", help="CaseOps case transform, controls as pieces 4-7, "
                                                          "original-bytes sidecar (the top records' data)."),
    overrides: list[str] = SetOption,
    force: bool = ForceOption,
):
    """Train a tokenizer, write train/val shards and the val byte sidecar, and audit the byte counts."""
    reporter = RichReporter()
    out_dir = stage_path(out, run, "tokenize")
    if import_dir is not None:
        run_import(import_dir, out_dir, tokenizer, force, reporter, docs=docs)
        return
    if tokenizer is not None and vocab_size is not None:
        check_tokenizer_vocab(tokenizer, vocab_size)
    config = TokenizeConfig(source=source, input=input, spec=spec, val_docs=val_docs, max_docs=max_docs,
                            tokenizer=tokenizer, caseops=caseops,
                            **({} if vocab_size is None else {"vocab_size": vocab_size}))
    config = resolve_config(config, overrides, reporter)
    run_tokenize(config, out_dir, force, reporter)
