"""`golf tokenize --import`: an imported val byte sidecar is audited token by token against the byte table."""

import io
import re

import numpy as np
import pytest
import sentencepiece as spm

from stages.data.corpus import load_corpus
from stages.data.shards import encode_shard, read_shard
from stages.errors import GolfError
from stages.evaluate.bpb import build_byte_table, token_bytes
from stages.tokenize.adopt import run_import
from stages.tokenize.spm import BOS_ID, SPECS, load_processor, proto_fields, train_tokenizer

SIDECAR = "fineweb_val_bytes_000000.bin"
# CaseOps's case markers (TITLE, ALLCAPS, CAPNEXT, ESC), reserved as user-defined pieces.
CASE_MARKERS = ["\ue001", "\ue002", "\ue003", "\ue004"]
TITLE = CASE_MARKERS[0]


def copy_export(source, folder, sidecar=None):
    """The shards and tokenizer of an export in ``folder``, with ``sidecar`` replacing its sidecar."""
    folder.mkdir()
    for path in [*source.glob("*.bin"), *source.glob("*.model")]:
        (folder / path.name).write_bytes(path.read_bytes())
    if sidecar is not None:
        (folder / SIDECAR).write_bytes(encode_shard(sidecar))
    return folder


def write_export(folder, model_bytes, val_docs, train_docs, sidecar):
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes(model_bytes)
    (folder / "fineweb_val_000000.bin").write_bytes(encode_shard(np.concatenate(val_docs)))
    (folder / "fineweb_train_000000.bin").write_bytes(encode_shard(np.concatenate(train_docs)))
    (folder / SIDECAR).write_bytes(encode_shard(sidecar))
    return folder


def encode_docs(sp, texts):
    return [np.asarray([BOS_ID, *ids], dtype=np.int64) for ids in sp.encode(texts, out_type=int)]


def own_sidecar(data_dir):
    return np.asarray(read_shard(data_dir / SIDECAR), dtype=np.int64)


def test_exact_sidecar_imports_and_its_audit_is_recorded(data_dir, tmp_path):
    metrics = run_import(data_dir, tmp_path / "adopted").metrics
    audit = metrics["sidecar_audit"]
    assert audit["passed"] and audit["mismatches"] == 0 and audit["moved_bytes"] == 0
    assert audit["tokens_checked"] == metrics["val_tokens"] and audit["control_tokens_skipped"] == 0
    assert audit["sidecar_bytes"] == audit["table_bytes"] == metrics["byte_audit"]["table_bytes"]


def test_doubled_sidecar_is_refused(data_dir, tmp_path):
    sidecar = own_sidecar(data_dir)
    export = copy_export(data_dir, tmp_path / "export", sidecar * 2)
    total = int(sidecar.sum())
    with pytest.raises(GolfError, match=rf"sidecar disagrees with the byte table on [\d,]+ of [\d,]+ val tokens "
                                        rf"\(sidecar {2 * total:,} bytes, table {total:,};.*first at val token 1 "):
        run_import(export, tmp_path / "adopted")
    assert not (tmp_path / "adopted").exists()


def test_sidecar_shifted_by_one_token_is_refused_though_its_total_is_right(data_dir, tmp_path):
    sidecar = own_sidecar(data_dir)
    export = copy_export(data_dir, tmp_path / "export", np.roll(sidecar, 1))
    with pytest.raises(GolfError, match="sidecar disagrees with the byte table"):
        run_import(export, tmp_path / "adopted")


@pytest.fixture(scope="module")
def caseops_like(tmp_path_factory):
    """A tokenizer with the case markers as user-defined pieces, trained on title-cased text."""
    texts = [title_case(doc) for doc in load_corpus("news", max_docs=160).documents]
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts[20:]), model_writer=writer, vocab_size=400,
                                   minloglevel=2, user_defined_symbols=CASE_MARKERS, **SPECS["exact"])
    model_bytes = writer.getvalue()
    sp = load_processor(model_bytes)
    # Characters outside the small vocab, so some val text is spelled with byte-fallback pieces.
    val = encode_docs(sp, [text + " 中文 Ωmega" for text in texts[:20]])
    return sp, model_bytes, val, encode_docs(sp, texts[20:])


def title_case(text: str) -> str:
    """CaseOps's TITLE rule, enough for a test: a marker before a capital, then the letter lowercased."""
    return re.sub(r"[A-Z]", lambda match: TITLE + match.group().lower(), text)


def original_bytes_sidecar(sp, stream):
    """Per token, its bytes in the original text, as CaseOps counts them: markers 0, and a
    character spelled with byte pieces counted on its last piece."""
    counts = token_bytes(build_byte_table(sp), stream)
    counts[np.isin(stream, [sp.piece_to_id(marker) for marker in CASE_MARKERS])] = 0
    for index in range(len(stream) - 1):
        if sp.is_byte(int(stream[index])) and sp.is_byte(int(stream[index + 1])):
            counts[index + 1] += counts[index]
            counts[index] = 0
    return counts


