"""Scoring: per-example metrics, then means with bootstrap 95% CIs.

QA: exact match and token F1 (SQuAD normalisation), ROUGE-L (rouge-score),
answer containment, embedding cosine similarity, ragas' non-LLM context recall
and precision when gold documents exist, retrieval hit@k and MRR.
Classification: accuracy, macro precision/recall/F1 (scikit-learn), confusion
matrix, and the share of outputs that map to no label.
Regression: MAE, MSE and R² over the answers that hold a number, and the share
that hold none (parse failures are counted, never scored as 0).

Importing this module is cheap; heavy libraries load inside the functions.
"""

from __future__ import annotations

import re
import string
import warnings
from collections import Counter
from typing import Any

import numpy as np

from toolkit.data import NUMBER, parse_number  # noqa: F401 -- the data layer reads numbers the same way
from toolkit.models import embed
from toolkit.records import MetricValue
from toolkit.scoring.registry import for_task

# task -> metric -> higher is better (from the registry)
KNOWN_METRICS: dict[str, dict[str, bool]] = {t: {n: m.higher_is_better for n, m in for_task(t).items()}
                                             for t in ("qa", "classification", "multiple_choice", "regression")}


def perplexity(nll: list[float], tokens: list[int], *, seed: int = 0) -> "MetricValue":
    """exp(total NLL / total answer tokens) of the gold answers, with a bootstrap CI over examples."""
    a, b = np.asarray(nll, dtype=float), np.asarray(tokens, dtype=float)
    return bootstrap_statistic(len(a), lambda idx: float(np.exp(a[idx].sum() / max(b[idx].sum(), 1.0))),
                               seed=seed, higher_is_better=False)
N_BOOTSTRAP = 1000


# --- QA ----------------------------------------------------------------------
# SQuAD v1.1 normalisation and token F1, as in the official evaluation script.
# Written out (20 lines) because `evaluate.load("squad")` fetches code from the
# hub at run time, which an offline harness cannot do.

def normalize_answer(s: str) -> str:
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(pred: str, gold: str) -> float:
    return float(normalize_answer(pred) == normalize_answer(gold))


def token_f1(pred: str, gold: str) -> float:
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    if not p or not g:
        return float(p == g)
    common = Counter(p) & Counter(g)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def contains(pred: str, gold: str) -> float:
    g = normalize_answer(gold)
    return float(bool(g) and f" {g} " in f" {normalize_answer(pred)} ")


def rouge_l(preds: list[str], golds: list[str]) -> list[float]:
    # rouge-score: imported on first use, not when this module loads
    from rouge_score import rouge_scorer
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(g, p)["rougeL"].fmeasure for p, g in zip(preds, golds)]


def hit_and_rr(retrieved_ids: list[str], gold_ids: list[str]) -> tuple[float, float]:
    gold = set(gold_ids)
    seen: list[str] = []
    for d in retrieved_ids:  # rank by document: several chunks of one document count once
        if d not in seen:
            seen.append(d)
    for rank, d in enumerate(seen, 1):
        if d in gold:
            return 1.0, 1.0 / rank
    return 0.0, 0.0


