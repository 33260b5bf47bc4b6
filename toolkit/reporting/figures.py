"""Figures for the report, as inline SVG strings (no files, no network). One colour
per arm, the same in every figure."""

from __future__ import annotations

import io

import numpy as np

from toolkit.records import ArmResult, ConfusionMatrix, MetricValue, Sample
from toolkit.scoring.curves import LabelScores, macro_pr, macro_roc, reliability

ARM_COLORS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C",
              "#CCB974", "#64B5CD"]


def arm_colors(arms: list[str]) -> dict[str, str]:
    return {n: ARM_COLORS[i % len(ARM_COLORS)] for i, n in enumerate(arms)}


def _plt():
    # matplotlib: imported on first use, not when this module loads
    import matplotlib
    matplotlib.use("Agg")
    # matplotlib: imported on first use, not when this module loads
    import matplotlib.pyplot as plt
    # text.parse_math off: a label such as "$\\foo$" from the data is text, not TeX to parse
    matplotlib.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False,
                                "axes.spines.right": False, "text.parse_math": False})
    return plt


def _svg(fig) -> str:
    plt = _plt()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]


def _yerr(v: MetricValue) -> list[list[float]]:
    return [[max(0.0, v.mean - v.ci_low)], [max(0.0, v.ci_high - v.mean)]]


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Arms no other arm beats on both cost (x, lower better) and quality (y, higher better)."""
    front = []
    for a, (x, y) in points.items():
        if not any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for b, (x2, y2) in points.items() if b != a):
            front.append(a)
    return sorted(front, key=lambda a: points[a][0])


def quality_scatter(arms: dict[str, ArmResult], metric: str, label: str, colors: dict, *, x_key: str, x_label: str,
                    title: str, scale: float = 1.0, mark_pareto: bool = False) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    pts = {}
    for n, r in arms.items():
        if metric not in r.metrics:
            continue
        v, x = r.metrics[metric], getattr(r.cost, x_key) * scale
        pts[n] = (x, v.mean if v.higher_is_better else -v.mean)
        ax.errorbar([x], [v.mean], yerr=_yerr(v), fmt="o", color=colors[n], capsize=4, markersize=8)
        ax.annotate(n, (x, v.mean), textcoords="offset points", xytext=(7, 5), fontsize=9)
    if mark_pareto and len(pts) > 1:
        front = pareto_front(pts)
        ax.plot([pts[a][0] for a in front], [arms[a].metrics[metric].mean for a in front], "--",
                color="#888", lw=1, zorder=0, label="Pareto front (nothing is cheaper and better)")
        ax.legend(fontsize=8, loc="lower right", frameon=False)
    ax.margins(x=0.2, y=0.15)
    ax.set_xlabel(x_label)
    ax.set_ylabel(f"{label} (95% CI)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _svg(fig)


def metric_bars(arms: dict[str, ArmResult], metrics: list[str], labels: dict, colors: dict) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.0))
    width = 0.8 / max(1, len(arms))
    for i, (n, r) in enumerate(arms.items()):
        xs, ys, lo, hi = [], [], [], []
        for j, m in enumerate(metrics):
            if m in r.metrics:
                v = r.metrics[m]
                xs.append(j + i * width)
                ys.append(v.mean)
                e = _yerr(v)
                lo.append(e[0][0])
                hi.append(e[1][0])
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, color=colors[n], label=n)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(metrics))])
    ax.set_xticklabels([labels.get(m, m).replace(" ", "\n", 1) for m in metrics])
    ax.set_ylabel("score (bars: mean, whiskers: 95% CI)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8, ncol=min(5, len(arms)), loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)
    ax.set_title("Metrics per arm")
    ax.grid(axis="y", alpha=0.3)
    return _svg(fig)


def hit_at_k_curve(samples: list[Sample], colors: dict) -> str | None:
    """Share of questions whose gold document is among the first k retrieved documents."""
    by_arm: dict[str, list[tuple[list[str], set]]] = {}
    for s in samples:
        if s.contexts and s.context_ids:
            ranked = []
            for c in s.contexts:
                if c.doc_id not in ranked:
                    ranked.append(c.doc_id)
            by_arm.setdefault(s.strategy, []).append((ranked, set(s.context_ids)))
    if not by_arm:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for arm, rows in by_arm.items():
        kmax = max(len(r) for r, _ in rows)
        ks = list(range(1, kmax + 1))
        hits = [np.mean([bool(set(r[:k]) & g) for r, g in rows]) for k in ks]
        ax.plot(ks, hits, "o-", color=colors.get(arm, "#333"), label=arm)
    ax.set_xlabel("k (documents retrieved)")
    ax.set_ylabel("hit@k (gold document retrieved)")
    ax.set_ylim(0, 1.02)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_title("Retrieval hit@k")
    ax.legend(fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    return _svg(fig)


def latency_distribution(samples: list[Sample], arms: list[str], colors: dict) -> str | None:
    data = {a: [s.latency_s for s in samples if s.strategy == a] for a in arms}
    data = {a: v for a, v in data.items() if v}
    if not data:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 0.5 + 0.5 * len(data)))
    bp = ax.boxplot(list(data.values()), vert=False, patch_artist=True, widths=0.6)
    for patch, a in zip(bp["boxes"], data):
        patch.set_facecolor(colors[a])
        patch.set_alpha(0.75)
    ax.set_yticks(range(1, len(data) + 1))
    ax.set_yticklabels(list(data))
    ax.set_xlabel("latency per answer (s, wall time of its batch)")
    ax.set_title("Latency distribution")
    ax.grid(axis="x", alpha=0.3)
    return _svg(fig)


def loss_curves(arms: dict[str, ArmResult], colors: dict) -> str | None:
    curves = {n: r.info.history for n, r in arms.items() if r.info.history}
    if not curves:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for n, hist in curves.items():
        tr = [(h["epoch"], h["loss"]) for h in hist if "loss" in h]
        ev = [(h["epoch"], h["eval_loss"]) for h in hist if "eval_loss" in h]
        if tr:
            ax.plot(*zip(*tr), "-", color=colors[n], label=f"{n} train", alpha=0.8)
        if ev:
            ax.plot(*zip(*ev), "s--", color=colors[n], label=f"{n} validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (answer tokens)")
    ax.set_title("Training and validation loss")
    ax.legend(fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    return _svg(fig)


def confusion(cm: ConfusionMatrix, title: str) -> str:
    plt = _plt()
    m = np.array(cm.matrix, dtype=float)
    n = len(cm.labels)
    size = min(9.0, 2.5 + 0.28 * n)
    fig, ax = plt.subplots(figsize=(size + 0.6, size))
    ax.imshow(m, cmap="Blues", aspect="auto")
    ticks = n <= 30
    ax.set_xticks(range(len(cm.columns)) if ticks else [])
    ax.set_yticks(range(n) if ticks else [])
    if ticks:
        ax.set_xticklabels(cm.columns, rotation=60, ha="right", fontsize=7)
        ax.set_yticklabels(cm.labels, fontsize=7)
    if n <= 12:
        for i in range(n):
            for j in range(m.shape[1]):
                if m[i, j]:
                    ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set_xlabel("predicted (last column: output maps to no label)")
    ax.set_ylabel("gold")
    ax.set_title(title)
    return _svg(fig)


def length_histogram(lengths: list[int], limits: dict[str, int], title: str) -> str:
    """Tokens per training example, with each training arm's max_seq_length as a line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 2.8))
    ax.hist(lengths, bins=min(40, max(5, len(set(lengths)))), color="#4C72B0", alpha=0.85)
    for i, (arm, limit) in enumerate(sorted(limits.items(), key=lambda kv: kv[1])):
        ax.axvline(limit, color=ARM_COLORS[(i + 3) % len(ARM_COLORS)], linestyle="--", linewidth=1.2,
                   label=f"{arm}: max_seq_length {limit}")
    if limits:
        ax.legend(fontsize=7, frameon=False)
    ax.set_xlabel("tokens per training example (prompt + answer)")
    ax.set_ylabel("examples")
    ax.set_title(title)
    return _svg(fig)


