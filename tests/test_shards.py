import numpy as np
import pytest

from stages.data.shards import HEADER_BYTES, MAGIC, ShardWriter, encode_shard, read_header, read_shard, shard_index
from stages.errors import GolfError


def write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_round_trip_and_header_layout(tmp_path):
    tokens = np.array([1, 5, 65535, 0, 7], dtype=np.uint16)
    path = write(tmp_path / "fineweb_val_000000.bin", encode_shard(tokens))
    raw = path.read_bytes()
    header = np.frombuffer(raw[:HEADER_BYTES], dtype="<i4")
    assert (header[0], header[1], header[2]) == (MAGIC, 1, 5)
    assert not header[3:].any()
    assert len(raw) == HEADER_BYTES + 2 * 5
    assert np.array_equal(read_shard(path), tokens)


def test_truncated_shard_is_refused(tmp_path):
    path = write(tmp_path / "s.bin", encode_shard(np.arange(100, dtype=np.uint16))[:-3])
    with pytest.raises(GolfError, match="truncated or corrupt"):
        read_header(path)


def test_wrong_magic_is_refused(tmp_path):
    data = bytearray(encode_shard(np.arange(10, dtype=np.uint16)))
    data[0:4] = (12345).to_bytes(4, "little")
    path = write(tmp_path / "s.bin", bytes(data))
    with pytest.raises(GolfError, match="wrong magic number 12345"):
        read_shard(path)


def test_wrong_version_and_short_file_are_refused(tmp_path):
    data = bytearray(encode_shard(np.arange(10, dtype=np.uint16)))
    data[4:8] = (2).to_bytes(4, "little")
    with pytest.raises(GolfError, match="version 2"):
        read_header(write(tmp_path / "v.bin", bytes(data)))
    with pytest.raises(GolfError, match="shorter than"):
        read_header(write(tmp_path / "short.bin", b"\x00" * 100))


def test_writer_splits_into_full_shards(tmp_path):
    written = {}
    writer = ShardWriter("train", lambda name, data: written.__setitem__(name, data), shard_tokens=4)
    writer.add([1, 2, 3])
    writer.add([1, 9, 9, 9, 9])
    assert writer.close() == ["fineweb_train_000000.bin", "fineweb_train_000001.bin"]
    parts = []
    for name, data in written.items():
        path = write(tmp_path / name, data)
        parts.append(np.asarray(read_shard(path)))
    assert [p.size for p in parts] == [4, 4]
    assert np.concatenate(parts).tolist() == [1, 2, 3, 1, 9, 9, 9, 9]


def test_shard_index_keeps_splits_apart():
    assert shard_index("fineweb_val_000003.bin", "val") == 3
    assert shard_index("fineweb_val_bytes_000003", "val") is None
    assert shard_index("fineweb_val_bytes_000003", "val_bytes") == 3
    assert shard_index("fineweb_train_000000", "val") is None
