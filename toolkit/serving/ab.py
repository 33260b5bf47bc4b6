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
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from toolkit.errors import UserError
from toolkit.runs import atomic_write
from toolkit.serving.log import LATEST_FEEDBACK
from toolkit.serving.logs_cli import open_log, parse_since

Z_ALPHA, Z_POWER = 1.959964, 0.841621  # two-sided 5%, 80% power
SMALLEST_EFFECT = 0.05


@dataclass
class Tally:
    """What the A/B analysis needs of one arm's rows, kept as sums: it is computed in SQL
    over a log of any size (`tally_db`) or from rows in memory (`tally`)."""
    requests: int = 0
    rated: int = 0
    corrected: int = 0
    total: float = 0.0      # sum of scores
    squares: float = 0.0    # sum of squared scores
    latency_p50_s: float | None = None
    latency_p95_s: float | None = None


def tally(rows: list[dict]) -> dict[str, Tally]:
    out: dict[str, Tally] = {}
    lat: dict[str, list[float]] = {}
    for r in rows:
        t = out.setdefault(r["arm"], Tally())
        t.requests += 1
        t.corrected += bool(r.get("feedback_correction"))
        if r.get("feedback_score") is not None:
            t.rated += 1
            t.total += r["feedback_score"]
            t.squares += r["feedback_score"] ** 2
        if r.get("latency_s") is not None:
            lat.setdefault(r["arm"], []).append(r["latency_s"])
    for arm, xs in lat.items():
        out[arm].latency_p50_s, out[arm].latency_p95_s = (float(np.percentile(xs, q)) for q in (50, 95))
    return out


def tally_db(con, *, since: str | None = None, routed_only: bool = False) -> dict[str, Tally]:
    """Per-arm sums straight from the log (constant memory, whatever its size); latency
    percentiles as SQLite finds them (nearest rank)."""
    where, args = [], []
    if since:
        where.append("p.created_at >= ?")
        args.append(since)
    if routed_only:
        where.append("p.routed = 1")
    cond = (" WHERE " + " AND ".join(where)) if where else ""
    out: dict[str, Tally] = {}
    sql = (f"SELECT arm, COUNT(*), COUNT(feedback_score), SUM(feedback_correction IS NOT NULL AND "
           f"feedback_correction != ''), TOTAL(feedback_score), TOTAL(feedback_score * feedback_score), "
           f"COUNT(latency_s), MIN(id) FROM ({LATEST_FEEDBACK}{cond}) GROUP BY arm ORDER BY MIN(id)")
    for arm, n, rated, corrected, total, squares, n_lat, _ in con.execute(sql, args):
        t = Tally(n, rated, corrected or 0, total, squares)
        for q, attr in ((0.50, "latency_p50_s"), (0.95, "latency_p95_s")):
            if n_lat:
                k = min(n_lat - 1, max(0, math.ceil(q * n_lat) - 1))
                row = con.execute(f"SELECT latency_s FROM predictions p WHERE arm = ? AND latency_s IS NOT NULL"
                                  f"{' AND ' + ' AND '.join(where) if where else ''} ORDER BY latency_s LIMIT 1 OFFSET ?",
                                  [arm, *args, k]).fetchone()
                setattr(t, attr, row[0] if row else None)
        out[arm] = t
    return out


def arm_stats(t: Tally) -> dict[str, Any]:
    # scipy: imported on first use, not when this module loads
    from scipy import stats
    out: dict[str, Any] = {"requests": t.requests, "rated": t.rated, "corrected": t.corrected,
                           "latency_p50_s": t.latency_p50_s, "latency_p95_s": t.latency_p95_s,
                           "mean": t.total / t.rated if t.rated else None, "ci": None, "sd": None, "n": t.rated}
    if t.rated >= 2:
        var = max(0.0, (t.squares - t.total ** 2 / t.rated) / (t.rated - 1))
        sd = math.sqrt(var)
        half = float(stats.t.ppf(0.975, t.rated - 1)) * sd / math.sqrt(t.rated)
        out.update(sd=sd, ci=(max(0.0, out["mean"] - half), min(1.0, out["mean"] + half)))  # scores lie in 0..1
    return out


def compare(base: dict, other: dict) -> dict[str, Any]:
    """other minus base: difference, 95% CI, Welch p-value, and the ratings per arm needed."""
    # scipy: imported on first use, not when this module loads
    from scipy import stats
    na, nb = base["n"], other["n"]
    if na < 2 or nb < 2:
        return {"enough": False, "why": f"not enough feedback yet: {na} and {nb} ratings (each arm needs at "
                                        f"least 2 for a confidence interval, and usually hundreds to tell)"}
    diff = float(other["mean"] - base["mean"])
    var_a, var_b = base["sd"] ** 2, other["sd"] ** 2
    va, vb = var_a / na, var_b / nb
    se = math.sqrt(va + vb)
    if se == 0:
        p = 1.0 if diff == 0 else 0.0
        df = float(na + nb - 2)
    else:
        p = float(stats.ttest_ind_from_stats(other["mean"], other["sd"], nb, base["mean"], base["sd"], na,
                                             equal_var=False).pvalue)
        den = va ** 2 / (na - 1) + vb ** 2 / (nb - 1)
        df = (va + vb) ** 2 / den if den > 0 else float(na + nb - 2)
    half = float(stats.t.ppf(0.975, max(df, 1))) * se
    # unanimous arms (every rating the same) that differ: no spread, so the difference is plain
    out = {"diff": diff, "ci": (diff - half, diff + half), "p": p, "enough": bool(p < 0.05 and diff != 0)}
    if not out["enough"]:
        effect = abs(diff) if abs(diff) >= SMALLEST_EFFECT / 2 else SMALLEST_EFFECT
        var = var_a + var_b or 0.5  # two unanimous samples: assume the widest (thumbs) spread
        need = math.ceil((Z_ALPHA + Z_POWER) ** 2 * var / effect ** 2)
        out["need_per_arm"] = need
        out["more_per_arm"] = max(0, need - min(na, nb))
        out["effect"] = effect
    return out


def analyse(rows: list[dict] | dict[str, Tally], baseline: str | None) -> dict[str, Any]:
    """The A/B analysis of a log's rows (or of their per-arm Tally)."""
    arms = rows if isinstance(rows, dict) else tally(rows)
    if not arms:
        raise UserError("the log holds no requests (yet)")
    if baseline is not None and baseline not in arms:
        raise UserError(f"'{baseline}' served no request in this log (arms: {', '.join(arms)})", field="--baseline")
    base = baseline or next(iter(arms))
    per = {a: arm_stats(t) for a, t in arms.items()}
    comps = {a: compare(per[base], per[a]) for a in arms if a != base}
    return {"baseline": base, "arms": per, "compare": comps, "requests": sum(t.requests for t in arms.values())}


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

    con = open_log(db)
    try:
        tallies = tally_db(con, since=parse_since(since), routed_only=routed_only)
    finally:
        con.close()
    a = analyse(tallies, baseline)
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
    # jinja2: imported on first use, not when this module loads
    from jinja2 import Environment, PackageLoader, select_autoescape

    jenv = Environment(loader=PackageLoader("toolkit.reporting", "templates"), autoescape=select_autoescape(["html"]))
    atomic_write(path, jenv.get_template("ab.html").render(a=a, lines=lines, db=db))
