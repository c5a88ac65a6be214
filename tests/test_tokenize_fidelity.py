"""`golf tokenize` keeps the input's bytes: CRLF, a literal '▁', bad UTF-8 named, the vocab size told."""

import io
import json

import numpy as np
import pytest
import sentencepiece as spm

from stages.contract.stage_dir import StageDir
from stages.data.corpus import load_corpus
from stages.data.shards import read_shard
from stages.errors import GolfError
from stages.scoring.bpb import SPACE_MARK, build_byte_table
from stages.progress import Reporter
from stages.tokenize.audit import audit_val_bytes
from stages.tokenize.spm import BOS_ID, SPECS, load_processor, train_tokenizer
from stages.tokenize.stage import run_tokenize
from stages.tokenize.config import TokenizeConfig

from .conftest import golf
from .test_cli import assert_one_line_error

WORDS = "the quick brown fox jumps over the lazy dog while seven wizards quietly hex a jolly vixen".split()


def text_folder(folder, documents):
    """One .txt file per document, written as raw bytes (no newline translation)."""
    folder.mkdir()
    for index, document in enumerate(documents):
        (folder / f"doc{index:02d}.txt").write_bytes(document.encode("utf-8"))
    return folder


def prose(seed: int, lines: int = 6, newline: str = "\n") -> str:
    rng = np.random.default_rng(seed)
    return newline.join(" ".join(rng.choice(WORDS, size=9)) for _ in range(lines)) + newline


def val_texts(out):
    """The val documents decoded from the val shard, and the tokenizer."""
    sp = load_processor((out / "tokenizer.model").read_bytes())
    tokens = np.asarray(read_shard(out / "fineweb_val_000000.bin")).tolist()
    starts = [i for i, token in enumerate(tokens) if token == BOS_ID] + [len(tokens)]
    return [sp.decode(tokens[a + 1 : b]) for a, b in zip(starts, starts[1:])]


def test_crlf_text_round_trips_byte_for_byte(tmp_path):
    documents = [prose(seed, newline="\r\n") for seed in range(12)]
    source = text_folder(tmp_path / "crlf", documents)
    manifest = run_tokenize(TokenizeConfig(source="text", input=str(source), val_docs=3, vocab_size=300), tmp_path / "tok")
    audit = manifest.metrics["byte_audit"]
    assert audit["original_bytes"] == sum(len(doc.encode()) for doc in documents[:3])  # the CRs are counted
    assert audit["original_bytes"] == audit["table_bytes"] == audit["sidecar_bytes"]
    assert val_texts(tmp_path / "tok") == documents[:3] and "\r\n" in val_texts(tmp_path / "tok")[0]


def test_jsonl_with_crlf_line_ends_keeps_the_crs_inside_its_texts(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_bytes(b"".join(json.dumps({"text": text}).encode() + b"\r\n" for text in ["a\r\nb", "c\rd"]))
    assert load_corpus("jsonl", str(path)).documents == ["a\r\nb", "c\rd"]


def test_literal_space_mark_is_kept_as_its_bytes(tmp_path):
    marked = [f"{SPACE_MARK}lead " + prose(1), "mid" + SPACE_MARK + SPACE_MARK + "dle " + prose(2) + SPACE_MARK]
    documents = marked + [prose(seed) for seed in range(3, 14)]
    source = text_folder(tmp_path / "marks", documents)
    manifest = run_tokenize(TokenizeConfig(source="text", input=str(source), val_docs=2, vocab_size=300), tmp_path / "tok")
    audit = manifest.metrics["byte_audit"]
    assert audit["original_bytes"] == audit["table_bytes"] == sum(len(doc.encode()) for doc in marked)
    assert val_texts(tmp_path / "tok") == marked


def test_space_mark_without_byte_fallback_names_the_document(tmp_path):
    documents = [prose(seed) for seed in range(12)]
    documents[5] = "word " + SPACE_MARK + " " + documents[5]
    documents[6] += " \t\ufb01ne 12\u00b2 A"  # every character spec_of probes, so the tokenizer is exact
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(documents), model_writer=writer, vocab_size=120, minloglevel=2,
                                   **{**SPECS["exact"], "byte_fallback": False, "character_coverage": 1.0})
    (tmp_path / "plain.model").write_bytes(writer.getvalue())
    source = text_folder(tmp_path / "marks", documents)
    config = TokenizeConfig(source="text", input=str(source), val_docs=2, tokenizer=str(tmp_path / "plain.model"))
    with pytest.raises(GolfError, match="document doc05.txt: U\\+2581 at character 5 cannot be represented"):
        run_tokenize(config, tmp_path / "tok")
    assert not (tmp_path / "tok").exists()


def test_a_document_that_does_not_round_trip_is_named(tmp_path):
    docs = load_corpus("news", max_docs=120).documents
    sp = load_processor(train_tokenizer(docs, 400, "challenge"))  # nmt_nfkc rewrites the ligature
    texts = ["plain text", "a \ufb01ne day"]
    doc_tokens = [np.asarray([BOS_ID, *sp.encode(text)], dtype=np.int64) for text in texts]
    with pytest.raises(GolfError, match=r"1 val documents do not decode to their original text "
                                        r"\(first: val document 1 \(b\.txt\), character 2 is U\+FB01, decoded as U\+0066\)"):
        audit_val_bytes(sp, build_byte_table(sp), doc_tokens, texts, None, ["a.txt", "b.txt"])


def test_non_utf8_jsonl_is_one_line_naming_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(json.dumps({"text": "fine"}).encode() + b"\n" + b'{"text": "caf\xe9"}\n')
    result = golf("tokenize", "--source", "jsonl", "--input", bad, "--out", tmp_path / "out")
    assert_one_line_error(result, f"{bad}:2: not UTF-8 text (byte 0xe9 at byte offset 13)")
    assert not (tmp_path / "out").exists()


def test_non_utf8_text_file_is_named(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(GolfError, match="latin1.txt: not UTF-8 text"):
        load_corpus("text", str(tmp_path))


def test_vocab_size_not_reached_is_warned_and_recorded(tmp_path):
    source = text_folder(tmp_path / "tiny", [prose(seed) for seed in range(10)])
    log = io.StringIO()
    run_tokenize(TokenizeConfig(source="text", input=str(source), val_docs=1, vocab_size=60000), tmp_path / "tok", reporter=Reporter(log))
    manifest = StageDir(tmp_path / "tok").manifest
    reached = manifest.lineage["vocab_size"]
    assert reached < 60000 and manifest.metrics["vocab_size_requested"] == 60000
    assert manifest.metrics["vocab_size_reached"] == reached
    warnings = [line for line in log.getvalue().splitlines() if line.startswith("warning:vocab_size_not_reached")]
    assert len(warnings) == 1 and "vocab_size_requested:60000" in warnings[0] and f"vocab_size_reached:{reached}" in warnings[0]
