"""Binary-mask codecs and the `.wsnm` packed-mask container (numpy + bitarray; never torch)."""

from formats.errors import FormatError, WsnError

__all__ = ["FormatError", "WsnError"]
