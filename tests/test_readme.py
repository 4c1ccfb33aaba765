"""The README's promises that CI relies on."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci_lines = [
        l
        for l in (ROOT / ".ci" / "run").read_text().splitlines()
        if l and not l.startswith(("#", "set ", "cd ", "rm "))
    ]
    assert len(ci_lines) == 1, ci_lines
    assert ci_lines[0] in readme.splitlines(), f"README does not give the command CI runs: {ci_lines[0]}"


def test_readme_documents_every_exit_code():
    readme = (ROOT / "README.md").read_text()
    for code in ("| 0 |", "| 1 |", "| 2 |", "| 3 |", "| 130 |", "| 143 |"):
        assert code in readme
