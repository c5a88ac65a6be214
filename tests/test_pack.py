"""`golf pack` and the artifact format: codecs, byte shuffle, per-group sections, the container, the
size gate, the bundle. Tampered and malformed artifacts: tests/test_artifact_trust.py."""

import ast
import json
import lzma
import struct
import sys
from pathlib import Path

import pytest
import torch

from stages.artifact.bundle import bundle_id, collect_sources, load_bundle
from stages.artifact.codecs import CODECS, byte_unshuffle, decompress
from stages.artifact.container import MAGIC, ContainerError, read_container, write_container
from stages.artifact.layout import decode_tensors
from stages.artifact.verify import CODE_ROOT, installed_sources
from stages.config import apply_overrides
from stages.contract.stage_dir import StageDir
from stages.errors import GolfError
from stages.artifact.encode import byte_shuffle, compress
from stages.artifact.quantized import QuantizedMetadata
from stages.artifact.rans_encode import lane_count
from stages.artifact.streams import StreamCodecs, matrix_type
from stages.artifact.writer import Breakdown, Layout, artifact_parts, build_artifact
from stages.model.checkpoint import load_tensors_and_metadata
from stages.pack.compare import COMPARE_COLUMNS, compare_codecs, measure_codecs
from stages.pack.config import BEST_CANDIDATES, PackConfig
from stages.pack.gate import check_artifact
from stages.pack.stage import run_pack

# One tensor per dtype in every group, named the way the quantize stage stores them.
GROUP_OF = {
    "blocks.0.attn.c_q.weight.q": "attention",
    "blocks.0.attn.c_q.weight.scale": "attention",
    "blocks.0.mlp.fc.weight.q": "mlp",
    "blocks.1.mlp.fc.weight.q": "mlp",
    "blocks.0.mlp.fc.weight.lqer.a.q": "mlp",
    "tok_emb.weight.q": "embedding",
    "tok_emb.weight.scale": "embedding",
    "blocks.0.attn_scale": "other",
    "skip_weights": "other",
}
# With streams 'type' (the default), every matrix's codes go to the code stream, the rest by group.
STREAM_OF = {**GROUP_OF, **{name: "codes" for name in GROUP_OF if name.endswith(".weight.q")}}
TYPE_SECTIONS = ["code", "weights.codes", "weights.attention", "weights.mlp", "weights.embedding", "weights.other"]
GROUP_SECTIONS = ["code", "weights.attention", "weights.mlp", "weights.embedding", "weights.other"]
METADATA = QuantizedMetadata(
    lineage={"tokenizer_sha256": "0" * 64, "vocab_size": 32},
    model_config={"vocab_size": 32},
    quant_index={"tok_emb.weight": {"kind": "int8_rows"}},
    train_seq_len=16,
)


def packed(tensors, config: PackConfig = PackConfig()) -> tuple[bytes, Breakdown]:
    """The artifact `golf pack` with ``config`` writes of ``tensors``, and its breakdown."""
    return build_artifact(tensors, METADATA, config.layout(), config.codecs())


def parts_of(tensors, config: PackConfig = PackConfig()):
    return artifact_parts(tensors, METADATA, config.layout())


@pytest.fixture(scope="module")
def tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "blocks.0.attn.c_q.weight.q": torch.randint(-31, 32, (16, 24), generator=g, dtype=torch.int8),
        "blocks.0.attn.c_q.weight.scale": torch.rand(16, generator=g).half(),
        "blocks.0.mlp.fc.weight.q": torch.randint(-31, 32, (32, 16), generator=g, dtype=torch.int8),
        "blocks.1.mlp.fc.weight.q": torch.randint(-31, 32, (32, 16), generator=g, dtype=torch.int8),
        "blocks.0.mlp.fc.weight.lqer.a.q": torch.randint(-2, 2, (32, 4), generator=g, dtype=torch.int8),
        "tok_emb.weight.q": torch.randint(-127, 128, (32, 16), generator=g, dtype=torch.int8),
        "tok_emb.weight.scale": torch.rand(32, generator=g).half(),
        "blocks.0.attn_scale": torch.randn(16, generator=g),
        "skip_weights": torch.randn(2, 3, generator=g).half(),
    }


