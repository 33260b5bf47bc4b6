"""Curves from label probabilities, for the report: one-vs-rest ROC and precision-recall
curves averaged over labels, the reliability diagram behind the expected calibration error,
and a binary task's threshold table. scikit-learn computes every per-label curve; what is
written here only averages them on a common grid (the recipe of scikit-learn's multiclass
ROC example) and counts rows per threshold. The areas the report prints are the metrics
(`toolkit.scoring.metrics.prob_metric`), with their bootstrap CIs, not the areas of these
averaged curves."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from toolkit.scoring.metrics import ECE_BINS

GRID = np.linspace(0.0, 1.0, 201)


@dataclass
class LabelScores:
    """One arm's test answers as gold label ids and an (n x labels) probability matrix."""
    labels: list[str]
    y_true: np.ndarray
    probs: np.ndarray

    def curve_labels(self) -> list[int]:
        """Labels with both a positive and a negative example here: only they have a curve."""
        return [k for k in range(len(self.labels)) if 0 < (self.y_true == k).sum() < len(self.y_true)]


def label_scores(rows: list[tuple[str | None, dict | None]], labels: list[str]) -> LabelScores | None:
    """(gold label, label probabilities) per answer -> LabelScores, or None when any answer has
    no probabilities (generated answers) or no gold label, or fewer than two rows."""
    if len(rows) < 2 or any(not p or g not in labels for g, p in rows):
        return None
    y = np.array([labels.index(g) for g, _ in rows])
    probs = np.array([[p.get(l, 0.0) for l in labels] for _, p in rows], dtype=float)
    return LabelScores(labels, y, probs)


def macro_roc(s: LabelScores) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate grid, mean true positive rate over the labels with a curve)."""
    # sklearn: imported on first use, not when this module loads
    from sklearn.metrics import roc_curve
    tprs = []
    for k in s.curve_labels():
        fpr, tpr, _ = roc_curve(s.y_true == k, s.probs[:, k])
        tprs.append(np.interp(GRID, fpr, tpr))
    return GRID, (np.mean(tprs, axis=0) if tprs else np.zeros_like(GRID))


def macro_pr(s: LabelScores) -> tuple[np.ndarray, np.ndarray]:
    """(recall grid, mean interpolated precision over the labels with a curve): a label's
    precision at recall r is its best precision at any recall >= r (the usual interpolation,
    which makes each curve a step that never rises with recall)."""
    # sklearn: imported on first use, not when this module loads
    from sklearn.metrics import precision_recall_curve
    precs = []
    for k in s.curve_labels():
        p, r, _ = precision_recall_curve(s.y_true == k, s.probs[:, k])
        order = np.argsort(r)  # sklearn returns recall descending
        r, p = r[order], np.maximum.accumulate(p[order][::-1])[::-1]
        precs.append(np.array([p[r >= g].max() if (r >= g).any() else 0.0 for g in GRID]))
    return GRID, (np.mean(precs, axis=0) if precs else np.zeros_like(GRID))


@dataclass
class Bin:
    low: float
    high: float
    n: int
    confidence: float  # mean top-label probability in the bin
    accuracy: float    # share of the bin's top labels that are right


def reliability(s: LabelScores, bins: int = ECE_BINS) -> list[Bin]:
    """The top label's probability in equal-width bins against how often it is right: the bins
    whose weighted gaps sum to the ECE metric. Empty bins are left out."""
    conf, pred = s.probs.max(axis=1), s.probs.argmax(axis=1)
    right = (pred == s.y_true).astype(float)
    which = np.minimum((conf * bins).astype(int), bins - 1)
    return [Bin(b / bins, (b + 1) / bins, int((which == b).sum()), float(conf[which == b].mean()),
                float(right[which == b].mean())) for b in range(bins) if (which == b).any()]


def positive_label(labels: list[str], gold: list[str], chosen: str | None = None) -> str:
    """The label a binary threshold table treats as positive: the suite's `positive_label`, or
    else the rarer label among the gold answers (ties: the second label listed), the class a
    threshold is usually tuned for."""
    if chosen in labels:
        return chosen
    counts = [sum(g == l for g in gold) for l in labels]
    return labels[0] if counts[0] < counts[1] else labels[1]


@dataclass
class ThresholdRow:
    threshold: float
    flagged: int  # answers with p(positive) >= threshold
    precision: float | None  # None: nothing flagged
    recall: float
    f1: float
    false_positive_rate: float
    note: str = ""


@dataclass
class ThresholdTable:
    positive: str
    positives: int
    negatives: int
    rows: list[ThresholdRow] = field(default_factory=list)


THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def threshold_table(s: LabelScores, positive: str) -> ThresholdTable | None:
    """Precision, recall, F1 and false-positive rate of "answer `positive` when its probability
    is at least t" for t in 0.1 ... 0.9, plus the threshold with the best F1 (the lowest such t
    from scikit-learn's precision_recall_curve). Binary label sets only; None otherwise or
    when the gold answers hold only one class."""
    # sklearn: imported on first use, not when this module loads
    from sklearn.metrics import precision_recall_curve
    if len(s.labels) != 2:
        return None
    k = s.labels.index(positive)
    y, p = s.y_true == k, s.probs[:, k]
    pos, neg = int(y.sum()), int((~y).sum())
    if not pos or not neg:
        return None

    def row(t: float, note: str = "") -> ThresholdRow:
        hit = p >= t
        tp, fp = int((hit & y).sum()), int((hit & ~y).sum())
        prec = tp / (tp + fp) if tp + fp else None
        rec = tp / pos
        f1 = 2 * prec * rec / (prec + rec) if prec and rec else 0.0
        return ThresholdRow(round(t, 4), int(hit.sum()), prec, rec, f1, fp / neg, note)

    table = ThresholdTable(positive, pos, neg, [row(t, "the arm's own answer" if t == 0.5 else "")
                                                for t in THRESHOLDS])
    prec, rec, th = precision_recall_curve(y, p)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(prec[:-1] + rec[:-1] > 0, 2 * prec[:-1] * rec[:-1] / (prec[:-1] + rec[:-1]), 0.0)
    best = row(float(th[int(np.argmax(f1))]), "best F1 on this test split")
    # a listed threshold that flags the same answers is the same operating point: marked, not repeated
    same = next((r for r in table.rows if r.flagged == best.flagged), None)
    if same is None:
        table.rows.append(best)
        table.rows.sort(key=lambda r: r.threshold)
    else:
        same.note = " · ".join(x for x in (same.note, best.note) if x)
    return table
