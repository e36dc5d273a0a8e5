"""The README tour's documents stay valid as the language changes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_tour_documents_validate_together() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cairn_cli", "validate",
         "-f", "examples/templates", "-f", "examples/triggers", "-f", "docs/tour"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "cart-tour" in result.stdout
    readme = (ROOT / "README.md").read_text()
    assert "-f examples/templates -f examples/triggers -f docs/tour" in readme
