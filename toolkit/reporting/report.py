"""Rendering, from a run directory alone (never from live objects, never a model):
the terminal table, report.md and a self-contained report.html (inline CSS and SVG)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.table import Table

from toolkit.records import ArmInfo, ArmResult, ConfusionMatrix, Context, MetricValue, RunResults, Sample
from toolkit.reporting import figures as F
from toolkit.reporting.decision import (
    CRITERIA_HELP,
    DEFAULT_EXPECTED_QUERIES,
    break_even,
    cost_unit,
    decide,
    fmt_cost,
    primary_metric,
    query_cost,
    sensitivity,
    setup_cost,
    total_cost,
)
from toolkit.runs import RunDir, atomic_write
from toolkit.scoring.curves import LabelScores, ThresholdTable, label_scores, positive_label, threshold_table
from toolkit.scoring.registry import METRICS
from toolkit.scoring.stats import N_BOOTSTRAP, compare_arms

LABELS = {n: m.label for n, m in METRICS.items()}
UNBOUNDED = {n for n, m in METRICS.items() if not m.bounded}  # not on a 0-1 scale: kept out of the bar chart


def headline_metrics(results: RunResults, n: int = 4) -> list[str]:
    arms = results.ok_arms()
    present = [m for m in results.metrics_order if any(m in r.metrics for r in arms.values())]
    return present[:n]


def fmt_ci(m: MetricValue | None, digits: int = 3) -> str:
    if not m:
        return "n/a"
    return f"{m.mean:.{digits}f} [{m.ci_low:.{digits}f}, {m.ci_high:.{digits}f}]"


def fmt_mean(m: MetricValue | None, digits: int = 2) -> str:
    return f"{m.mean:.{digits}f}" if m else "n/a"


def fmt_interval(m: MetricValue | None, digits: int = 2) -> str:
    return f"[{m.ci_low:.{digits}f}, {m.ci_high:.{digits}f}]" if m else ""


def fmt_p(p: float) -> str:
    return f"<{1 / N_BOOTSTRAP:.1g}" if p == 0 else f"{p:.2g}"


def model_label(a: ArmResult) -> str:
    """'tiny (openai, http://...)' or 'smollm2-135m-instruct + LoRA adapter (transformers, cpu/bfloat16)'."""
    return a.model.label if a.model else "—"


def fmt_s(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:.2f} s" if x < 10 else (f"{x:.0f} s" if x < 120 else f"{x / 60:.1f} min")


# --- the recommendation ----------------------------------------------------------

def recommendation(results: RunResults, samples: list[Sample], weights: dict[str, float] | None = None) -> list[str]:
    """Two to four plain sentences generated from the numbers: the choice and why, what it
    costs, the best-scoring or cheaper alternative, and the weights. One function: every
    sentence reads the same decision, paired differences and costs."""
    d = decide(results, weights)
    metric = primary_metric(results)
    if d is None or metric is None:
        return ["No arm finished, so there is nothing to recommend."]
    arms = results.ok_arms()
    name = LABELS.get(metric, metric)
    hib = arms[d.winner].metrics[metric].higher_is_better
    pairs = {(p.a, p.b): p for p in compare_arms(samples, metric, list(d.raw), seed=0)}

    def diff(a, b):  # a − b on the shared examples: (diff, lo, hi, tied, p)
        if (a, b) in pairs:
            p = pairs[(a, b)]
            return p.diff, p.ci_low, p.ci_high, p.tied, p.p_bootstrap
        if (b, a) in pairs:
            p = pairs[(b, a)]
            return -p.diff, -p.ci_high, -p.ci_low, p.tied, p.p_bootstrap
        return None

    def q(a):
        m = arms[a].metrics[metric]
        return f"{name} {m.mean:.2f}, 95% CI {m.ci_low:.2f}–{m.ci_high:.2f}"

    win, c = d.winner, arms[d.winner].cost
    best = (max if hib else min)(d.raw, key=lambda a: arms[a].metrics[metric].mean)
    tied_with_best = [a for a in d.raw if a != best and (diff(best, a) or (0, 0, 0, False, 1))[3]]
    others = [a for a in d.raw if a != win]
    if win == best:
        tied = [a for a in others if (diff(win, a) or (0, 0, 0, False, 1))[3]]
        unpaired = [a for a in others if diff(win, a) is None]  # never claim a win without paired evidence
        why = (f"it gives the best answers ({q(win)})" +
               (f", though it is statistically tied with {', '.join(tied)}" if tied else
                (f"; no paired comparison with {', '.join(unpaired)} could be made from this run's samples"
                 if unpaired else (" and beats every other arm with 95% confidence" if others else ""))))
    elif (diff(best, win) or (0, 0, 0, False, 1))[3]:
        why = f"it answers as well as the best arm within the margin of error ({q(win)}) and costs less"
    else:
        why = f"under these weights its lower cost outweighs its lower quality ({q(win)})"
    money = (f" (${c.setup_usd:.2f} once, ${c.usd_per_1k_queries:.2f} per 1,000 queries at "
             f"{c.usd_source})") if c.priced else ""
    per = "of compute" if c.latency_kind != "per request" else "of request time"
    one = c.alone_s
    out = [f"Use {win}: {why}.",
           f"It takes {fmt_s(c.setup_s)} to set up once, then about {fmt_s(c.compute_s_per_answer * 1000)} {per} "
           f"per 1,000 queries{money}" + (f"; one caller waits about {fmt_s(one)} per answer." if one is not None else ".")]
    n_q = int(results.expected_queries or DEFAULT_EXPECTED_QUERIES)
    unit = cost_unit({a: arms[a].cost for a in d.raw})
    if win != best:
        dd = diff(best, win)
        bc = arms[best].cost
        verdict = ("statistically tied with it" if dd and dd[3] else
                   f"better by {abs(dd[0]):.2f} (95% CI {min(abs(dd[1]), abs(dd[2])):.2f}–{max(abs(dd[1]), abs(dd[2])):.2f})" if dd else "")
        out.append(f"{best} scores highest ({q(best)}), {verdict}, but takes {fmt_s(bc.setup_s)} to set up and "
                   f"{fmt_s(bc.compute_s_per_answer * 1000)} per 1,000 queries.")
    elif tied_with_best:
        # cheaper means cheaper over the expected volume (setup plus answers), never on setup alone
        cheap = min(tied_with_best, key=lambda a: total_cost(arms[a].cost, n_q, unit))
        ac = arms[cheap].cost
        basis = "" if unit == "usd" else " of compute"
        if total_cost(ac, n_q, unit) < total_cost(c, n_q, unit):
            be = break_even(ac, c, unit)
            limit = (f"; beyond about {be:,.0f} queries {win} is cheaper, as its lower cost per query pays back its "
                     f"setup" if be is not None else "; it is cheaper at any volume")
            out.append(f"A cheaper choice within the margin of error: {cheap} ({q(cheap)}): "
                       f"{fmt_cost(total_cost(ac, n_q, unit), unit)}{basis} against {fmt_cost(total_cost(c, n_q, unit), unit)} "
                       f"for {n_q:,} queries (setup {fmt_cost(setup_cost(ac, unit), unit)}, "
                       f"{fmt_cost(query_cost(ac, unit) * 1000, unit)} per 1,000 queries){limit}.")
        else:
            be = break_even(ac, c, unit)
            if be is not None:
                out.append(f"{cheap} is within the margin of error and cheaper to set up "
                           f"({fmt_cost(setup_cost(ac, unit), unit)} against {fmt_cost(setup_cost(c, unit), unit)}), but "
                           f"{win} costs less per query and is cheaper from about {be:,.0f} queries on "
                           f"({n_q:,} expected).")
    top = ", ".join(f"{k.replace('_', ' ')} {v:.0%}" for k, v in sorted(d.weights.items(), key=lambda kv: -kv[1]) if v > 0)
    volume = (f"{n_q:,} expected queries (decision.expected_queries"
              + (", the default" if results.expected_queries_is_default else "") + ")")
    out.append(f"(Weights: {top}; costs compared over {volume}. The sensitivity table shows when the choice would change.)")
    return out


def ensemble_verdicts(results: RunResults, samples: list[Sample], metric: str | None) -> list[str]:
    """Per ensemble arm, one sentence: does it beat its best member (paired, same examples) and
    what does that cost per query, so a reader sees whether it earns its price."""
    arms = results.ok_arms()
    out = []
    for name, a in arms.items():
        if a.type != "ensemble" or not metric or metric not in a.metrics:
            continue
        members = [m for m in (a.info.members or []) if m in arms and metric in arms[m].metrics]
        if not members:
            continue
        hib = a.metrics[metric].higher_is_better
        best = (max if hib else min)(members, key=lambda m: arms[m].metrics[metric].mean)
        pair = next(iter(compare_arms(samples, metric, [name, best], seed=0)), None)
        bc, ec = arms[best].cost, a.cost
        ratio = ec.compute_s_per_answer / bc.compute_s_per_answer if bc.compute_s_per_answer > 0 else None
        if ec.priced and bc.priced and bc.usd_per_1k_queries:
            ratio = ec.usd_per_1k_queries / bc.usd_per_1k_queries
        price = f"{ratio:.1f}× {best}'s cost per query" if ratio else "its members' cost per query together"
        label = LABELS.get(metric, metric)
        if pair is None:
            out.append(f"{name} ({a.info.ensemble_method} of {', '.join(a.info.members or [])}): no paired "
                       f"comparison with {best} could be made from this run's samples.")
            continue
        d, lo, hi = pair.diff, pair.ci_low, pair.ci_high
        ci = f"{d:+.3f} (95% CI {lo:+.3f} to {hi:+.3f})"
        if pair.tied:
            verdict = (f"is statistically tied with its best member {best} on {label}, {ci}, and costs {price}: "
                       f"not worth it on this data; {best} alone does as well")
        elif pair.a_better:
            verdict = (f"beats its best member {best} on {label} by {ci}, at {price}: worth it where that gain is "
                       f"worth paying for every query")
        else:
            verdict = f"is worse than its best member {best} on {label}, {ci}, and costs {price}: not worth it"
        taken = ", ".join(f"{m} {k}" for m, k in (a.info.answers_taken or {}).items())
        out.append(f"{name} ({a.info.ensemble_method} of {', '.join(a.info.members or [])}) {verdict}."
                   + (f" Answers taken from each member: {taken}." if taken else ""))
    return out


# --- what the report shows -------------------------------------------------------

def breakdown(samples: list[Sample], metric: str, fields: list[str], arms: list[str]) -> dict[str, list[dict]]:
    """field -> rows of {value, n, arm: mean}."""
    out = {}
    for f in fields:
        groups: dict[str, dict[str, list[float]]] = {}
        for s in samples:
            v = s.metadata.get(f)
            sc = s.score(metric)
            if v is None or sc is None:
                continue
            groups.setdefault(str(v), {}).setdefault(s.strategy, []).append(sc)
        if len(groups) > 1:
            out[f] = [{"value": v, "n": max(len(x) for x in g.values()),
                       **{a: (sum(g[a]) / len(g[a]) if g.get(a) else None) for a in arms}}
                      for v, g in sorted(groups.items())]
    return out


def quotes_passage(output: str, contexts: list[Context], n: int = 60) -> bool:
    """The answer's first `n` characters (whitespace-normalised) appear in one of its passages."""
    head = " ".join(output.split())[:n]
    return bool(head) and any(head in " ".join(c.text.split()) for c in contexts)


