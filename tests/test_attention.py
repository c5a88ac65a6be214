"""The attention backends agree with SDPA over the explicit (T, T) mask: the block-wise SDPA path,
FlexAttention (eager on CPU), and the flash-attn calling convention (checked on CPU with stand-in
custom ops that have the flash kernels' signatures); document boundaries built once agree with
``document_ids``; q, k and v reach a kernel in one dtype."""

import pytest
import torch
import torch.nn.functional as F

from stages.model.attention_backends import (
    FLEX, HALF, SDPA, AttentionPlan, Backend, Segments, attend, attend_blocks, find_backend, find_segments, plan_attention,
    segment_ids, static_segments, unbounded_reason,
)
from stages.model.config import ModelConfig
from stages.model.gpt import GPT
from stages.model.layers import document_ids

from .flash_standins import STAND_IN, STAND_IN_WITH_LSE

BOS = 1


def explicit_mask_attention(q, k, v, doc_ids):
    """The reference: SDPA with the full causal & same-document mask."""
    seq_len = q.size(-2)
    mask = torch.ones(seq_len, seq_len, dtype=torch.bool).tril() & (doc_ids[:, :, None] == doc_ids[:, None, :])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None], enable_gqa=k.size(1) != q.size(1))


def random_qkv(batch, seq_len, kv_heads, heads=4, dim=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, seq_len, dim, generator=generator)
    return q, *(torch.randn(batch, kv_heads, seq_len, dim, generator=generator) for _ in range(2))


def tokens_with_documents(batch, seq_len, bos_at, seed=0):
    ids = torch.randint(2, 50, (batch, seq_len), generator=torch.Generator().manual_seed(seed))
    for row, position in bos_at:
        ids[row, position] = BOS
    return ids


# Segment layouts: none but the row start, BOS inside blocks and on block edges, documents
# crossing block edges, a BOS at position 0, back-to-back BOS.
LAYOUTS = [[], [(0, 5), (1, 9), (1, 0)], [(0, 7), (0, 8), (0, 16), (1, 15), (1, 31), (1, 32)],
           [(0, 1), (0, 2), (0, 3), (1, 20), (1, 36)]]


@pytest.mark.parametrize("layout", range(len(LAYOUTS)))
@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("seq_len,block", [(40, 8), (37, 8), (40, 40), (21, 5)])
def test_block_path_equals_the_explicit_mask(layout, kv_heads, seq_len, block):
    """Odd lengths (37, 21) pad the last block; block >= T takes the plain mask."""
    q, k, v = random_qkv(2, seq_len, kv_heads)
    ids = tokens_with_documents(2, seq_len, [(r, p) for r, p in LAYOUTS[layout] if p < seq_len])
    docs = document_ids(ids, BOS, block)  # documents cut every ``block``: no segment is longer
    expected = explicit_mask_attention(q, k, v, docs)
    assert torch.allclose(attend_blocks(q, k, v, docs, block), expected, atol=1e-5)
    # The check can fail: with a block shorter than a segment the block path loses keys.
    if layout == 0 and block < seq_len:
        long_docs = document_ids(tokens_with_documents(2, seq_len, [(0, 3), (1, 3)]), BOS, 2 * block)
        assert not torch.allclose(attend_blocks(q, k, v, long_docs, block), explicit_mask_attention(q, k, v, long_docs),
                                  atol=1e-3)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("backend", [STAND_IN, STAND_IN_WITH_LSE, FLEX, SDPA], ids=lambda b: b.name)
@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("max_doc_len", [0, 8])
def test_every_backend_equals_the_explicit_mask(backend, kv_heads, max_doc_len):
    """Each backend through its plan, from the tokens and from loader-style segments."""
    q, k, v = random_qkv(2, 32, kv_heads)
    ids = tokens_with_documents(2, 32, LAYOUTS[2][:-1])
    expected = explicit_mask_attention(q, k, v, document_ids(ids, BOS, max_doc_len))
    for segments in (None, find_segments(ids, BOS, max_doc_len)):
        plan = plan_attention(backend, ids, BOS, max_doc_len, segments)
        assert torch.allclose(attend(q, k, v, plan), expected, atol=1e-5), (backend.name, segments)
    causal = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=kv_heads != 4)
    assert torch.allclose(attend(q, k, v, plan_attention(backend, ids, BOS, doc_mask=False)), causal, atol=1e-5)