def assert_same_tensors(decoded, tensors):
    assert set(decoded) == set(tensors)
    for name, tensor in tensors.items():
        assert decoded[name].dtype == tensor.dtype and decoded[name].shape == tensor.shape
        assert torch.equal(decoded[name], tensor), name


# Byte shuffle and codecs


@pytest.mark.parametrize("itemsize", [1, 2, 4])
def test_byte_shuffle_round_trip(itemsize):
    raw = bytes(range(256)) * 3 + bytes(4)  # 772 bytes: a whole number of items for 1, 2 and 4
    shuffled = byte_shuffle(raw, itemsize)
    assert len(shuffled) == len(raw) and byte_unshuffle(shuffled, itemsize) == raw
    assert (shuffled == raw) == (itemsize == 1)


def test_byte_shuffle_groups_bytes_by_position():
    assert byte_shuffle(b"aAbBcC", 2) == b"abcABC"
    assert byte_shuffle(b"abcdABCD", 4) == b"aAbBcCdD"
    with pytest.raises(ValueError, match="items of 2 bytes"):
        byte_shuffle(b"abc", 2)


@pytest.mark.parametrize("codec", CODECS)
def test_codecs_round_trip(codec):
    data = (bytes(range(256)) * 4 + bytes(1000)) * 10  # repeats for the LZ coders, skewed bytes for rans
    packed = compress(data, codec)
    assert len(packed) < len(data) and decompress(packed, codec) == data
    assert decompress(compress(data, codec, level=1), codec) == data


def gaussian_codes(count: int, clip_sigmas: float = 11.5, seed: int = 0) -> bytes:
    """int6 SDClip-like codes: a rounded Gaussian of std 31 / k, clamped to [-31, 31]."""
    generator = torch.Generator().manual_seed(seed)
    codes = torch.clamp(torch.round(torch.randn(count, generator=generator) * 31 / clip_sigmas), -31, 31)
    return codes.to(torch.int8).numpy().tobytes()


def order0_bytes(data: bytes) -> float:
    counts = torch.bincount(torch.frombuffer(bytearray(data), dtype=torch.uint8).long()).double()
    p = counts[counts > 0] / len(data)
    return float(-(p * p.log2()).sum()) * len(data) / 8


@pytest.mark.parametrize("data", [b"", b"\x07", b"\xff" * 999, bytes(range(256)), bytes([0, 255, 128, 127]) * 33,
                                  gaussian_codes(70_001)])
def test_rans_round_trips_any_bytes(data):
    assert decompress(compress(data, "rans"), "rans") == data


def test_rans_lands_within_a_fraction_of_a_percent_of_the_order0_entropy_and_beats_brotli():
    data = gaussian_codes(400_000)
    payload = compress(data, "rans")
    assert order0_bytes(data) < len(payload) < order0_bytes(data) * 1.003
    assert len(payload) < len(compress(data, "brotli"))


def test_rans_lane_count_grows_with_the_stream():
    assert lane_count(1) == 1 and lane_count(400_000) == 40 and lane_count(10**12) == 4096


@pytest.mark.parametrize("damage", ["flip", "truncate", "extend", "table"])
def test_rans_refuses_a_damaged_payload(damage):
    payload = bytearray(compress(gaussian_codes(20_000), "rans"))
    if damage == "flip":
        payload[-100] ^= 0x40
    elif damage == "truncate":
        del payload[-2:]
    elif damage == "extend":
        payload += b"\0\0"
    else:
        payload[12] ^= 0x01  # a frequency: the table no longer sums to 2^15
    with pytest.raises(ValueError, match="not rans-compressed"):
        decompress(bytes(payload), "rans")


