"""The recommendation: a weighted score over criteria, computed from the run record,
plus a sensitivity sweep showing at which weights the choice would change."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Quality dominates unless arms are close: costs separate arms whose quality is similar.
from toolkit.config import DEFAULT_WEIGHTS  # the schema validates them; the decision weighs them
from toolkit.errors import UserError
from toolkit.records import ArmCost, RunResults

CRITERIA_HELP = {
    "quality": "the suite's first metric (higher is better)",
    "latency": "seconds one caller waits per answer (an API arm's p50 per request; a local arm's one-at-a-time p50)",
    "cost_per_query": "$ per answer when every arm is priced, else amortised seconds per answer",
    "setup": "one-off $ (or seconds) to build the arm (index, training)",
    "knowledge_update": "seconds to absorb a changed document (rag: re-embed its chunks; finetune: re-train); "
                        "zero_shot cannot",
    "data_needed": "labelled examples the arm needs",
}


def parse_weights(text: str | None) -> dict[str, float]:
    """'quality=0.7,latency=0.1' -> dict; unknown names are a UserError."""
    if not text:
        return {}
    out = {}
    for part in text.split(","):
        name, _, val = part.partition("=")
        name = name.strip()
        if name not in DEFAULT_WEIGHTS:
            raise UserError(f"unknown criterion '{name}' (choose from: {', '.join(DEFAULT_WEIGHTS)})", field="--weights")
        try:
            out[name] = float(val)
        except ValueError:
            raise UserError(f"'{val}' is not a number", field=f"--weights {name}") from None
        if out[name] < 0:
            raise UserError("weights must be ≥ 0", field=f"--weights {name}")
    return out


def criteria(results: RunResults) -> dict[str, dict[str, float | None]]:
    """arm -> criterion -> raw value (None: the arm cannot do it)."""
    metric = primary_metric(results)
    ok = {n: a for n, a in results.ok_arms().items() if metric in a.metrics}
    unit = cost_unit({n: a.cost for n, a in ok.items()})
    out = {}
    for name, a in ok.items():
        c, info, t = a.cost, a.info, a.type
        br = c.setup_breakdown_s
        m = a.metrics[metric]
        quality = m.mean if m.higher_is_better else -m.mean
        if t in ("rag", "rag_finetune"):
            # a changed document: its chunks re-embedded, at the rates the index measured when built or updated
            update = info.knowledge_update_s if info.knowledge_update_s is not None else br.get("index", c.setup_s)
        elif t == "finetune":
            update = br.get("training", c.setup_s)  # new facts: re-train
        elif t == "few_shot":
            update = br.get("embed_pool", 0.0)  # new solved examples join the pool
        else:
            update = None  # zero_shot cannot absorb anything new
        data = {"zero_shot": 0, "rag": 0}.get(t, info.train_examples if info.train_examples is not None
                                                 else (info.pool_size or 0))
        wait = c.alone_s if c.alone_s is not None else c.latency_p50_s
        out[name] = {"quality": quality, "latency": wait, "cost_per_query": query_cost(c, unit),
                     "setup": setup_cost(c, unit), "knowledge_update": update, "data_needed": float(data)}
    # an ensemble absorbs new knowledge as its members do (the sum of their update times; members that
    # cannot, such as zero_shot, add nothing) and needs the most data any member needs
    for name, a in ok.items():
        if a.type == "ensemble":
            got = [out[m] for m in (a.info.members or []) if m in out]
            ups = [g["knowledge_update"] for g in got if g["knowledge_update"] is not None]
            out[name]["knowledge_update"] = float(sum(ups)) if ups else None
            out[name]["data_needed"] = max((g["data_needed"] for g in got), default=0.0)
    return out


def primary_metric(results: RunResults) -> str | None:
    arms = list(results.ok_arms().values())
    return next((m for m in results.metrics_order if any(m in a.metrics for a in arms)), None)


def normalise(values: dict[str, float | None], higher_is_better: bool, log: bool) -> dict[str, float]:
    """Map to [0, 1], 1 best. Times use log1p: 1 s vs 2 s matters more than 101 s vs 102 s."""
    known = {k: (math.log1p(max(v, 0.0)) if log else v) for k, v in values.items() if v is not None}
    out = {k: 0.0 for k, v in values.items() if v is None}
    if not known:
        return out
    lo, hi = min(known.values()), max(known.values())
    for k, v in known.items():
        s = 1.0 if hi == lo else (v - lo) / (hi - lo)
        out[k] = s if higher_is_better else 1.0 - s
    return out


@dataclass
class Decision:
    winner: str
    scores: dict[str, float]            # arm -> weighted score
    normalised: dict[str, dict[str, float]]
    raw: dict[str, dict[str, float | None]]
    weights: dict[str, float]


def decide(results: RunResults, weights: dict[str, float] | None = None) -> Decision | None:
    raw = criteria(results)
    if not raw:
        return None
    w = {**DEFAULT_WEIGHTS, **(weights or {})}
    total = sum(w.values()) or 1.0
    w = {k: v / total for k, v in w.items()}
    norm_by_c = {c: normalise({a: raw[a][c] for a in raw}, higher_is_better=(c == "quality"),
                              log=c not in ("quality", "data_needed")) for c in DEFAULT_WEIGHTS}
    norm = {a: {c: norm_by_c[c][a] for c in DEFAULT_WEIGHTS} for a in raw}
    scores = {a: sum(w[c] * norm[a][c] for c in w) for a in raw}
    winner = max(scores, key=lambda a: (scores[a], raw[a]["quality"]))
    return Decision(winner, scores, norm, raw, w)


def sensitivity(results: RunResults, weights: dict[str, float] | None = None, steps: int = 21) -> list[dict]:
    """For each criterion: sweep its weight from 0 to 1 (the others keep their proportions)
    and report where the recommended arm changes."""
    base = {**DEFAULT_WEIGHTS, **(weights or {})}
    rows = []
    for c in DEFAULT_WEIGHTS:
        others = {k: v for k, v in base.items() if k != c}
        tot = sum(others.values()) or 1.0
        path = []
        for x in np.linspace(0, 1, steps):
            w = {k: (1 - x) * v / tot for k, v in others.items()}
            w[c] = float(x)
            d = decide(results, w)
            path.append((float(x), d.winner if d else None))
        changes = [(x, win) for i, (x, win) in enumerate(path) if i == 0 or win != path[i - 1][1]]
        rows.append({"criterion": c, "weight": base[c] / (sum(base.values()) or 1.0), "winners": changes})
    return rows


# --- cost over a volume ------------------------------------------------------------

DEFAULT_EXPECTED_QUERIES = 10_000


def cost_unit(costs: dict[str, ArmCost]) -> str:
    """'usd' when every arm has a price (API token prices or compute $/h), else 's' (seconds:
    compute time for a local arm, request time for an API arm)."""
    return "usd" if costs and all(c.priced for c in costs.values()) else "s"


def setup_cost(c: ArmCost, unit: str) -> float:
    return c.setup_usd if unit == "usd" else c.setup_s


def query_cost(c: ArmCost, unit: str) -> float:
    return c.usd_per_1k_queries / 1000 if unit == "usd" else c.compute_s_per_answer


def total_cost(c: ArmCost, n: int, unit: str) -> float:
    """Setup once plus n answers."""
    return setup_cost(c, unit) + n * query_cost(c, unit)


def break_even(cheap_setup: ArmCost, cheap_query: ArmCost, unit: str) -> float | None:
    """Queries after which the arm that is cheap per query has paid back its higher setup;
    None when one arm is cheaper on both counts."""
    ds = setup_cost(cheap_query, unit) - setup_cost(cheap_setup, unit)
    dq = query_cost(cheap_setup, unit) - query_cost(cheap_query, unit)
    if ds <= 0 or dq <= 0:
        return None
    return ds / dq


def fmt_cost(x: float, unit: str) -> str:
    if unit == "usd":
        return f"${x:,.2f}" if x >= 0.01 or x == 0 else f"${x:.4f}"
    return f"{x:.1f} s" if x < 120 else (f"{x / 60:.1f} min" if x < 7200 else f"{x / 3600:.1f} h")