def test_segments_match_document_ids_and_pad_to_a_fixed_bucket():
    ids = tokens_with_documents(3, 64, [(0, 5), (0, 6), (1, 63), (2, 0), (2, 30)])
    for max_doc_len in (0, 1, 7, 16, 64):
        docs = document_ids(ids, BOS, max_doc_len)
        for build in (find_segments, static_segments):
            segments = build(ids, BOS, max_doc_len)
            found = segment_ids(segments, 3, 64)
            # Same partition: equal ids exactly where document_ids has equal ids (per row).
            assert torch.equal(found[:, :, None] == found[:, None, :], docs[:, :, None] == docs[:, None, :])
            assert segments.cu_seqlens.dtype == torch.int32 and int(segments.cu_seqlens[-1]) == 3 * 64
            assert segments.max_seqlen == (max_doc_len or 64)
    # The bucket depends on the batch shape, not on how many documents it holds (until they overflow
    # it: then a multiple of it).
    none, one = (find_segments(tokens_with_documents(3, 64, bos), BOS, 16) for bos in ([], [(0, 9)]))
    assert none.cu_seqlens.shape == one.cu_seqlens.shape
    assert len(find_segments(ids, BOS, 16).cu_seqlens) == 2 * len(none.cu_seqlens)


def test_mixed_precision_reaches_the_kernel_in_one_dtype():
    """q and k float32 after QK-norm, v bf16 (autocast on torch >= 2.12): the kernel sees one dtype."""
    q, k, v = random_qkv(1, 16, 2)
    seen = []

    def spy(q, k, v, causal=True):
        seen.append({q.dtype, k.dtype, v.dtype})
        return STAND_IN.func(q.float(), k.float(), v.float(), causal).to(v.dtype)

    out = attend(q, k, v.bfloat16(), AttentionPlan(Backend("spy", spy, STAND_IN.varlen_func)))
    assert seen == [{torch.bfloat16}] and out.dtype == torch.bfloat16
    # SDPA itself refuses mixed dtypes: without the cast this call would raise.
    assert attend(q, k, v.bfloat16(), None).dtype == torch.bfloat16


def test_backend_choice_and_refusal():
    assert find_backend(torch.device("cpu"), torch.bfloat16) is SDPA
    assert unbounded_reason(SDPA, True, 98_304, 2048) is None  # cut at seq_len: the block path bounds it
    assert unbounded_reason(STAND_IN, True, 98_304, 0) is None
    assert "pip install flash-attn" in unbounded_reason(SDPA, True, 98_304, 0)


def test_flash_plan_holds_the_loaders_segments_untouched():
    ids = tokens_with_documents(2, 32, LAYOUTS[1])
    segments = find_segments(ids, BOS, 8)
    plan = plan_attention(STAND_IN, ids, BOS, 0, segments)
    assert plan.segments is segments and plan.doc_ids is None
    assert isinstance(plan.segments, Segments)


def test_a_pinned_half_precision_kernel_gives_way_to_sdpa_in_float32():
    """flash-attn takes bf16/fp16 only: a float32 forward (no autocast) of a model pinned to it runs SDPA."""
    def refuse(*args, **kwargs):
        raise AssertionError("a half-precision kernel got float32")

    model = GPT(ModelConfig(vocab_size=64, num_layers=2, model_dim=32, num_heads=4, num_kv_heads=2, doc_mask=True))
    ids = tokens_with_documents(1, 16, [(0, 4)])
    expected = model(ids)
    model.attention_backend = Backend("half-only", refuse, refuse, HALF)
    assert torch.equal(model(ids), expected)