def test_unknown_codec_is_refused():
    with pytest.raises(ValueError, match="unknown codec 'xz'"):
        compress(b"x", "xz")
    with pytest.raises(GolfError, match="expected one of brotli, lzma, zstd, zlib, rans, best"):
        apply_overrides(PackConfig(), ["codec=xz"])
    with pytest.raises(ValueError, match="leave it unset with codec 'best'"):
        PackConfig(codec="best", level=5)


# Per-group sections and the artifact round trip


@pytest.mark.parametrize("streams, sections", [("type", TYPE_SECTIONS), ("group", GROUP_SECTIONS)])
@pytest.mark.parametrize("codec", [*CODECS, "best"])
def test_artifact_round_trip_is_bit_exact(tensors, codec, streams, sections):
    config = PackConfig(codec=codec, codes_codec=codec, streams=streams)
    data, breakdown = packed(tensors, config)
    header, decoded = read_container(data)
    assert_same_tensors(decode_tensors(header, decoded), tensors)
    assert list(decoded) == sections
    used = {entry["name"]: entry["codec"] for entry in header["sections"]}
    allowed = BEST_CANDIDATES if codec == "best" else (codec,)
    assert all(used[f"weights.{stream}"] in allowed for stream in breakdown.streams)
    assert breakdown.bytes_total == len(data)
    assert breakdown.bytes_header + breakdown.bytes_code + breakdown.bytes_weights == len(data)


def test_code_section_uses_codes_codec_and_the_rest_codec(tensors):
    data, breakdown = packed(tensors, PackConfig(codec="lzma"))
    header, _ = read_container(data)
    used = {entry["name"]: entry["codec"] for entry in header["sections"]}
    assert {name: codec for name, codec in used.items() if name.startswith("weights.")} == {
        section: "rans" if section == "weights.codes" else "lzma" for section in TYPE_SECTIONS[1:]}
    codes = [entry["name"] for entry in header["weights"]["tensors"] if entry["stream"] == "codes"]
    assert codes == ["blocks.0.attn.c_q.weight.q", "blocks.0.mlp.fc.weight.q", "blocks.1.mlp.fc.weight.q",
                     "tok_emb.weight.q"]  # by matrix type, then layer: one rans table per type


def test_code_stream_has_one_segment_per_matrix_type(tensors):
    parts = parts_of(tensors)
    assert parts.segments["codes"] == [16 * 24, 2 * 32 * 16, 32 * 16]  # attn.c_q, mlp.fc (2 layers), tok_emb
    assert parts.segments["attention"] == [len(parts.stream_bytes["attention"])]
    one_table = compress(parts.stream_bytes["codes"], "rans")
    assert len(compress(parts.stream_bytes["codes"], "rans", segments=parts.segments["codes"])) != len(one_table)


@pytest.mark.parametrize("name, expected", [
    ("blocks.10.mlp.proj.weight.q", "mlp.proj"), ("tok_emb.weight.q", "tok_emb"),
    ("bigram.embed.weight.q", "bigram.embed"), ("blocks.0.attn.c_v.weight.q", "attn.c_v"),
])
def test_matrix_type_drops_the_layer_and_the_suffix(name, expected):
    assert matrix_type(name) == expected


@pytest.mark.parametrize("streams, expected", [("type", STREAM_OF), ("group", GROUP_OF)])
def test_header_records_each_tensor(tensors, streams, expected):
    data, _ = packed(tensors, PackConfig(streams=streams))
    header, _ = read_container(data)
    entries = {entry["name"]: entry for entry in header["weights"]["tensors"]}
    assert set(entries) == set(tensors)
    for name, tensor in tensors.items():
        entry = entries[name]
        assert entry["stream"] == expected[name]
        assert entry["dtype"] == str(tensor.dtype).removeprefix("torch.") and entry["shape"] == list(tensor.shape)
        assert entry["shuffled"] == (tensor.element_size() > 1)  # int8 has nothing to shuffle


