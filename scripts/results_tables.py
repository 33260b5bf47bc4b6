#!/usr/bin/env python3
"""Print the markdown tables of docs/results.md from run directories:

    python scripts/results_tables.py reports/results-covid_qa reports/results-banking77 ...

Per run: every arm's headline metrics with 95% CIs, setup and latency, then the
paired differences of the primary metric for every pair of arms."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from toolkit.reporting.decision import primary_metric  # noqa: E402
from toolkit.reporting.report import (LABELS, fmt_ci, fmt_p, headline_metrics, recommendation, retrieval_split,  # noqa: E402
                            retrieval_split_lines)
from toolkit.runs import load_run  # noqa: E402
from toolkit.scoring.stats import compare_arms  # noqa: E402


def tables(run_dir: Path) -> str:
    results, samples = load_run(run_dir)
    heads = headline_metrics(results, 5)
    metric = primary_metric(results)
    d = results.data
    out = [f"#### {results.suite}: {d.test_scored} test examples, {d.train} train, "
           f"{d.validation} validation · {results.device}/{results.dtype}", "",
           "| arm | " + " | ".join(LABELS.get(m, m) for m in heads) + " | setup s | p50 s/answer |",
           "|---" * (len(heads) + 3) + "|"]
    for name, a in results.strategies.items():
        if not a.ok:
            out.append(f"| {name} | {a.status}: {a.error or ''} |")
            continue
        out.append(f"| {name} | " + " | ".join(fmt_ci(a.metrics.get(m)) for m in heads)
                   + f" | {a.cost.setup_s:.0f} | {a.cost.latency_p50_s:.2f} |")
    ok = list(results.ok_arms())
    if metric and len(ok) > 1:
        out += ["", f"Paired differences in {LABELS.get(metric, metric)} (same test examples):", "",
                "| A | B | A − B [95% CI] | p | |", "|---|---|---|---|---|"]
        for p in compare_arms(samples, metric, ok, seed=0):
            verdict = "tied" if p.tied else ("A better" if p.diff > 0 else "B better")
            out.append(f"| {p.a} | {p.b} | {p.diff:+.3f} [{p.ci_low:+.3f}, {p.ci_high:+.3f}] | {fmt_p(p.p_bootstrap)} | {verdict} |")
    split = retrieval_split(samples, metric, ok) if metric else []
    if split:
        out += [""] + retrieval_split_lines(split, LABELS.get(metric, metric))
    if results.majority_baseline:
        mb = results.majority_baseline
        out += ["", f"Majority-class baseline (always `{mb.label}`): accuracy {mb.accuracy:.3f}."]
    out += ["", "Recommendation: " + " ".join(recommendation(results, samples, None)), ""]
    return "\n".join(out)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(tables(Path(arg)))
