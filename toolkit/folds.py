"""`run --folds K`: k-fold cross-validation of every arm on the suite's pooled examples.

The train, validation and test examples are pooled and cut into K folds (stratified by label
for label tasks, seeded by the suite's seed, with every copy of a question in one fold:
scikit-learn's StratifiedGroupKFold / GroupKFold). Fold k is the test split of run
`fold-<k>/`, a complete run directory whose train split is the other folds (less a validation
split of the suite's validation size, when it has one) plus the data.extra_train rows, which
train every fold and are never tested (less those asking a question the fold tests). Every
example is tested exactly once, so the folds' answers together are one pooled test set: the
parent's folds.json and folds.md give each arm's mean ± standard deviation across folds and
the pooled estimate with its bootstrap CI, and pair the arms on the pooled examples.

Each fold is its own run, and what it computes is cached by content (adapters, answers), so
an interrupted K-fold run resumes: the same command with the same `--out` keeps the folds that
finished (plan.json records which examples each fold tests) and reruns only the others.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import cluster, preflight
from toolkit.cache import content_hash
from toolkit.config import LoadedSuite
from toolkit.data import Example, Splits, normalize_text, stratify_ok
from toolkit.errors import UserError
from toolkit.harness import run_suite, select_arms
from toolkit.progress import log
from toolkit.records import MetricValue, RunResults, Sample
from toolkit.runs import RunDir, atomic_write
from toolkit.scoring.metrics import bootstrap_mean, bootstrap_statistic
from toolkit.scoring.registry import METRICS
from toolkit.scoring.stats import compare_arms, corpus_statistic
from toolkit.training import distributed as D

PLAN = "plan.json"


def fold_ids(pool: list[Example], k: int, *, seed: int, stratify: bool) -> tuple[list[list[str]], str]:
    """The example ids each fold tests, and how the folds were cut (a note for the report).
    Examples asking the same question (after normalising case, spacing and punctuation) stay
    in one fold, so no fold trains on a copy of a question it tests (scikit-learn's
    StratifiedGroupKFold / GroupKFold with the normalised question as the group)."""
    # scipy, sklearn, pandas: imported on first use, not when this module loads
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    labels = [e.label for e in pool]
    groups = [normalize_text(e.input) for e in pool]
    counts = Counter(labels)
    by_label = stratify and None not in counts and min(counts.values()) >= k
    cutter = (StratifiedGroupKFold(k, shuffle=True, random_state=seed) if by_label
              else GroupKFold(k, shuffle=True, random_state=seed))
    folds = [[pool[i].id for i in test]
             for _, test in cutter.split(np.zeros(len(pool)), labels if by_label else None, groups)]
    how = (f"{k} folds stratified by label" if by_label else
           f"{k} folds, not stratified (a label has fewer than {k} examples)" if stratify else f"{k} folds")
    return folds, how + f", seed {seed}"


def fold_splits(pool: list[Example], test_ids: list[str], n_val: int, *, seed: int, stratify: bool,
                extra: list[Example] = ()) -> Splits:
    """Fold's splits: its test ids; the other examples as train, less n_val for validation, plus
    the extra training rows whose question the fold does not test."""
    # scipy, sklearn, pandas: imported on first use, not when this module loads
    from sklearn.model_selection import train_test_split

    held = set(test_ids)
    test = [e for e in pool if e.id in held]
    rest = [e for e in pool if e.id not in held]
    val: list[Example] = []
    if n_val and len(rest) > n_val:
        labels = [e.label for e in rest]
        strat = labels if stratify and stratify_ok(labels, n_val) else None
        rest, val = train_test_split(rest, test_size=n_val, random_state=seed, stratify=strat)
    tested = {normalize_text(e.input) for e in test}
    return Splits(rest + [e for e in extra if normalize_text(e.input) not in tested], val, test)


def run_folds(loaded: LoadedSuite, k: int, *, only=None, out: Path | None = None,
              reports_root: Path = Path("reports"), on_run=None) -> tuple[Path, dict]:
    """Every selected arm on each of K folds; `on_run(run_dir)` after each fold (the CLI renders
    its report). Returns the parent folder and the summary."""
    if k < 2:
        raise UserError("must be at least 2", field="--folds")
    if D.is_distributed():  # each process would claim its own parent folder
        raise UserError("cannot run under a distributed launcher: run it in one process (each fold's training "
                        "can still use the GPUs of a launch of its own)", field="--folds")
    arms = select_arms(loaded, only)
    resuming = out is not None and (Path(out) / PLAN).is_file()  # its folder is checked against its plan below
    # bad input fails here, before any directory exists
    data = preflight.check_run(loaded, arms, None if resuming else out, reports_root)
    s = loaded.suite
    # data.extra_train rows (production feedback) train every fold and are never tested
    sources = set(data.extra_train)
    extra = [e for e in data.splits.train if (e.metadata or {}).get("source") in sources]
    extra_ids = {e.id for e in extra}
    pool = [e for e in data.splits.train if e.id not in extra_ids] + data.splits.validation + data.splits.test
    if len(pool) < 2 * k:
        raise UserError(f"{len(pool)} examples cannot make {k} folds of at least 2", field="--folds")
    folds, how = fold_ids(pool, k, seed=s.seed, stratify=s.has_labels)
    n_val = len(data.splits.validation)
    plan = {"suite": s.name, "folds": k, "seed": s.seed, "how": how, "validation_size": n_val,
            "arms": list(arms), "suite_hash": content_hash(without_scheduling(loaded.suite.model_dump(mode="json"))),
            "data_hash": content_hash([(e.id, e.input, e.target, e.label, e.context_ids) for e in pool + extra]),
            "test_ids": folds}
    parent = resume_or_claim(out, plan, loaded, reports_root)
    log(f"[bold]{s.name}[/]: {len(pool)} examples pooled into {how} · run dir {parent}")
    runs, todo = [], []
    for i, ids in enumerate(folds):
        path = parent / f"fold-{i}"
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            raise UserError("is not a fold folder of this run; move it away to resume", file=path, field="--out")
        done = finished(path, list(arms), i)
        if done is not None:
            log(f"[bold]fold {i + 1}/{k}[/]: finished before, kept ({path})")
            if on_run is not None and not (path / "report.html").exists():  # killed while its report was written
                on_run(path)
            runs.append((i, path, done))
            continue
        if path.exists():  # an interrupted fold of this run: its answers are in the cache, the folder is redone
            shutil.rmtree(path)
        todo.append((i, ids, path))

    def one(job):
        i, ids, path = job
        log(f"[bold]fold {i + 1}/{k}[/]: {len(ids)} test examples")
        splits = fold_splits(pool, ids, n_val, seed=s.seed + i, stratify=s.has_labels, extra=extra)
        splits.notes = data.splits.notes + [f"fold {i + 1} of {how}"]
        return run_suite(loaded, only=only, out=path, models_checked=True,
                         data=replace(data, splits=splits), fold={"index": i, "of": k, "how": how})

    for (i, _, _), (run, results) in cluster.each(todo, one):  # under --ray: every fold at once
        if on_run is not None:
            on_run(run.path)
        runs.append((i, run.path, results))
    runs.sort(key=lambda r: r[0])
    summary = summarise(runs, how)
    atomic_write(parent / "folds.json", json.dumps(summary, indent=2))
    atomic_write(parent / "folds.md", render(summary))
    return parent, summary


def without_scheduling(suite: dict) -> dict:
    """The suite as the plan hashes it: an arm's `ray:` says where it runs, not what it is, so
    changing it does not stop a resume."""
    return {**suite, "strategies": {n: {k: v for k, v in a.items() if k != "ray"}
                                    for n, a in (suite.get("strategies") or {}).items()}}


def resume_or_claim(out: Path | None, plan: dict, loaded: LoadedSuite, reports_root: Path) -> Path:
    """A new parent folder holding plan.json, or (the same --out again) the folder of an
    interrupted run of the same plan, which resumes. Anything else in the folder is refused."""
    if out is not None and (Path(out) / PLAN).is_file():
        try:
            before = json.loads((Path(out) / PLAN).read_text())
        except (OSError, ValueError):
            before = None
        if before != plan:
            raise UserError("holds a k-fold run of another suite, data, --folds or arms; give a new or empty folder "
                            "(the same command with the same --out resumes an interrupted run)",
                            file=out, field="--out")
        if (Path(out) / "folds.json").exists():
            raise UserError("holds a finished k-fold run; give a new or empty folder", file=out, field="--out")
        return Path(out)
    parent = RunDir.create(out, loaded.suite.name + f"-{plan['folds']}folds", reports_root, claim=PLAN).path
    atomic_write(parent / PLAN, json.dumps(plan))
    return parent


def finished(path: Path, arms: list[str], index: int) -> RunResults | None:
    """A fold's record when it is fold `index` of this plan and finished with every arm (so it
    is kept on resume), else None."""
    try:
        res, fold = RunDir(path).results(), (RunDir(path).config().get("_fold") or {})
    except Exception:  # absent, half-written or unreadable: the fold is run again
        return None
    return res if res.status == "success" and list(res.strategies) == arms and fold.get("index") == index else None


def pooled(samples: list[Sample], metric: str, seed: int = 0) -> MetricValue | None:
    """One arm's metric over the answers of every fold (each example once), with its CI."""
    m = METRICS.get(metric)
    if m is None:
        return None
    if m.level == "corpus":
        fn = corpus_statistic(metric, samples)
        if fn is None or len(samples) < 2:
            return None
        value = bootstrap_statistic(len(samples), fn, seed=seed, higher_is_better=m.higher_is_better)
        return None if value.mean != value.mean else value
    vals = [v for s in samples if isinstance(v := s.scores.get(metric), (int, float)) and v == v]
    return bootstrap_mean(vals, seed=seed, higher_is_better=m.higher_is_better) if vals else None