def retrieval_split(samples: list[Sample], metric: str, arms: list[str]) -> list[dict]:
    """Per retrieving arm: the metric when retrieval found a gold passage and when it missed,
    and how often the answer quotes a passage. Separates the two ways RAG fails: a retriever
    that misses, or a reader that ignores what it was given."""
    rows = []
    for arm in arms:
        mine = [s for s in samples if s.strategy == arm and s.contexts and s.score("hit_at_k") is not None]
        if not mine:
            continue
        hit = [s.score(metric) for s in mine if s.score("hit_at_k") and s.score(metric) is not None]
        miss = [s.score(metric) for s in mine if not s.score("hit_at_k") and s.score(metric) is not None]
        rows.append({"arm": arm, "n_hit": len(hit), "n_miss": len(miss),
                     "on_hit": sum(hit) / len(hit) if hit else None, "on_miss": sum(miss) / len(miss) if miss else None,
                     "quoted": sum(quotes_passage(s.output, s.contexts) for s in mine), "n": len(mine)})
    return rows


def disagreements(samples: list[Sample], metric: str, arms: list[str], n: int = 15) -> list[dict]:
    """Examples where the arms' scores differ most: question, gold, every arm's answer and passages."""
    by_id: dict[str, dict] = {}
    for s in samples:
        row = by_id.setdefault(s.id, {"id": s.id, "input": s.input, "target": s.target,
                                      "context_ids": s.context_ids, "answers": {}})
        row["answers"][s.strategy] = {"output": s.output, "score": s.score(metric), "contexts": s.contexts}
    rows = []
    for row in by_id.values():
        sc = [a["score"] for a in row["answers"].values() if isinstance(a["score"], (int, float))]
        if len(sc) > 1 and max(sc) - min(sc) >= 0.5:
            row["spread"] = max(sc) - min(sc)
            rows.append(row)
    rows.sort(key=lambda r: (-r["spread"], r["id"]))
    return rows[:n]


