"""`golf tokenize --caseops`: the transformed text, the reserved controls, the original-bytes sidecar, and
how import, eval and train treat CaseOps data (docs/TTT_CASEOPS.md F and H.5)."""

import json
import math
import shutil

import numpy as np
import pytest
import torch

from stages.contract.hashing import sha256_file
from stages.contract.stage_dir import StageDir
from stages.data import caseops
from stages.data.corpus import load_corpus
from stages.data.shards import encode_shard, read_shard, shard_index
from stages.data.tokenizer import load_processor
from stages.errors import GolfError
from stages.scoring.bpb import build_byte_table, stream_bytes
from stages.scoring.val_data import load_val
from stages.scoring.validate import scoring_setup, validate
from stages.model.gpt import GPT, ModelConfig
from stages.progress import Reporter
from stages.tokenize.adopt import run_import
from stages.tokenize.stage import run_tokenize
from stages.tokenize.config import TokenizeConfig
from stages.train.stage import _note_data

from .conftest import rewrite_manifest

DOCS, VOCAB = 200, 400
SIDECAR = "fineweb_val_bytes_000000"
# Text folder documents with everything the transform treats apart: capitals of every kind, a literal
# control character, private use, non-ASCII capitals, digits and whitespace runs.
SPECIAL_DOCS = [
    "The NASA Launch of iPhone OpenAI McDONALD's",
    "ÉCOLE Σίσυφος İstanbul  x\ue001y \ue004 \ue000 z\ue003",
    "A b C\td 12345  67\n\n\nEND of FILE",
]


@pytest.fixture(scope="module")
def caseops_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("caseops") / "tokenize"
    run_tokenize(TokenizeConfig(max_docs=DOCS, vocab_size=VOCAB, caseops=True), out)
    return out


@pytest.fixture(scope="module")
def special_data(tmp_path_factory):
    """CaseOps data of a text folder: the special documents as val, news articles as train."""
    folder = tmp_path_factory.mktemp("texts")
    texts = SPECIAL_DOCS + load_corpus("news", max_docs=60).documents
    for number, text in enumerate(texts):
        (folder / f"{number:03d}.txt").write_bytes(text.encode("utf-8"))
    out = folder.parent / "special-tokenize"
    run_tokenize(TokenizeConfig(source="text", input=str(folder), val_docs=len(SPECIAL_DOCS), vocab_size=VOCAB,
                                caseops=True), out)
    return out, SPECIAL_DOCS


def val_documents(data):
    """The val documents of a tokenize folder as token arrays, each starting with BOS."""
    tokens = np.asarray(read_shard(data / "fineweb_val_000000.bin"), dtype=np.int64)
    starts = np.flatnonzero(tokens == 1)
    return np.split(tokens, starts[1:]), np.asarray(read_shard(data / f"{SIDECAR}.bin"), dtype=np.int64), starts


def processor(data):
    return load_processor((data / "tokenizer.model").read_bytes())


def test_the_controls_are_pieces_4_to_7_and_each_always_one_piece(caseops_data):
    sp = processor(caseops_data)
    assert [sp.piece_to_id(char) for char in caseops.CONTROLS] == [4, 5, 6, 7]
    for char in caseops.CONTROLS:
        assert sp.encode(f"ab{char}cd{char}{char}", out_type=int).count(sp.piece_to_id(char)) == 3


def test_manifest_records_caseops(caseops_data):
    manifest = StageDir(caseops_data, "tokenize").manifest
    assert manifest.lineage["caseops"] is True and manifest.config["caseops"] is True
    assert manifest.metrics["sidecar_audit"]["passed"]


@pytest.mark.parametrize("which", ["news", "special"])
def test_sidecar_sums_per_document_to_the_original_utf8_length(caseops_data, special_data, which):
    if which == "news":
        data = caseops_data
        originals = load_corpus("news", max_docs=DOCS).documents[: StageDir(data, "tokenize").manifest.metrics["split"]["val_docs"][1]]
    else:
        data, originals = special_data
    docs, sidecar, starts = val_documents(data)
    sums = np.add.reduceat(sidecar, starts)
    assert sums.tolist() == [len(text.encode("utf-8")) for text in originals]
    assert not sidecar[starts].any()  # BOS counts 0
    sp = processor(data)
    decoded = [caseops.decode(sp.decode(doc[1:].tolist())) for doc in docs]
    assert decoded == originals  # the exact spec round-trips, the transform too


