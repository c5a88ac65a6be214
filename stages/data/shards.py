"""Token shards in the challenge format (llm.c / modded-nanogpt compatible).

A shard is a header of 256 little-endian int32 (1024 bytes): magic 20240520, version 1, the
token count, then zeros; after it the tokens as little-endian uint16. Byte sidecars use the
same layout with one uint16 byte count per token.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import GolfError

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_DTYPE = np.dtype("<u2")
DEFAULT_SHARD_TOKENS = 100_000_000


def shard_name(split: str, index: int, prefix: str = "fineweb") -> str:
    """``fineweb_train_000000.bin``, ``fineweb_val_000003.bin``, ``fineweb_val_bytes_000000.bin``."""
    return f"{prefix}_{split}_{index:06d}.bin"


def shard_index(name: str, split: str, prefix: str = "fineweb") -> int | None:
    """The index of a shard name (with or without .bin) of the given split, else None.

    ``fineweb_val_000001`` is a val shard; ``fineweb_val_bytes_000001`` is not (its split is val_bytes).
    """
    stem = name.removesuffix(".bin")
    head = f"{prefix}_{split}_"
    digits = stem[len(head) :]
    if stem.startswith(head) and len(digits) == 6 and digits.isdigit():
        return int(digits)
    return None


def read_header(path: str | Path) -> int:
    """Check magic, version and exact file size; return the token count."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            raw = handle.read(HEADER_BYTES)
    except OSError as exc:
        raise GolfError(f"{path}: cannot read shard ({exc.strerror})") from None
    if len(raw) < HEADER_BYTES:
        raise GolfError(f"{path}: {size} bytes, shorter than the {HEADER_BYTES}-byte shard header")
    header = np.frombuffer(raw, dtype="<i4")
    if int(header[0]) != MAGIC:
        raise GolfError(f"{path}: wrong magic number {int(header[0])} (expected {MAGIC})")
    if int(header[1]) != VERSION:
        raise GolfError(f"{path}: unsupported shard version {int(header[1])} (expected {VERSION})")
    num_tokens = int(header[2])
    expected = HEADER_BYTES + 2 * num_tokens
    if num_tokens < 0 or size != expected:
        raise GolfError(
            f"{path}: {size} bytes but header says {num_tokens} tokens ({expected} bytes): truncated or corrupt"
        )
    return num_tokens


def read_shard(path: str | Path) -> np.ndarray:
    """Memory-map a shard's tokens (uint16) after validating its header."""
    num_tokens = read_header(path)
    if num_tokens == 0:
        return np.zeros(0, dtype=TOKEN_DTYPE)
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES, shape=(num_tokens,))


def read_shards(paths: list[Path]) -> np.ndarray:
    """Concatenate several shards into one in-memory array (for val, which is small)."""
    if not paths:
        raise GolfError("no shards to read")
    return np.concatenate([np.asarray(read_shard(p)) for p in paths])


def encode_shard(tokens: np.ndarray) -> bytes:
    """The exact bytes of a shard holding ``tokens``."""
    tokens = np.asarray(tokens)
    if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) > 0xFFFF):
        raise GolfError("token ids must fit in uint16 (vocab size <= 65536)")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = MAGIC, VERSION, tokens.size
    return header.tobytes() + tokens.astype(TOKEN_DTYPE).tobytes()


class ShardWriter:
    """Accumulates token ids and writes full shards of ``shard_tokens`` as they fill.

    ``write`` is a callable ``(name, data_bytes) -> None`` so the caller decides where (and how
    atomically) bytes land; the writer only decides the split into shards.
    """

    def __init__(self, split: str, write, shard_tokens: int = DEFAULT_SHARD_TOKENS, prefix: str = "fineweb"):
        self.split = split
        self.write = write
        self.shard_tokens = shard_tokens
        self.prefix = prefix
        self.buffer: list[np.ndarray] = []
        self.buffered = 0
        self.names: list[str] = []
        self.total_tokens = 0

    def add(self, tokens) -> None:
        array = np.asarray(tokens, dtype=np.int64)
        self.buffer.append(array)
        self.buffered += array.size
        self.total_tokens += array.size
        while self.buffered >= self.shard_tokens:
            self._flush(self.shard_tokens)

    def close(self) -> list[str]:
        """Write the last partial shard; return the shard names in order."""
        if self.buffered or not self.names:
            self._flush(self.buffered)
        return self.names

    def _flush(self, count: int) -> None:
        merged = np.concatenate(self.buffer) if self.buffer else np.zeros(0, dtype=np.int64)
        head, rest = merged[:count], merged[count:]
        self.buffer = [rest] if rest.size else []
        self.buffered = rest.size
        name = shard_name(self.split, len(self.names), self.prefix)
        self.write(name, encode_shard(head))
        self.names.append(name)
