"""Rebuild arms of a run from its run directory alone, exactly as they were evaluated: the
resolved config.yaml (not the suite file, which may have changed), the same data and
knowledge base, the same retrieval index, the adapter the run kept, the same generation
settings. Each rebuilt arm's fingerprint is checked against the one in results.json."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from strategies.registry import strategy_class
from toolkit.cache import content_hash
from toolkit.data import Query
from toolkit.data.suite_data import load_task_data
from toolkit.errors import UserError
from toolkit.records import RunResults
from toolkit.resources import Resources
from toolkit.runs import RunDir
from toolkit.suites import load_resolved


@dataclass
class ServedArm:
    name: str
    type: str
    strategy: Any               # strategies.base.Strategy, prepared (restored)
    backend: Any                # toolkit.backends.Backend that answers (adapter merged in, if any)
    settings: Any               # toolkit.backends.Settings the run used
    likelihood: bool            # answers by the most likely label (classification_mode: likelihood)
    describe: dict[str, str] = field(default_factory=dict)
    changes: list[str] = field(default_factory=list)  # what differs from the evaluated arm (--allow-changes)
    run: str | None = None      # the run directory's name, logged with every answer

    @property
    def local(self) -> bool:
        return self.backend.batched

    def prompt(self, question: str, request_id: str):
        """The chat prompt and passages this arm builds for a question."""
        prompts, contexts = self.strategy.prompts([Query(id=request_id, input=question)])
        return prompts[0], contexts[0]


@dataclass
class ArmSpec:
    run: Path       # the run directory the arm comes from
    arm: str        # its name in that run
    served: str     # the name clients use (ARM, or ARM@RUN for an arm of another run)
    weight: float


def parse_arm_specs(specs: list[str], run_dir: Path) -> list[ArmSpec]:
    """`--arm ARM[=WEIGHT]` (an arm of RUN_DIR; weight 1 if none) or `--arm OTHER_RUN:ARM[=WEIGHT]`
    (an arm of another run, served as ARM@OTHER_RUN's folder name: two versions side by side)."""
    out = []
    for s in specs:
        head, eq, w = s.rpartition("=") if "=" in s else (s, "", "")
        other, sep, arm = head.rpartition(":")
        arm = arm.strip()
        if not arm:
            raise UserError(f"'{s}' names no arm (ARM or ARM=WEIGHT)", field="--arm")
        try:
            weight = float(w) if eq else 1.0
        except ValueError:
            raise UserError(f"'{s}': the weight must be a number (ARM=WEIGHT, e.g. rag=80)", field="--arm") from None
        if weight < 0 or weight != weight:
            raise UserError(f"'{s}': the weight must not be negative", field="--arm")
        run = Path(other) if sep else Path(run_dir)
        served = arm if not sep or run.resolve() == Path(run_dir).resolve() else f"{arm}@{run.name}"
        out.append(ArmSpec(run, arm, served, weight))
    names = [a.served for a in out]
    if dup := next((n for n in names if names.count(n) > 1), None):
        raise UserError(f"arm '{dup}' is given twice", field="--arm")
    if out and sum(a.weight for a in out) <= 0:
        raise UserError("the weights add up to 0: no arm would get traffic", field="--arm")
    return out


def check_arms(run_dir: Path, names: list[str]) -> tuple[RunResults, dict]:
    """(record, resolved config) of the run, with every named arm finished (checked before
    any model loads)."""
    run = RunDir.open(run_dir)
    results, cfg = run.results(), run.config()
    arms = results.strategies
    for n in names:
        if n not in arms:
            raise UserError(f"'{n}' is not an arm of this run (arms: {', '.join(arms) or 'none'})",
                            file=run_dir, field="--arm")
        if arms[n].type == "ensemble":
            members = arms[n].info.members or []
            raise UserError(f"arm '{n}' is an ensemble ({arms[n].info.ensemble_method} of {', '.join(members)}), which "
                            f"serve cannot answer with yet; serve one of its members, or several side by side "
                            f"(" + " ".join(f"--arm {m}" for m in members) + ")", file=run_dir, field="--arm")
        if not arms[n].ok:
            raise UserError(f"arm '{n}' did not finish in this run ({arms[n].status}: "
                            f"{arms[n].error or 'no result'}); serve an arm that did", file=run_dir, field="--arm")
    return results, cfg


def load_arms(run_dir: Path, names: list[str], *, allow_changes: bool = False) -> tuple[Any, list[ServedArm]]:
    """Rebuild the named arms of a run. Returns (Resources, arms); close the Resources after."""

    run_dir = Path(run_dir)
    results, cfg = check_arms(run_dir, names)
    loaded = load_resolved(cfg, file=run_dir / "config.yaml")
    data = load_task_data(loaded)
    res = Resources(loaded.suite, data.labels, data.kb, None, None)
    served = []
    try:
        for name in names:
            stype, arm_cfg = loaded.arms[name]
            evaluated = results.strategies[name]
            strategy = strategy_class(stype)(name, arm_cfg, res)
            strategy.restore(run_dir, evaluated.info, data.splits.train, data.splits.validation)
            fp = strategy.fingerprint()
            changes: list[str] = []
            if content_hash(fp) != evaluated.fingerprint:
                before = evaluated.fingerprint_parts
                changes = [k for k, v in fp.items() if before.get(k) != content_hash(v, 12)] if before else ["(unknown)"]
                if "config" in changes:
                    # the settings the run had, as they are now: a setting a later adaptbench added is
                    # absent from the run's config.yaml (and at its default), so it does not count
                    recorded = set(cfg["strategies"][name]) - {"type"}
                    then = {k: v for k, v in arm_cfg.model_dump().items() if k in recorded}
                    if content_hash(then, 12) == before.get("config"):
                        changes.remove("config")
            if changes:
                what = ", ".join(changes)
                if not allow_changes:
                    raise UserError(f"arm '{name}' would not be served as it was evaluated: its {what} changed since "
                                    f"the run (data, index, model or precision); run the suite again, or pass "
                                    f"--allow-changes to serve it anyway", file=run_dir, field="--arm")
            be = strategy.backend().uncached  # serving answers every request: no request cache
            suite = loaded.suite
            served.append(ServedArm(name=name, type=stype, strategy=strategy, backend=be, settings=strategy.settings,
                                    likelihood=suite.has_labels and suite.classification_mode == "likelihood",
                                    describe=be.describe(), changes=changes, run=run_dir.name))
    except BaseException:
        res.close()
        raise
    return res, served