def test_header_is_compressed_json(tensors):
    data, _ = packed(tensors, PackConfig())
    assert data.startswith(MAGIC) and MAGIC == b"GOLFPK03"  # the format version is the magic's digits, only there
    (length,) = struct.unpack("<I", data[len(MAGIC) : len(MAGIC) + 4])
    header = json.loads(lzma.decompress(data[len(MAGIC) + 4 : len(MAGIC) + 4 + length]))
    assert "format" not in header and header["train_seq_len"] == 16


def test_unshuffled_artifact_round_trips(tensors):
    data, _ = packed(tensors, PackConfig(shuffle=False))
    header, sections = read_container(data)
    assert not any(entry["shuffled"] for entry in header["weights"]["tensors"])
    assert_same_tensors(decode_tensors(header, sections), tensors)


def test_best_keeps_the_smallest_codec_per_group(tensors):
    parts = parts_of(tensors)
    measured = measure_codecs(parts)
    _, breakdown = packed(tensors, PackConfig(codec="best", codes_codec="best"))
    for stream, sizes in breakdown.streams.items():
        assert sizes.bytes == min(len(measured[stream][codec]) for codec in BEST_CANDIDATES)


def test_comparison_totals_are_the_real_artifact_sizes(tensors):
    parts = parts_of(tensors)
    rows = compare_codecs(parts, measure_codecs(parts))
    assert list(rows) == [*(section.removeprefix("weights.") for section in TYPE_SECTIONS[1:]), "code+header", "total"]
    for column in COMPARE_COLUMNS:
        data, _ = packed(tensors, PackConfig(codec=column, codes_codec=column))
        assert rows["total"][column] == len(data)
        assert sum(rows[row][column] for row in rows if row != "total") == len(data)
    assert rows["mlp"]["raw"] == sum(t.numel() * t.element_size() for n, t in tensors.items() if STREAM_OF[n] == "mlp")


def test_unsupported_dtype_is_a_one_line_error(tensors):
    with pytest.raises(GolfError, match="is bfloat16"):
        packed({**tensors, "blocks.0.mlp_scale": torch.zeros(4, dtype=torch.bfloat16)})


# The typed records: their dict forms are the manifest's JSON, their defaults pack's


def test_breakdown_serializes_to_the_manifest_fields(tensors):
    data, breakdown = packed(tensors)
    fields = breakdown.as_dict()
    assert list(fields) == ["bytes_total", "bytes_header", "bytes_code", "bytes_code_uncompressed", "code_files",
                            "bytes_weights", "bytes_weights_uncompressed", "groups"]
    assert fields["bytes_total"] == len(data)
    assert list(fields["groups"]) == [section.removeprefix("weights.") for section in TYPE_SECTIONS[1:]]
    assert fields["groups"]["codes"] == {"codec": "rans", "bytes": breakdown.streams["codes"].bytes,
                                         "bytes_uncompressed": breakdown.streams["codes"].bytes_uncompressed}
    flat = breakdown.flat()
    assert "groups" not in flat and flat["mlp_codec"] == "brotli"
    assert flat["mlp_bytes"] == breakdown.streams["mlp"].bytes
    assert json.loads(json.dumps(fields)) == fields  # plain JSON


def test_pack_defaults_are_the_writer_defaults():
    """quantize predicts `golf pack --codec C` with the writer's defaults: they must be pack's."""
    assert PackConfig().layout() == Layout()
    for codec in ("brotli", "lzma", "zstd", "zlib"):
        assert PackConfig(codec=codec).codecs() == StreamCodecs(weights=(codec,))
    assert PackConfig(codec="best", codes_codec="best").codecs() == StreamCodecs(BEST_CANDIDATES, BEST_CANDIDATES)


