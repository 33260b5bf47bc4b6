"""Run-to-run comparison: `adaptbench compare RUN_A RUN_B ...` (the first run is the
baseline) and `adaptbench runs`. Reads run directories only."""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path

import numpy as np

from toolkit.errors import UserError
from toolkit.reporting.decision import primary_metric
from toolkit.runs import RunDir, atomic_write, load_run
from toolkit.scoring.stats import N_BOOTSTRAP, paired_bootstrap, per_example

EXIT_REGRESSION = 3


def unpaired_bootstrap(x: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[float, float, float, float]:
    rng = np.random.default_rng(seed)
    bx = x[rng.integers(0, len(x), (N_BOOTSTRAP, len(x)))].mean(axis=1)
    by = y[rng.integers(0, len(y), (N_BOOTSTRAP, len(y)))].mean(axis=1)
    boot = by - bx
    lo, hi = np.percentile(boot, [2.5, 97.5])
    p = min(1.0, 2 * min(float((boot <= 0).mean()), float((boot >= 0).mean())))
    return float(y.mean() - x.mean()), float(lo), float(hi), p


def compare_runs(paths: list[Path]) -> dict:
    """Per later run, arm and metric: the difference to the baseline with a 95% CI
    (paired on the examples both runs scored, else unpaired), and a regression flag."""
    runs = [(p, *load_run(p)) for p in paths]
    base_path, base, base_samples = runs[0]
    rows = []
    for path, res, samples in runs[1:]:
        for arm, b_arm in base.strategies.items():
            o_arm = res.strategies.get(arm)
            if not b_arm.ok or not o_arm or not o_arm.ok:
                continue
            for metric, bm in b_arm.metrics.items():
                if metric not in o_arm.metrics:
                    continue
                xs = per_example(base_samples, metric).get(arm, {})
                ys = per_example(samples, metric).get(arm, {})
                common = sorted(set(xs) & set(ys))
                if len(common) >= 2:  # the examples both runs scored: paired, means over those
                    x, y = np.array([xs[i] for i in common]), np.array([ys[i] for i in common])
                    d, lo, hi, p = paired_bootstrap(y, x)
                    how = f"paired on {len(common)} shared examples"
                elif xs and ys:
                    x, y = np.array(list(xs.values())), np.array(list(ys.values()))
                    d, lo, hi, p = unpaired_bootstrap(x, y)
                    how = "unpaired: no shared examples"
                else:
                    continue
                hib = bm.higher_is_better
                regression = (hi < 0) if hib else (lo > 0)
                improvement = (lo > 0) if hib else (hi < 0)
                rows.append({"run": str(path), "arm": arm, "metric": metric, "baseline": float(x.mean()), "value": float(y.mean()),
                             "diff": d, "ci_low": lo, "ci_high": hi, "p": p, "n": len(common) if len(common) >= 2 else None,
                             "how": how, "higher_is_better": hib, "regression": regression, "improvement": improvement})
    training = [{"run": str(p), "train": r.data.train, "extra_train": r.data.extra_train} for p, r, _ in runs]
    return {"baseline": str(base_path), "runs": [str(p) for p in paths],
            "suites": [r.suite for _, r, _ in runs], "rows": rows, "training": training}


def training_lines(cmp: dict) -> list[str]:
    """Where each run's training examples came from: how many were added from extra files
    (production feedback exported by `adaptbench logs --export`)."""
    out = []
    for t in cmp.get("training") or []:
        extra = sum(t["extra_train"].values())
        where = ", ".join(f"{n} from {f}" for f, n in t["extra_train"].items())
        out.append(f"{Path(t['run']).name}: {t['train']} training examples"
                   + (f", {extra} of them from production feedback ({where})" if t["extra_train"] else ""))
    return out


def render_compare(cmp: dict, out: Path) -> tuple[Path, Path]:
    # jinja2: imported on first use, not when this module loads
    from jinja2 import Environment, PackageLoader, select_autoescape
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "compare.json", json.dumps(cmp, indent=2))
    lines = ["# adaptbench compare", "", f"Baseline: `{cmp['baseline']}`", "",
             *[f"- {line}" for line in training_lines(cmp)], "",
             "| run | arm | metric | baseline | now | Δ | 95% CI | p | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for r in cmp["rows"]:
        lines.append(f"| {Path(r['run']).name} | {r['arm']} | {r['metric']} | {r['baseline']:.3f} | {r['value']:.3f} | "
                     f"{r['diff']:+.3f} | [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] | {r['p']:.3g} | {verdict(r)} |")
    md = out / "compare.md"
    atomic_write(md, "\n".join(lines) + "\n")
    jenv = Environment(loader=PackageLoader("toolkit.reporting", "templates"), autoescape=select_autoescape(["html"]))
    html = out / "compare.html"
    atomic_write(html, jenv.get_template("compare.html").render(c=cmp, verdict=verdict, name=lambda p: Path(p).name,
                                                                      training=training_lines(cmp)))
    return md, html


def verdict(r: dict) -> str:
    return "REGRESSION" if r["regression"] else ("improved" if r["improvement"] else "no significant change")


def default_out(root: Path = Path("reports")) -> Path:
    return root / f"compare-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def list_runs(root: Path) -> list[dict]:
    out = []
    for d in sorted(root.glob("*/results.json")):
        try:
            r = RunDir(d.parent).results()
        except UserError:  # a damaged or foreign folder is not a run to list
            continue
        metric = primary_metric(r)
        arms = {n: a.metrics[metric].mean for n, a in r.ok_arms().items() if metric in a.metrics}
        out.append({"run": str(d.parent), "suite": r.suite, "status": r.status, "started": r.started,
                    "metric": metric, "arms": {n: v for n, v in arms.items() if not math.isnan(v)},
                    "n": r.data.test_scored})
    return out