def summarise(runs: list[tuple[int, Path, RunResults]], how: str) -> dict[str, Any]:
    arms: dict[str, dict[str, dict]] = {}
    order: list[str] = []
    samples: list[Sample] = []
    for i, path, res in runs:
        order = order or res.metrics_order
        samples += RunDir(path).read_samples()
        for arm, r in res.strategies.items():
            for m, v in r.metrics.items():
                d = arms.setdefault(arm, {}).setdefault(m, {"values": [], "higher_is_better": v.higher_is_better})
                d["values"].append(v.mean)
    by_arm: dict[str, list[Sample]] = {}
    for x in samples:
        by_arm.setdefault(x.strategy, []).append(x)
    for arm, per in arms.items():
        for m, d in per.items():
            x = np.array(d["values"], dtype=float)
            d["mean"], d["std"], d["n_folds"] = float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0, len(x)
            p = pooled(by_arm.get(arm, []), m)
            d["pooled"] = p.model_dump() if p else None
    primary = next((m for m in order if any(m in per for per in arms.values())), None)
    paired = [p.to_dict() for p in compare_arms(samples, primary, list(arms), seed=0)] if primary else []
    return {"folds": len(runs), "how": how, "runs": [p.name for _, p, _ in runs], "metrics_order": order,
            "statuses": {str(i): r.status for i, _, r in runs}, "pooled_examples": len({x.id for x in samples}),
            "arms": arms, "primary": primary, "paired": paired}


