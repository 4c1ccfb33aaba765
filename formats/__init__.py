"""Binary-mask codecs and the `.wsnm` packed-mask container (numpy + bitarray; never torch).

Names load on first use (PEP 562), so `import formats.errors` (the root of wsn's exception
hierarchy) costs nothing: a command-line `--help` never waits for numpy.
"""

from __future__ import annotations

import importlib

from formats.errors import FormatError as FormatError
from formats.errors import WsnError as WsnError

_EXPORTS = {
    "codecs": ("AUTO", "CODECS", "PACK_CODECS"),
    "container": ("LayerMasks", "PackedMasks", "auto_codec", "describe", "pack", "unpack"),
    "header": (
        "DEFAULT_MAX_BITS",
        "MAX_HEADER_BYTES",
        "MAX_JSON_DEPTH",
        "MAX_LAYER_WEIGHTS",
        "MAX_LAYERS",
        "MAX_META_VALUES",
        "MAX_NAME_CHARS",
        "MAX_TASKS",
        "MAX_TOTAL_BITS",
    ),
    "report": ("storage_report",),
}
_SUBMODULES = ("bitio", "codecs", "container", "context", "golomb", "header", "huffman", "report", "stats")
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted([*_WHERE, "FormatError", "WsnError"])


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        if name in _SUBMODULES:  # `formats.container` before anything imported it
            return importlib.import_module(f"formats.{name}")
        raise AttributeError(f"module 'formats' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"formats.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
