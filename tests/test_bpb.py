"""Exact bits per byte: the byte table, the byte audit, and each historical bug docs/REFERENCE.md lists."""

import math

import numpy as np
import pytest
import torch

from stages.contract.stage_dir import StageDir
from stages.errors import GolfError
from stages.scoring.bpb import SPACE_MARK, BpbSums, build_byte_table, stream_bytes
from stages.scoring.setup import ScoringSetup
from stages.scoring.scorer import score_stream
from stages.scoring.windows import plan_windows, usable_targets
from stages.tokenize.audit import audit_val_bytes, surface_bytes
from stages.tokenize.spm import BOS_ID, load_processor

# Rare characters force byte-fallback tokens into the audited text.
DOCS = [
    "The cat sat on the mat. It was 42 degrees outside.",
    "Snowman \u2603 and na\u00efve caf\u00e9 \u2014 with  two spaces\nand a newline.",
    "Title\n\nBody text follows here, twice: body text.",
]


@pytest.fixture(scope="module")
def sp(data_dir):
    return load_processor(StageDir(data_dir).file("tokenizer").read_bytes())


@pytest.fixture(scope="module")
def encoded(sp):
    return [np.asarray([BOS_ID, *sp.encode(doc)], dtype=np.int64) for doc in DOCS]


def sidecar_of(sp, docs):
    return surface_bytes(sp)[np.concatenate(docs)]


def test_table_rules(sp):
    table = build_byte_table(sp, vocab_size=sp.vocab_size() + 3)
    assert table.boundary[BOS_ID] and table.base[BOS_ID] == 0
    assert table.boundary[-3:].all() and not table.base[-3:].any()  # padded ids hold no text
    byte_id = sp.piece_to_id("<0x41>")
    assert sp.is_byte(byte_id) and table.base[byte_id] == 1 and not table.leading_space[byte_id]
    space = sp.piece_to_id(SPACE_MARK)
    assert table.base[space] == 0 and table.leading_space[space]
    word = next(i for i in range(sp.vocab_size()) if sp.id_to_piece(i).startswith(SPACE_MARK) and len(sp.id_to_piece(i)) > 2)
    assert table.base[word] == len(sp.id_to_piece(word)[1:].encode()) and table.leading_space[word]


def test_audit_holds_exactly_on_real_text(sp, encoded):
    assert any(sp.is_byte(int(t)) for doc in encoded for t in doc), "test text must contain byte-fallback tokens"
    result = audit_val_bytes(sp, build_byte_table(sp), encoded, DOCS, sidecar_of(sp, encoded))
    total = sum(len(d.encode()) for d in DOCS)
    assert result["table_bytes"] == result["decoded_bytes"] == result["original_bytes"] == result["sidecar_bytes"] == total


def test_tokenize_stage_recorded_an_exact_audit(data_dir):
    audit = StageDir(data_dir).manifest.metrics["byte_audit"]
    assert audit["passed"]
    assert audit["table_bytes"] == audit["decoded_bytes"] == audit["original_bytes"] == audit["sidecar_bytes"]


def test_bug_897_no_standalone_space_piece_is_caught(sp, encoded):
    """Without a '▁' piece a lone space becomes the 3 byte tokens of U+2581: 3 bytes for 1."""
    spaces_as_bytes = [sp.piece_to_id(f"<0x{b:02X}>") for b in SPACE_MARK.encode()]
    stream = np.asarray([BOS_ID, *sp.encode("a"), *spaces_as_bytes, *sp.encode("b")])
    table = build_byte_table(sp)
    assert stream_bytes(table, stream) == 5  # what the buggy tokenizer scores for "a b"
    with pytest.raises(GolfError, match="original 3 != decoded 5"):
        audit_val_bytes(sp, table, [stream], ["a b"], None)

    class WithoutSpacePiece:
        def __getattr__(self, name):
            return getattr(sp, name)

        def piece_to_id(self, piece):
            return sp.unk_id() if piece == SPACE_MARK else sp.piece_to_id(piece)

    with pytest.raises(GolfError, match="no standalone"):
        audit_val_bytes(WithoutSpacePiece(), table, encoded, DOCS, None)