def ragas_context_scores(retrieved: list[list[str]], reference: list[list[str]]) -> tuple[list[float], list[float]]:
    """ragas NonLLMContextRecall / NonLLMContextPrecisionWithReference (string similarity, no LLM)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # datasets, ragas, openai: imported on first use, not when this module loads
        from ragas import SingleTurnSample
        from ragas.metrics import NonLLMContextPrecisionWithReference, NonLLMContextRecall
    recall_m, prec_m = NonLLMContextRecall(), NonLLMContextPrecisionWithReference()
    rec, prec = [], []
    for r, g in zip(retrieved, reference):
        s = SingleTurnSample(retrieved_contexts=r or [""], reference_contexts=g)
        rec.append(float(recall_m.single_turn_score(s)))
        prec.append(float(prec_m.single_turn_score(s)))
    return rec, prec


# --- classification ------------------------------------------------------------

def map_to_label(output: str, labels: list[str]) -> str | None:
    """Exact (normalised) match first; else the longest label named in the output."""
    norm = {normalize_label(l): l for l in labels}
    out = normalize_label(output)
    if out in norm:
        return norm[out]
    found = [(len(k), -f" {out} ".find(f" {k} "), v) for k, v in norm.items() if k and f" {k} " in f" {out} "]
    return max(found)[2] if found else None


def normalize_label(s: str) -> str:
    return " ".join(re.sub(r"[^\w]+", " ", s.lower().replace("_", " ")).split())


# --- aggregation -------------------------------------------------------------

def _value(mean: float, lo: float, hi: float, n: int, higher_is_better: bool) -> MetricValue:
    return MetricValue(mean=mean, ci_low=lo, ci_high=hi, n=n, higher_is_better=higher_is_better)


def bootstrap_mean(values, *, seed: int = 0, higher_is_better: bool = True) -> MetricValue:
    """Mean with a percentile bootstrap 95% CI (scipy.stats.bootstrap)."""
    # scipy: imported on first use, not when this module loads
    from scipy.stats import bootstrap
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return _value(float("nan"), float("nan"), float("nan"), 0, higher_is_better)
    m = float(x.mean())
    if len(x) < 2 or np.all(x == x[0]):
        return _value(m, m, m, len(x), higher_is_better)
    res = bootstrap((x,), np.mean, n_resamples=N_BOOTSTRAP, method="percentile", random_state=seed, vectorized=True)
    return _value(m, float(res.confidence_interval.low), float(res.confidence_interval.high), len(x), higher_is_better)


def bootstrap_statistic(n: int, statistic, *, seed: int = 0, higher_is_better: bool = True) -> MetricValue:
    """A corpus-level statistic of example indices (e.g. macro F1) with a BCa bootstrap
    95% CI. BCa rather than percentile: resampling drops rare classes, which biases
    macro scores downwards, and percentile intervals then miss the point estimate."""
    # scipy: imported on first use, not when this module loads
    from scipy.stats import bootstrap
    point = float(statistic(np.arange(n)))
    if n < 3:
        return _value(point, point, point, n, higher_is_better)
    with np.errstate(all="ignore"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = bootstrap((np.arange(n),), statistic, n_resamples=N_BOOTSTRAP, method="BCa",
                            random_state=seed, vectorized=False)
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if np.isnan(lo) or np.isnan(hi):  # BCa undefined (e.g. tiny classes): fall back to percentile
        lo, hi = (float(x) for x in np.percentile(res.bootstrap_distribution, [2.5, 97.5]))
    return _value(point, min(lo, point), max(hi, point), n, higher_is_better)


PROB_METRICS = ("roc_auc", "average_precision", "ece")  # from label probabilities (classification_mode: likelihood)
ECE_BINS = 10


def prob_metric(metric: str, y_true: np.ndarray, probs: np.ndarray) -> float:
    """One-vs-rest macro ROC AUC, macro average precision, or expected calibration error (top
    label, 10 equal-width bins) of label probabilities `probs` (n x labels) against gold label
    ids. scikit-learn computes the curves' areas; a label with no positive or no negative
    example among these rows has no curve and is left out of the macro mean, as
    roc_auc_score(multi_class="ovr") would refuse it (tests check the equality with sklearn)."""
    # scipy, sklearn, pandas: imported on first use, not when this module loads
    from sklearn.metrics import average_precision_score, roc_auc_score

    if metric == "ece":
        conf, pred = probs.max(axis=1), probs.argmax(axis=1)
        right = (pred == y_true).astype(float)
        bins = np.minimum((conf * ECE_BINS).astype(int), ECE_BINS - 1)
        return float(sum(abs(right[bins == b].mean() - conf[bins == b].mean()) * (bins == b).mean()
                         for b in range(ECE_BINS) if (bins == b).any()))
    area = roc_auc_score if metric == "roc_auc" else average_precision_score
    per_label = [area(y_true == k, probs[:, k]) for k in range(probs.shape[1])
                 if 0 < (y_true == k).sum() < len(y_true)]
    return float(np.mean(per_label)) if per_label else float("nan")


def label_prob_matrix(rows: list[dict], labels: list[str]) -> np.ndarray | None:
    """Rows' label probabilities as an (n x labels) array, or None where an answer has none
    (generated answers)."""
    if not rows or any(not r.get("label_probs") for r in rows):
        return None
    return np.array([[r["label_probs"].get(l, 0.0) for l in labels] for r in rows], dtype=float)


def macro_prf(y_true: np.ndarray, y_pred: np.ndarray, n_labels: int) -> tuple[float, float, float]:
    """Macro precision/recall/F1 over the labels that occur in the gold labels or the
    predictions (label ids 0..n_labels-1; a prediction < 0 is an output that named no label).

    The definition of scikit-learn's precision_recall_fscore_support(average="macro",
    zero_division=0) with labels = the labels present: a label of the suite that neither the
    gold labels nor the predictions contain is not averaged in as an F1 of 0, which would
    halve the score of a sample that covers half the labels. An unmapped output counts as a
    miss of its gold label but is no class of its own. Tests check the equality with sklearn.
    In numpy because the bootstrap calls it thousands of times and sklearn's input
    validation dominates that cost."""
    k = n_labels + 1
    yp = np.where(y_pred < 0, n_labels, y_pred)
    tp = np.bincount(y_true[y_true == yp], minlength=k)[:n_labels].astype(float)
    pred_n = np.bincount(yp, minlength=k)[:n_labels].astype(float)
    true_n = np.bincount(y_true, minlength=k)[:n_labels].astype(float)
    present = (pred_n + true_n) > 0
    if not present.any():
        return 0.0, 0.0, 0.0
    tp, pred_n, true_n = tp[present], pred_n[present], true_n[present]
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(pred_n > 0, tp / pred_n, 0.0)
        r = np.where(true_n > 0, tp / true_n, 0.0)
        f = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    return float(p.mean()), float(r.mean()), float(f.mean())


# --- scoring: per example (as chunks finish), then aggregated -----------------

def score_qa(examples, preds, *, metrics: list[str], doc_text: dict[str, str] | None,
             embedder: str | None, retrieves: bool) -> list[dict[str, float]]:
    """Per-example scores, aligned with `examples`. NaN marks 'not applicable'
    (e.g. retrieval metrics for an item without gold documents)."""
    nan = float("nan")
    outs, golds = [p.output for p in preds], [e.target for e in examples]
    per: dict[str, list[float]] = {}
    if "exact_match" in metrics:
        per["exact_match"] = [exact_match(p, g) for p, g in zip(outs, golds)]
    if "token_f1" in metrics:
        per["token_f1"] = [token_f1(p, g) for p, g in zip(outs, golds)]
    if "contains" in metrics:
        per["contains"] = [contains(p, g) for p, g in zip(outs, golds)]
    if "rouge_l" in metrics:
        per["rouge_l"] = rouge_l(outs, golds)
    if "embedding_similarity" in metrics and embedder:
        a, b = embed(embedder, outs), embed(embedder, golds)
        per["embedding_similarity"] = [float(x) for x in (a * b).sum(axis=1)]
    has_gold = [bool(e.context_ids) for e in examples]
    if retrieves and any(has_gold):
        if "hit_at_k" in metrics or "mrr" in metrics:
            hr = [hit_and_rr([c.doc_id for c in p.contexts], e.context_ids) if g else (nan, nan)
                  for p, e, g in zip(preds, examples, has_gold)]
            if "hit_at_k" in metrics:
                per["hit_at_k"] = [h for h, _ in hr]
            if "mrr" in metrics:
                per["mrr"] = [r for _, r in hr]
        if doc_text and ("context_recall" in metrics or "context_precision" in metrics):
            rec, prec = ragas_context_scores(
                [[c.text for c in p.contexts] for p in preds],
                [[doc_text[c] for c in e.context_ids if c in doc_text] or [""] for e in examples])
            if "context_recall" in metrics:
                per["context_recall"] = [r if g else nan for r, g in zip(rec, has_gold)]
            if "context_precision" in metrics:
                per["context_precision"] = [r if g else nan for r, g in zip(prec, has_gold)]
    return [{m: per[m][i] for m in per} for i in range(len(examples))]


def aggregate_qa(rows: list[dict[str, float]], *, metrics: list[str], seed: int) -> dict[str, MetricValue]:
    hib = KNOWN_METRICS["qa"]
    out = {}
    for m in metrics:
        if m == "perplexity":
            if rows and "answer_nll" in rows[0]:
                out[m] = perplexity([r["answer_nll"] for r in rows], [r["answer_tokens"] for r in rows], seed=seed)
            continue
        vals = [r[m] for r in rows if m in r]
        if vals and not all(np.isnan(vals)):
            out[m] = bootstrap_mean(vals, seed=seed, higher_is_better=hib[m])
    return out


def score_classification(examples, preds, *, labels: list[str]) -> list[dict[str, Any]]:
    rows = []
    for e, p in zip(examples, preds):
        m = map_to_label(p.output, labels)
        rows.append({"accuracy": float(m == e.label), "unmapped_rate": float(m is None), "mapped_label": m,
                     **({"label_probs": p.label_probs} if getattr(p, "label_probs", None) else {})})
    return rows


def aggregate_classification(rows: list[dict], gold: list[str], *, labels: list[str], metrics: list[str],
                             seed: int) -> tuple[dict[str, MetricValue], dict]:
    # scipy, sklearn, pandas: imported on first use, not when this module loads
    from sklearn.metrics import confusion_matrix

    y_true = np.array([labels.index(g) for g in gold])
    y_pred = np.array([labels.index(r["mapped_label"]) if r["mapped_label"] is not None else -1 for r in rows])
    label_ids = list(range(len(labels)))

    def prf(idx):
        return macro_prf(y_true[idx], y_pred[idx], len(labels))

    out: dict[str, MetricValue] = {}
    for m in metrics:
        if m in ("accuracy", "unmapped_rate"):
            out[m] = bootstrap_mean([r[m] for r in rows], seed=seed, higher_is_better=KNOWN_METRICS["classification"][m])
        elif m in ("macro_precision", "macro_recall", "macro_f1"):
            i = ("macro_precision", "macro_recall", "macro_f1").index(m)
            out[m] = bootstrap_statistic(len(rows), lambda idx, i=i: prf(idx)[i], seed=seed)
    probs = label_prob_matrix(rows, labels)
    for m in metrics:
        if m in PROB_METRICS and probs is not None and not np.isnan(prob_metric(m, y_true, probs)):
            out[m] = bootstrap_statistic(len(rows), lambda idx, m=m: prob_metric(m, y_true[idx], probs[idx]), seed=seed,
                                         higher_is_better=m != "ece")
    cm = confusion_matrix(y_true, np.where(y_pred < 0, len(labels), y_pred), labels=label_ids + [len(labels)])
    return out, {"labels": labels, "columns": labels + ["(unmapped)"], "matrix": cm[: len(labels)].tolist()}


def score_regression(examples, preds) -> list[dict[str, Any]]:
    """Per example: absolute and squared error of the first number in the answer; an
    answer without a number is a parse failure (NaN errors, counted separately)."""
    nan = float("nan")
    rows = []
    for e, p in zip(examples, preds):
        gold, got = float(parse_number(e.target)), parse_number(p.output)
        ok = got is not None and np.isfinite(got)
        rows.append({"mae": abs(got - gold) if ok else nan, "mse": (got - gold) ** 2 if ok else nan,
                     "parse_failure_rate": float(not ok), "parsed_value": got if ok else None, "gold_value": gold})
    return rows


def r_squared(pred: np.ndarray, gold: np.ndarray) -> float:
    """Coefficient of determination, as sklearn.metrics.r2_score (a test checks they agree),
    in numpy because the bootstrap calls it thousands of times."""
    ss_tot = float(((gold - gold.mean()) ** 2).sum())
    ss_res = float(((gold - pred) ** 2).sum())
    if ss_tot == 0:
        return 1.0 if ss_res == 0 else 0.0
    return 1.0 - ss_res / ss_tot


def aggregate_regression(rows: list[dict], *, metrics: list[str], seed: int) -> dict[str, MetricValue]:
    hib = KNOWN_METRICS["regression"]
    ok = [r for r in rows if r["parsed_value"] is not None]
    out: dict[str, MetricValue] = {}
    for m in metrics:
        if m == "parse_failure_rate":
            out[m] = bootstrap_mean([r[m] for r in rows], seed=seed, higher_is_better=False)
        elif m in ("mae", "mse") and ok:
            out[m] = bootstrap_mean([r[m] for r in ok], seed=seed, higher_is_better=hib[m])
        elif m == "r2" and len(ok) >= 2:
            pred = np.array([r["parsed_value"] for r in ok])
            gold = np.array([r["gold_value"] for r in ok])
            out[m] = bootstrap_statistic(len(ok), lambda idx: r_squared(pred[idx], gold[idx]), seed=seed)
    return out


def validation_score(metric: str, outputs: list[str], golds: list[str], labels: list[str] | None) -> float:
    """The mean of one metric over validation answers: what early stopping and the search follow
    when `metric_for_best_model` is not the loss."""
    if metric == "rouge_l":
        return sum(rouge_l(outputs, golds)) / len(golds)
    if metric in ("accuracy", "macro_f1"):
        idx = {lab: i for i, lab in enumerate(labels or [])}
        pred = [idx.get(map_to_label(o, labels), -1) for o in outputs]
        gold = [idx[g] for g in golds]
        if metric == "accuracy":
            return float(np.mean(np.array(pred) == np.array(gold)))
        return macro_prf(np.array(gold), np.array(pred), len(labels))[2]
    fn = {"token_f1": token_f1, "exact_match": exact_match, "contains": contains}[metric]
    return sum(fn(o, g) for o, g in zip(outputs, golds)) / len(golds)
