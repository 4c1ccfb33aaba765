"""docs/API.md runs: its python blocks in one namespace, `python file=NAME` blocks written to disk,
and its `$ wsn ...` console lines through the CLI (in-process), all in a scratch folder."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

from tests.cli.helpers import assert_ok, wsn

DOC = Path(__file__).resolve().parent.parent / "docs" / "API.md"
BLOCK = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```$", re.S | re.M)


def blocks() -> list[tuple[str, str, str]]:
    """(language, info after it, code) of every fenced block, in order."""
    return [(lang, info.strip(), code) for lang, info, code in BLOCK.findall(DOC.read_text())]


def test_the_api_document_has_each_kind_of_block():
    kinds = [(lang, info.split("=")[0]) for lang, info, _ in blocks()]
    assert ("python", "") in kinds and ("python", "file") in kinds and ("console", "") in kinds


def test_every_block_of_the_api_document_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    namespace: dict = {"__name__": "api_doc"}
    written = []
    try:
        for lang, info, code in blocks():
            if lang == "python" and info.startswith("file="):
                name = info.removeprefix("file=")
                (tmp_path / name).write_text(code)
                written.append(Path(name).stem)
            elif lang == "python":
                exec(compile(code, str(DOC), "exec"), namespace)  # noqa: S102 - our own document
            elif lang == "console":
                for line in code.splitlines():
                    words = shlex.split(line.removeprefix("$ "))
                    while words and "=" in words[0]:  # environment assignments (PYTHONPATH=.)
                        words.pop(0)
                    assert words[0] == "wsn", line
                    assert_ok(wsn(*words[1:]))
    finally:
        for module in written:
            sys.modules.pop(module, None)
    assert "labels" in namespace and len(namespace["labels"]) == 5