def test_markers_count_0_and_an_escaped_literal_its_3_bytes(special_data):
    data, originals = special_data
    docs, sidecar, starts = val_documents(data)
    sp = processor(data)
    stream = np.concatenate(docs)
    title, escape = sp.piece_to_id(caseops.TITLE), sp.piece_to_id(caseops.ESC)
    literal = np.flatnonzero((stream == title) & (np.roll(stream, 1) == escape))
    markers = np.flatnonzero((stream == title) & (np.roll(stream, 1) != escape))
    assert literal.size == 1 and sidecar[literal].tolist() == [3] and markers.size and not sidecar[markers].any()
    # x ESC TITLE y, ESC ESC (a literal ESC: 3 bytes), z ESC CAPNEXT
    assert sidecar[stream == escape].tolist() == [0, 0, 3, 0]


def independent_bytes(originals, count: int) -> int:
    return sum(len(text.encode("utf-8")) for text in originals[:count])


def test_bpb_of_caseops_data_counts_the_decoded_original_text(caseops_data):
    """Scored over whole documents, the bytes equal the UTF-8 length of the original documents, counted here
    from the corpus; the byte table would count the CaseOps text, markers included (more bytes, lower bpb)."""
    val = load_val(StageDir(caseops_data, "tokenize"))
    starts = np.flatnonzero(val.tokens == 1)
    docs = int(np.searchsorted(starts, 600))  # the targets 1..starts[docs] cover documents 0..docs-1 exactly
    seq_len = int(starts[docs])
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=VOCAB, num_layers=1, model_dim=32, num_heads=2, num_kv_heads=1, bos_id=1))
    sums = validate(model, val, scoring_setup(seq_len, seq_len, 8, "cpu"), max_tokens=seq_len, reporter=Reporter())
    originals = load_corpus("news", max_docs=DOCS).documents
    assert sums.tokens == seq_len and sums.bytes == independent_bytes(originals, docs)
    assert sums.bpb == pytest.approx(sums.nll / (math.log(2) * independent_bytes(originals, docs)), rel=1e-12)
    table = stream_bytes(build_byte_table(processor(caseops_data)), val.tokens[1 : seq_len + 1])
    assert table > 1.05 * sums.bytes


def without_sidecar(data, folder):
    shutil.copytree(data, folder)
    rewrite_manifest(folder, lambda manifest: manifest["outputs"].pop(SIDECAR))
    return StageDir(folder, "tokenize")


def test_caseops_data_is_never_scored_through_the_byte_table(caseops_data, tmp_path):
    with pytest.raises(GolfError, match=r"CaseOps data is scored only with its byte sidecar \(the sidecar was not "
                                        r"asked for.*each case marker as 3 bytes"):
        load_val(StageDir(caseops_data, "tokenize"), use_sidecar=False)
    with pytest.raises(GolfError, match=r"CaseOps data is scored only with its byte sidecar \(the data has no byte"):
        load_val(without_sidecar(caseops_data, tmp_path / "copy"))


def export_of(data, folder, drop_sidecar=False):
    """The challenge layout of a tokenize folder: its shards and tokenizer in a folder of their own."""
    folder.mkdir()
    for path in [*data.glob("fineweb_*.bin"), data / "tokenizer.model"]:
        if not (drop_sidecar and "_bytes_" in path.name):
            shutil.copy(path, folder / path.name)
    return folder


def test_import_of_a_caseops_export_audits_its_sidecar_and_records_caseops(caseops_data, tmp_path):
    manifest = run_import(export_of(caseops_data, tmp_path / "export"), tmp_path / "adopted")
    assert manifest.lineage["caseops"] is True and manifest.metrics["sidecar_audit"]["passed"]
    own = StageDir(caseops_data, "tokenize").manifest.metrics
    assert manifest.metrics["val_tokens"] == own["val_tokens"]  # the sidecar was not read as val tokens
    assert manifest.metrics["sidecar_audit"]["sidecar_bytes"] == own["sidecar_audit"]["sidecar_bytes"]


def test_import_refuses_a_caseops_export_whose_marker_counts_its_3_bytes(caseops_data, tmp_path):
    export = export_of(caseops_data, tmp_path / "export")
    sidecar = np.asarray(read_shard(export / f"{SIDECAR}.bin"), dtype=np.int64)
    stream = np.asarray(read_shard(export / "fineweb_val_000000.bin"), dtype=np.int64)
    marker = int(np.flatnonzero(stream == 4)[0])
    sidecar[marker] = 3  # the piece table's count: the ~9% inflation, one marker's worth
    (export / f"{SIDECAR}.bin").write_bytes(encode_shard(sidecar))
    with pytest.raises(GolfError, match="byte sidecar: 1 of .* val documents do not sum"):
        run_import(export, tmp_path / "adopted")


def test_import_refuses_a_caseops_export_without_its_sidecar(caseops_data, tmp_path):
    with pytest.raises(GolfError, match="CaseOps data .* needs its val byte sidecar"):
        run_import(export_of(caseops_data, tmp_path / "export", drop_sidecar=True), tmp_path / "adopted")


