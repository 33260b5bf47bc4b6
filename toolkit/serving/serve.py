"""`adaptbench serve`: a base model (`--model`) or the arms of a run (`RUN_DIR --arm ...`)
behind the OpenAI-compatible API, in the foreground until Ctrl-C. Ctrl-C (or SIGTERM) stops
accepting connections, answers the requests in flight, then closes the prediction log."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

from toolkit.errors import UserError


def api_key_from(env: str | None) -> str | None:
    """The bearer token clients must send, from the environment variable `env`."""
    if not env:
        return None
    key = os.environ.get(env)
    if not key:
        raise UserError(f"the environment variable {env} is not set (or empty): it must hold the API key clients "
                        f"send as `Authorization: Bearer KEY`", field="--api-key-env")
    return key


def serve_model(model: str, *, name: str, host: str, port: int, max_batch: int, max_wait_ms: float,
                dtype: str = "auto", device: str = "auto", api_key: str | None = None, max_queue: int = 0,
                jobs_dir: Path | None = None) -> int:
    from toolkit.backends.generation import Generator
    from toolkit.cache import cache_root
    from toolkit.config import GeneratorConfig
    from toolkit.progress import status
    from toolkit.serving.finetuning import FineTuning
    from toolkit.serving.metrics import Metrics
    from toolkit.serving.openai_app import Engine, create_app

    with status(f"loading {model}"):
        gen = Generator.load(GeneratorConfig(model=model, dtype=dtype, device=device))
    metrics = Metrics()
    engine = Engine(gen, max_batch=max_batch, max_wait_ms=max_wait_ms, background=False, max_queue=max_queue,
                    on_batch=metrics.batch.observe)
    models: dict[str, int] = {}
    ft = FineTuning(jobs_dir or cache_root() / "finetuning", base_model=model, dtype=dtype, name=name,
                    register=fine_tuned_loader(engine, models, dtype=dtype, device=device))
    app = create_app(engine, name, api_key=api_key, metrics=metrics, models=models, finetuning=ft)
    where = f"{gen.device}/{str(gen.model.dtype).replace('torch.', '')}"
    try:
        return run_server(app, engine, host, port, f"serving {name} ({where}) and its fine-tuning API", max_batch)
    finally:
        ft.close()


def fine_tuned_loader(engine, models: dict[str, int], *, dtype: str, device: str):
    """What FineTuning calls for a succeeded job: the base model with the adapter merged in,
    answering under the job's model name from then on."""
    def register(name: str, base: str, adapter: Path) -> None:
        from toolkit.config import GeneratorConfig
        from toolkit.models import resolve_generator
        from toolkit.training.trainer import load_finetuned
        gen = load_finetuned(resolve_generator(base), GeneratorConfig(model=base, dtype=dtype, device=device), adapter)
        models[name] = engine.add(gen)
    return register


def serve_run(run_dir: Path, arm_specs: list[str], *, name: str | None, host: str, port: int, max_batch: int,
              max_wait_ms: float, log_path: Path | None, api_key: str | None, allow_changes: bool,
              max_queue: int = 0) -> int:
    from toolkit.progress import status
    from toolkit.serving.arms import check_arms, load_arms, parse_arm_specs
    from toolkit.serving.log import PredictionLog
    from toolkit.serving.metrics import Metrics
    from toolkit.serving.openai_app import Engine
    from toolkit.serving.service import ArmService, create_arm_app

    specs = parse_arm_specs(arm_specs, run_dir)
    by_run: dict[Path, list] = {}
    for sp in specs:
        by_run.setdefault(sp.run, []).append(sp)
    results = None
    for run, group in by_run.items():  # before any model loads
        got, _ = check_arms(run, [sp.arm for sp in group])
        results = results or got
    weights = {sp.served: sp.weight for sp in specs}
    name = name or results.get("suite") or "adaptbench"
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
    engine = Engine(max_batch=max_batch, max_wait_ms=max_wait_ms, background=False, max_queue=max_queue,
                    on_batch=metrics.batch.observe)
    log = PredictionLog(log_path)
    try:
        service = ArmService(arms, weights, engine=engine, name=name, run=str(Path(run_dir).name), log=log,
                             metrics=metrics)
        app = create_arm_app(service, api_key=api_key)
        shares = service.router.shares()
        routes = ", ".join(f"{a} {shares.get(a, 0) * 100:.0f}%" for a in weights)
        banner = (f"serving {', '.join(weights)} of {Path(run_dir).name} as '{name}' ({routes}) · log {log_path}"
                  + (" · API key required" if api_key else ""))
        return run_server(app, engine, host, port, banner, max_batch)
    finally:
        log.close()
        for res in resources:
            res.close()


def run_server(app, engine, host: str, port: int, banner: str, max_batch: int) -> int:
    import uvicorn

    from toolkit.serving.openai_app import free_port

    port = port or free_port(host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    # HTTP on a thread, the model on the main thread (see Engine)
    http = threading.Thread(target=server.run, name="http", daemon=True)
    http.start()
    print(f"{banner} at http://{host}:{port}/v1 - batches of up to {max_batch}; Ctrl-C stops",
          file=sys.stderr, flush=True)

    def stop(signum, frame):
        # first Ctrl-C (or SIGTERM): stop accepting, answer what is in flight, then return;
        # a second one stops at once
        if server.should_exit:
            raise KeyboardInterrupt
        server.should_exit = True
        print("stopping: finishing the requests in flight (Ctrl-C again to stop now)", file=sys.stderr, flush=True)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        engine.run(until=lambda: not http.is_alive())
    finally:
        engine.close()
    if not server.started:
        raise UserError(f"could not listen on {host}:{port} (in use?)", field="--port")
    return 0
