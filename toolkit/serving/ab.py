"""`adaptbench ab`: the A/B test in a prediction log, per arm and against the baseline.

Feedback scores (0 bad .. 1 good) are compared by Welch's t-test: arms get different numbers
of ratings with different spreads, and a thumbs up/down mean is a proportion for which the
t-interval is close to the normal one at the sample sizes an A/B test needs. While the
difference's CI still spans 0, the page says so and estimates the ratings per arm a test
at 5% significance and 80% power would need to detect the difference seen (or 0.05, when
the arms look the same so far).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.errors import UserError

Z_ALPHA, Z_POWER = 1.959964, 0.841621  # two-sided 5%, 80% power
SMALLEST_EFFECT = 0.05


def arm_stats(rows: list[dict]) -> dict[str, Any]:
    from scipy import stats
    scores = np.array([r["feedback_score"] for r in rows if r["feedback_score"] is not None], float)
    lat = np.array([r["latency_s"] for r in rows if r["latency_s"] is not None], float)
    out: dict[str, Any] = {"requests": len(rows), "rated": int(len(scores)),
                           "corrected": sum(1 for r in rows if r["feedback_correction"]),
                           "latency_p50_s": float(np.percentile(lat, 50)) if len(lat) else None,
                           "latency_p95_s": float(np.percentile(lat, 95)) if len(lat) else None,
                           "mean": float(scores.mean()) if len(scores) else None, "ci": None, "sd": None}
    if len(scores) >= 2:
        sd = float(scores.std(ddof=1))
        half = float(stats.t.ppf(0.975, len(scores) - 1)) * sd / math.sqrt(len(scores))
        out.update(sd=sd, ci=(max(0.0, out["mean"] - half), min(1.0, out["mean"] + half)))  # scores lie in 0..1
    out["scores"] = scores
    return out


def compare(base: dict, other: dict) -> dict[str, Any]:
    """other minus base: difference, 95% CI, Welch p-value, and the ratings per arm needed."""
    from scipy import stats
    a, b = base["scores"], other["scores"]
    if len(a) < 2 or len(b) < 2:
        return {"enough": False, "why": f"not enough feedback yet: {len(a)} and {len(b)} ratings (each arm needs at "
                                        f"least 2 for a confidence interval, and usually hundreds to tell)"}
    diff = float(b.mean() - a.mean())
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        p = 1.0 if diff == 0 else 0.0
        df = float(len(a) + len(b) - 2)
    else:
        p = float(stats.ttest_ind(b, a, equal_var=False).pvalue)
        den = va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)
        df = (va + vb) ** 2 / den if den > 0 else float(len(a) + len(b) - 2)
    half = float(stats.t.ppf(0.975, max(df, 1))) * se
    # unanimous arms (every rating the same) that differ: no spread, so the difference is plain
    out = {"diff": diff, "ci": (diff - half, diff + half), "p": p, "enough": bool(p < 0.05 and diff != 0)}
    if not out["enough"]:
        effect = abs(diff) if abs(diff) >= SMALLEST_EFFECT / 2 else SMALLEST_EFFECT
        var = a.var(ddof=1) + b.var(ddof=1) or 0.5  # two unanimous samples: assume the widest (thumbs) spread
        need = math.ceil((Z_ALPHA + Z_POWER) ** 2 * var / effect ** 2)
        out["need_per_arm"] = need
        out["more_per_arm"] = max(0, need - min(len(a), len(b)))
        out["effect"] = effect
    return out


def analyse(rows: list[dict], baseline: str | None) -> dict[str, Any]:
    arms: dict[str, list[dict]] = {}
    for r in rows:
        arms.setdefault(r["arm"], []).append(r)
    if not arms:
        raise UserError("the log holds no requests (yet)")
    if baseline is not None and baseline not in arms:
        raise UserError(f"'{baseline}' served no request in this log (arms: {', '.join(arms)})", field="--baseline")
    base = baseline or next(iter(arms))
    per = {a: arm_stats(rs) for a, rs in arms.items()}
    comps = {a: compare(per[base], per[a]) for a in arms if a != base}
    return {"baseline": base, "arms": per, "compare": comps, "requests": len(rows)}


def verdict(base: str, arm: str, c: dict) -> str:
    if "diff" not in c:
        return c["why"]
    if c["enough"]:
        better = "better" if c["diff"] > 0 else "worse"
        return (f"{arm} is rated {better} than {base}: {c['diff']:+.3f} (95% CI {c['ci'][0]:+.3f} to {c['ci'][1]:+.3f}, "
                f"p = {c['p']:.3g})")
    head = (f"cannot tell yet: {arm} − {base} = {c['diff']:+.3f} (95% CI {c['ci'][0]:+.3f} to {c['ci'][1]:+.3f}, "
            f"p = {c['p']:.2g}). To detect a difference of {c['effect']:.2f} it needs about {c['need_per_arm']:,} "
            f"ratings per arm")
    if c["more_per_arm"]:
        return head + f": about {c['more_per_arm']:,} more per arm."
    return head + ", and it has them: the difference is likely smaller than that."


def ab_report(db: Path, *, baseline: str | None = None, since: str | None = None, routed_only: bool = False,
              html: Path | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    from toolkit.serving.log import query
    from toolkit.serving.logs_cli import open_log, parse_since

    con = open_log(db)
    rows = query(con, since=parse_since(since))
    con.close()
    if routed_only:
        rows = [r for r in rows if r["routed"]]
    a = analyse(rows, baseline)
    t = Table(title=f"A/B test in {db}: {a['requests']} requests" + (" (routed only)" if routed_only else ""))
    for col in ("arm", "requests", "rated", "mean score", "95% CI", "vs baseline", "p", "latency p50", "p95"):
        t.add_column(col, justify="left" if col == "arm" else "right")
    for arm, s in a["arms"].items():
        c = a["compare"].get(arm, {})
        t.add_row(arm + (" (baseline)" if arm == a["baseline"] else ""), str(s["requests"]), str(s["rated"]),
                  f"{s['mean']:.3f}" if s["mean"] is not None else "–",
                  f"{s['ci'][0]:.3f}–{s['ci'][1]:.3f}" if s["ci"] else "–",
                  f"{c['diff']:+.3f} [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}]" if "diff" in c else "",
                  f"{c['p']:.3g}" if "p" in c else "",
                  f"{s['latency_p50_s']:.2f}s" if s["latency_p50_s"] is not None else "–",
                  f"{s['latency_p95_s']:.2f}s" if s["latency_p95_s"] is not None else "–")
    import os
    console = Console(width=None if os.isatty(1) else 200)
    console.print(t)
    lines = [verdict(a["baseline"], arm, c) for arm, c in a["compare"].items()]
    if not lines:
        lines = ["only one arm served requests: nothing to compare"]
    for line in lines:
        console.print(line, highlight=False)
    html = html or Path(db).with_name("ab.html")
    write_html(a, lines, html, Path(db))
    console.print(f"wrote {html}", highlight=False)
    return 0


def write_html(a: dict, lines: list[str], path: Path, db: Path) -> None:
    from jinja2 import Environment, PackageLoader, select_autoescape

    from toolkit.runs import atomic_write
    jenv = Environment(loader=PackageLoader("toolkit.reporting", "templates"), autoescape=select_autoescape(["html"]))
    atomic_write(path, jenv.get_template("ab.html").render(a=a, lines=lines, db=db))
