"""`run --seeds N`: the whole comparison N times with seeds seed, seed+1, ...

What a seed changes: the split of a single data file, subsampling, random few-shot
choice, paraphrase sampling and the training seed (initialisation of LoRA weights,
data order, dropout). Each repetition is a complete run directory under the parent
(`seed-<s>/`); the parent holds seeds.json and seeds.md with mean ± standard
deviation across seeds per arm and metric. Seeds' CIs measure test-set sampling;
the spread across seeds measures the run-to-run variation that CIs do not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import cluster, preflight
from toolkit.config import LoadedSuite
from toolkit.harness import run_suite, select_arms
from toolkit.progress import log
from toolkit.records import RunResults
from toolkit.runs import RunDir, atomic_write
from toolkit.training import distributed as D


def seeded(loaded: LoadedSuite, seed: int) -> LoadedSuite:
    suite = loaded.suite.model_copy(deep=True)
    shift = seed - loaded.suite.seed
    suite.seed = seed
    suite.data.split.seed = loaded.suite.data.split.seed + shift
    arms = {}
    for name, (stype, cfg) in loaded.arms.items():
        upd = {}
        if getattr(cfg, "seed", None) is not None:
            upd["seed"] = cfg.seed + shift
        if getattr(cfg, "augment", None) is not None:
            upd["augment"] = cfg.augment.model_copy(update={"seed": cfg.augment.seed + shift})
        arms[name] = (stype, cfg.model_copy(update=upd) if upd else cfg)
    return loaded.model_copy(update={"suite": suite, "arms": arms})


def run_seeds(loaded: LoadedSuite, n: int, *, only=None, limit=None, out: Path | None = None,
              reports_root: Path = Path("reports"), on_run=None) -> tuple[Path, dict]:
    """The suite run once per seed; `on_run(run_dir)` after each (the CLI renders its report)."""
    arms = select_arms(loaded, only)
    preflight.check_run(loaded, arms, out, reports_root)  # bad input fails here, before any directory exists
    parent = Path(out) if out else None
    if D.is_main():
        parent = RunDir.create(out, loaded.suite.name + f"-{n}seeds", reports_root, claim="seeds.json").path
    runs = []

    def one(k: int):
        seed = loaded.suite.seed + k
        log(f"[bold]seed {seed}[/] ({k + 1}/{n})")
        return run_suite(seeded(loaded, seed), only=only, limit=limit,
                         out=parent / f"seed-{seed}" if parent else None, models_checked=True)

    for k, (run, results) in cluster.each(list(range(n)), one):  # under --ray: every seed at once
        seed = loaded.suite.seed + k
        if run is None:  # helper process of a distributed launch
            continue
        if on_run is not None:
            on_run(run.path)
        runs.append((seed, run.path, results))
    if not D.is_main():
        return None, {}
    summary = summarise(runs)
    atomic_write(parent / "seeds.json", json.dumps(summary, indent=2))
    atomic_write(parent / "seeds.md", render(summary))
    return parent, summary


def summarise(runs: list[tuple[int, Path, RunResults]]) -> dict[str, Any]:
    arms: dict[str, dict[str, dict]] = {}
    order: list[str] = []
    for seed, path, res in runs:
        order = order or res.metrics_order
        for arm, r in res.strategies.items():
            for m, v in r.metrics.items():
                arms.setdefault(arm, {}).setdefault(m, {"values": [], "seeds": [], "higher_is_better": v.higher_is_better})
                arms[arm][m]["values"].append(v.mean)
                arms[arm][m]["seeds"].append(seed)
    for per in arms.values():
        for m, d in per.items():
            x = np.array(d["values"], dtype=float)
            d["mean"] = float(x.mean())
            d["std"] = float(x.std(ddof=1)) if len(x) > 1 else 0.0
            d["n_seeds"] = len(x)
    tests = [_test_ids(p) for _, p, _ in runs]
    return {"seeds": [s for s, _, _ in runs], "runs": [str(p) for _, p, _ in runs], "metrics_order": order,
            "statuses": {str(s): r.status for s, _, r in runs}, "arms": arms,
            "same_test_set": len(tests) > 1 and all(t == tests[0] for t in tests)}


def _test_ids(run_path: Path) -> frozenset[str]:
    return frozenset(s.id for s in RunDir(run_path).read_samples())


def render(summary: dict) -> str:
    metrics = [m for m in summary["metrics_order"] if any(m in a for a in summary["arms"].values())]
    varied = ("The test examples were the same in every seed (the data's own test split), so the spread comes "
              "from few-shot choice, train subsampling and training alone." if summary.get("same_test_set") else
              "Each seed drew its own split, so the spread includes which examples were tested.")
    lines = [f"# Across {len(summary['seeds'])} seeds ({', '.join(map(str, summary['seeds']))})", "",
             "Mean ± standard deviation of each arm's score across seeds (each seed is a full run: split, "
             "few-shot choice and training seed change where the suite leaves them to chance). " + varied
             + " Per-seed reports: "
             + ", ".join(f"[seed {s}](seed-{s}/report.html)" for s in summary["seeds"]) + ".", "",
             "| arm | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for arm, per in summary["arms"].items():
        cells = [f"{per[m]['mean']:.3f} ± {per[m]['std']:.3f}" if m in per else "–" for m in metrics]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
