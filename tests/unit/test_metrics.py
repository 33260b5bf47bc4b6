import math

import numpy as np
import pytest

from toolkit.scoring import metrics as M


def test_squad_normalisation_exact_match():
    assert M.exact_match("The Marrowby.", "marrowby") == 1.0
    assert M.exact_match("In Marrowby", "Marrowby") == 0.0
    assert M.normalize_answer("  An  Answer, here! ") == "answer here"


def test_token_f1_partial_overlap():
    # pred: [36, hours, of, logging]; gold: [36, hours] -> P=0.5, R=1 -> F1=2/3
    assert M.token_f1("36 hours of logging", "36 hours") == pytest.approx(2 / 3)
    assert M.token_f1("nothing", "36 hours") == 0.0
    assert M.token_f1("", "") == 1.0


def test_contains_uses_word_boundaries():
    assert M.contains("It was launched in 2019.", "2019") == 1.0
    assert M.contains("launched in 20190", "2019") == 0.0


def test_rouge_l_from_rouge_score():
    s = M.rouge_l(["the cat sat on the mat", "xyz"], ["the cat sat", "abc"])
    assert 0.6 < s[0] < 0.7 and s[1] == 0.0


def test_hit_and_reciprocal_rank_count_documents_once():
    assert M.hit_and_rr(["a", "a", "b"], ["b"]) == (1.0, 0.5)
    assert M.hit_and_rr(["a", "c"], ["b"]) == (0.0, 0.0)


def test_ragas_non_llm_context_scores():
    rec, prec = M.ragas_context_scores([["The Tern 40 lasts 12 hours.", "unrelated"], ["unrelated"]],
                                       [["The Tern 40 lasts 12 hours."], ["The Tern 40 lasts 12 hours."]])
    assert rec[0] == pytest.approx(1.0) and rec[1] < 0.5
    assert prec[0] > prec[1]


def test_bootstrap_ci_brackets_the_mean_and_is_deterministic():
    x = np.random.default_rng(0).random(200)
    a = M.bootstrap_mean(x, seed=1)
    b = M.bootstrap_mean(x, seed=1)
    assert a.ci_low < a.mean < a.ci_high
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)
    assert a.ci_high - a.ci_low < 0.2


def test_bootstrap_ignores_nan_and_handles_constant():
    v = M.bootstrap_mean([1.0, float("nan"), 1.0])
    assert v.n == 2 and v.mean == v.ci_low == v.ci_high == 1.0
    empty = M.bootstrap_mean([float("nan")])
    assert empty.n == 0 and math.isnan(empty.mean)


def test_map_to_label():
    labels = ["card_arrival", "card_lost", "lost"]
    assert M.map_to_label("card arrival", labels) == "card_arrival"
    assert M.map_to_label("The intent is card_lost.", labels) == "card_lost"  # longest label named wins
    assert M.map_to_label("no idea", labels) is None


class P:  # a prediction, as score_classification reads it
    def __init__(self, o):
        self.output = o


class E:  # an example, as score_classification reads it
    def __init__(self, l):
        self.label = l


def test_classification_aggregate_matches_sklearn():
    from sklearn.metrics import f1_score

    labels = ["a", "b", "c"]
    gold = ["a", "a", "b", "c", "c", "b"]
    outs = ["a", "b", "b", "c", "zzz", "b"]
    rows = M.score_classification([E(g) for g in gold], [P(o) for o in outs], labels=labels)
    agg, cm = M.aggregate_classification(rows, gold, labels=labels,
                                         metrics=["accuracy", "macro_f1", "unmapped_rate"], seed=0)
    y_pred = [o if o in labels else "none" for o in outs]
    assert agg["accuracy"].mean == pytest.approx(4 / 6)
    assert agg["macro_f1"].mean == pytest.approx(f1_score(gold, y_pred, labels=labels, average="macro", zero_division=0))
    assert agg["unmapped_rate"].mean == pytest.approx(1 / 6) and not agg["unmapped_rate"].higher_is_better
    assert cm["matrix"][2] == [0, 0, 1, 1]  # gold c: one right, one unmapped


