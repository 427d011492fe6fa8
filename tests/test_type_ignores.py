"""A `type: ignore` in the package names its error code and says why (`# type: ignore[code]  # why`)."""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "windmill"
_IGNORE = re.compile(r"#\s*type:\s*ignore")
_EXPLAINED = re.compile(r"#\s*type:\s*ignore\[[\w,-]+\]\s+#\s*\S")


def test_every_type_ignore_gives_its_code_and_reason() -> None:
    unexplained = [f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}"
                   for path in sorted(PACKAGE.rglob("*.py"))
                   for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                   if _IGNORE.search(line) and not _EXPLAINED.search(line)]
    assert not unexplained, "write `# type: ignore[code]  # why`:\n" + "\n".join(unexplained)
