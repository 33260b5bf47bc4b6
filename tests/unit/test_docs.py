"""The documentation cannot drift from the code: the suite reference is generated from the
schema, every ```yaml block of README.md and docs/ is a valid suite (or a fragment of one), and
every `adaptbench ...` command they show names a real subcommand with real flags."""

from __future__ import annotations

import argparse
import re
import shlex

import pytest
import yaml

from tests.conftest import MINIMAL_SUITE, REPO
from toolkit.cli import build_parser
from toolkit.config import Suite
from toolkit.fields import render_markdown
from toolkit.suites import load_suite

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)


def blocks(lang: str):
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            if m.group(1) == lang:
                yield path, text[:m.start()].count("\n") + 2, m.group(2)


def test_the_suite_reference_is_generated_from_the_schema():
    ref = REPO / "docs" / "suite-reference.md"
    assert ref.read_text(encoding="utf-8") == render_markdown() + "\n", (
        "docs/suite-reference.md is stale: run python scripts/make_suite_reference.py")


def merged(fragment: dict) -> dict:
    """A fragment (`generator: ...`, `strategies: ...`, or arms alone) on top of a minimal suite
    with a knowledge base."""
    suite = {**yaml.safe_load(MINIMAL_SUITE), "knowledge_base": "kb"}
    if not set(fragment) & set(Suite.model_fields):  # `finetune: {...}`: the arms of `strategies:`
        fragment = {"strategies": fragment}
    return {**suite, **fragment}


@pytest.mark.parametrize("path,line,text", list(blocks("yaml")), ids=lambda x: str(x)[-40:] if isinstance(x, str) else None)
def test_every_yaml_block_is_a_valid_suite(path, line, text, tmp_path):
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict), f"{path.name}:{line}: not a mapping"
    suite = tmp_path / "s.yaml"
    suite.write_text(yaml.safe_dump(merged(doc)))
    try:
        load_suite(suite)
    except Exception as e:  # noqa: BLE001 -- the message says which block
        pytest.fail(f"{path.relative_to(REPO)}:{line}: {e}")


def commands():
    """(file, line, argv) of every `adaptbench ...` line in a bash block (continuations joined)."""
    for path, start, text in blocks("bash"):
        joined = re.sub(r"\\\n\s*", " ", text)
        for i, line in enumerate(joined.splitlines()):
            line = line.strip()
            if line.startswith("adaptbench "):
                yield path, start + i, shlex.split(line, comments=True)[1:]


def test_every_command_in_the_docs_is_real():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices  # argparse keeps them here
    top = {o for a in parser._actions for o in a.option_strings}
    bad, seen = [], 0
    for path, line, argv in commands():
        seen += 1
        where = f"{path.relative_to(REPO)}:{line}"
        if not argv or argv[0].startswith("-"):
            bad += [f"{where}: {a}" for a in argv if a.startswith("-") and a.split("=")[0] not in top]
            continue
        if argv[0] not in sub:
            bad.append(f"{where}: no command '{argv[0]}'")
            continue
        cmd, rest, name = sub[argv[0]], argv[1:], argv[0]
        nested = [a for a in cmd._actions if isinstance(a, argparse._SubParsersAction)]
        if nested:  # adaptbench data check|prepare
            if not rest or rest[0] not in nested[0].choices:
                bad.append(f"{where}: adaptbench {name} has no command '{rest[0] if rest else ''}'")
                continue
            cmd, name, rest = nested[0].choices[rest[0]], f"{name} {rest[0]}", rest[1:]
        flags = {o for a in cmd._actions for o in a.option_strings}
        bad += [f"{where}: adaptbench {name} has no {a.split('=')[0]}" for a in rest
                if a.startswith("-") and a != "-" and a.split("=")[0] not in flags]
    assert seen >= 5, "the docs show no adaptbench command: is the fence language still bash?"
    assert bad == [], "\n".join(bad)


def test_the_readme_stays_short():
    assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) <= 300


def test_suite_fields_prints_the_schema_and_an_unknown_field_points_to_it(tmp_path, capsys):
    from toolkit.cli import main
    from toolkit.errors import UserError

    assert main(["suite-fields", "finetune"]) == 0
    out = capsys.readouterr().out
    assert "strategies.finetune" in out and "method: 'lora' | 'full' | 'qlora' | 'openai_api' = \"lora\"" in out
    assert "learning_rate: float (> 0) = 0.001" in out and "strategies.rag " not in out
    assert main(["suite-fields", "strategies"]) == 0
    out = capsys.readouterr().out
    assert all(f"strategies.{t}" in out for t in ("zero_shot", "few_shot", "rag", "rag_finetune"))
    assert main(["suite-fields", "no_such"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "choose from: suite, data" in err[0]
    suite = tmp_path / "s.yaml"
    suite.write_text(MINIMAL_SUITE + "generator: {modle: x}\n")
    with pytest.raises(UserError, match=r"generator\.modle: unknown field .*`adaptbench suite-fields generator`"):
        load_suite(suite)