MANY_LABELS = 20  # above this a full confusion matrix has no readable axis: the confused pairs instead


def confused_pairs(cm: ConfusionMatrix, samples: list[Sample], n: int = 12) -> list[dict[str, Any]]:
    """The most frequent (gold, predicted) label pairs off the diagonal, each with its count
    and one test question that the arm answered so (from the arm's samples)."""
    cells = [(cm.matrix[i][j], gold, pred) for i, gold in enumerate(cm.labels)
             for j, pred in enumerate(cm.labels) if i != j and cm.matrix[i][j]]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    out = []
    for count, gold, pred in cells[:n]:
        ex = next((x for x in samples if x.label == gold and x.scores.get("mapped_label") == pred), None)
        out.append({"gold": gold, "predicted": pred, "count": int(count),
                    "example": ex.input[:200] if ex else "", "output": ex.output[:80] if ex else ""})
    return out


def confused_submatrix(cm: ConfusionMatrix, pairs: list[dict[str, Any]]) -> ConfusionMatrix:
    """The confusion matrix of only the labels in `pairs` (and the unmapped column)."""
    keep = sorted({p["gold"] for p in pairs} | {p["predicted"] for p in pairs}, key=cm.labels.index)
    rows = [cm.labels.index(l) for l in keep]
    cols = rows + [len(cm.columns) - 1]
    return ConfusionMatrix(labels=keep, columns=keep + [cm.columns[-1]],
                           matrix=[[cm.matrix[i][j] for j in cols] for i in rows])


