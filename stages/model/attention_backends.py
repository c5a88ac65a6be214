"""Which attention kernel runs, and the document boundaries it needs, built once per batch.

Backends, best first, by what is importable and what the inputs need:

- ``flash3``: FlashAttention 3 (``flash_attn_interface``), CUDA Hopper, half precision;
- ``flash2``: FlashAttention 2 (``flash_attn``), CUDA, half precision;
- ``flex``: PyTorch FlexAttention with a document block mask (CUDA, compiled);
- ``sdpa``: PyTorch SDPA. Without documents it runs ``is_causal`` (no mask tensor). With documents
  it runs block by block: every segment is at most ``block`` tokens long, so query block i only
  needs key blocks i-1 and i, and a (block, 2 block) mask per block is exact. Nothing is quadratic
  in the row length; a row no longer than one block takes the plain (T, T) mask.

Document boundaries (``Segments``) come once per batch: from the doc-packed loader (computed on the
host) or, when a caller passes none, from the tokens once per forward (``find_segments``). Per
forward, ``plan_attention`` derives what the backend reads (per-position segment ids, the block
mask, the varlen offsets) so no layer repeats it and the forward does no host sync.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .layers import compute_dtype, document_ids

HALF = (torch.float16, torch.bfloat16)
# A row that is one block of the SDPA path longer than this, with documents of unbounded length,
# would need a (T, T) mask: refuse instead (see ``check_bounded``).
DENSE_ROW_LIMIT = 16_384
# cu_seqlens are padded to a multiple of a bucket (fixed shapes for torch.compile): room for every
# cut at max_seqlen plus one document per this many tokens (FineWeb documents average ~1k tokens).
BUCKET_TOKENS_PER_DOCUMENT = 256


@dataclass(frozen=True)
class Segments:
    """Where attention restarts in one batch (rows flattened one after the other)."""

    cu_seqlens: torch.Tensor
    """int32 (bucket,): the start of every segment over the flattened batch, then the total token
    count, repeated to the bucket's length (empty segments: flash-attn skips them)."""
    max_seqlen: int
    """No segment is longer (the train seq_len in doc-packed rows): flash-attn's max_seqlen and the
    block length of the block-wise SDPA path."""


@dataclass(frozen=True)
class Backend:
    """One attention implementation; ``func``/``varlen_func`` follow flash-attn's calling convention."""

    name: str
    """flash3, flash2, flex or sdpa (what the ``attention:`` log line and the manifests record)."""
    func: Callable | None = None
    """flash_attn_func(q, k, v, causal=True) on (batch, seq, heads, dim); may return (out, lse)."""
    varlen_func: Callable | None = None
    """flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, causal=True) on (total, heads, dim)."""
    dtypes: tuple[torch.dtype, ...] | None = None
    """The dtypes its kernels take (None: any); flash-attn takes half precision only."""

    def takes(self, dtype: torch.dtype) -> bool:
        return self.dtypes is None or dtype in self.dtypes


SDPA = Backend("sdpa")
FLEX = Backend("flex")
_FLASH_MODULES = (("flash3", "flash_attn_interface"), ("flash2", "flash_attn"))
_imported: dict[str, object] = {}


def _flash(name: str, module: str) -> Backend | None:
    if module not in _imported:
        try:
            _imported[module] = importlib.import_module(module)
        except ImportError:
            _imported[module] = None
    found = _imported[module]
    if found is None:
        return None
    return Backend(name, found.flash_attn_func, found.flash_attn_varlen_func, HALF)


def flex_importable() -> bool:
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def find_backend(device: torch.device, dtype: torch.dtype) -> Backend:
    """The best backend for tensors of ``dtype`` on ``device`` (``dtype``: the autocast dtype when
    autocast is on, else the weights')."""
    if device.type != "cuda":
        return SDPA
    if dtype in HALF:
        names = _FLASH_MODULES if torch.cuda.get_device_capability(device)[0] >= 9 else _FLASH_MODULES[1:]
        for name, module in names:
            backend = _flash(name, module)
            if backend is not None:
                return backend
    return FLEX if flex_importable() else SDPA


def unbounded_reason(backend: Backend, doc_mask: bool, row_tokens: int, max_doc_len: int) -> str | None:
    """Why rows of ``row_tokens`` cannot be attended without a (T, T) mask on ``backend``, or None.
    The caller refuses before its first step."""
    if backend.name == "sdpa" and doc_mask and not max_doc_len and row_tokens > DENSE_ROW_LIMIT:
        return (f"attention: rows of {row_tokens} tokens with documents of unbounded length need a (T, T) mask; "
                "install flash-attn (pip install flash-attn), run on CUDA (FlexAttention), or cut documents at "
                "seq_len (loader doc_packed)")
    return None


# ---- document boundaries ----