def label_bars(counts: dict[str, dict[str, int]], most: int = 40) -> str:
    """Examples per label in each split, horizontal bars (the most frequent `most` labels)."""
    plt = _plt()
    train = counts.get("train") or next(iter(counts.values()), {})
    labels = [l for l, _ in sorted(train.items(), key=lambda kv: -kv[1])][:most]
    splits = [s for s in ("train", "validation", "test") if counts.get(s)]
    fig, ax = plt.subplots(figsize=(6.4, 0.6 + 0.22 * len(labels) * max(1, len(splits)) ** 0.5))
    h = 0.8 / max(1, len(splits))
    for k, s in enumerate(splits):
        ax.barh([i + k * h for i in range(len(labels))], [counts[s].get(l, 0) for l in labels], height=h,
                color=ARM_COLORS[k], label=s)
    ax.set_yticks([i + h * (len(splits) - 1) / 2 for i in range(len(labels))])
    ax.set_yticklabels([l[:28] for l in labels], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("examples")
    ax.legend(fontsize=7, frameon=False)
    return _svg(fig)


def _metric_note(a: ArmResult, metric: str, label: str) -> str:
    v = a.metrics.get(metric)
    return f" ({label} {v.mean:.2f} [{v.ci_low:.2f}, {v.ci_high:.2f}])" if v else ""


def label_curve(scores: dict[str, LabelScores], arms: dict[str, ArmResult], colors: dict, kind: str) -> str:
    """One-vs-rest ROC (`kind` "roc") or precision-recall ("pr") curves averaged over labels, one
    line per arm; the legend gives the arm's roc_auc / average_precision with its 95% CI."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.8))
    for n, s in scores.items():
        x, y = macro_roc(s) if kind == "roc" else macro_pr(s)
        note = _metric_note(arms[n], "roc_auc", "AUC") if kind == "roc" else _metric_note(arms[n], "average_precision", "AP")
        ax.plot(x, y, "-", color=colors[n], label=n + note)
    if kind == "roc":
        ax.plot([0, 1], [0, 1], ":", color="#999", lw=1, label="chance")
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (one label vs the rest, mean)")
    else:
        ax.set(xlabel="recall", ylabel="precision (interpolated)", title="Precision–recall (one label vs the rest, mean)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False, loc="lower right" if kind == "roc" else "lower left")
    return _svg(fig)


def reliability_diagram(scores: dict[str, LabelScores], arms: dict[str, ArmResult], colors: dict) -> str:
    """How often the top label is right against its probability, in ten bins (dot size: the
    bin's share of answers); the diagonal is perfect calibration."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.8))
    ax.plot([0, 1], [0, 1], ":", color="#999", lw=1, label="perfectly calibrated")
    for n, s in scores.items():
        bins = reliability(s)
        total = sum(b.n for b in bins)
        ax.plot([b.confidence for b in bins], [b.accuracy for b in bins], "-", color=colors[n], alpha=0.7,
                label=n + _metric_note(arms[n], "ece", "ECE"))
        ax.scatter([b.confidence for b in bins], [b.accuracy for b in bins], s=[12 + 200 * b.n / total for b in bins],
                   color=colors[n], alpha=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("probability of the answered label (bin mean)")
    ax.set_ylabel("share answered right")
    ax.set_title("Calibration (reliability diagram)")
    ax.legend(fontsize=7, frameon=False, loc="upper left")
    ax.grid(alpha=0.3)
    return _svg(fig)
