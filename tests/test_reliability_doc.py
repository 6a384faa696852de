"""docs/reliability.md promises a test per bad input: check every row names a test that exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"
TEST_REF = re.compile(r"(tests/[\w/]+\.py)::(\w+)")


def _rows() -> list[str]:
    """Rows of the tables under "## The table" (the sweep's summary table above it has none)."""
    text = DOC.read_text()
    assert "\n## The table\n" in text, "docs/reliability.md lost its '## The table' section"
    return [
        line for line in text.split("\n## The table\n", 1)[1].splitlines()
        if line.startswith("| ") and not line.startswith("| bad input")
    ]


def test_table_has_at_least_forty_bad_inputs() -> None:
    assert len(_rows()) >= 40


def test_every_row_names_an_existing_test() -> None:
    missing = []
    for row in _rows():
        refs = TEST_REF.findall(row)
        assert refs, f"row without a test: {row}"
        for path, name in refs:
            file = ROOT / path
            if not file.is_file() or not re.search(rf"^\s*def {name}\(", file.read_text(), re.M):
                missing.append(f"{path}::{name}")
    assert not missing, f"docs/reliability.md names tests that do not exist: {missing}"
