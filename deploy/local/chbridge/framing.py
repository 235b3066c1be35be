"""ClickHouse's compressed-block framing, as used by `decompress=1` and `compress=1`.

Every block is:

    checksum   16 bytes  CityHash128 (v1.0.2) of everything after it, two little-endian u64
    method      1 byte   0x82 = LZ4, 0x02 = stored uncompressed
    size_comp   4 bytes  LE, size of method + sizes + payload (i.e. the block minus the checksum)
    size_raw    4 bytes  LE, size of the payload once decompressed
    payload

LZ4 and CityHash come from well-kept packages (`lz4`, `clickhouse-cityhash`); this module only
frames them.
"""

import struct

import lz4.block
from clickhouse_cityhash.cityhash import CityHash128

CHECKSUM_SIZE = 16
HEADER_SIZE = 9
METHOD_NONE = 0x02
METHOD_LZ4 = 0x82

# A block larger than this is refused rather than buffered: ClickHouse's own writers cut blocks at
# 1 MiB, the clickhouse crate at 256 KiB.
MAX_BLOCK_SIZE = 128 * 1024 * 1024


class FramingError(Exception):
    """The body is not valid compressed-block framing; maps to CANNOT_DECOMPRESS."""


def _checksum(data: bytes) -> bytes:
    # The package returns the hash as one int whose high 64 bits are CityHash's first word;
    # ClickHouse writes the first word first, each little-endian.
    value = CityHash128(data)
    first, second = value >> 64, value & 0xFFFFFFFFFFFFFFFF
    return struct.pack("<QQ", first, second)


def decode_blocks(read_exact):
    """Yields the decompressed payload of each block read through `read_exact(n)`.

    `read_exact(n)` returns exactly n bytes, or fewer only at the end of the body. One block is in
    memory at a time, so an insert body of any size streams through in bounded memory.
    """
    while True:
        head = read_exact(CHECKSUM_SIZE + HEADER_SIZE)
        if not head:
            return
        if len(head) < CHECKSUM_SIZE + HEADER_SIZE:
            raise FramingError(f"truncated block header: {len(head)} bytes")
        method, size_comp, size_raw = struct.unpack_from("<BII", head, CHECKSUM_SIZE)
        if size_comp < HEADER_SIZE or size_comp > MAX_BLOCK_SIZE or size_raw > MAX_BLOCK_SIZE:
            raise FramingError(f"implausible block sizes: compressed {size_comp}, raw {size_raw}")
        payload = read_exact(size_comp - HEADER_SIZE)
        if len(payload) < size_comp - HEADER_SIZE:
            raise FramingError("truncated block payload")
        framed = head[CHECKSUM_SIZE:] + payload
        if _checksum(framed) != head[:CHECKSUM_SIZE]:
            raise FramingError("checksum doesn't match: corrupted data")
        if method == METHOD_LZ4:
            yield _decompress_lz4(payload, size_raw)
        elif method == METHOD_NONE:
            yield payload
        else:
            raise FramingError(f"unknown compression method 0x{method:02x}")


def _decompress_lz4(payload: bytes, size_raw: int) -> bytes:
    # A payload whose checksum matches can still be corrupt LZ4 (a client bug, or a crafted
    # body): that is a framing error like any other, not an exception of the codec.
    try:
        data = lz4.block.decompress(payload, uncompressed_size=size_raw)
    except lz4.block.LZ4BlockError as exc:
        raise FramingError(f"corrupt LZ4 block: {exc}") from None
    if len(data) != size_raw:
        raise FramingError(f"LZ4 block holds {len(data)} bytes, its header says {size_raw}")
    return data


def encode_block(data: bytes) -> bytes:
    """Frames `data` as one LZ4 block."""
    payload = lz4.block.compress(data, store_size=False)
    framed = struct.pack("<BII", METHOD_LZ4, HEADER_SIZE + len(payload), len(data)) + payload
    return _checksum(framed) + framed
