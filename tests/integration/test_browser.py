"""report.html in a real browser: headless Chromium, network off, no console output,
the recommendation, table and figures present, no live markup from hostile text."""

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from test_harness import SCRIPT, make_suite, scripted  # noqa: F401

from toolkit.harness import run_suite
from toolkit.reporting.report import render_run

CHROMIUM = next((shutil.which(c) for c in ("chromium", "chromium-browser", "google-chrome") if shutil.which(c)), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--enable-logging=stderr", "--v=0", "--log-level=0"]


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make test installs Debian's chromium when it can)")
def test_report_renders_in_headless_chromium(tmp_path, tiny_llama, scripted):  # noqa: F811
    hostile = {**SCRIPT, "Colour of the sky?": '"><svg onload=alert(3)>'}
    # (an arm named like 'x" onmouseover="alert(4)' is refused when the suite loads: names are identifiers)
    loaded = make_suite(tmp_path, tiny_llama, {"echo": {"type": "scripted", "answers": hostile},
                                           "quiet": {"type": "scripted", "answers": {}}})
    run, _ = run_suite(loaded, out=tmp_path / "run")
    _, html = render_run(run.path)
    url = html.resolve().as_uri()
    profile = tmp_path / "profile"

    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [l for l in dom.stderr.splitlines() if "CONSOLE" in l]
    assert console == [], console
    parser = Tags()
    parser.feed(dom.stdout)
    tags = parser.tags
    assert not [t for t, _ in tags if t in ("script", "img", "iframe", "object", "embed")]
    assert not [(t, a) for t, a in tags if any(k.startswith("on") for k in a)]  # no event-handler attributes
    ids = {a.get("id") for _, a in tags}
    assert {"recommendation", "results", "paired"} <= ids
    assert sum(1 for t, _ in tags if t == "svg") >= 3
    assert "Use echo:" in dom.stdout and "&lt;script&gt;" in dom.stdout

    shot = tmp_path / "report.png"
    r = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--window-size=1200,2200",
                        f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and shot.stat().st_size > 20_000
    if os.environ.get("ADAPTBENCH_TEST_ARTIFACTS"):
        dest = os.path.join(os.environ["ADAPTBENCH_TEST_ARTIFACTS"], "report.png")
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copy(shot, dest)
    print(f"screenshot: {shot}")
    assert re.search(r"<table[^>]*id=\"results\"", dom.stdout)


def inert_dom(html, profile) -> tuple[str, list[tuple[str, dict]]]:
    """The page's DOM after headless Chromium loaded it (network off), and its tags: asserted to
    log nothing to the console and to hold no live markup (scripts, images, event handlers)."""
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", html.resolve().as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert [l for l in dom.stderr.splitlines() if "CONSOLE" in l] == []
    parser = Tags()
    parser.feed(dom.stdout)
    tags = parser.tags
    assert not [t for t, _ in tags if t in ("script", "img", "iframe", "object", "embed")]
    assert not [(t, a) for t, a in tags if any(k.startswith("on") for k in a)]
    return dom.stdout, tags


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make test installs Debian's chromium when it can)")
def test_data_report_renders_in_headless_chromium(tmp_path, capsys):
    """data_report.html: the verdict, the findings with their lines, the length histogram and
    the label bars, and no live markup from hostile text in the data."""
    import json as _json

    from toolkit.cli import main

    rows = [{"text": f"parcel {i} is late", "label": "shipping"} for i in range(30)]
    rows += [{"text": f'refund <script>alert({i})</script> "><img src=x onerror=alert(1)>', "label": "billing<b>"}
             for i in range(8)]
    rows += [rows[0]]
    data = tmp_path / "tickets.jsonl"
    data.write_text("".join(_json.dumps(r) + "\n" for r in rows) + '{"text": "broken\n')
    out = tmp_path / "report"
    assert main(["data", "check", str(data), "-o", str(out), "--no-probe", "--near", "0"]) == 2
    capsys.readouterr()
    html = out / "data_report.html"
    dom, tags = inert_dom(html, tmp_path / "profile")
    ids = {a.get("id") for _, a in tags}
    assert {"verdict", "splits", "findings", "length-histogram", "label-bars", "labels", "top-terms"} <= ids
    assert sum(1 for t, _ in tags if t == "svg") >= 2
    assert "tickets.jsonl:40: malformed JSON" in dom and "billing&lt;b&gt;" in dom


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make test installs Debian's chromium when it can)")
def test_label_score_figures_render_in_headless_chromium(tmp_path, tiny_llama, scripted):  # noqa: F811
    """ROC, precision-recall and reliability figures and the threshold tables of two arms with
    label probabilities, in a real browser, with a hostile label name."""
    import json as _json

    import yaml
    from test_report import binary_probs_suite

    from toolkit.suites import load_suite

    binary_probs_suite(tmp_path, tiny_llama)
    suite = yaml.safe_load((tmp_path / "suite.yaml").read_text())
    evil = '<img src=x onerror=alert(5)>'
    suite["labels"] = ["ham", evil]
    for arm in suite["strategies"].values():
        arm["answers"] = {q: (evil if a == "spam" else a) for q, a in arm["answers"].items()}
        arm["probs"] = {q: {"ham": p["ham"], evil: p["spam"]} for q, p in arm["probs"].items()}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    test = [_json.loads(l) for l in (tmp_path / "test.jsonl").read_text().splitlines()]
    (tmp_path / "test.jsonl").write_text("".join(
        _json.dumps({**r, "label": evil if r["label"] == "spam" else "ham"}) + "\n" for r in test))
    (tmp_path / "train.jsonl").write_text("".join(
        _json.dumps({**r, "question": "train " + r["question"], "label": evil if r["label"] == "spam" else "ham"}) + "\n"
        for r in test[:10]))
    run, res = run_suite(load_suite(tmp_path / "suite.yaml"), out=tmp_path / "run")
    assert res.status == "success"
    _, html = render_run(run.path)
    dom, tags = inert_dom(html, tmp_path / "profile")
    ids = {a.get("id") for _, a in tags}
    assert {"label-scores", "fig-roc", "fig-pr", "fig-reliability", "thresholds-1", "thresholds-2"} <= ids
    assert "ROC (one label vs the rest, mean)" in dom and "Calibration (reliability diagram)" in dom
    assert "answer “&lt;img src=x onerror=alert(5)&gt;” when p ≥" in dom