def test_macro_prf_matches_sklearn_and_ci_contains_point():
    from sklearn.metrics import precision_recall_fscore_support
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 7, 300)
    y_pred = np.where(rng.random(300) < 0.6, y_true, rng.integers(-1, 7, 300))
    ours = M.macro_prf(y_true, y_pred, 7)
    ref = precision_recall_fscore_support(y_true, y_pred, labels=list(range(7)), average="macro", zero_division=0)[:3]
    assert ours == pytest.approx(ref)
    v = M.bootstrap_statistic(300, lambda idx: M.macro_prf(y_true[idx], y_pred[idx], 7)[2], seed=0)
    assert v.ci_low <= v.mean <= v.ci_high and v.ci_high - v.ci_low < 0.2


def test_macro_scores_equal_sklearn_when_the_sample_lacks_labels():
    """A --limit sample (or a small test split) covers only some of the suite's labels:
    labels absent from both gold and predictions must not enter the macro average as 0."""
    from sklearn.metrics import f1_score, precision_score, recall_score

    labels = [f"intent_{i:03d}" for i in range(150)]
    rng = np.random.default_rng(0)
    gold = [labels[i] for i in rng.integers(0, 75, 150)]  # the sample holds only the first 75 intents
    outs = [g if rng.random() < 0.6 else (labels[rng.integers(0, 150)] if rng.random() < 0.8 else "no idea")
            for g in gold]
    rows = M.score_classification([E(g) for g in gold], [P(o) for o in outs], labels=labels)
    agg, _ = M.aggregate_classification(rows, gold, labels=labels, metrics=["macro_precision", "macro_recall",
                                                                            "macro_f1"], seed=0)
    mapped = [r["mapped_label"] or "(unmapped)" for r in rows]
    present = sorted(set(gold) | {m for m in mapped if m != "(unmapped)"})
    assert 75 < len(present) < 150
    for name, fn in (("macro_precision", precision_score), ("macro_recall", recall_score), ("macro_f1", f1_score)):
        ref = fn(gold, mapped, labels=present, average="macro", zero_division=0)
        assert agg[name].mean == pytest.approx(ref, abs=1e-12), name
        assert agg[name].ci_low <= agg[name].mean <= agg[name].ci_high
    # without unmapped outputs, the labels present are exactly what sklearn takes by default
    ok = [i for i, m in enumerate(mapped) if m != "(unmapped)"]
    y_t, y_p = np.array([labels.index(gold[i]) for i in ok]), np.array([labels.index(mapped[i]) for i in ok])
    assert M.macro_prf(y_t, y_p, 150)[2] == pytest.approx(f1_score(y_t, y_p, average="macro", zero_division=0))
    # the bootstrap resamples the same definition: each resample averages over its own labels
    idx = rng.integers(0, len(ok), len(ok))
    assert M.macro_prf(y_t[idx], y_p[idx], 150)[2] == pytest.approx(
        f1_score(y_t[idx], y_p[idx], average="macro", zero_division=0))


def test_regression_scores_count_parse_failures_and_match_sklearn():
    from sklearn.metrics import r2_score

    from toolkit.data import Example, Prediction

    assert M.parse_number("about 1,250.5 mAh") == 1250.5 and M.parse_number("-3e2 K") == -300.0
    assert M.parse_number("no idea") is None
    gold = [10.0, 20.0, 30.0, 40.0, 50.0]
    outs = ["10", "It is 22.", "about 27", "n/a", "55 units"]
    ex = [Example(id=str(i), input="q", target=str(g)) for i, g in enumerate(gold)]
    rows = M.score_regression(ex, [Prediction(id=str(i), output=o) for i, o in enumerate(outs)])
    agg = M.aggregate_regression(rows, metrics=["mae", "mse", "r2", "parse_failure_rate"], seed=0)
    ok = [0, 1, 2, 4]
    pred = np.array([10, 22, 27, 55.0])
    assert agg["parse_failure_rate"].mean == pytest.approx(0.2) and not agg["parse_failure_rate"].higher_is_better
    assert agg["mae"].n == 4 and agg["mae"].mean == pytest.approx(np.mean(np.abs(pred - np.array(gold)[ok])))
    assert agg["mse"].mean == pytest.approx(np.mean((pred - np.array(gold)[ok]) ** 2))
    assert agg["r2"].mean == pytest.approx(r2_score(np.array(gold)[ok], pred))
    assert agg["r2"].ci_low <= agg["r2"].mean <= agg["r2"].ci_high
    assert math.isnan(rows[3]["mae"])  # a failure is unmeasured, not an error of 0