def test_caseops_like_sidecar_where_only_markers_and_byte_runs_differ_imports(caseops_like, tmp_path):
    sp, model_bytes, val, train = caseops_like
    stream = np.concatenate(val)
    sidecar = original_bytes_sidecar(sp, stream)
    table = token_bytes(build_byte_table(sp), stream)
    markers = int(np.isin(stream, [sp.piece_to_id(TITLE)]).sum())
    assert markers and (sidecar != table).sum() > markers  # markers and byte runs both differ
    export = write_export(tmp_path / "export", model_bytes, val, train, sidecar)
    audit = run_import(export, tmp_path / "adopted").metrics["sidecar_audit"]
    assert audit["passed"] and audit["mismatches"] == 0
    assert audit["control_tokens_skipped"] == markers and audit["tokens_checked"] == stream.size - markers
    assert audit["table_bytes"] - audit["sidecar_bytes"] == audit["control_table_bytes"] == 3 * markers


def test_caseops_like_sidecar_with_a_wrong_word_count_is_refused(caseops_like, tmp_path):
    sp, model_bytes, val, train = caseops_like
    stream = np.concatenate(val)
    sidecar = original_bytes_sidecar(sp, stream)
    is_byte = np.asarray([sp.is_byte(int(token)) for token in stream])
    word = int(np.flatnonzero(~np.isin(stream, [BOS_ID, sp.piece_to_id(TITLE)]) & ~is_byte)[5])
    sidecar[word] += 1
    export = write_export(tmp_path / "export", model_bytes, val, train, sidecar)
    with pytest.raises(GolfError, match=rf"on 1 of [\d,]+ val tokens .* first at val token {word} "):
        run_import(export, tmp_path / "adopted")


def test_caseops_like_marker_counted_as_neither_zero_nor_itself_is_refused(caseops_like, tmp_path):
    sp, model_bytes, val, train = caseops_like
    stream = np.concatenate(val)
    sidecar = original_bytes_sidecar(sp, stream)
    marker = int(np.flatnonzero(stream == sp.piece_to_id(TITLE))[0])
    sidecar[marker] = 1
    export = write_export(tmp_path / "export", model_bytes, val, train, sidecar)
    expected = re.escape(f"first at val token {marker} ({TITLE!r}: sidecar 1, table 3)")
    with pytest.raises(GolfError, match=rf"on 1 of .* {expected}"):
        run_import(export, tmp_path / "adopted")


def surface_sidecar(sp, texts):
    """Per token, the UTF-8 length of the original text it covers (its 'surface'), BOS 0: the
    original-bytes sidecar an exporter writes for a normalizing tokenizer."""
    counts = []
    for text in texts:
        counts.append(0)
        for field, piece in proto_fields(sp.encode(text, out_type="serialized_proto")):
            if field == 2:  # SentencePieceText.pieces; in a piece, field 3 is the surface
                surface = b"".join(value for number, value in proto_fields(piece) if number == 3)
                counts.append(len(surface))
    return np.asarray(counts, dtype=np.int64)


@pytest.fixture(scope="module")
def normalizing(tmp_path_factory):
    docs = load_corpus("news", max_docs=170).documents
    model_bytes = train_tokenizer(docs[40:], 400, "challenge")
    sp = load_processor(model_bytes)
    return sp, model_bytes, docs[:40], encode_docs(sp, docs[:40]), encode_docs(sp, docs[40:])


def test_original_bytes_sidecar_of_a_normalizing_tokenizer_imports(normalizing, tmp_path):
    sp, model_bytes, texts, val, train = normalizing
    sidecar = surface_sidecar(sp, texts)
    assert int(sidecar.sum()) == sum(len(text.encode()) for text in texts)
    export = write_export(tmp_path / "export", model_bytes, val, train, sidecar)
    audit = run_import(export, tmp_path / "adopted").metrics["sidecar_audit"]
    # The normalizer folded whitespace runs (paragraph breaks), so some tokens differ, within the slack.
    assert audit["passed"] and audit["mismatches"] > 0 and 0 < audit["moved_bytes"] <= 0.01 * audit["table_bytes"]
    assert audit["rule"].startswith("normalizing")


def test_doubled_sidecar_of_a_normalizing_tokenizer_is_refused(normalizing, tmp_path):
    sp, model_bytes, texts, val, train = normalizing
    export = write_export(tmp_path / "export", model_bytes, val, train, 2 * surface_sidecar(sp, texts))
    with pytest.raises(GolfError, match="sidecar disagrees with the byte table"):
        run_import(export, tmp_path / "adopted")
