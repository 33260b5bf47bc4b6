"""`adaptbench serve`: a base model (`--model`) or the arms of a run (`RUN_DIR --arm ...`)
behind the OpenAI-compatible API, in the foreground until Ctrl-C. Both modes are the same app
shell (toolkit.serving.app), the same request path (toolkit.serving.handler) and the same
limits; they differ in what answers (toolkit.serving.targets) and in the routes they add.

Ctrl-C (or SIGTERM) stops accepting connections, answers the requests in flight, then closes
the prediction log.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from toolkit.backends.generation import Generator
from toolkit.cache import cache_root
from toolkit.config import GeneratorConfig
from toolkit.errors import UserError
from toolkit.progress import status
from toolkit.serving.app import Limits, build_app, run_server
from toolkit.serving.arms import check_arms, load_arms, parse_arm_specs
from toolkit.serving.endpoints import chat, completions, feedback, fine_tuning, models
from toolkit.serving.engine import Engine
from toolkit.serving.ft_jobs import FineTuning
from toolkit.serving.handler import Handler
from toolkit.serving.log import PredictionLog
from toolkit.serving.targets import ArmTarget, ArmTargets, ModelTarget, ModelTargets


def api_key_from(env: str | None) -> str | None:
    """The bearer token clients must send, from the environment variable `env`."""
    if not env:
        return None
    key = os.environ.get(env)
    if not key:
        raise UserError(f"the environment variable {env} is not set (or empty): it must hold the API key clients "
                        f"send as `Authorization: Bearer KEY`", field="--api-key-env")
    return key


def model_app(engine, name: str, *, api_key: str | None = None, metrics=None, limits: Limits | None = None,
              log=None, jobs_dir: Path | None = None, dtype: str = "auto", quotas=None,
              allowed_hosts: tuple[str, ...] = ()):
    """The app of `serve --model` around an Engine whose first model is the base: chat and
    text completions, /v1/models and, with `jobs_dir`, OpenAI's files and fine-tuning routes
    (app.state.finetuning; close it after). Also what a local judge is served by."""

    limits = limits or Limits(max_queue=engine.max_queue)
    gen = engine.generators[0]
    targets = ModelTargets(name, ModelTarget(name, 0, gen))
    handler = Handler(targets, engine, limits=limits, log=log, metrics=metrics)
    routers = [models.router, chat.router, completions.router] + ([feedback.router] if log is not None else [])
    state = {"handler": handler, "finetuning": None}
    if jobs_dir is not None:
        model_ref = gen.cfg.model

        def register(ft_name: str, base: str, adapter: Path) -> None:
            key = engine.add_adapter(gen, ft_name, adapter)
            targets.add(ModelTarget(ft_name, key, gen, fine_tuned=True, root=name))

        def unregister(ft_name: str) -> None:
            targets.remove(ft_name)
            engine.remove_adapter(ft_name)

        state["finetuning"] = FineTuning(jobs_dir, bases={name: model_ref, model_ref: model_ref}, register=register,
                                         unregister=unregister, dtype=dtype, quotas=quotas)
        routers.append(fine_tuning.router)
    return build_app(title="adaptbench", description="An OpenAI-compatible API in front of a local model.",
                     routers=routers, api_key=api_key, metrics=metrics, limits=limits, model=name,
                     allowed_hosts=allowed_hosts, state=state)


def arm_app(arms: list, weights: dict[str, float], *, engine, name: str, run: str | None = None, log=None,
            metrics=None, api_key: str | None = None, limits: Limits | None = None,
            allowed_hosts: tuple[str, ...] = ()):
    """The app of `serve RUN_DIR --arm`: the arms (toolkit.serving.arms.ServedArm) by name and
    behind the A/B router, with the prediction log and feedback."""

    limits = limits or Limits(max_queue=engine.max_queue)
    targets = ArmTargets(name, [ArmTarget(a, engine.add(a.backend.generator) if a.local else None, weights.get(a.name, 0))
                                for a in arms], weights)
    handler = Handler(targets, engine, limits=limits, log=log, metrics=metrics, run=run)
    return build_app(title="adaptbench", description="The arms of an adaptbench run behind an OpenAI-compatible API.",
                     routers=[models.router, chat.router, completions.router, feedback.router], api_key=api_key,
                     metrics=metrics, limits=limits, allowed_hosts=allowed_hosts, state={"handler": handler})


def serve_model(model: str, *, name: str, host: str, port: int, max_batch: int, max_wait_ms: float,
                dtype: str = "auto", device: str = "auto", api_key: str | None = None, limits: Limits | None = None,
                jobs_dir: Path | None = None, fine_tuning: bool = True, log_path: Path | None = None,
                allowed_hosts: tuple[str, ...] = ()) -> int:
    # prometheus-client: imported on first use, not when this module loads
    from toolkit.serving.metrics import Metrics

    limits = limits or Limits()
    with status(f"loading {model}"):
        gen = Generator.load(GeneratorConfig(model=model, dtype=dtype, device=device))
    metrics = Metrics()
    engine = Engine(gen, max_batch=max_batch, max_wait_ms=max_wait_ms, background=False, max_queue=limits.max_queue,
                    max_batch_tokens=limits.max_batch_tokens, on_batch=metrics.batch.observe)
    log = PredictionLog(log_path) if log_path else None
    app = model_app(engine, name, api_key=api_key, metrics=metrics, limits=limits, log=log, dtype=dtype,
                    jobs_dir=(jobs_dir or cache_root() / "finetuning") if fine_tuning else None,
                    allowed_hosts=allowed_hosts)
    where = f"{gen.device}/{str(gen.model.dtype).replace('torch.', '')}"
    try:
        return run_server(app, engine, host, port, f"serving {name} ({where})"
                          + (" and its fine-tuning API" if fine_tuning else ""), limits)
    finally:
        if app.state.finetuning is not None:
            app.state.finetuning.close()
        if log is not None:
            log.close()


def serve_run(run_dir: Path, arm_specs: list[str], *, name: str | None, host: str, port: int, max_batch: int,
              max_wait_ms: float, log_path: Path | None, api_key: str | None, allow_changes: bool,
              limits: Limits | None = None, allowed_hosts: tuple[str, ...] = ()) -> int:
    # prometheus-client: imported on first use, not when this module loads
    from toolkit.serving.metrics import Metrics

    limits = limits or Limits()
    specs = parse_arm_specs(arm_specs, run_dir)
    by_run: dict[Path, list] = {}
    for sp in specs:
        by_run.setdefault(sp.run, []).append(sp)
    results = None
    for run, group in by_run.items():  # before any model loads
        got, _ = check_arms(run, [sp.arm for sp in group])
        results = results or got
    weights = {sp.served: sp.weight for sp in specs}
    name = name or (results.suite if results else None) or "adaptbench"
    log_path = log_path or Path(run_dir) / "serve.db"
    resources, arms = [], []
    with status(f"rebuilding {', '.join(weights)}"):
        for run, group in by_run.items():
            res, got = load_arms(run, [sp.arm for sp in group], allow_changes=allow_changes)
            resources.append(res)
            for sp, a in zip(group, got):
                a.name = sp.served
                arms.append(a)
        for a in arms:
            if a.local:
                a.backend.generator  # load the weights (and merge the adapter) now, not on the first request
    for a in arms:
        if a.changes:
            print(f"warning: {a.name} is served with a different {', '.join(a.changes)} than it was evaluated with "
                  f"(--allow-changes)", file=sys.stderr, flush=True)
    metrics = Metrics()
    engine = Engine(max_batch=max_batch, max_wait_ms=max_wait_ms, background=False, max_queue=limits.max_queue,
                    max_batch_tokens=limits.max_batch_tokens, on_batch=metrics.batch.observe)
    log = PredictionLog(log_path)
    try:
        app = arm_app(arms, weights, engine=engine, name=name, run=str(Path(run_dir).name), log=log,
                      metrics=metrics, api_key=api_key, limits=limits, allowed_hosts=allowed_hosts)
        shares = app.state.handler.targets.router.shares()
        routes = ", ".join(f"{a} {shares.get(a, 0) * 100:.0f}%" for a in weights)
        banner = (f"serving {', '.join(weights)} of {Path(run_dir).name} as '{name}' ({routes}) · log {log_path}"
                  + (" · API key required" if api_key else ""))
        return run_server(app, engine, host, port, banner, limits)
    finally:
        log.close()
        for res in resources:
            res.close()
