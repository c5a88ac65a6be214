"""How `golf pack` compresses the artifact, and the size it must fit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..artifact.encode import STRONGEST_LEVEL
from ..artifact.streams import StreamCodecs
from ..artifact.writer import Layout
from ..ranges import ConfigError, check_ranges, ranged

SIZE_LIMIT = 16_000_000
"""The challenge's artifact limit in bytes (decimal)."""
BEST = "best"  # per section, the smallest of BEST_CANDIDATES
# The contenders of codec "best"; zlib is kept for comparison but never beats these on weights.
BEST_CANDIDATES = ("brotli", "lzma", "zstd", "rans")


@dataclass(frozen=True)
class PackConfig:
    """How the artifact is compressed and the size it must fit."""

    codec: Literal["brotli", "lzma", "zstd", "zlib", "rans", "best"] = "brotli"
    """Codec of the weights sections other than the codes section (all of them with streams 'group');
    'best': per section the smallest of brotli/lzma/zstd/rans."""
    codes_codec: Literal["brotli", "lzma", "zstd", "zlib", "rans", "best"] = "rans"
    """Codec of the codes section (streams 'type'): 'rans', golf's order-0 entropy coder, by default."""
    streams: Literal["type", "group"] = "type"
    """'type': every matrix's int8 codes in one section (weights.codes, one segment per matrix type),
    the rest by tensor group; 'group': one section per tensor group (attention, mlp, embedding, other)."""
    level: int | None = ranged(None, ge=0)
    """Codec level of ``codec`` (None: the strongest: brotli 11, lzma 9e, zstd 22, zlib 9); unset with 'best'."""
    shuffle: bool = True
    """Byte-shuffle multi-byte tensors before compression (all first bytes, then all second bytes, ...)."""
    code_codec: Literal["brotli", "lzma", "zstd", "zlib"] = "lzma"
    """Codec of the shipped code section (lzma needs no third-party package to unpack; brotli is
    ~1 KB smaller on golf's bundle)."""
    limit: int = ranged(SIZE_LIMIT, ge=1)
    """Size limit in bytes (decimal: 16,000,000 in the challenge)."""
    ship_ttt: bool = True
    """Ship the test-time training code (stages/evaluate/ttt: every mode and its warm-up); off
    (`--no-ttt`, for a recipe scored without TTT): its code bytes are saved, and `golf eval --ttt`
    refuses the artifact."""

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.codec == BEST and self.level is not None:
            raise ConfigError("level", "a level belongs to one codec; leave it unset with codec 'best'")
        if self.level is not None and self.level > STRONGEST_LEVEL[self.codec]:
            raise ConfigError("level", f"must be at most {STRONGEST_LEVEL[self.codec]} for {self.codec}, got {self.level}")

    def layout(self) -> Layout:
        """The writer's layout this config asks for."""
        return Layout(streams=self.streams, shuffle=self.shuffle, code_codec=self.code_codec,
                      ship_ttt=self.ship_ttt)

    def codecs(self) -> StreamCodecs:
        """The writer's codec candidates this config asks for ('best' stands for BEST_CANDIDATES)."""
        return StreamCodecs(weights=codec_choices(self.codec), codes=codec_choices(self.codes_codec),
                            level=self.level)


def codec_choices(codec: str) -> tuple[str, ...]:
    """The codecs a configured codec stands for: itself, or the candidates of 'best'."""
    return BEST_CANDIDATES if codec == BEST else (codec,)
