"""Loading a suite: the file read and validated against the schema (toolkit.config), every
arm's settings against its strategy's config (the registry), the metrics against the metric
registry, and the defaults the registries supply filled in. Every bad input is a UserError
naming file, line and field.

Importing this module stays cheap (no torch, no chromadb): `adaptbench validate`, `ls` and
`--help` go through it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from strategies.registry import BEST_MODEL_METRICS, STRATEGY_TYPES, config_class
from toolkit.config import LABEL_TASKS, LoadedSuite, Suite, arm_generator, line_of, resolve_path  # noqa: F401
from toolkit.errors import UserError, read_utf8
from toolkit.scoring.registry import default_metrics, for_task


def _with_default_metrics(suite: Suite) -> Suite:
    """The metrics the suite names, or its task's defaults from the metric registry."""
    return suite if suite.metrics else suite.model_copy(update={"metrics": default_metrics(suite.task)})


def _no_duplicate_keys(node: yaml.Node | None, path: Path, where: tuple = ()) -> None:
    """YAML lets a later key silently replace an earlier one (two `zero_shot:` arms, say):
    an error here, naming both lines."""
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for k, v in node.value:
            name = str(k.value)
            if name in first:
                field = ".".join((*where, name))
                raise UserError(f"duplicate key '{name}' (first given at line {first[name]}); each key may appear once",
                                file=path, line=k.start_mark.line + 1, field=field)
            first[name] = k.start_mark.line + 1
            _no_duplicate_keys(v, path, (*where, name))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _no_duplicate_keys(v, path, (*where, str(i)))


def _raise_validation(err: ValidationError, path: Path, root: yaml.Node | None, prefix: tuple = ()) -> None:
    first = err.errors()[0]
    loc = prefix + tuple(x for x in first["loc"] if not (isinstance(x, str) and x.startswith("function-")))
    # pydantic adds union-member names (e.g. 'FileSpec') to loc; drop capitalised class names
    loc = tuple(x for x in loc if not (isinstance(x, str) and (x[:1].isupper() or x == "[key]")))
    field = ".".join(str(x) for x in loc) or None
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        section = ".".join(str(x) for x in loc[:-1] if not str(x).isdigit())
        if loc[:1] == ("strategies",):
            section = "strategies"  # the arm's name is not a section; every strategy type is
        msg = (f"unknown field (check the spelling; `adaptbench suite-fields{' ' + section if section else ''}` "
               "lists the fields)")
    elif first["type"] == "missing":
        msg = "required field is missing"
    raise UserError(msg, file=path, line=line_of(root, loc), field=field)