def test_val_glob_never_reads_a_sidecar_as_tokens(caseops_data):
    names = sorted(path.name for path in caseops_data.glob("*.bin"))
    assert "fineweb_val_bytes_000000.bin" in names
    assert [name for name in names if shard_index(name, "val") is not None] == ["fineweb_val_000000.bin"]
    assert [name for name in names if shard_index(name, "train") is not None] == ["fineweb_train_000000.bin"]
    val = load_val(StageDir(caseops_data, "tokenize"))
    assert val.tokens.size == StageDir(caseops_data, "tokenize").manifest.metrics["val_tokens"] == val.sidecar.size


@pytest.fixture(scope="module")
def caseops_normalized(tmp_path_factory):
    """CaseOps through the challenge's normalizing spec (as the records' tokenizer): the tokens rebuild
    normalized text, so the val text is kept beside the sidecar of original bytes."""
    out = tmp_path_factory.mktemp("caseops-nfkc") / "tokenize"
    run_tokenize(TokenizeConfig(max_docs=DOCS, vocab_size=VOCAB, caseops=True, spec="challenge"), out)
    return out


def test_normalizing_caseops_sidecar_counts_the_original_bytes_and_keeps_the_text(caseops_normalized):
    manifest = StageDir(caseops_normalized, "tokenize").manifest
    assert manifest.lineage["tokenizer_spec"] == "normalizing" and "val_text" in manifest.outputs
    originals = load_corpus("news", max_docs=DOCS).documents[: manifest.metrics["split"]["val_docs"][1]]
    docs, sidecar, starts = val_documents(caseops_normalized)
    assert np.add.reduceat(sidecar, starts).tolist() == [len(text.encode("utf-8")) for text in originals]
    sp = processor(caseops_normalized)
    rebuilt = sum(len(caseops.decode(sp.decode(doc[1:].tolist())).encode()) for doc in docs)
    assert rebuilt < int(sidecar.sum())  # the normalizer folded whitespace: only the text can vouch for the sidecar
    val = load_val(StageDir(caseops_normalized, "tokenize"))
    assert val.byte_source == "sidecar" and val.sidecar_audit["rule"].startswith("original text")


def test_normalizing_caseops_sidecar_with_a_byte_added_is_refused_when_read(caseops_normalized, tmp_path):
    shutil.copytree(caseops_normalized, tmp_path / "forged")
    path = tmp_path / "forged" / f"{SIDECAR}.bin"
    sidecar = np.asarray(read_shard(path), dtype=np.int64)
    sidecar[int(np.flatnonzero(sidecar > 0)[7])] += 1
    path.write_bytes(encode_shard(sidecar))
    rewrite_manifest(tmp_path / "forged", lambda manifest: manifest["outputs"][SIDECAR].update(
        sha256=sha256_file(path), bytes=path.stat().st_size))
    with pytest.raises(GolfError, match="byte sidecar: 1 of .* val documents do not sum"):
        load_val(StageDir(tmp_path / "forged", "tokenize"))


def docs_file(data, folder):
    """The original documents as JSONL, val first (what the challenge's docs_selected.jsonl is)."""
    path = folder / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in load_corpus("news", max_docs=DOCS).documents))
    return path


def test_import_of_a_normalizing_caseops_export_needs_and_checks_the_original_documents(caseops_normalized, tmp_path):
    export = export_of(caseops_normalized, tmp_path / "export")
    with pytest.raises(GolfError, match="CaseOps data is scored only with its byte sidecar.*pass the original documents "
                                        "with --docs"):
        run_import(export, tmp_path / "adopted")
    manifest = run_import(export, tmp_path / "adopted", docs=docs_file(caseops_normalized, tmp_path))
    assert manifest.metrics["sidecar_audit"]["rule"].startswith("original text") and "val_text" in manifest.outputs
    assert load_val(StageDir(tmp_path / "adopted", "tokenize")).byte_source == "sidecar"


def test_plain_tokenizer_reserving_the_controls_needs_caseops(caseops_data, tmp_path):
    with pytest.raises(GolfError, match="reserves the CaseOps controls .*: pass --caseops"):
        run_tokenize(TokenizeConfig(max_docs=60, tokenizer=str(caseops_data / "tokenizer.model")), tmp_path / "t")


@pytest.mark.parametrize(("preset", "use_caseops", "noted"), [
    ("top-cpu", False, True), ("top", False, True), ("top-cpu", True, False), ("tiny", False, False)])
def test_train_notes_a_caseops_record_on_other_data(caseops_data, data_dir, preset, use_caseops, noted):
    reporter = Reporter()
    _note_data(preset, StageDir(caseops_data if use_caseops else data_dir, "tokenize"), reporter)
    lines = [line for line in reporter.lines if line.startswith("note:")]
    assert bool(lines) == noted
    if noted:
        assert f"preset {preset}'s record trained on CaseOps data (golf tokenize --caseops)" in lines[0]