def longest_segment(max_doc_len: int, row_tokens: int) -> int:
    """The bound on a segment's length when documents are cut every ``max_doc_len`` (0: never)."""
    return min(max_doc_len, row_tokens) if max_doc_len else row_tokens


def bucket_length(count: int, rows: int, row_tokens: int, max_seqlen: int) -> int:
    """``count`` boundaries padded up to a multiple of this batch shape's bucket."""
    unit = rows * math.ceil(row_tokens / max_seqlen) + math.ceil(rows * row_tokens / BUCKET_TOKENS_PER_DOCUMENT) + 1
    return unit * math.ceil(count / unit)


def segment_starts(input_ids: torch.Tensor, bos_id: int, max_doc_len: int) -> torch.Tensor:
    """(batch, seq) bool: True where a segment begins (row starts, BOS, every max_doc_len inside one)."""
    ids = document_ids(input_ids, bos_id, max_doc_len)
    starts = torch.ones_like(ids, dtype=torch.bool)
    starts[:, 1:] = ids[:, 1:] != ids[:, :-1]
    return starts


def find_segments(input_ids: torch.Tensor, bos_id: int, max_doc_len: int = 0) -> Segments:
    """The segments ``document_ids`` gives, padded to a bucket. On the host this is how loaders
    build them; on a device it syncs once (the segment count)."""
    rows, row_tokens = input_ids.shape
    max_seqlen = longest_segment(max_doc_len, row_tokens)
    begin = torch.nonzero(segment_starts(input_ids, bos_id, max_doc_len).flatten()).flatten()
    total = rows * row_tokens
    cu_seqlens = torch.full((bucket_length(len(begin) + 1, rows, row_tokens, max_seqlen),), total,
                            dtype=torch.int32, device=input_ids.device)
    cu_seqlens[: len(begin)] = begin
    return Segments(cu_seqlens, max_seqlen)


def static_segments(input_ids: torch.Tensor, bos_id: int, max_doc_len: int = 0) -> Segments:
    """``find_segments`` without a host sync, for compiled callers that pass no segments: one slot
    per token (fixed shape), the unused ones holding the total."""
    rows, row_tokens = input_ids.shape
    starts = segment_starts(input_ids, bos_id, max_doc_len).flatten()
    total = starts.numel()
    positions = torch.arange(total, device=input_ids.device, dtype=torch.int32)
    slot = torch.where(starts, torch.cumsum(starts, 0) - 1, total)  # non-starts write the spare last slot
    cu_seqlens = torch.full((total + 1,), total, dtype=torch.int32, device=input_ids.device)
    cu_seqlens = cu_seqlens.scatter(0, slot, positions)
    cu_seqlens[-1] = total
    return Segments(cu_seqlens, longest_segment(max_doc_len, row_tokens))


def segment_ids(segments: Segments, rows: int, row_tokens: int) -> torch.Tensor:
    """(rows, row_tokens) index of each position's segment (equal ids: may attend), on the device."""
    positions = torch.arange(rows * row_tokens, device=segments.cu_seqlens.device, dtype=torch.int32)
    return (torch.searchsorted(segments.cu_seqlens, positions, right=True) - 1).view(rows, row_tokens)


# ---- once per forward ----

@dataclass(frozen=True)
class AttentionPlan:
    """What every layer's attention reads in one forward, derived once."""

    backend: Backend
    segments: Segments | None = None
    """None: plain causal attention over each row."""
    doc_ids: torch.Tensor | None = None
    """(batch, seq) segment index per position (the SDPA and flex paths)."""
    block: int = 0
    """No segment is longer: the block length of the block-wise SDPA path."""
    block_mask: object | None = None
    """FlexAttention's BlockMask (the flex path)."""


def plan_attention(backend: Backend, input_ids: torch.Tensor, bos_id: int, max_doc_len: int = 0,
                   segments: Segments | None = None, doc_mask: bool = True) -> AttentionPlan:
    """The plan for one forward: ``segments`` when given (no sync), else built from the tokens when
    ``doc_mask`` is on (as ``document_ids`` with ``max_doc_len`` cuts them)."""
    if segments is None and not doc_mask:
        return AttentionPlan(backend)
    rows, row_tokens = input_ids.shape
    longest = longest_segment(max_doc_len, row_tokens)
    if backend.varlen_func is not None:
        if segments is None:
            build = static_segments if torch.compiler.is_compiling() else find_segments
            segments = build(input_ids, bos_id, max_doc_len)
        return AttentionPlan(backend, segments)
    if segments is None:
        ids = document_ids(input_ids, bos_id, max_doc_len)
    else:
        ids, longest = segment_ids(segments, rows, row_tokens), segments.max_seqlen
    block_mask = document_block_mask(ids) if backend.name == "flex" else None
    return AttentionPlan(backend, None, ids, longest, block_mask)