def test_bug_1271_byte_tokens_counted_as_three_is_caught(sp, encoded):
    table = build_byte_table(sp)
    byte_ids = [i for i in range(sp.vocab_size()) if sp.is_byte(i)]
    table.base[byte_ids] = 3
    with pytest.raises(GolfError, match="byte audit failed: table"):
        audit_val_bytes(sp, table, encoded, DOCS, sidecar_of(sp, encoded))


def test_bug_1545_space_added_twice_is_caught(sp, encoded):
    table = build_byte_table(sp)
    table.base[table.leading_space] += 1  # the space is already added by the leading-space rule
    with pytest.raises(GolfError, match="byte audit failed: table"):
        audit_val_bytes(sp, table, encoded, DOCS, sidecar_of(sp, encoded))


class UniformModel(torch.nn.Module):
    """Equal logits over the vocab: every target costs exactly ln(V) nats."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, ids):
        return torch.zeros(*ids.shape, self.vocab)


def test_every_target_counts_and_bos_adds_zero_bytes(sp, encoded):
    stream = np.concatenate(encoded * 4)
    table = build_byte_table(sp)
    seq = 16
    sums = score_stream(UniformModel(sp.vocab_size()), stream, table, ScoringSetup(seq, seq))
    n = usable_targets(len(stream), seq)
    targets = stream[1 : n + 1]
    assert sums.tokens == n and (targets == BOS_ID).any()
    assert sums.bytes == stream_bytes(table, stream[: n + 1])
    assert sums.bpb == pytest.approx(n * math.log(sp.vocab_size()) / (math.log(2) * sums.bytes), rel=1e-6)  # fp32 softmax


def test_bpb_comes_from_global_sums_not_a_mean_of_ranks(sp, encoded):
    stream = np.concatenate(encoded * 6)
    table = build_byte_table(sp)
    model = torch.nn.Sequential(torch.nn.Embedding(sp.vocab_size(), sp.vocab_size()))
    whole = score_stream(model, stream, table, ScoringSetup(16, 16))
    ranks = [score_stream(model, stream, table, ScoringSetup(16, 16, rank=r, world_size=2)) for r in range(2)]
    merged = ranks[0].merge(ranks[1])
    assert merged.tokens == whole.tokens and merged.bytes == whole.bytes
    assert merged.bpb == pytest.approx(whole.bpb, rel=1e-12)
    assert ranks[0].bytes != ranks[1].bytes
    assert abs((ranks[0].bpb + ranks[1].bpb) / 2 - whole.bpb) > 1e-9


def test_sliding_windows_score_every_target_once_with_full_context():
    for num_targets, seq, stride in [(64, 16, 4), (64, 16, 16), (70, 16, 5), (16, 16, 3)]:
        counts = np.zeros(num_targets, dtype=int)
        for i, window in enumerate(plan_windows(num_targets, seq, stride)):
            assert window.start >= 0 and window.start + seq <= num_targets
            if i > 0:
                assert window.score_from >= seq - stride
            counts[window.start + window.score_from : window.start + seq] += 1
        assert (counts == 1).all()


def test_sidecar_and_table_agree_on_exact_text(sp, encoded):
    stream = np.concatenate(encoded * 3)
    table = build_byte_table(sp)
    model = torch.nn.Sequential(torch.nn.Embedding(sp.vocab_size(), sp.vocab_size()))
    by_table = score_stream(model, stream, table, ScoringSetup(16, 4))
    by_sidecar = score_stream(model, stream, table, ScoringSetup(16, 4), sidecar=surface_bytes(sp)[stream])
    assert by_table.bytes == by_sidecar.bytes and by_table.bpb == by_sidecar.bpb


def test_bpb_sums_formula():
    sums = BpbSums()
    sums.add(10.0, 8, 4)
    sums.add(2.0, 4, 2)
    assert sums.bpb == pytest.approx(12.0 / (math.log(2) * 12))
    assert sums.loss == pytest.approx(2.0)
