"""The suites that ship with adaptbench, as package data: the demo (its splits beside it, the
Halcyra knowledge base in knowledge_bases/) and the public-data suites, which read their data
from {data_dir}. In a checkout, eval_suites/ and knowledge_bases/ at the root link here."""

from __future__ import annotations

import textwrap
from pathlib import Path

import yaml

SUITES = Path(__file__).parent / "eval_suites"


def bundled_suites() -> dict[str, Path]:
    """name -> suite file, e.g. {"demo": .../eval_suites/demo.yaml}."""
    return {p.stem: p for p in sorted(SUITES.glob("*.yaml"))}


def suite_path(arg: Path) -> Path:
    """A suite given on the command line: a file, or the bare name of a bundled suite
    (`adaptbench run demo`). A file of that name in the working folder wins."""
    if arg.exists() or arg.suffix or len(arg.parts) != 1:
        return arg
    return bundled_suites().get(arg.name, arg)


def description(path: Path, width: int = 96) -> str:
    """The first sentence of a bundled suite's `description:`, read without loading the schema."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return ""
    first = str(doc.get("description") or "").strip().split(". ")[0].split("? ")[0].rstrip(".")
    return textwrap.shorten(first, width, placeholder=" …") if first else ""