def load_suite(path: str | Path, data_dir: str | Path | None = None) -> LoadedSuite:
    """Read and validate a suite file. Raises UserError with file, line and field. The
    cross-field checks are in the order their errors should surface (the first one wins)."""
    path = Path(path)
    text = read_utf8(path, "suite file")
    try:
        root = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"malformed YAML: {problem}", file=path,
                        line=mark.line + 1 if mark else None) from None
    _no_duplicate_keys(root, path)
    if not isinstance(raw, dict):
        raise UserError("a suite file must be a YAML mapping (name:, task:, data:, strategies: ...)", file=path, line=1)
    try:
        suite = Suite.model_validate(raw)
    except ValidationError as e:
        _raise_validation(e, path, root)

    if data_dir is None:
        data_dir = os.environ.get("ADAPTBENCH_DATA_DIR") or None
    ddir = Path(data_dir).expanduser() if data_dir else None

    arms: dict[str, Any] = {}
    for arm, settings in suite.strategies.items():
        settings = dict(settings)
        stype = settings.pop("type", arm)
        if stype not in STRATEGY_TYPES:
            raise UserError(f"unknown strategy '{stype}' (choose from: {', '.join(STRATEGY_TYPES)})",
                            file=path, line=line_of(root, ("strategies", arm)), field=f"strategies.{arm}")
        try:
            cfg = config_class(stype).model_validate(settings)
        except ValidationError as e:
            _raise_validation(e, path, root, prefix=("strategies", arm))
        if getattr(cfg, "needs_knowledge_base", False) and not suite.kb_path:
            raise UserError(f"strategy '{stype}' retrieves from documents: set `knowledge_base`",
                            file=path, line=line_of(root, ("strategies", arm)), field=f"strategies.{arm}")
        task_of = getattr(cfg, "metric_for_best_model", "loss")
        if BEST_MODEL_METRICS.get(task_of) not in (None, "classification" if suite.task in LABEL_TASKS else suite.task):
            raise UserError(f"metric_for_best_model '{task_of}' is a {BEST_MODEL_METRICS[task_of]} metric; this suite's "
                            f"task is {suite.task}", file=path, line=line_of(root, ("strategies", arm, "metric_for_best_model")),
                            field=f"strategies.{arm}.metric_for_best_model")
        try:
            gen = arm_generator(suite.generator, cfg.generator)
        except ValidationError as e:
            _raise_validation(e, path, root, prefix=("strategies", arm, "generator"))
        if getattr(cfg, "method", None) == "openai_api" and gen.backend != "openai":
            raise UserError("method openai_api fine-tunes through an OpenAI-compatible API: give the arm a generator "
                            "with `backend: openai` (base_url, model, api_key_env)",
                            file=path, line=line_of(root, ("strategies", arm, "method")),
                            field=f"strategies.{arm}.generator.backend")
        if getattr(cfg, "balance", None) and suite.task != "classification":
            raise UserError("balance evens out the labels of a classification task (task: classification)",
                            file=path, line=line_of(root, ("strategies", arm, "balance")),
                            field=f"strategies.{arm}.balance")
        if getattr(cfg, "balance", None) == "class_weight" and getattr(cfg, "method", None) == "openai_api":
            raise UserError("class_weight weights the loss of a model trained here; a fine-tuning API takes no "
                            "weights: use balance oversample or undersample", file=path,
                            line=line_of(root, ("strategies", arm, "balance")), field=f"strategies.{arm}.balance")
        if getattr(cfg, "trains_locally", False) and gen.backend != "transformers":
            raise UserError(f"strategy '{stype}' trains its model here, so its generator needs `backend: transformers`",
                            file=path, line=line_of(root, ("strategies", arm, "generator")),
                            field=f"strategies.{arm}.generator.backend")
        arms[arm] = (stype, cfg)

    for arm, (stype, cfg) in arms.items():
        if getattr(cfg, "combines", False):
            check_ensemble(suite, arms, arm, cfg, path, root)
    suite = _with_default_metrics(suite)
    for i, m in enumerate(suite.metric_names):
        if m not in for_task(suite.task):
            raise UserError(f"unknown metric '{m}' for task '{suite.task}' (choose from: {', '.join(for_task(suite.task))})",
                            file=path, line=line_of(root, ("metrics", i)), field=f"metrics.{i}")
    if suite.task not in LABEL_TASKS and suite.classification_mode != "generate":
        raise UserError("`classification_mode` is only for task: classification or multiple_choice", file=path,
                        line=line_of(root, ("classification_mode",)), field="classification_mode")
    if suite.task not in LABEL_TASKS and suite.labels:
        raise UserError("`labels` is only for task: classification", file=path,
                        line=line_of(root, ("labels",)), field="labels")
    if suite.positive_label is not None and (suite.task != "classification" or
                                             (suite.labels and suite.positive_label not in suite.labels)):
        raise UserError("`positive_label` must be one of the suite's `labels` (task: classification)", file=path,
                        line=line_of(root, ("positive_label",)), field="positive_label")
    return LoadedSuite(suite=suite, path=path, data_dir=ddir, arms=arms)


