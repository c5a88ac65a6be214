"""What a well-formed artifact holds beyond the container: the header's fields and the code section.

The writer (``writer.py``) builds the header with ``make_header`` and ``tensor_entry``, the code
header with ``code_header`` and the code section with ``encode_code``; eval, ``pack --check``
and inspect read them back with ``check_header`` and ``read_code``, which turn any malformed
field into one ``ContainerError`` line (never a ``KeyError`` deep inside the runtime). The code
section is a JSON object {path: source}; its sha256 (``bundle_id``) must equal the header's
``bundle_sha256``, and its entry is always ``RUNTIME_ENTRY``: a header cannot point eval at
another module. Runs in golf, never shipped.
"""

from __future__ import annotations

import json
import re

from .bundle import bundle_id
from .codecs import CODECS, decompress
from .container import ContainerError, check_fields
from .layout import CODE_SECTION, NUMPY_DTYPES, weights_section
from .quantized import QuantizedMetadata

RUNTIME_ENTRY = "stages/runtime.py"
# The shipped test-time training, imported by eval only for --ttt; `golf pack --no-ttt` leaves it out.
TTT_ENTRY = "stages/evaluate/ttt/__init__.py"
# Top-level header fields and their JSON types ("sections" is the container's; the format version
# is the container's magic).
HEADER_FIELDS = {"model_config": dict, "quant_index": dict, "train_seq_len": int,
                 "lineage": dict, "code": dict, "weights": dict}
LINEAGE_FIELDS = {"tokenizer_sha256": str, "vocab_size": int}
CODE_FIELDS = {"codec": str, "entry": str, "bundle_sha256": str}
TENSOR_FIELDS = {"name": str, "dtype": str, "shape": list, "stream": str, "shuffled": bool}
# A shipped path: stages/<package>/.../<module>.py, names only (no '..', no absolute path).
_SHIPPED_PATH = re.compile(r"stages(/[A-Za-z_][A-Za-z0-9_]*)*/[A-Za-z_][A-Za-z0-9_]*\.py")


def make_header(quantized: QuantizedMetadata, code: dict, tensors: list[dict]) -> dict:
    """The header of an artifact of ``quantized``'s weights: what the runtime rebuilds the model
    from, the tokenizer it scores with, the ``code`` header and the stored ``tensors`` in file order."""
    return {"model_config": quantized.model_config, "quant_index": quantized.quant_index,
            "train_seq_len": quantized.train_seq_len,
            "lineage": {field: quantized.lineage[field] for field in LINEAGE_FIELDS}, "code": code,
            "weights": {"tensors": tensors}}


def tensor_entry(name: str, dtype: str, shape: list[int], stream: str, shuffled: bool) -> dict:
    """A stored tensor's header entry: it sits in section ``weights.<stream>``, byte-shuffled or not."""
    return {"name": name, "dtype": dtype, "shape": shape, "stream": stream, "shuffled": shuffled}


def code_header(codec: str, files: dict[str, str]) -> dict:
    """The header's ``code`` field for the shipped ``files`` compressed with ``codec``."""
    return {"codec": codec, "entry": RUNTIME_ENTRY, "bundle_sha256": bundle_id(files)}


def encode_code(files: dict[str, str]) -> bytes:
    """The code section before compression: the shipped sources as compact JSON."""
    return json.dumps(files, separators=(",", ":")).encode("utf-8")


def check_header(header: dict) -> None:
    """Refuse a header that lacks a field eval reads or gives it the wrong type."""
    check_fields(header, HEADER_FIELDS, "header")
    if header["train_seq_len"] < 1:
        raise ContainerError("artifact header: train_seq_len is not positive")
    check_fields(header["lineage"], LINEAGE_FIELDS, "lineage")
    check_fields(header["model_config"], {"vocab_size": int}, "model_config")
    _check_code_header(header["code"])
    codecs = _section_codecs(header)
    if CODE_SECTION not in codecs:
        raise ContainerError(f"artifact header: no {CODE_SECTION!r} section")
    check_fields(header["weights"], {"tensors": list}, "weights")
    for index, entry in enumerate(header["weights"]["tensors"]):
        _check_tensor(entry, f"weights.tensors[{index}]", codecs)


def _check_code_header(code: dict) -> None:
    check_fields(code, CODE_FIELDS, "code")
    if code["entry"] != RUNTIME_ENTRY:
        raise ContainerError(f"artifact header: code.entry is {code['entry']!r}; eval only ever runs {RUNTIME_ENTRY}")
    _check_codec(code["codec"], "code.codec")


def _section_codecs(header: dict) -> dict[str, str]:
    """{section name: codec}, every codec one this golf can decode (the container checked the types)."""
    for entry in header["sections"]:
        _check_codec(entry["codec"], f"section {entry['name']!r}")
    return {entry["name"]: entry["codec"] for entry in header["sections"]}


def _check_codec(codec: str, where: str) -> None:
    if codec not in CODECS:
        raise ContainerError(f"artifact header: {where} uses unknown codec {codec!r} (known: {', '.join(CODECS)})")


def _check_tensor(entry: dict, where: str, sections: dict[str, str]) -> None:
    check_fields(entry, TENSOR_FIELDS, where)
    if entry["dtype"] not in NUMPY_DTYPES:
        raise ContainerError(f"artifact header: {where}.dtype {entry['dtype']!r} is not one of {', '.join(NUMPY_DTYPES)}")
    if not all(isinstance(size, int) and not isinstance(size, bool) and size >= 0 for size in entry["shape"]):
        raise ContainerError(f"artifact header: {where}.shape is not a list of sizes")
    if weights_section(entry["stream"]) not in sections:
        raise ContainerError(f"artifact header: {where} is in stream {entry['stream']!r}, which has no section")


def read_code(header: dict, sections: dict[str, bytes]) -> dict[str, str]:
    """The shipped sources {path: source} of a checked header, after checking them against its hash."""
    files = _code_json(sections[CODE_SECTION], header["code"]["codec"])
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise ContainerError("code section is not a JSON object of {path: source}")
    odd = sorted(path for path in files if not _SHIPPED_PATH.fullmatch(path))
    if odd:
        raise ContainerError(f"code section ships a file outside stages/: {odd[0]!r}")
    if bundle_id(files) != header["code"]["bundle_sha256"]:
        raise ContainerError("code section does not match the header's bundle_sha256 (the shipped code was altered)")
    if RUNTIME_ENTRY not in files:
        raise ContainerError(f"code section ships no {RUNTIME_ENTRY}")
    return files


def _code_json(payload: bytes, codec: str):
    try:
        raw = decompress(payload, codec)
    except ImportError as exc:
        raise ContainerError(f"code section needs the {exc.name} package to decompress") from None
    except ValueError:
        raise ContainerError(f"code section is not {codec}-compressed") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ContainerError("code section is not UTF-8 JSON") from None