def per_label_recall(results: RunResults) -> list[dict[str, Any]]:
    """Rows {label, n, arm: recall} from each arm's confusion matrix, for label tasks with at
    most MANY_LABELS labels: where balancing (or any arm) helps the rare labels and hurts the
    common ones, which a mean over labels hides."""
    arms = {n: a.confusion_matrix for n, a in results.ok_arms().items() if a.confusion_matrix}
    if not arms:
        return []
    labels = next(iter(arms.values())).labels
    if len(labels) > MANY_LABELS:
        return []
    rows = []
    for i, lab in enumerate(labels):
        n = sum(next(iter(arms.values())).matrix[i])
        rows.append({"label": lab, "n": n, "recall": {a: (cm.matrix[i][i] / n if n else None) for a, cm in arms.items()}})
    return sorted(rows, key=lambda r: -r["n"])


def confusion_view(results: RunResults, samples: list[Sample]) -> dict[str, list[dict[str, Any]]]:
    """arm -> its most confused label pairs, for label tasks with more than MANY_LABELS labels."""
    out = {}
    for name, a in results.ok_arms().items():
        cm = a.confusion_matrix
        if cm and len(cm.labels) > MANY_LABELS:
            out[name] = confused_pairs(cm, [x for x in samples if x.strategy == name])
    return out


def label_curves(results: RunResults, samples: list[Sample]) -> dict[str, LabelScores]:
    """arm -> its answers' gold labels and label probabilities, for the arms that scored every
    label (classification_mode: likelihood); arms with generated answers have none."""
    if not results.labels:
        return {}
    out = {}
    for name in results.ok_arms():
        s = label_scores([(x.label, (x.scores or {}).get("label_probs")) for x in samples if x.strategy == name],
                         results.labels)
        if s is not None and s.curve_labels():
            out[name] = s
    return out


def thresholds_view(results: RunResults, curves: dict[str, LabelScores], config: dict) -> dict[str, ThresholdTable]:
    """arm -> its threshold table, for two-label classification with label probabilities."""
    if results.task != "classification" or not results.labels or len(results.labels) != 2 or not curves:
        return {}
    any_arm = next(iter(curves.values()))
    pos = positive_label(results.labels, [results.labels[k] for k in any_arm.y_true], config.get("positive_label"))
    return {n: t for n, s in curves.items() if (t := threshold_table(s, pos))}