def check_ensemble(suite: Suite, arms: dict[str, Any], arm: str, cfg, path: Path, root) -> None:
    """An ensemble's members are other, non-ensemble arms of the suite, and its method fits the task."""
    for i, m in enumerate(cfg.members):
        where = {"file": path, "line": line_of(root, ("strategies", arm, "members", i)), "field": f"strategies.{arm}.members.{i}"}
        if m == arm:
            raise UserError("an ensemble cannot be its own member", **where)
        if m not in arms:
            raise UserError(f"'{m}' is not an arm of this suite (arms: {', '.join(a for a in arms if a != arm)})", **where)
        if getattr(arms[m][1], "combines", False):
            raise UserError(f"'{m}' is an ensemble itself: list its members instead", **where)
    where = {"file": path, "line": line_of(root, ("strategies", arm, "method")), "field": f"strategies.{arm}.method"}
    method = cfg.method
    if suite.task == "regression":
        raise UserError("ensembles combine labels or QA answers, not numbers (task: regression)",
                        file=path, line=line_of(root, ("strategies", arm)), field=f"strategies.{arm}")
    if method == "likelihood_mean" and (suite.task not in LABEL_TASKS or suite.classification_mode != "likelihood"):
        raise UserError("likelihood_mean averages label probabilities, which only classification_mode: likelihood "
                        "gives; use majority or weighted", **where)
    if method == "best_of" and suite.task != "qa":
        raise UserError("best_of picks among free-text answers (task: qa); label tasks use majority, weighted or "
                        "likelihood_mean", **where)
    if method == "best_of" and arm_generator(suite.generator, cfg.generator).backend != "transformers":
        raise UserError("best_of scores the answers' likelihood, which needs a local generator (backend: "
                        "transformers); use majority", **where)


def load_resolved(cfg: dict, *, file: Path) -> LoadedSuite:
    """The suite a run ran, from its resolved config.yaml (`file`): what `serve` rebuilds an
    arm from, so a suite file edited since the run does not change what is served. Data
    paths resolve as they did in the run (against the suite file's folder)."""
    if not isinstance(cfg, dict) or not isinstance(cfg.get("strategies"), dict):
        raise UserError("not a resolved suite (no strategies)", file=file)
    raw = {k: v for k, v in cfg.items() if not k.startswith("_")}
    raw["strategies"] = {name: dict(arm) for name, arm in raw["strategies"].items()}
    try:
        suite = Suite.model_validate(raw)
    except ValidationError as e:
        _raise_validation(e, file, None)
    suite = _with_default_metrics(suite)
    arms: dict[str, Any] = {}
    for name, settings in suite.strategies.items():
        settings = dict(settings)
        stype = settings.pop("type", name)
        if stype not in STRATEGY_TYPES:
            raise UserError(f"unknown strategy '{stype}'", file=file, field=f"strategies.{name}.type")
        try:
            arms[name] = (stype, config_class(stype).model_validate(settings))
        except ValidationError as e:
            _raise_validation(e, file, None, prefix=("strategies", name))
    run_dir = Path(file).parent
    suite_file = recorded_path(run_dir, cfg.get("_suite_file"), cfg.get("_suite_file_absolute"), folder=False) or file
    data_dir = (recorded_path(run_dir, cfg.get("_data_dir"), cfg.get("_data_dir_absolute"), folder=True)
                or os.environ.get("ADAPTBENCH_DATA_DIR") or None)
    return LoadedSuite(suite=suite, path=Path(suite_file), arms=arms,
                       data_dir=Path(data_dir).expanduser() if data_dir else None)


def recorded_path(run_dir: Path, relative: str | None, absolute: str | None, *, folder: bool) -> Path | None:
    """A path a run recorded: relative to the run directory (found when the run was moved
    together with its suite and data), else where it was (the run moved alone, on the same
    machine). A suite file found nowhere falls back to a folder that still exists, where its
    data paths resolve. Runs before records version 2 recorded one absolute path."""
    candidates = [(run_dir / p).resolve() if not Path(p).is_absolute() else Path(p) for p in (relative, absolute) if p]
    if folder:
        return next((p for p in candidates if p.is_dir()), None)
    return next((p for p in candidates if p.is_file()), None) or next((p for p in candidates if p.parent.is_dir()), None)
