"""Running `wsn` in-process (typer's CliRunner) and asserting its exit codes and one-line errors."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from wsncli.app import app

runner = CliRunner()


def wsn(*args):
    """Run `wsn ARGS...` in-process; unexpected exceptions propagate with their traceback."""
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def explain(result) -> str:
    return f"exit {result.exit_code}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def assert_ok(result) -> None:
    assert result.exit_code == 0, explain(result)


def assert_error(result, code: int, *needles: str) -> str:
    """Exit `code`, and stderr is exactly one line `wsn: error: ...` holding every needle."""
    assert result.exit_code == code, explain(result)
    lines = result.stderr.strip("\n").splitlines()
    assert len(lines) == 1 and lines[0].startswith("wsn: error: "), explain(result)
    for needle in needles:
        assert needle in lines[0], explain(result)
    return lines[0]


def json_out(result) -> dict:
    """stdout is exactly one JSON object on one line."""
    assert_ok(result)
    lines = result.stdout.strip("\n").splitlines()
    assert len(lines) == 1, explain(result)
    obj = json.loads(lines[0])
    assert isinstance(obj, dict)
    return obj