def build(run_dir: Path, weights: dict[str, float] | None = None) -> dict[str, Any]:
    run = RunDir.open(run_dir)
    results, samples, env = run.results(), run.read_samples(), run.env()
    config_text = run.config_text()
    config = run.config() if config_text else {}
    if weights is None:
        weights = (config.get("decision") or {}).get("weights") or {}
    arms = results.ok_arms()
    names = list(results.strategies)
    colors = F.arm_colors(names)
    metric = primary_metric(results)
    binary = [m for m in ("exact_match", "contains", "accuracy", "hit_at_k") if m in headline_metrics(results, 9)]
    paired = {m: [p.to_dict() for p in compare_arms(samples, m, list(arms), seed=0)]
              for m in ([metric] if metric else []) + [b for b in binary if b != metric]}
    d = decide(results, weights)
    return {
        "r": results, "samples": samples, "env": env, "config_text": config_text, "config": config,
        "metric": metric, "heads": headline_metrics(results, 9), "colors": colors,
        "decision": d, "weights": d.weights if d else {}, "criteria_help": CRITERIA_HELP,
        "recommendation": recommendation(results, samples, weights),
        "sensitivity": sensitivity(results, weights) if d and len(d.raw) > 1 else [],
        "paired": paired,
        "breakdown": breakdown(samples, metric, config.get("breakdown_by") or ["category"], list(arms)) if metric else {},
        "disagreements": disagreements(samples, metric, list(arms)) if metric else [],
        "retrieval_split": retrieval_split(samples, metric, list(arms)) if metric else [],
        "confused": confusion_view(results, samples),
        "ensembles": ensemble_verdicts(results, samples, metric),
        "per_label": per_label_recall(results),
        "curves": (curves := label_curves(results, samples)),
        "thresholds": thresholds_view(results, curves, config),
    }


def figures(ctx: dict) -> dict[str, str]:
    r, colors, metric = ctx["r"], ctx["colors"], ctx["metric"]
    arms = r.ok_arms()
    if not arms or not metric:
        return {}
    label = LABELS.get(metric, metric)
    out = {
        "quality_vs_cost": F.quality_scatter(arms, metric, label, colors, x_key="compute_s_per_answer", scale=1000,
                                             x_label="compute seconds per 1,000 queries",
                                             title="Quality vs cost per query", mark_pareto=True),
        "metric_bars": F.metric_bars(arms, [m for m in headline_metrics(r, 7) if m not in UNBOUNDED][:6], LABELS, colors),
        "quality_vs_latency": F.quality_scatter(arms, metric, label, colors, x_key="latency_p50_s",
                                                x_label="p50 latency per answer (s)", title="Quality vs latency"),
    }
    for key, fig in (("hit_at_k", F.hit_at_k_curve(ctx["samples"], colors)),
                     ("latency", F.latency_distribution(ctx["samples"], list(arms), colors)),
                     ("loss", F.loss_curves(arms, colors))):
        if fig:
            out[key] = fig
    if ctx.get("curves"):
        out["roc"] = F.label_curve(ctx["curves"], arms, colors, "roc")
        out["pr"] = F.label_curve(ctx["curves"], arms, colors, "pr")
        out["reliability"] = F.reliability_diagram(ctx["curves"], arms, colors)
    for n, a in arms.items():
        if not a.confusion_matrix:
            continue
        if n in ctx.get("confused", {}):  # many labels: only those of the most confused pairs
            if pairs := ctx["confused"][n]:
                sub = confused_submatrix(a.confusion_matrix, pairs)
                out[f"confusion:{n}"] = F.confusion(sub, f"Most confused labels: {n} ({len(sub.labels)} of "
                                                         f"{len(a.confusion_matrix.labels)})")
        else:
            out[f"confusion:{n}"] = F.confusion(a.confusion_matrix, f"Confusion matrix: {n}")
    return out


# --- terminal -----------------------------------------------------------------

def terminal_table(results: RunResults):
    heads = headline_metrics(results)
    t = Table(title=f"{results.suite} · {results.data.test_scored} test examples · "
                    f"{results.device or '?'}/{results.dtype or '?'}")
    t.add_column("arm", style="bold")
    for m in heads:
        t.add_column(f"{LABELS.get(m, m)}\n(95% CI)", justify="right")
    for c in ("setup s", "p50 s", "1 request s", "tokens in/out"):
        t.add_column(c, justify="right")
    for name, r in results.strategies.items():
        if not r.ok:
            t.add_row(name, *[f"[red]{r.status}[/]"] + [""] * (len(heads) + 3))
            continue
        c, one = r.cost, r.cost.alone_s
        t.add_row(name, *[fmt_ci(r.metrics.get(m), 2) for m in heads], f"{c.setup_s:.1f}",
                  f"{c.latency_p50_s:.2f}", "—" if one is None else f"{one:.2f}",
                  f"{c.prompt_tokens_mean:.0f}/{c.completion_tokens_mean:.0f}")
    return t


# --- documents ------------------------------------------------------------------

