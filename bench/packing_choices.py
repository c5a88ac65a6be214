"""Packing choices `golf pack` does not make, measured by bench/quant_top.py against the ones it does.

The top record reorders the rows of some matrices by similarity, stores each matrix transposed
(column-major), compresses every matrix type on its own and stores the row permutations (uint16)
beside the weights. These are the exact transforms (each one undone bit-exactly by its inverse,
tests/test_packing_order.py) so the bench can count their bytes under brotli/lzma/zstd. golf's
order-0 coder (rans) sees neither the order of the codes nor their layout, and a stored
permutation costs ~n log2 n bits per matrix, so none of them ships in the artifact format.
"""

from __future__ import annotations

import numpy as np


def similarity_order(matrix: np.ndarray) -> np.ndarray:
    """Greedy nearest-neighbour row order (L1 distance; ties to the lowest row), starting at row 0:
    the record's order. Chosen rows are swapped out of the candidate block, so a step costs one
    pass over the rows left."""
    candidates = matrix.astype(np.float32)
    index = np.arange(matrix.shape[0])
    order, current, left = [], candidates[0].copy(), matrix.shape[0]
    chosen = 0
    while True:
        order.append(int(index[chosen]))
        current = candidates[chosen].copy()
        left -= 1
        candidates[chosen], index[chosen] = candidates[left], index[left]
        if not left:
            return np.array(order, dtype=np.int64)
        distance = np.abs(candidates[:left] - current).sum(axis=1)
        ties = np.flatnonzero(distance == distance.min())
        chosen = int(ties[np.argmin(index[ties])])


def inverse_order(order: np.ndarray) -> np.ndarray:
    """The permutation that puts reordered rows back: matrix[order][inverse_order(order)] == matrix."""
    inverse = np.empty_like(order)
    inverse[order] = np.arange(order.size)
    return inverse


def stored_permutation(order: np.ndarray) -> bytes:
    """A row order as the record stores it: uint16 little-endian."""
    if order.size > 1 << 16:
        raise ValueError(f"{order.size} rows do not fit uint16 indices")
    return order.astype("<u2").tobytes()


def laid_out(matrix: np.ndarray, transpose: bool, order: np.ndarray | None) -> np.ndarray:
    """The matrix as it would be stored: rows reordered (if ``order``), then transposed (if asked)."""
    out = matrix[order] if order is not None else matrix
    return np.ascontiguousarray(out.T if transpose else out)


def restored(stored: np.ndarray, transpose: bool, order: np.ndarray | None) -> np.ndarray:
    """The inverse of ``laid_out``."""
    out = stored.T if transpose else stored
    return np.ascontiguousarray(out[inverse_order(order)] if order is not None else out)
