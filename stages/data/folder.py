"""The shards a tokenize folder lists, by split: what training reads and what scoring reads.

Training and calibration read the train shards only (``train_shard_paths``) and scoring the val
shards only, both through the folder's manifest, so the two never cross.
"""

from __future__ import annotations

from ..contract.stage_dir import StageDir
from ..errors import GolfError
from .shards import shard_index


def split_files(data: StageDir, split: str):
    return data.files(lambda name: shard_index(name, split) is not None)


def train_shard_paths(data: StageDir):
    paths = split_files(data, "train")
    if not paths:
        raise GolfError(f"{data.path}: no train shards listed in its manifest")
    return paths