def render_markdown(ctx: dict) -> str:
    r, heads = ctx["r"], ctx["heads"]
    lines = [f"# adaptbench: {r.suite}", ""]
    if r.description:
        lines += [r.description.strip(), ""]
    lines += ["**Recommendation.** " + " ".join(ctx["recommendation"]), ""]
    lines += [f"Status: {r.status} · {r.data.test_scored} test examples · generator "
              f"`{r.generator}` on {r.device}/{r.dtype}", ""]
    lines.append("| arm | " + " | ".join(LABELS.get(m, m) for m in heads)
                 + " | setup s | p50 s | p95 s | 1 request s | tokens in/out | model |")
    lines.append("|---" * (len(heads) + 7) + "|")
    for name, a in r.strategies.items():
        if not a.ok:
            lines.append(f"| {name} | {a.status}: {a.error or ''} |")
            continue
        c, one = a.cost, a.cost.alone_s
        lines.append(f"| {name} | " + " | ".join(fmt_ci(a.metrics.get(m)) for m in heads) +
                     f" | {c.setup_s:.1f} | {c.latency_p50_s:.2f} | {c.latency_p95_s:.2f} | "
                     f"{'—' if one is None else f'{one:.2f}'} | "
                     f"{c.prompt_tokens_mean:.0f}/{c.completion_tokens_mean:.0f} | {model_label(a)} |")
    lines += ["", "Means over the test examples with 95% bootstrap confidence intervals. Setup is the one-off cost "
              "(index build, training). Latency p50/p95: for a local model, the wall time of the batch an answer "
              "came in; for an API model, each request's own time. \"1 request\": what one caller waits for one "
              "answer (a local model: a few test questions answered one at a time).", ""]
    if r.majority_baseline:
        mb = r.majority_baseline
        lines += [f"Majority-class baseline: always answering `{mb.label}` (the commonest train label) scores "
                  f"accuracy {mb.accuracy:.3f} on this test split.", ""]
    if ctx["paired"].get(ctx["metric"]):
        lines += [f"Paired differences on {LABELS.get(ctx['metric'], ctx['metric'])} (same examples):", "",
                  "| arm A | arm B | A − B | 95% CI | p | verdict |", "|---|---|---|---|---|---|"]
        for p in ctx["paired"][ctx["metric"]]:
            lines.append(f"| {p['a']} | {p['b']} | {p['diff']:+.3f} | [{p['ci_low']:+.3f}, {p['ci_high']:+.3f}] | "
                         f"{fmt_p(p['p_bootstrap'])} | {'tied' if p['tied'] else ('A better' if p['a_better'] else 'B better')} |")
        lines.append("")
    if ctx.get("ensembles"):
        lines += ["Ensembles:", ""] + [f"- {v}" for v in ctx["ensembles"]] + [""]
    if ctx.get("retrieval_split"):
        lines += retrieval_split_lines(ctx["retrieval_split"], LABELS.get(ctx["metric"], ctx["metric"])) + [""]
    if ctx.get("per_label"):
        arms = list(ctx["per_label"][0]["recall"])
        lines += ["Recall per label (share of each label's test examples answered with it):", "",
                  "| label | test examples | " + " | ".join(arms) + " |", "|---" * (len(arms) + 2) + "|"]
        lines += [f"| {r['label']} | {r['n']} | " + " | ".join("–" if r["recall"][a] is None else f"{r['recall'][a]:.2f}"
                                                           for a in arms) + " |"
                  for r in ctx["per_label"]]
        lines.append("")
    for name, pairs in ctx.get("confused", {}).items():
        lines += [f"Most confused labels of {name} (gold → predicted, count):", ""]
        lines += [f"- {p['gold']} → {p['predicted']}: {p['count']}" for p in pairs] or ["- none"]
        lines.append("")
    for name, t in ctx.get("thresholds", {}).items():
        lines += threshold_lines(name, t) + [""]
    notes = measurement_notes(r)
    if notes:
        lines += ["### Not measured", ""] + [f"- {n}" for n in notes] + [""]
    if r.data.notes:
        lines += ["Data: " + "; ".join(r.data.notes) + ".", ""]
    return "\n".join(lines) + "\n"


def threshold_lines(arm: str, t: ThresholdTable) -> list[str]:
    f = lambda x: "–" if x is None else f"{x:.3f}"  # noqa: E731
    out = [f"Threshold table of {arm}: answer `{t.positive}` when its probability is at least t "
           f"({t.positives} `{t.positive}` and {t.negatives} other test examples):", "",
           "| t | answered positive | precision | recall | F1 | false positive rate | |", "|---|---|---|---|---|---|---|"]
    out += [f"| {r.threshold:.3g} | {r.flagged} | {f(r.precision)} | {f(r.recall)} | {f(r.f1)} | "
            f"{f(r.false_positive_rate)} | {r.note} |" for r in t.rows]
    return out


