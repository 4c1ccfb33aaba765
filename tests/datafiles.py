"""Generated files in the real dataset layouts pass wsn's pinned-digest checks only when listed in
$WSN_DATA_CHECKSUMS, the documented override (docs/DATA.md). tests/conftest.py points it at an empty
file for every test; these helpers list a generated file's digest, or '-' (any content) for a key."""

from __future__ import annotations

import os
from pathlib import Path

from wsncli.engine.data.pinned import CHECKSUMS_ENV, content_digest


def checksums_file() -> Path:
    return Path(os.environ[CHECKSUMS_ENV])


def pin(key: str, path: Path) -> None:
    """Accept the file at `path` (its current contents) for `key`."""
    with open(checksums_file(), "a") as fh:
        fh.write(f"{content_digest(path)}  {key}\n")


def accept_any(*keys: str) -> None:
    """Accept any contents for `keys` (tests of the parsers' own checks)."""
    with open(checksums_file(), "a") as fh:
        fh.writelines(f"-  {key}\n" for key in keys)
