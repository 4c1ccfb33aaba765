"""Binary-mask codecs and the `.wsnm` packed-mask container (numpy + bitarray; never torch)."""

from formats.codecs import AUTO, CODECS, PACK_CODECS
from formats.container import LayerMasks, PackedMasks, auto_codec, describe, pack, unpack
from formats.errors import FormatError, WsnError
from formats.header import (
    DEFAULT_MAX_BITS,
    MAX_HEADER_BYTES,
    MAX_JSON_DEPTH,
    MAX_LAYER_WEIGHTS,
    MAX_LAYERS,
    MAX_META_VALUES,
    MAX_NAME_CHARS,
    MAX_TASKS,
    MAX_TOTAL_BITS,
)
from formats.report import storage_report

__all__ = [
    "AUTO",
    "CODECS",
    "DEFAULT_MAX_BITS",
    "MAX_HEADER_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_LAYER_WEIGHTS",
    "MAX_LAYERS",
    "MAX_META_VALUES",
    "MAX_NAME_CHARS",
    "MAX_TASKS",
    "MAX_TOTAL_BITS",
    "PACK_CODECS",
    "FormatError",
    "LayerMasks",
    "PackedMasks",
    "WsnError",
    "auto_codec",
    "describe",
    "pack",
    "storage_report",
    "unpack",
]