def retrieval_split_lines(rows: list[dict], label: str) -> list[str]:
    f = lambda x: "" if x is None else f"{x:.3f}"  # noqa: E731
    out = ["Retrieval or reading? Each retrieving arm's answers, split by whether a gold passage was retrieved:", "",
           f"| arm | {label} when retrieved | {label} when missed | answers quoting a passage |", "|---|---|---|---|"]
    for x in rows:
        out.append(f"| {x['arm']} | {f(x['on_hit'])} (n={x['n_hit']}) | {f(x['on_miss'])} (n={x['n_miss']}) | "
                   f"{x['quoted']} of {x['n']} |")
    out += ["", "A low score when retrieved means the model does not use its passages; a low score only when "
            "missed means retrieval is the bottleneck. \"Quoting\": the answer's first 60 characters appear in a "
            "retrieved passage."]
    return out


def measurement_notes(results: RunResults) -> list[str]:
    """Metrics an arm has no value for and why, and judged rows left unmeasured: said out
    loud, because a missing score must never read as a 0 or vanish from an average."""
    out = []
    for name, a in results.strategies.items():
        for m, why in a.not_measured.items():
            out.append(f"{name} · {LABELS.get(m, m)}: not measured: {why}")
        for m, k in a.unmeasured.items():
            n = results.data.test_scored
            if m not in a.not_measured:
                out.append(f"{name} · {LABELS.get(m, m)}: {k} of {n} examples unmeasured (the judge's output could "
                           f"not be scored); the mean is over the other {n - k}")
        j = a.cost.judge if a.cost else None
        if j:
            out.append(f"{name} · judge `{j.model}`: {j.input_tokens:,} prompt + {j.output_tokens:,} completion "
                       f"tokens in {j.seconds:.0f} s" + (f", ${j.usd:.4f}" if j.usd is not None else "")
                       + ("; failed judge calls (after retries): " + ", ".join(
                           f"{k} ×{v}" for k, v in sorted(j.errors.items(), key=lambda kv: -kv[1]))
                          if j.errors else ""))
    return out


def render_html(ctx: dict) -> str:
    # jinja2: imported on first use, not when this module loads
    from jinja2 import Environment, PackageLoader, select_autoescape
    jenv = Environment(loader=PackageLoader("toolkit.reporting", "templates"), autoescape=select_autoescape(["html"]))
    return jenv.get_template("report.html").render(
        **ctx, labels=LABELS, fmt_p=fmt_p, model_label=model_label, fmt_ci=fmt_ci, fmt_mean=fmt_mean,
        fmt_interval=fmt_interval, fmt_s=fmt_s, figures=figures(ctx),
        ok_cost_usd=any(a.cost and a.cost.usd_per_hour is not None for a in ctx["r"].strategies.values()),
        ok_api_usd=any(a.cost and a.cost.api_usd_per_1k_queries is not None for a in ctx["r"].strategies.values()),
        summaries={n: info_summary(a) for n, a in ctx["r"].strategies.items()},
        measurement_notes=measurement_notes(ctx["r"]),
        env_json=json.dumps({**ctx["env"], "inputs": ctx["r"].inputs.model_dump() if ctx["r"].inputs else None},
                            indent=2))


def render_run(run_dir: Path, weights: dict[str, float] | None = None) -> tuple[Path, Path]:
    ctx = build(run_dir, weights)
    md, html = run_dir / "report.md", run_dir / "report.html"
    atomic_write(md, render_markdown(ctx))
    atomic_write(html, render_html(ctx))
    return md, html


