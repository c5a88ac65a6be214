"""A stage folder's lineage: the folders it was made from, and the check that refuses to combine
artifacts made from different tokenizers or models.

The chain runs tokenize -> train -> quantize -> pack -> eval; each folder names the one above it by
an input role (``LINKS``). Walking up opens every folder on the way with its hash checks, so a
missing or altered link is the one-line error of the folder that lacks it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import GolfError
from .stage_dir import StageDir

# Each stage's link to the stage above it: (the input role it records, that stage). Eval's
# artifact may be a bare file instead of a pack folder: then the walk stops there with an error.
LINKS = {
    "eval": ("artifact", "pack"),
    "pack": ("quantized", "quantize"),
    "quantize": ("checkpoint", "train"),
    "train": ("data", "tokenize"),
}


def lineage_folder(folder: StageDir, stage: str) -> StageDir:
    """The ``stage`` folder that ``folder`` was made from (``folder`` itself if it is one), following
    the links up the chain; a link that is missing or does not open raises its one-line GolfError."""
    while folder.stage != stage:
        if folder.stage not in LINKS:
            raise GolfError(f"{folder.path}: no {stage} folder above this {folder.stage} folder")
        role, upstream = LINKS[folder.stage]
        folder = folder.upstream(role, upstream)
    return folder


@dataclass(frozen=True)
class Lineage:
    """The folders a pack folder was made from, down to its data, each opened with its hash checks."""

    pack: StageDir
    """The pack folder (the one given, or the one an eval folder scored)."""
    quantize: StageDir
    """The quantize folder pack read its tensors from."""
    train: StageDir
    """The train folder quantize read its checkpoint from."""
    tokenize: StageDir
    """The tokenize folder train read (quantize and eval record their own data inputs)."""

    @classmethod
    def of(cls, folder: StageDir) -> "Lineage":
        """The whole lineage of a pack or eval folder; the first missing link is a one-line GolfError."""
        pack = lineage_folder(folder, "pack")
        quantize = lineage_folder(pack, "quantize")
        train = lineage_folder(quantize, "train")
        return cls(pack, quantize, train, lineage_folder(train, "tokenize"))


def require_same_tokenizer(a: dict, a_name: str, b: dict, b_name: str) -> None:
    """Both lineages must name the same tokenizer (by sha256 of its model file) and vocab size."""
    sha_a, sha_b = a.get("tokenizer_sha256"), b.get("tokenizer_sha256")
    if not sha_a or not sha_b:
        raise GolfError(f"lineage: {a_name if not sha_a else b_name} records no tokenizer hash")
    if sha_a != sha_b:
        raise GolfError(
            f"lineage: {a_name} was made with tokenizer {sha_a[:12]}, {b_name} with tokenizer {sha_b[:12]}; "
            "they cannot be combined"
        )
    if a.get("vocab_size") != b.get("vocab_size"):
        raise GolfError(f"lineage: vocab size {a.get('vocab_size')} ({a_name}) != {b.get('vocab_size')} ({b_name})")
