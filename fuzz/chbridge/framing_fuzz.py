"""Fuzzes the local bridge's compressed-block framing decoder (deploy/local/chbridge/framing.py).

What `clickhouse` clients send with `decompress=1` reaches `decode_blocks` unchecked, so for any
body it must either yield payloads or raise `FramingError` (which the bridge answers as
CANNOT_DECOMPRESS), never another exception, and never a payload larger than its header declares.

Random bytes rarely carry a valid CityHash128 checksum, so half the inputs get their blocks'
checksums fixed before decoding: that is what reaches the LZ4 decoder with hostile sizes. And any
data framed by `encode_block` decodes back to itself.

Run by deploy/local/fuzz (make fuzz, make test) in the atheris venv of deploy/local/stack.
"""

import struct
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "deploy" / "local"))

with atheris.instrument_imports():
    from chbridge import framing

HEAD = framing.CHECKSUM_SIZE + framing.HEADER_SIZE


def reader(body: bytes):
    position = 0

    def read_exact(n: int) -> bytes:
        nonlocal position
        chunk = body[position : position + n]
        position += len(chunk)
        return chunk

    return read_exact


def with_valid_checksums(body: bytes) -> bytes:
    """`body` with each block's checksum replaced by the right one, as far as its sizes allow."""
    out = bytearray()
    position = 0
    while len(body) - position >= HEAD:
        _, size_comp, _ = struct.unpack_from("<BII", body, position + framing.CHECKSUM_SIZE)
        framed = body[position + framing.CHECKSUM_SIZE : position + framing.CHECKSUM_SIZE + size_comp]
        out += framing._checksum(framed) + framed
        position += framing.CHECKSUM_SIZE + max(size_comp, 1)
    out += body[position:]
    return bytes(out)


def declared_raw_sizes(body: bytes):
    position = 0
    while len(body) - position >= HEAD:
        method, size_comp, size_raw = struct.unpack_from(
            "<BII", body, position + framing.CHECKSUM_SIZE
        )
        yield method, size_raw
        position += framing.CHECKSUM_SIZE + max(size_comp, 1)


def test_one(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    fix_checksums = provider.ConsumeBool()
    round_trip = provider.ConsumeBytes(provider.ConsumeIntInRange(0, 4096))
    body = provider.ConsumeBytes(provider.remaining_bytes())
    if fix_checksums:
        body = with_valid_checksums(body)

    declared = list(declared_raw_sizes(body))
    try:
        for index, payload in enumerate(framing.decode_blocks(reader(body))):
            method, size_raw = declared[index]
            if method == framing.METHOD_LZ4 and len(payload) != size_raw:
                raise AssertionError(f"block {index}: {len(payload)} bytes, header says {size_raw}")
    except framing.FramingError:
        pass

    decoded = list(framing.decode_blocks(reader(framing.encode_block(round_trip))))
    if decoded != [round_trip]:
        raise AssertionError("encode_block then decode_blocks changed the data")


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one)
    atheris.Fuzz()
