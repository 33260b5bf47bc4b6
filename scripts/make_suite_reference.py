#!/usr/bin/env python3
"""Write docs/suite-reference.md from the suite schema (toolkit.fields). Run it after changing a
field; tests/unit/test_docs.py fails while the file and the schema disagree."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from toolkit.fields import render_markdown  # noqa: E402 -- after the path is set

if __name__ == "__main__":
    out = ROOT / "docs" / "suite-reference.md"
    out.write_text(render_markdown() + "\n", encoding="utf-8")
    print(f"wrote {out.relative_to(ROOT)}")
