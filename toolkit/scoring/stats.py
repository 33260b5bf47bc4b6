"""Paired comparisons between arms on the same test examples, computed from a run
directory's samples.jsonl: paired bootstrap difference (CI and p-value) for every
metric, and McNemar's exact test for 0/1 metrics. A metric computed over the whole test
set (macro-F1, R², perplexity) is compared by resampling examples: each resample
recomputes it for both arms on the same examples."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import numpy as np

from toolkit.records import Sample
from toolkit.scoring.metrics import PROB_METRICS, macro_prf, prob_metric, r_squared
from toolkit.scoring.registry import METRICS

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
    higher_is_better: bool = True

    @property
    def a_better(self) -> bool:
        return not self.tied and (self.diff > 0) == self.higher_is_better

    @property
    def tied(self) -> bool:
        return self.ci_low <= 0.0 <= self.ci_high

    def to_dict(self) -> dict:
        return {**asdict(self), "tied": self.tied, "a_better": self.a_better}


def per_example(samples: list[Sample], metric: str) -> dict[str, dict[str, float]]:
    """arm -> example id -> score (NaN and missing left out)."""
    out: dict[str, dict[str, float]] = {}
    for s in samples:
        v = s.score(metric)
        if v is not None:
            out.setdefault(s.strategy, {})[s.id] = v
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
    # scipy: imported on first use, not when this module loads
    from scipy.stats import binomtest
    b = int(((x == 1) & (y == 0)).sum())
    c = int(((x == 0) & (y == 1)).sum())
    return 1.0 if b + c == 0 else float(binomtest(min(b, c), b + c, 0.5).pvalue)


def compare_arms(samples: list[Sample], metric: str, arms: list[str] | None = None, *, seed: int = 0) -> list[Paired]:
    m = METRICS.get(metric)
    hib = m.higher_is_better if m else True
    if m is not None and m.level == "corpus":
        return compare_corpus(samples, metric, arms, seed=seed, higher_is_better=hib)
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
        out.append(Paired(a, b, metric, len(ids), diff, lo, hi, p, mcnemar(x, y) if binary else None, hib))
    return out


def corpus_statistic(metric: str, rows: list[Sample]):
    """For a corpus-level metric: a function of example indices -> the metric over those rows
    of one arm, or None when samples.jsonl lacks what it needs (older runs)."""
    sc = [r.scores for r in rows]
    if metric in ("macro_precision", "macro_recall", "macro_f1"):
        if any("mapped_label" not in s for s in sc) or any(r.label is None for r in rows):
            return None
        names = sorted({r.label for r in rows} | {s["mapped_label"] for s in sc if s["mapped_label"] is not None})
        idx = {n: i for i, n in enumerate(names)}
        gold = np.array([idx[r.label] for r in rows])
        pred = np.array([idx[s["mapped_label"]] if s["mapped_label"] is not None else -1 for s in sc])
        k = ("macro_precision", "macro_recall", "macro_f1").index(metric)
        return lambda i: macro_prf(gold[i], pred[i], len(names))[k]
    if metric in PROB_METRICS:
        if any(not isinstance(s.get("label_probs"), dict) or not s["label_probs"] for s in sc) or \
                any(r.label is None for r in rows):
            return None
        names = sorted({r.label for r in rows} | {k for s in sc for k in s["label_probs"]})
        gold = np.array([names.index(r.label) for r in rows])
        probs = np.array([[s["label_probs"].get(n, 0.0) for n in names] for s in sc], dtype=float)
        return lambda i: prob_metric(metric, gold[i], probs[i])
    if metric == "perplexity":
        if any(not isinstance(s.get("answer_nll"), (int, float)) or not s.get("answer_tokens") for s in sc):
            return None
        nll = np.array([s["answer_nll"] for s in sc], dtype=float)
        tok = np.array([s["answer_tokens"] for s in sc], dtype=float)
        return lambda i: float(np.exp(nll[i].sum() / tok[i].sum()))
    if metric == "r2":
        if any("gold_value" not in s for s in sc):
            return None
        pred = np.array([s.get("parsed_value") if s.get("parsed_value") is not None else np.nan for s in sc], dtype=float)
        gold = np.array([s["gold_value"] for s in sc], dtype=float)

        def r2(i):
            ok = i[~np.isnan(pred[i])]
            return r_squared(pred[ok], gold[ok]) if len(ok) >= 2 else float("nan")
        return r2
    return None


def compare_corpus(samples: list[Sample], metric: str, arms: list[str] | None = None, *, seed: int = 0,
                   higher_is_better: bool = True) -> list[Paired]:
    """Paired bootstrap of a corpus-level metric: the same resampled examples for both arms."""
    by_arm: dict[str, dict[str, Sample]] = {}
    for s in samples:
        by_arm.setdefault(s.strategy, {})[s.id] = s
    names = [a for a in (arms or list(by_arm)) if a in by_arm]
    out = []
    for a, b in itertools.combinations(names, 2):
        ids = sorted(set(by_arm[a]) & set(by_arm[b]))
        fa = corpus_statistic(metric, [by_arm[a][i] for i in ids]) if ids else None
        fb = corpus_statistic(metric, [by_arm[b][i] for i in ids]) if ids else None
        if fa is None or fb is None:
            continue
        n = len(ids)
        every = np.arange(n)
        diff = fa(every) - fb(every)
        rng = np.random.default_rng(seed)
        boot = np.array([fa(i) - fb(i) for i in rng.integers(0, n, (N_BOOTSTRAP, n))])
        boot = boot[~np.isnan(boot)]
        if not len(boot) or diff != diff:
            continue
        lo, hi = np.percentile(boot, [2.5, 97.5])
        p = 1.0 if np.all(boot == 0) else min(1.0, 2 * min(float((boot <= 0).mean()), float((boot >= 0).mean())))
        out.append(Paired(a, b, metric, n, float(diff), float(min(lo, diff)), float(max(hi, diff)), p, None,
                          higher_is_better))
    return out
