"""Binary-mask codecs and the `.wsnm` packed-mask container (numpy + bitarray; never torch)."""

from formats.codecs import CODECS
from formats.container import (
    MAX_HEADER_BYTES,
    MAX_LAYER_WEIGHTS,
    MAX_LAYERS,
    MAX_TASKS,
    MAX_TOTAL_BITS,
    LayerMasks,
    PackedMasks,
    describe,
    pack,
    unpack,
)
from formats.errors import FormatError, WsnError
from formats.report import storage_report

__all__ = [
    "CODECS",
    "MAX_HEADER_BYTES",
    "MAX_LAYER_WEIGHTS",
    "MAX_LAYERS",
    "MAX_TASKS",
    "MAX_TOTAL_BITS",
    "FormatError",
    "LayerMasks",
    "PackedMasks",
    "WsnError",
    "describe",
    "pack",
    "storage_report",
    "unpack",
]