def document_block_mask(doc_ids: torch.Tensor):
    """FlexAttention's block mask: causal and inside one segment. Built block-sparse (compiled) on
    CUDA so the (T, T) mask never exists."""
    from torch.nn.attention.flex_attention import create_block_mask

    def same_segment(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (doc_ids[b, q_idx] == doc_ids[b, kv_idx])

    rows, seq = doc_ids.shape
    compile_it = doc_ids.is_cuda and not torch.compiler.is_compiling()
    return create_block_mask(same_segment, rows, None, seq, seq, device=doc_ids.device, _compile=compile_it)


# ---- the kernels ----

def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: AttentionPlan | None) -> torch.Tensor:
    """Causal attention over (batch, heads, seq, head_dim) by ``plan``'s backend (SDPA when None);
    with segments no position attends across a segment start. q, k and v first share one dtype
    (after QK-norm, autocast on torch >= 2.12 leaves q and k float32 while v is bf16)."""
    plan = plan or AttentionPlan(SDPA)
    dtype = compute_dtype(v.device, v.dtype)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    backend = plan.backend
    if backend.func is not None:
        return attend_flash(q, k, v, plan.segments, backend)
    if backend.name == "flex" and plan.block_mask is not None:
        return attend_flex(q, k, v, plan.block_mask)
    if plan.doc_ids is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.size(1) != q.size(1))
    return attend_blocks(q, k, v, plan.doc_ids, plan.block)


def attend_flash(q, k, v, segments: Segments | None, backend: Backend) -> torch.Tensor:
    """flash-attn wants (batch, seq, heads, dim); segments become varlen sequences."""
    q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    batch, seq_len, heads, dim = q.shape
    if segments is None:
        out = backend.func(q, k, v, causal=True)
    else:
        flat = [t.view(batch * seq_len, t.size(2), dim) for t in (q, k, v)]
        cu, longest = segments.cu_seqlens, segments.max_seqlen
        out = backend.varlen_func(*flat, cu, cu, longest, longest, causal=True)
    if isinstance(out, tuple):  # FlashAttention 3 returns (out, lse) in some versions
        out = out[0]
    return out.view(batch, seq_len, heads, dim).transpose(1, 2)


_compiled_flex = None


def attend_flex(q, k, v, block_mask) -> torch.Tensor:
    """FlexAttention; compiled on CUDA (eager flex materializes the scores), as is inside a compiled caller."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    run = flex_attention
    if q.is_cuda and not torch.compiler.is_compiling():
        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex_attention, dynamic=False)
        run = _compiled_flex
    return run(q, k, v, block_mask=block_mask, enable_gqa=k.size(1) != q.size(1))


def attend_blocks(q, k, v, doc_ids: torch.Tensor, block: int) -> torch.Tensor:
    """SDPA with a document mask, exact when no segment is longer than ``block``: query block i
    attends to key blocks i-1 and i only, through a (block, 2 block) mask; memory is linear in T."""
    batch, heads, seq_len, dim = q.shape
    gqa = k.size(1) != heads
    if block >= seq_len:  # one block: the plain mask is no larger than the row's own attention
        causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=q.device).tril()
        same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=(causal & same_doc)[:, None], enable_gqa=gqa)
    blocks = math.ceil(seq_len / block)
    tail = blocks * block - seq_len  # pad T to whole blocks; padded queries see only themselves

    def windows(t: torch.Tensor) -> torch.Tensor:
        """(batch, h, T, d) -> (batch * blocks, h, 2 block, d): block i's keys are [(i-1) B, (i+1) B)."""
        padded = F.pad(t, (0, 0, block, tail))  # one empty block in front
        return padded.unfold(2, 2 * block, block).permute(0, 2, 1, 4, 3).reshape(batch * blocks, t.size(1), 2 * block, dim)

    # Padding gets id -1: real ids are >= 0, the front block precedes every query, and a padded
    # query's window never holds the front block (it lies in block >= 1).
    key_ids = F.pad(doc_ids, (block, tail), value=-1).unfold(1, 2 * block, block)  # (batch, blocks, 2B)
    query_ids = F.pad(doc_ids, (0, tail), value=-1).view(batch, blocks, block)
    offsets = torch.arange(block, device=q.device)
    causal = torch.arange(2 * block, device=q.device)[None, :] <= offsets[:, None] + block  # key <= query
    mask = causal & (query_ids[..., :, None] == key_ids[..., None, :])
    queries = F.pad(q, (0, 0, 0, tail)).view(batch, heads, blocks, block, dim).transpose(1, 2)
    out = F.scaled_dot_product_attention(queries.reshape(batch * blocks, heads, block, dim), windows(k), windows(v),
                                         attn_mask=mask.view(batch * blocks, 1, block, 2 * block), enable_gqa=gqa)
    out = out.view(batch, blocks, heads, block, dim).transpose(1, 2).reshape(batch, heads, blocks * block, dim)
    return out[:, :, :seq_len]