def test_quantized_metadata_round_trips_as_the_text_quantize_writes():
    text = METADATA.as_metadata()
    assert text == {"model_config": json.dumps(METADATA.model_config), "lineage": json.dumps(METADATA.lineage),
                    "train_seq_len": "16", "quant_index": json.dumps(METADATA.quant_index)}
    assert QuantizedMetadata.from_metadata(text, "q.safetensors") == METADATA
    for field, broken in (("quant_index", None), ("train_seq_len", "sixteen"), ("model_config", "{")):
        damaged = {key: value for key, value in text.items() if key != field or broken is not None}
        damaged.update({field: broken} if broken is not None else {})
        with pytest.raises(GolfError, match=f"^q.safetensors records no readable {field}$"):
            QuantizedMetadata.from_metadata(damaged, "q.safetensors")


# The container


def test_container_detects_corruption_and_truncation(tensors):
    data, _ = packed(tensors, PackConfig())
    flipped = bytearray(data)
    flipped[-3] ^= 0xFF
    with pytest.raises(ContainerError, match="weights.other.*sha256"):
        read_container(bytes(flipped))
    with pytest.raises(ContainerError, match="truncated"):
        read_container(data[:-1])
    with pytest.raises(ContainerError, match="truncated artifact header"):
        read_container(data[: len(MAGIC) + 10])
    with pytest.raises(ContainerError, match="trailing"):
        read_container(data + b"\0")
    for magic in (b"PK\x03\x04GOLF", b"GOLFPKv3"):
        with pytest.raises(ContainerError, match="bad magic"):
            read_container(magic + data[len(MAGIC) :])
    with pytest.raises(ContainerError, match=r"packed by an older golf \(artifact format 2; this golf reads format 3\): "
                       "repack it with golf pack on its quantize folder"):
        read_container(b"GOLFPK02" + data[len(MAGIC) :])
    with pytest.raises(ContainerError, match=r"packed by a newer golf \(artifact format 4; .*read it with that golf"):
        read_container(b"GOLFPK04" + data[len(MAGIC) :])
    header_byte = bytearray(data)
    header_byte[len(MAGIC) + 20] ^= 0xFF
    with pytest.raises(ContainerError, match="header is corrupt"):
        read_container(bytes(header_byte))


def test_container_round_trips_sections():
    data = write_container({"model": "x"}, [("a", "zlib", b"xyz"), ("b", "lzma", b"")])
    header, sections = read_container(data)
    assert sections == {"a": b"xyz", "b": b""} and header["model"] == "x"


# The size gate


def test_size_gate_is_exact(tensors, tmp_path):
    data, _ = packed(tensors, PackConfig())
    path = tmp_path / "a.golf"
    path.write_bytes(data)
    code_sha256 = bundle_id(installed_sources())
    assert check_artifact(path, limit=len(data)).as_dict() == {
        "bytes_total": len(data), "limit": len(data), "margin": 0, "verdict": "PASS",
        "code_sha256": code_sha256, "code_installed_sha256": code_sha256, "code_matches_installed": True,
        "code_trusted_foreign": False,
    }
    assert check_artifact(path, limit=len(data) - 1).as_dict()["verdict"] == "FAIL"
    bad = tmp_path / "bad.golf"
    bad.write_bytes(b"x" * 100)
    with pytest.raises(GolfError, match="bad magic"):
        check_artifact(bad)


# The shipped code, and a real pack of the tiny pipeline


def test_bundle_holds_exactly_the_runtime_closure():
    files = installed_sources()
    assert "stages/runtime.py" in files and "stages/model/gpt.py" in files
    assert "stages/artifact/codecs.py" in files and "stages/artifact/container.py" in files
    assert "stages/artifact/bundle.py" in files and "stages/artifact/layout.py" in files
    assert "stages/train/stage.py" not in files and "stages/contract/stage_dir.py" not in files
    assert not any(rel.startswith("stages/pack/") for rel in files)  # the packer, its encoders too, never ship
    assert "stages/artifact/verify.py" not in files and "stages/artifact/schema.py" not in files
    writer = ("writer", "streams", "encode", "rans_encode", "quantized")  # the write side never ships
    assert not any(f"stages/artifact/{module}.py" in files for module in writer)
    for rel, source in files.items():
        assert source == (CODE_ROOT / rel).read_text()