def test_probability_metrics_equal_scikit_learn_on_a_fixed_set():
    """roc_auc and average_precision are scikit-learn's macro one-vs-rest values; ece is the
    top-label expected calibration error over 10 equal-width bins, checked by hand."""
    import numpy as np
    from sklearn.metrics import average_precision_score, roc_auc_score
    from sklearn.preprocessing import label_binarize

    from toolkit.scoring.metrics import prob_metric

    rng = np.random.default_rng(3)
    y = np.array([0, 1, 2, 2, 1, 0, 0, 2, 1, 1, 2, 0, 1, 2, 0, 1])
    raw = rng.random((len(y), 3)) + np.eye(3)[y] * 0.8
    p = raw / raw.sum(axis=1, keepdims=True)
    assert prob_metric("roc_auc", y, p) == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert prob_metric("average_precision", y, p) == pytest.approx(
        average_precision_score(label_binarize(y, classes=[0, 1, 2]), p, average="macro"))
    conf, right = p.max(axis=1), (p.argmax(axis=1) == y)
    ece = sum(abs(right[m].mean() - conf[m].mean()) * m.mean()
              for lo in np.arange(0, 1, 0.1) if (m := (conf >= lo) & (conf < lo + 0.1)).any())
    assert prob_metric("ece", y, p) == pytest.approx(ece)
    # a label with no positive among the rows has no curve: left out, as sklearn would refuse it
    two = y < 2
    q = p[two][:, :2] / p[two][:, :2].sum(axis=1, keepdims=True)
    assert prob_metric("roc_auc", y[two], np.c_[q, np.zeros(two.sum())]) == pytest.approx(roc_auc_score(y[two], q[:, 1]))


def test_curves_reliability_and_thresholds_agree_with_scikit_learn():
    """The averaged ROC / PR curves come from sklearn's per-label curves; the reliability bins'
    weighted gaps are the ECE metric; each threshold row is sklearn's precision and recall of
    "p(positive) >= t", and the best-F1 row is the best over every threshold."""
    import numpy as np
    from sklearn.metrics import auc, f1_score, precision_score, recall_score, roc_auc_score

    from toolkit.scoring import curves as C
    from toolkit.scoring.metrics import prob_metric

    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 120)
    raw = rng.random((120, 3)) + np.eye(3)[y] * 0.6
    p = raw / raw.sum(axis=1, keepdims=True)
    s = C.LabelScores(["a", "b", "c"], y, p)
    x, tpr = C.macro_roc(s)
    assert np.all(np.diff(tpr) >= -1e-12) and tpr[-1] == pytest.approx(1.0)
    # the area under the averaged curve is close to sklearn's macro AUC (the metric the legend prints)
    assert auc(x, tpr) == pytest.approx(roc_auc_score(y, p, multi_class="ovr"), abs=0.01)
    r, prec = C.macro_pr(s)
    assert np.all(np.diff(prec) <= 1e-12) and prec[0] <= 1.0 and prec[-1] > 0
    bins = C.reliability(s)
    assert sum(b.n for b in bins) == 120
    assert sum(abs(b.accuracy - b.confidence) * b.n / 120 for b in bins) == pytest.approx(prob_metric("ece", y, p))

    yb = rng.integers(0, 2, 80)
    pos = np.clip(0.35 + 0.3 * yb + rng.normal(0, 0.2, 80), 0.001, 0.999)
    sb = C.LabelScores(["no", "yes"], yb, np.c_[1 - pos, pos])
    t = C.threshold_table(sb, "yes")
    assert t.positives == int(yb.sum()) and t.negatives == 80 - int(yb.sum())
    for row in t.rows:
        hit = pos >= row.threshold
        assert row.flagged == hit.sum()
        assert row.recall == pytest.approx(recall_score(yb, hit))
        if hit.any():
            assert row.precision == pytest.approx(precision_score(yb, hit))
        assert row.f1 == pytest.approx(f1_score(yb, hit))
    best = max(t.rows, key=lambda r: r.f1)
    assert "best F1" in best.note
    assert best.f1 == pytest.approx(max(f1_score(yb, pos >= th) for th in np.unique(pos)))
    assert next(r for r in t.rows if r.threshold == 0.5).note.startswith("the arm's own answer")
    # the default positive label is the rarer gold label; a chosen one wins
    assert C.positive_label(["no", "yes"], ["no", "no", "yes"]) == "yes"
    assert C.positive_label(["spam", "ham"], ["ham", "ham", "spam"]) == "spam"
    assert C.positive_label(["no", "yes"], ["no", "yes", "yes"], "yes") == "yes"
    assert C.threshold_table(s, "a") is None  # three labels: no threshold table
