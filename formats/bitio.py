"""Byte and bit plumbing shared by the codecs: LEB128 varints, a bounds-checked reader, bit arrays."""

from __future__ import annotations

import numpy as np

from formats.errors import FormatError

MAX_VARINT_BYTES = 10  # enough for any value below 2**64


def varint(value: int) -> bytes:
    """Unsigned LEB128: 7 bits per byte, least significant group first, high bit = more follows."""
    if value < 0:
        raise ValueError(f"varint cannot hold a negative value ({value})")
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


class ByteReader:
    """Reads fields from a byte string; every overrun or malformed field raises FormatError."""

    def __init__(self, data: bytes, what: str = "stream"):
        self.data = data
        self.pos = 0
        self.what = what

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def u8(self, field: str) -> int:
        if self.pos >= len(self.data):
            raise FormatError(f"{self.what} ends before {field} (at byte {self.pos})")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def take(self, size: int, field: str) -> bytes:
        if size > self.remaining:
            raise FormatError(
                f"{self.what} ends inside {field}: needs {size} bytes at byte {self.pos}, has {self.remaining}"
            )
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return bytes(chunk)

    def varint(self, field: str) -> int:
        value = 0
        for i in range(MAX_VARINT_BYTES):
            byte = self.u8(field)
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                if byte == 0 and i > 0:
                    raise FormatError(f"{self.what}: {field} is an overlong varint (at byte {self.pos - 1})")
                return value
        raise FormatError(f"{self.what}: {field} varint longer than {MAX_VARINT_BYTES} bytes")

    def rest(self) -> bytes:
        chunk = self.data[self.pos :]
        self.pos = len(self.data)
        return bytes(chunk)


def as_bits(data: bytes) -> np.ndarray:
    """Bytes -> uint8 array of 0/1, most significant bit of each byte first."""
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8))


def pack_bits(bits: np.ndarray) -> bytes:
    """Array of 0/1 (any int or bool dtype) -> bytes, MSB first, last byte padded with zero bits."""
    return np.packbits(bits.astype(np.uint8, copy=False)).tobytes()


def check_zero_padding(bits: np.ndarray, used: int, what: str) -> None:
    """The bits after `used` must be fewer than 8 and all zero (byte-boundary padding)."""
    spare = bits.size - used
    if spare < 0:
        raise FormatError(f"{what}: needs {used} bits, stream has {bits.size}")
    if spare >= 8:
        raise FormatError(f"{what}: {spare} unused bits after the code (at most 7 padding bits allowed)")
    if spare and bits[used:].any():
        raise FormatError(f"{what}: padding bits after the code are not zero")


def fixed_width_bits(values: np.ndarray, width: int) -> np.ndarray:
    """Non-negative ints -> uint8 0/1 array, `width` bits per value, MSB first."""
    if width == 0 or values.size == 0:
        return np.zeros(0, dtype=np.uint8)
    if width <= 8:  # the common case, through uint8 unpackbits
        return np.unpackbits(values.astype(np.uint8)[:, None], axis=1)[:, 8 - width :].ravel()
    shifts = np.arange(width - 1, -1, -1, dtype=np.int64)
    return ((values.astype(np.int64)[:, None] >> shifts) & 1).astype(np.uint8).ravel()


def fixed_width_values(bits: np.ndarray, width: int, count: int) -> np.ndarray:
    """Inverse of fixed_width_bits: a 0/1 array of count*width bits -> `count` int64 values."""
    if width == 0:
        return np.zeros(count, dtype=np.int64)
    if width == 1:
        return bits.astype(np.int64)
    if width <= 8:  # uint8 matmul: the sum of the weights, 2**width - 1, still fits in a byte
        weights8 = np.left_shift(np.uint8(1), np.arange(width - 1, -1, -1, dtype=np.uint8))
        return (bits.reshape(count, width) @ weights8).astype(np.int64)
    weights = np.left_shift(np.int64(1), np.arange(width - 1, -1, -1, dtype=np.int64))
    return bits.reshape(-1, width).astype(np.int64) @ weights
