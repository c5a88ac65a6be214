"""The tokenizer file of a tokenize folder: a SentencePiece model, loaded from its bytes.

Tokenize writes it; every stage that scores (train, quantize, eval) reads it back through here,
so reading the val data never depends on the tokenize stage's training code. ``piece_spans``
gives each piece of an encoding with the span of the input it covers (its surface).
"""

from __future__ import annotations

import sentencepiece as spm

from ..errors import GolfError


def load_processor(model_bytes: bytes, where: str = "tokenizer") -> spm.SentencePieceProcessor:
    try:
        return spm.SentencePieceProcessor(model_proto=model_bytes)
    except (RuntimeError, TypeError) as exc:
        raise GolfError(f"{where}: not a SentencePiece model ({str(exc).splitlines()[0]})") from None


# The serialized protobufs sentencepiece returns are read with this small reader: the protobuf
# package is not a dependency. SentencePieceText field 2 holds the pieces; in a piece, field 2 is
# the id and fields 4 and 5 the byte offsets of its surface in the input.
_PIECES, _ID, _BEGIN, _END = 2, 2, 4, 5


def piece_spans(sp: spm.SentencePieceProcessor, text: str) -> list[tuple[int, int, int]]:
    """(token id, begin, end) of each piece of ``text``'s encoding: its surface is the input's UTF-8
    bytes [begin, end), the original text a normalized piece stands for."""
    spans = []
    for field, piece in proto_fields(sp.encode(text, out_type="serialized_proto")):
        if field == _PIECES:
            values = dict(proto_fields(piece))
            spans.append((values.get(_ID, 0), values.get(_BEGIN, 0), values.get(_END, 0)))
    return spans


def proto_fields(buffer: bytes):
    """(field number, value) of each field of a protobuf message: ints for varints, bytes otherwise."""
    position = 0
    while position < len(buffer):
        key, position = _varint(buffer, position)
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, position = _varint(buffer, position)
        elif wire_type == 2:
            length, position = _varint(buffer, position)
            value, position = buffer[position : position + length], position + length
        elif wire_type in (1, 5):
            width = 8 if wire_type == 1 else 4
            value, position = buffer[position : position + width], position + width
        else:
            raise GolfError(f"tokenizer: unsupported protobuf wire type {wire_type}")
        yield field, value


def _varint(buffer: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buffer[position]
        position += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, position
