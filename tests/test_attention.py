"""The attention backends agree: SDPA, and the flash-attn calling convention (checked on CPU
with stand-ins that implement flash-attn's layout and varlen contract by plain SDPA)."""

import pytest
import torch
import torch.nn.functional as F

from stages.model.attention import attend
from stages.model.layers import document_ids


def fake_flash_func(q, k, v, causal):
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         is_causal=causal, enable_gqa=k.size(2) != q.size(2))
    return out.transpose(1, 2)


def fake_flash_varlen(q, k, v, cu_q, cu_k, max_q, max_k, causal):
    assert torch.equal(cu_q, cu_k) and cu_q.dtype == torch.int32
    pieces = []
    for begin, end in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
        pieces.append(fake_flash_func(q[None, begin:end], k[None, begin:end], v[None, begin:end], causal)[0])
        assert end - begin <= max_q
    return torch.cat(pieces)


@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("with_docs", [False, True])
def test_flash_convention_matches_sdpa(kv_heads, with_docs):
    torch.manual_seed(0)
    q = torch.randn(2, 4, 16, 8)
    k, v = torch.randn(2, kv_heads, 16, 8), torch.randn(2, kv_heads, 16, 8)
    ids = torch.randint(2, 50, (2, 16))
    ids[0, 5] = ids[1, 9] = ids[1, 0] = 1
    docs = document_ids(ids, 1) if with_docs else None
    expected = attend(q, k, v, docs)
    got = attend(q, k, v, docs, flash=(fake_flash_func, fake_flash_varlen))
    assert torch.allclose(got, expected, atol=1e-5)