def test_absolute_stages_import_is_refused(tmp_path):
    pkg = tmp_path / "stages"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "runtime.py").write_text("from stages.model import gpt\n")
    with pytest.raises(ValueError, match="absolute import"):
        collect_sources(tmp_path, ["stages/runtime.py"])


def test_packed_pipeline_round_trips_through_the_shipped_code(quant_dir, pack_dir):
    tensors, _ = load_tensors_and_metadata(StageDir(quant_dir).file("quantized"))
    header, sections = read_container(StageDir(pack_dir).file("artifact").read_bytes())
    files = json.loads(decompress(sections["code"], header["code"]["codec"]))
    shipped = load_bundle(files, header["code"]["entry"])
    assert shipped.__name__.startswith("golf_artifact_")
    assert_same_tensors(shipped.decode_tensors(header, sections), tensors)
    model = shipped.build_model(header, sections)
    assert type(model).__module__.startswith("golf_artifact_")  # the shipped code, not the installed one


def test_pack_compare_goes_into_the_manifest(quant_dir, tmp_path):
    shown = []
    manifest = run_pack(PackConfig(codec="best"), quant_dir, tmp_path / "pack", compare=True,
                        show_comparison=shown.append)
    metrics = manifest.metrics
    assert shown and shown[0] == metrics["compare"]
    assert metrics["compare"]["total"]["best"] == metrics["bytes_total"]
    assert metrics["verdict"] == "PASS" and metrics["margin"] == metrics["limit"] - metrics["bytes_total"]
    assert set(metrics["groups"]) <= {"codes", "attention", "mlp", "embedding", "other"}


# The house: the artifact format is its own package, and what ships stays small


def imported_modules(path: Path) -> set[str]:
    """Dotted names a module imports, relative imports resolved (``from .. import pack`` gives stages.pack)."""
    package = list(path.relative_to(CODE_ROOT).parent.parts)
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - (node.level - 1)] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("package, forbidden", [
    ("evaluate", ("stages.pack", "stages.tokenize")),  # eval reads the format, not the packer
    ("pack", ("stages.quantize",)),  # pack writes the format; it reads quantize's files, not its code
    ("quantize", ("stages.pack",)),  # quantize predicts sizes with the format's writer, not the pack stage
    ("artifact", ("stages.pack", "stages.evaluate", "stages.quantize", "stages.tokenize", "stages.train")),
])
def test_import_graph(package, forbidden):
    for path in sorted((CODE_ROOT / "stages" / package).glob("*.py")):
        for name in imported_modules(path):
            assert not name.startswith(tuple(f"{prefix}." for prefix in forbidden)) and name not in forbidden, (
                f"{path.relative_to(CODE_ROOT)} imports {name}")


def test_shipped_code_needs_only_stdlib_numpy_and_torch():
    allowed = set(sys.stdlib_module_names) | {"__future__", "numpy", "torch"}
    # Optional, imported only where used: a section's decoder, the flash-attn kernels when installed.
    lazy = {"brotli", "zstandard", "flash_attn"}
    for rel, source in installed_sources().items():
        tree = ast.parse(source)
        roots = {name.split(".")[0] for name in imported_modules(CODE_ROOT / rel) if not name.startswith("stages")}
        top_level = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
        top_level |= {node.module.split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom) and not node.level}
        assert roots <= allowed | lazy, f"{rel} imports {sorted(roots - allowed - lazy)}"
        assert top_level <= allowed, f"{rel} imports {sorted(top_level - allowed)} at import time"


@pytest.mark.parametrize("codec,module", [("brotli", "brotli"), ("zstd", "zstandard")])
def test_a_codec_whose_package_is_missing_is_one_line(monkeypatch, codec, module):
    """Without its package a codec is a one-line GolfError naming what to install, not a traceback."""
    monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError
    with pytest.raises(GolfError, match=f"pip install {module}"):
        compress(b"golf" * 100, codec)
    assert lzma.decompress(compress(b"golf" * 100, "lzma")) == b"golf" * 100