def render(summary: dict) -> str:
    metrics = [m for m in summary["metrics_order"] if any(m in a for a in summary["arms"].values())]
    lines = [f"# {summary['folds']}-fold cross-validation ({summary['how']})", "",
             f"Each arm ran once per fold; every one of the {summary['pooled_examples']} pooled examples was a test "
             "example exactly once. Per metric: mean ± standard deviation across folds, then the pooled estimate "
             "over all folds' answers with its 95% bootstrap CI. Per-fold reports: "
             + ", ".join(f"[{r}]({r}/report.html)" for r in summary["runs"]) + ".", "",
             "| arm | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for arm, per in summary["arms"].items():
        cells = []
        for m in metrics:
            d = per.get(m)
            if not d:
                cells.append("–")
                continue
            p = d.get("pooled")
            cells.append(f"{d['mean']:.3f} ± {d['std']:.3f}"
                         + (f"; pooled {p['mean']:.3f} [{p['ci_low']:.3f}, {p['ci_high']:.3f}]" if p else ""))
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    if summary.get("paired"):
        lines += ["", f"Paired differences on {summary['primary']} over the pooled examples:", "",
                  "| arm A | arm B | A − B | 95% CI | verdict |", "|---|---|---|---|---|"]
        for p in summary["paired"]:
            verdict = "tied" if p["tied"] else ("A better" if p["a_better"] else "B better")
            lines.append(f"| {p['a']} | {p['b']} | {p['diff']:+.3f} | [{p['ci_low']:+.3f}, {p['ci_high']:+.3f}] | "
                         f"{verdict} |")
    return "\n".join(lines) + "\n"
