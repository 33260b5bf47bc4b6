"""`adaptbench data check`'s output: a terminal summary, data_report.json and a self-contained
data_report.html (inline SVG: the length histogram and the label bars; the top terms per label).
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from toolkit.bundled import suite_path
from toolkit.checks import DataReport, check_suite, suite_for_file
from toolkit.errors import UserError
from toolkit.progress import console
from toolkit.reporting.figures import label_bars, length_histogram
from toolkit.runs import atomic_write
from toolkit.starter import suite_name


def render_html(r: DataReport) -> str:
    # jinja2: imported on first use, not when this module loads
    from jinja2 import Environment, PackageLoader, select_autoescape

    figs = {}
    if r.lengths.get("train"):
        figs["lengths"] = length_histogram(r.lengths["train"], {a: t["max_seq_length"] for a, t in r.truncation.items()},
                                           "train split")
    if r.labels.get("counts") and any(r.labels["counts"].values()):
        figs["labels"] = label_bars(r.labels["counts"])
    env = Environment(loader=PackageLoader("toolkit.reporting", "templates"), autoescape=select_autoescape(["html"]))
    return env.get_template("data_report.html").render(r=r, figures=figs, exit_code=r.exit_code())


def check_out(out: Path) -> None:
    """-o is checked before any work: a folder (made if need be), never a file."""
    if out.exists() and not out.is_dir():
        raise UserError("is a file; data check writes data_report.html and data_report.json into a folder",
                        file=out, field="--out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the folder: {e.strerror}", file=out, field="--out") from None


def write_reports(r: DataReport, out: Path) -> tuple[Path, Path]:
    """Both files, rendered before either is written: never one without the other."""
    js, html = out / "data_report.json", out / "data_report.html"
    text_js, text_html = json.dumps(r.to_dict(), indent=2, default=str), render_html(r)
    atomic_write(js, text_js)
    atomic_write(html, text_html)
    return js, html


def terminal_summary(r: DataReport, shown: int = 3) -> None:
    t = Table(title=f"{r.suite}: data check ({r.task})", title_justify="left")
    for c in ("split", "examples", "question tokens p50 / p99 / max", "answer tokens p50 / p99 / max"):
        t.add_column(c, justify="right" if c != "split" else "left")
    for name, n in r.splits.items():
        tk = r.tokens.get(name, {})
        fmt = lambda p: f"{p['p50']:.0f} / {p['p99']:.0f} / {p['max']}" if p else "–"  # noqa: E731
        t.add_row(name, str(n), fmt(tk.get("user")), fmt(tk.get("assistant")))
    console.print(t)
    colour = {"error": "red", "warning": "yellow", "info": "dim"}
    for f in r.findings:
        console.print(f"[{colour[f.level]}]{f.summary()}[/]", markup=True, highlight=False)
        for w in f.where[:shown]:
            console.print(f"    {w}", markup=False, highlight=False)
        if f.count > shown and len(f.where) > 1:
            console.print(f"    … {f.count - shown} more in data_report.json", markup=False)
    for arm, t in r.truncation.items():
        console.print(f"{arm}: {t['examples_over']} of {t['examples']} training examples over max_seq_length "
                      f"{t['max_seq_length']} ({t['tokens_cut']} tokens cut; longest {t['longest']})", markup=False)
    for arm, e in r.estimate.get("arms", {}).items():
        line = (f"{arm}: {e['train_examples']} examples × {e['epochs']:g} epoch{'s' if e['epochs'] != 1 else ''} = "
                f"{e['tokens']:,} training tokens")
        if "seconds" in e:
            p = next(x for x in r.estimate["probes"] if x["arm"] == e["probe_of"])
            line += (f", about {_duration(e['seconds'])} here (measured {p['tokens_per_s']:.0f} tokens/s on "
                     f"{p['device']}/{p['dtype']})")
        if "usd" in e:
            line += f", ${e['usd']:.4f}"
        console.print(line, markup=False)
    if api := r.estimate.get("api"):
        console.print(f"API arms ({', '.join(api['arms'])}): about ${api['usd_per_test_run']:.4f} per pass over the "
                      f"test split, ${api['usd_per_1k_queries']:.4f} per 1,000 queries ({api['note']})", markup=False)
    for s in r.recommendations:
        console.print(f"[bold]→[/] {s}", markup=True, highlight=False)


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


def check_before_run(loaded, name: str) -> str | None:
    """What `adaptbench run` does first: the checks that need no model (no probe, no near
    duplicates). Errors stop the run, each printed with its line; the warnings are one line,
    returned for the run to print when it ends."""
    report = check_suite(loaded, near=0, probe=False)
    if sum(f.count for f in report.errors) == 1 and report.errors[0].where:
        raise UserError(report.errors[0].where[0])  # one problem: its own line, as any bad input gets
    if report.errors:
        for f in report.errors:
            for w in f.where[:5]:
                console.print(f"error: {w}", markup=False, highlight=False)
            if f.count > 5:
                console.print(f"  … {f.count - 5} more like it", markup=False)
        n = sum(f.count for f in report.errors)
        raise UserError(f"{n} problem{'s' if n > 1 else ''} in the data (listed above); `adaptbench data check {name}` "
                        "writes the whole report", file=loaded.path)
    if report.warnings:
        what = ", ".join(sorted({f.code.replace("_", " ") for f in report.warnings}))
        n = sum(f.count for f in report.warnings)
        return (f"data check: {n} warning{'s' if n > 1 else ''} ({what}); "
                f"`adaptbench data check {name}` explains each")
    return None


def run_check(args) -> int:
    """The `adaptbench data check` command: exit 0 clean, 1 warnings, 2 errors."""
    # the suite machinery: loaded when the command runs, not for --help
    from toolkit.suites import load_suite

    target = suite_path(Path(args.target))
    if not (0 <= args.near <= 1):
        raise UserError("must be between 0 and 1 (0: no near-duplicate search)", field="--near")
    if args.out is not None:
        check_out(args.out)
    if target.suffix.lower() in (".yaml", ".yml"):
        if args.task or args.input or args.target_col:
            raise UserError("--task, --input and --target are for a data file; a suite says them itself",
                            field="--task" if args.task else "--input" if args.input else "--target")
        report = check_suite(load_suite(target, args.data_dir), target=str(args.target), near=args.near,
                             probe=not args.no_probe)
        name = report.suite
    else:
        with suite_for_file(target, task=args.task, input_col=args.input, target_col=args.target_col) as loaded:
            report = check_suite(loaded, target=str(target), near=args.near, probe=not args.no_probe)
        name = suite_name(target)
    out = args.out or Path("reports") / f"data-{name}"
    check_out(out)
    js, html = write_reports(report, out)
    terminal_summary(report)
    errors, warnings = len(report.errors), len(report.warnings)
    console.print(f"\n{errors} errors, {warnings} warnings · {html} · {js}", markup=False)
    print(html)  # stdout: the report, for scripts
    return report.exit_code()
