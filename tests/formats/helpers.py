"""Shared builders for the formats tests: masks, and .wsnm files with hand-made headers."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np

from formats.container import MAGIC, PREFIX, VERSION


def random_masks(rng: np.random.Generator, n: int, tasks: int, density: float) -> list[np.ndarray]:
    return [rng.random(n) < density for _ in range(tasks)]


def correlated_masks(
    rng: np.random.Generator, n: int, tasks: int, capacity: float, noise: float = 0.3
) -> list[np.ndarray]:
    """WSN-like masks: top-c of |persistent score + noise| per task."""
    score = rng.standard_normal(n)
    k = int(round(capacity * n))
    masks = []
    for _ in range(tasks):
        mask = np.zeros(n, dtype=bool)
        if k:
            mask[np.argpartition(-np.abs(score + noise * rng.standard_normal(n)), k - 1)[:k]] = True
        masks.append(mask)
    return masks


def bits(text: str) -> np.ndarray:
    """'1011' -> bool array (spaces ignored)."""
    return np.array([c == "1" for c in text.replace(" ", "")], dtype=bool)


def split(data: bytes) -> tuple[dict, bytes]:
    """A valid file -> (header dict, stream region)."""
    _, _, header_len = PREFIX.unpack_from(data)
    header = json.loads(data[PREFIX.size : PREFIX.size + header_len])
    return header, data[PREFIX.size + header_len : -4]


def seal(
    header, body: bytes, *, version: int = VERSION, magic: bytes = MAGIC, raw_header: bytes | None = None
) -> bytes:
    """Assemble a file from parts with a correct trailer CRC (the header is written canonically)."""
    raw = raw_header if raw_header is not None else json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    out = magic + struct.pack("<HI", version, len(raw)) + raw + body
    return out + struct.pack("<I", zlib.crc32(out))


def single_stream_file(codec: str, n: int, stream: bytes, ones: int, tasks: int = 1) -> bytes:
    """A one-layer ('fc', n weights) file whose only stream is `stream` (CRCs made to match)."""
    header = {
        "codec": codec,
        "layers": [{"name": "fc", "shape": [n]}],
        "meta": {},
        "ones": [[ones]] * tasks,
        "task_ids": list(range(1, tasks + 1)),
        "streams": {"crc32": [zlib.crc32(stream)], "length": [len(stream)], "offset": [0]},
    }
    return seal(header, stream)


def restream(data: bytes, index: int, stream: bytes) -> bytes:
    """Replace stream `index` of a valid file, fixing lengths, offsets and CRCs."""
    header, body = split(data)
    table = header["streams"]
    chunks = [body[o : o + n] for o, n in zip(table["offset"], table["length"])]
    chunks[index] = stream
    table["length"] = [len(c) for c in chunks]
    table["offset"] = [sum(table["length"][:i]) for i in range(len(chunks))]
    table["crc32"] = [zlib.crc32(c) for c in chunks]
    return seal(header, b"".join(chunks))