def info_summary(r: ArmResult) -> str:
    """One line on what the arm's setup did (training, search, index, pool), from its info."""
    i = r.info
    parts = []
    if i.fine_tuning_job:  # finetune method openai_api: trained by the endpoint's fine-tuning API
        parts.append(f"fine-tuned through {i.endpoint}'s fine-tuning API (job {i.fine_tuning_job}) on "
                     f"{i.train_examples} examples in {i.train_s or 0:.0f} s: {i.fine_tuned_model}"
                     + (" — model reused from cache" if i.cached else ""))
    elif i.train_examples is not None:
        parts.append(training_summary(i))
    if i.metric_for_best_model:
        m = i.metric_for_best_model
        parts.append(f"early stopping and best checkpoint by validation {LABELS.get(m, m)} "
                     f"(best {i.extra(f'best_eval_{m}') or 0:.3f})")
    if i.balance:
        parts.append(balance_summary(i.balance))
    if i.members:
        parts.append(f"{i.ensemble_method} of {', '.join(i.members)}"
                     + (f", weights {i.member_weights}" if i.ensemble_method in ("weighted", "likelihood_mean")
                        and set((i.member_weights or {}).values()) != {1.0} else "")
                     + (" — answers taken: " + ", ".join(f"{m} {k}" for m, k in i.answers_taken.items())
                        if i.answers_taken else ""))
    aug = i.augment
    if aug:
        ex = next((e for e in aug.paraphrase_examples if e.paraphrases), None)
        parts.append(f"{aug.paraphrases_added} paraphrased questions added ({aug.paraphrase_s:.0f} s to write)"
                     + (f", e.g. “{ex.original}” → “{ex.paraphrases[0]}”" if ex else ""))
    if r.perplexity_base and "perplexity" in r.metrics:
        parts.append(f"perplexity of the gold answers: {r.perplexity_base.mean:.2f} under the base model, "
                     f"{r.metrics['perplexity'].mean:.2f} after training")
    if i.trials:
        parts.append(f"search over {len(i.trials)} trials chose {i.chosen_params} (setup includes every trial)")
    if i.stopped_early:
        parts.append(f"stopped early after {i.epochs_run:.1f} epochs")
    if i.chunks is not None:
        where = " on a Chroma server" if i.index_where == "chroma server" else ""
        parts.append(f"index of {i.chunks} chunks{where}"
                     + (f" (HNSW {', '.join(f'{k} {v}' for k, v in i.hnsw.items())})" if i.hnsw else ""))
        u = i.index_update
        if u and not u.get("recorded"):
            parts.append(f"index updated in place: {u.get('added', 0)} documents added, {u.get('changed', 0)} changed, "
                         f"{u.get('deleted', 0)} deleted, {u.get('chunks_embedded', 0)} chunks embedded in "
                         f"{u.get('total_s', 0):.2f} s")
        if i.knowledge_update_s is not None:
            parts.append(f"a changed document absorbed in ≈{i.knowledge_update_s:.2f} s (comparing the index with "
                         "the documents and re-embedding one document's chunks, at the rates this index measured; "
                         "the recommendation's knowledge update)")
    if i.pool_size is not None:
        parts.append(f"pool of {i.pool_size} train examples")
    if i.prompts_over_budget:
        parts.append(f"{i.prompts_over_budget} questions' prompts exceeded max_prompt_tokens: {i.shots_dropped} "
                     "examples dropped, least similar first")
    if i.prompts_over_context:
        parts.append(f"{i.prompts_over_context} questions' prompts with their passages exceeded the model's context of "
                     f"{i.context_length} tokens (by {i.context_tokens_over} in all)")
    return "; ".join(parts)


def balance_summary(b: dict) -> str:
    """finetune balance, in words: how the training labels were evened out."""
    before = ", ".join(f"{k} {v}" for k, v in b.get("before", {}).items())
    if b.get("method") == "class_weight":
        return ("class weights (n / (labels × count)) on the training loss: "
                + ", ".join(f"{k} ×{v:.2f}" for k, v in b.get("weights", {}).items()) + f" (examples per label: {before})")
    per = max(b["after"].values()) if b.get("after") else 0
    verb = "oversampled" if b.get("method") == "oversample" else "undersampled"
    return f"training labels {verb} to {per} per label (before: {before})"


def training_summary(i: ArmInfo) -> str:
    evals = [h["eval_loss"] for h in i.history if "eval_loss" in h and h.get("step", 1) > 0]
    start = f"{i.initial_eval_loss:.3f} before training, then " if i.initial_eval_loss is not None else ""
    how = "full fine-tuning" if i.method == "full" else (i.method or "lora").upper()
    return (f"{how} on {i.train_examples} examples, {i.train_tokens} tokens in {i.train_s:.0f} s "
            f"({i.tokens_per_s or 0:.0f} tok/s, {i.device}/{i.dtype}"
            + (f", {i.processes} processes" if i.processes > 1 else "")
            + (", padding-free" if i.padding_free else "") + ")"
            + (f", validation loss: {start}{', '.join(f'{x:.3f}' for x in evals)}" if evals else "")
            + (" — adapter reused from cache" if i.cached else "")
            + (f"; {i.truncated_examples} training examples were longer than max_seq_length "
               f"({i.extra('max_seq_length')} tokens) and lost {i.truncated_tokens} tokens from their start"
               if i.truncated_examples else ""))
