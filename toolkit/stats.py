"""Paired comparisons between arms on the same test examples, computed from a run
directory's samples.jsonl: paired bootstrap difference (CI and p-value) for every
metric, and McNemar's exact test for 0/1 metrics."""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import numpy as np

N_BOOTSTRAP = 2000


@dataclass
class Paired:
    a: str
    b: str
    metric: str
    n: int
    diff: float          # mean(a) - mean(b) on examples both arms scored
    ci_low: float
    ci_high: float
    p_bootstrap: float
    p_mcnemar: float | None = None  # only for 0/1 metrics

    @property
    def tied(self) -> bool:
        return self.ci_low <= 0.0 <= self.ci_high

    def to_dict(self) -> dict:
        return {**asdict(self), "tied": self.tied}


def per_example(samples: list[dict], metric: str) -> dict[str, dict[str, float]]:
    """arm -> example id -> score (NaN and missing left out)."""
    out: dict[str, dict[str, float]] = {}
    for s in samples:
        v = (s.get("scores") or {}).get(metric)
        if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
            out.setdefault(s["strategy"], {})[s["id"]] = float(v)
    return out


def paired_bootstrap(x: np.ndarray, y: np.ndarray, *, seed: int = 0) -> tuple[float, float, float, float]:
    d = x - y
    n = len(d)
    if n == 0:
        return float("nan"), float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, n, (N_BOOTSTRAP, n))].mean(axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    # two-sided p: how often the resampled difference lands on the other side of zero
    p = min(1.0, 2 * min(float((boot <= 0).mean()), float((boot >= 0).mean())))
    if np.all(d == 0):
        p = 1.0
    return float(d.mean()), float(lo), float(hi), p


def mcnemar(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import binomtest
    b = int(((x == 1) & (y == 0)).sum())
    c = int(((x == 0) & (y == 1)).sum())
    return 1.0 if b + c == 0 else float(binomtest(min(b, c), b + c, 0.5).pvalue)


def compare_arms(samples: list[dict], metric: str, arms: list[str] | None = None, *, seed: int = 0) -> list[Paired]:
    scores = per_example(samples, metric)
    names = [a for a in (arms or list(scores)) if a in scores]
    out = []
    for a, b in itertools.combinations(names, 2):
        ids = sorted(set(scores[a]) & set(scores[b]))
        if not ids:
            continue
        x = np.array([scores[a][i] for i in ids])
        y = np.array([scores[b][i] for i in ids])
        diff, lo, hi, p = paired_bootstrap(x, y, seed=seed)
        binary = bool(np.isin(np.concatenate([x, y]), [0.0, 1.0]).all())
        out.append(Paired(a, b, metric, len(ids), diff, lo, hi, p, mcnemar(x, y) if binary else None))
    return out
