"""Runs spread over a Ray cluster: `adaptbench run SUITE --ray ADDRESS` (`--ray local`
starts a cluster on this machine).

Each arm of a run, and of every seed or fold of `--seeds` / `--folds`, is one Ray task
with its own resource request (one CPU by default, a GPU for an arm that trains when the
cluster has GPUs; an arm's `ray:` settings change both). The suite and its data travel
through the object store; every answer a task finishes is written at once, through a small
actor on the driver's machine, into the driver's content cache, so a task that is retried
(its worker or node died) answers again from that cache instead of recomputing, and a later
run on the driver finds them too. What a task writes into its run folder (a LoRA adapter) and
its samples come back with its result and land in the one run directory on the driver, so
the report, `compare` and `serve` read it as any run's. Ensembles combine their members'
answers on the driver, as in a local run.

Ray is an optional extra (`pip install 'adaptbench[ray]'`) and is imported only here, only
under `--ray`.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import threading
import traceback
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Iterator

from toolkit.config import arm_generator
from toolkit.errors import UserError, inside
from toolkit.progress import live_region, log
from toolkit.records import ArmResult

# local | auto | HOST:PORT of the head's GCS ([IPv6]:PORT too); matched whole (fullmatch)
ADDRESS = re.compile(r"local|auto|[A-Za-z0-9][A-Za-z0-9.\-]*:\d{1,5}|\[[0-9A-Fa-f:.]+\]:\d{1,5}")
ADDRESS_HELP = "expects local, auto or HOST:PORT of the cluster's head (adaptbench runs on a node of the cluster)"


def check_address(address: str) -> None:
    """A one-line error unless `address` is local, auto or HOST:PORT with a port 1-65535. Ray
    Client addresses (ray://) are refused: the driver's cache actor must sit on the driver's
    own machine, and under Ray Client the driver's node is the head's."""
    if address.startswith("ray://"):
        raise UserError("Ray Client addresses (ray://) are not supported: run adaptbench on a node of the cluster "
                        "(the head, or a node that ran `ray start --address HEAD:PORT`) and give HOST:PORT",
                        field="--ray")
    if not ADDRESS.fullmatch(address) or (address not in ("local", "auto")
                                          and not 1 <= int(address.rpartition(":")[2]) <= 65535):
        raise UserError(ADDRESS_HELP, field="--ray")
# what the tasks need of the driver's environment: adaptbench's switches (not its cache or data
# folders, which are the worker's own) and the credentials a suite names; shipped with each task
# in the object store, never in the runtime_env that Ray's dashboard shows
FORWARD = re.compile(r"(ADAPTBENCH_(?!CACHE$|DATA_DIR$|API_KEY$)[A-Z0-9_]+|CHROMA_[A-Z0-9_]+"
                     r"|HF_HUB_OFFLINE|HF_DATASETS_OFFLINE|TRANSFORMERS_OFFLINE|HF_ENDPOINT|HF_TOKEN)")
OPENAI_DEFAULTS = ("OPENAI_API_KEY", "OPENAI_BASE_URL")  # what the openai client reads when a suite names none

_state: dict[str, Any] = {}  # address, the cache actor of this driver process
_lock = threading.Lock()
_refs: set = set()  # the tasks in flight, cancelled together when one run stops the others


def active() -> bool:
    """Whether this process sends its arms to a Ray cluster (`--ray` was given)."""
    return "address" in _state


def connect(address: str) -> None:
    """Join the cluster at `address` (or start one on this machine for `local`); a one-line
    error when Ray is not installed or the cluster cannot be reached."""
    check_address(address)
    _stop.clear()
    try:
        # ray: the optional extra, imported only under --ray
        import ray
    except ImportError:
        raise UserError("needs Ray, which is not installed: pip install 'adaptbench[ray]'", field="--ray") from None
    if address not in ("local", "auto"):
        # ray.init retries an address where nothing listens for minutes: ask the port first
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
        except OSError as e:
            raise UserError(f"cannot join the Ray cluster at {address}: nothing answers there ({e.strerror or e})",
                            field="--ray") from None
    quiet = {"log_to_driver": False, "logging_level": "ERROR", "configure_logging": True}
    try:
        if address == "local":
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, **quiet)
        else:
            ray.init(address=address, **quiet)
    except Exception as e:  # ConnectionError, RuntimeError, ValueError, by Ray version: all one thing here
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise UserError(f"cannot join the Ray cluster at {address}: {first}", field="--ray") from None
    _state["address"] = address
    res = ray.cluster_resources()
    log(f"Ray cluster at {address}: {len(ray.nodes())} node{'s' if len(ray.nodes()) != 1 else ''}, "
        f"{res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs")


class Stopped(KeyboardInterrupt):
    """This run was stopped because another run of the same command failed or was cancelled:
    recorded as cancelled, as Ctrl-C is."""


_stop = threading.Event()  # set by cancel_all: no run of this command sends another task


def each(jobs: list, fn) -> Iterator[tuple[Any, Any]]:
    """(job, fn(job)) for every job, in order. Locally one after another; under --ray all at
    once, each in a driver thread that waits on its own run's tasks, so every arm of every seed
    or fold is on the cluster together. The first run to fail (or Ctrl-C) stops the others at
    once. Bars stand down (one live display per console)."""
    if not active() or len(jobs) < 2:
        for j in jobs:
            yield j, fn(j)
        return
    _stop.clear()
    ex = ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="adaptbench-run")
    try:
        with live_region():
            futures = [ex.submit(fn, j) for j in jobs]
            left = set(futures)
            for j, f in zip(jobs, futures):
                while not f.done():  # any run that fails first, not only the next in order
                    done, left = wait(left, return_when=FIRST_EXCEPTION)
                    for d in done:
                        if d.exception() is not None:
                            raise d.exception()
                yield j, f.result()
    except BaseException:
        cancel_all()
        raise
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def disconnect() -> None:
    if active():
        # ray: the optional extra, imported only under --ray
        import ray
        ray.shutdown()
        _state.clear()


class CacheService:
    """The driver's content cache (toolkit.cache.PredictionCache) served to the tasks: one
    actor on the driver's machine, so every answer lands where the driver's report, reruns and
    `serve` look for it."""

    def __init__(self, path: str):
        # per call: the actor's own process opens the cache
        from toolkit.cache import PredictionCache
        self.store = PredictionCache(Path(path))

    def get_many(self, fingerprint: str, ids: list[str]) -> dict[str, dict]:
        return self.store.get_many(fingerprint, ids)

    def put_many(self, fingerprint: str, records: dict[str, dict]) -> None:
        self.store.put_many(fingerprint, records)


class RemoteStore:
    """A task's view of the driver's cache: PredictionCache's interface, each call a round trip
    to the CacheService. A write returns once it is committed on the driver."""

    def __init__(self, actor):
        self.actor = actor

    def get_many(self, fingerprint: str, ids: list[str]) -> dict[str, dict]:
        # ray: the optional extra, imported only under --ray
        import ray
        return ray.get(self.actor.get_many.remote(fingerprint, ids))

    def put_many(self, fingerprint: str, records: dict[str, dict]) -> None:
        # ray: the optional extra, imported only under --ray
        import ray
        ray.get(self.actor.put_many.remote(fingerprint, records))

    def close(self) -> None:
        pass


def _cache_actor():
    """This driver's CacheService, started once, pinned to the driver's node."""
    # ray: the optional extra, imported only under --ray
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from toolkit.cache import cache_root
    with _lock:
        if "cache" not in _state:
            here = ray.get_runtime_context().get_node_id()
            _state["cache"] = ray.remote(CacheService).options(
                num_cpus=0, max_restarts=3, max_task_retries=3,  # its calls are idempotent (INSERT OR REPLACE)
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False),
            ).remote(str(cache_root() / "predictions.sqlite"))
        return _state["cache"]


class Collected:
    """Stands in for the run directory inside a task: keeps the samples an arm appends, which
    travel back with the task's result."""

    def __init__(self):
        self.rows: list = []

    def append_samples(self, rows: list) -> None:
        self.rows.extend(rows)


def arm_task(loaded, data, test, name: str, stype: str, cfg, store, env: dict[str, str], threads: int) -> dict:
    """One arm, in a Ray worker: prepared, answered and scored as `run_arm` does locally, into a
    scratch run folder whose files come back with the result."""
    os.environ.update(env)
    os.environ["ADAPTBENCH_QUIET"] = "1"  # the driver reports progress; a worker's bars go nowhere
    # per task: the worker's modules, loaded in the worker
    import ray
    import torch

    from toolkit import progress
    from toolkit.harness import run_arm
    from toolkit.resources import Resources
    progress.quiet = True
    torch.set_num_threads(max(1, threads))
    scratch = Path(tempfile.mkdtemp(prefix="adaptbench-arm-"))
    try:
        res = Resources(loaded.suite, data.labels, data.kb, scratch, RemoteStore(store))
        collected = Collected()
        try:
            result, preds = run_arm(name, stype, cfg, res, data, test, collected)
        finally:
            res.close()
        files = {p.relative_to(scratch).as_posix(): p.read_bytes() for p in sorted(scratch.rglob("*")) if p.is_file()}
        return {"result": result, "preds": preds, "samples": collected.rows, "files": files,
                "node": ray.get_runtime_context().get_node_id()}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def task_options(stype: str, cfg, suite, gpus_in_cluster: float) -> dict:
    """Ray options of one arm's task: its `ray:` settings, else one CPU, plus one GPU for an arm
    whose generator is a local model on `auto` or `cuda` when the cluster has GPUs (as a local
    run would use the GPU for it; a training arm is what needs it most)."""
    want = getattr(cfg, "ray", None)
    gen = arm_generator(suite.generator, cfg.generator)
    # a local model answers (and trains) where a local run would put it: on a GPU when there is one
    on_cuda = (gen.backend == "transformers" and (gen.device == "auto" or gen.device.startswith("cuda"))
               and gpus_in_cluster > 0 and not getattr(cfg, "combines", False))
    opts: dict[str, Any] = {
        "num_cpus": want.num_cpus if want and want.num_cpus is not None else 1,
        "num_gpus": want.num_gpus if want and want.num_gpus is not None else (1 if on_cuda else 0),
        "max_retries": want.max_retries if want else 2, "retry_exceptions": False}
    if want and want.memory_gb:
        opts["memory"] = int(want.memory_gb * 2**30)
    return opts


def forwarded_env(loaded, arms: dict) -> dict[str, str]:
    """The driver's variables the tasks of these arms need: adaptbench's switches (not its serve
    key), Chroma's, the Hugging Face hub's, every key the suite or an arm names in `api_key_env`,
    and the openai client's defaults when anything talks to an OpenAI-compatible endpoint."""
    names: set[str] = set()
    api = [False]

    def walk(o):
        if isinstance(o, dict):
            for k, v in o.items():
                if k == "api_key_env" and isinstance(v, str):
                    names.add(v)
                if k == "backend" and v == "openai":
                    api[0] = True
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)
    suite = loaded.suite.model_dump(mode="json")
    walk({k: v for k, v in suite.items() if k != "strategies"})
    for _, cfg in arms.values():
        walk(cfg.model_dump(mode="json"))
    if api[0] or loaded.suite.judge is not None:
        names.update(OPENAI_DEFAULTS)
    return {k: v for k, v in os.environ.items() if FORWARD.fullmatch(k) or k in names}


def describe(opts: dict) -> str:
    parts = [f"{opts['num_cpus']:g} CPU"] + ([f"{opts['num_gpus']:g} GPU"] if opts["num_gpus"] else [])
    return " + ".join(parts)


def cancel_all() -> None:
    """Stop every task in flight and every run still sending (Ctrl-C, or bad input found by one
    run of several)."""
    # ray: the optional extra, imported only under --ray
    import ray
    _stop.set()
    with _lock:
        refs = list(_refs)
    for r in refs:
        try:
            ray.cancel(r, force=True)
        except Exception:  # already finished or gone: nothing to stop
            pass


def land_files(run_path: Path, arm: str, files: dict[str, bytes]) -> None:
    """A task's run-folder files into the run directory: only its own adapter folder
    (adapters/ARM/...), never the run's records; a name that would leave it is refused."""
    for rel, blob in files.items():
        parts = Path(rel).parts
        if len(parts) < 3 or parts[:2] != ("adapters", arm):
            raise ValueError(f"task of arm '{arm}' returned a file outside adapters/{arm}/: {rel!r}")
        dest = inside(run_path / "adapters" / arm, *parts[2:])
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        tmp.write_bytes(blob)
        os.replace(tmp, dest)


def run_arms(loaded, arms: dict, res, data, test: list, run, results) -> None:
    """`harness.run_arms` on the cluster: every arm that answers is a task, sent at once; each
    result is written to the run directory as it arrives (an arm that fails, or whose result
    cannot be written, is recorded as an error and the others go on); then the ensembles combine
    on the driver. Bad input (UserError) and Ctrl-C stop every run of the command."""
    # ray: the optional extra, imported only under --ray
    import ray

    from toolkit.harness import run_ensemble
    if _stop.is_set():
        raise Stopped()
    store = _cache_actor()
    gpus = ray.cluster_resources().get("GPU", 0)
    refs = {"loaded": ray.put(loaded), "data": ray.put(data), "test": ray.put(test)}
    env = forwarded_env(loaded, arms)
    pending: dict[Any, str] = {}
    task = ray.remote(arm_task)
    answered: dict[str, dict] = {}
    try:
        for name, (stype, cfg) in arms.items():
            if getattr(cfg, "combines", False):
                continue
            if _stop.is_set():
                raise Stopped()
            opts = task_options(stype, cfg, loaded.suite, gpus)
            threads = max(1, int(opts["num_cpus"]))
            ref = task.options(name=f"adaptbench {loaded.suite.name}:{name}", **opts).remote(
                refs["loaded"], refs["data"], refs["test"], name, stype, cfg, store, env, threads)
            pending[ref] = name
            with _lock:
                _refs.add(ref)
            log(f"[bold cyan]▶ {name}[/]: sent to the cluster ({describe(opts)})")
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            if not ready:
                if _stop.is_set():
                    raise Stopped()
                continue
            ref = ready[0]
            name = pending.pop(ref)
            with _lock:
                _refs.discard(ref)
            try:
                out = ray.get(ref)
            except ray.exceptions.TaskCancelledError:
                raise Stopped() from None
            except ray.exceptions.RayTaskError as e:
                cause = getattr(e, "cause", None)
                if isinstance(cause, (UserError, KeyboardInterrupt)):
                    raise cause from None
                _record_error(run, results, arms, name, str(e))
                continue
            except (ray.exceptions.RayError, OSError) as e:  # a worker or node lost past its retries
                _record_error(run, results, arms, name, f"{type(e).__name__}: {e}")
                continue
            try:
                land_files(run.path, name, out["files"])
                run.append_samples(out["samples"])
            except (OSError, ValueError):  # a full disk, a stray file name: this arm's error, not the run's
                _record_error(run, results, arms, name, traceback.format_exc())
                continue
            results.strategies[name], answered[name] = out["result"], out["preds"]
            _ordered(results, arms)
            run.write_results(results)
            r = out["result"]
            head = ", ".join(f"{k} {v.mean:.3f}" for k, v in list(r.metrics.items())[:3])
            log(f"[green]✓ {name}[/]: {head} · setup {r.cost.setup_s:.1f}s · p50 {r.cost.latency_p50_s:.2f}s"
                + (f" · {r.cost.cached_answers} of {len(test)} answers from the cache" if r.cost.cached_answers else ""))
    except BaseException:
        cancel_all()
        raise
    finally:
        with _lock:
            _refs.difference_update(pending)
    for name, (stype, cfg) in arms.items():
        if not getattr(cfg, "combines", False):
            continue
        try:
            results.strategies[name] = run_ensemble(name, stype, cfg, res, test, run, answered, results)
        except (UserError, KeyboardInterrupt):
            raise
        except Exception:  # one arm failing must not lose the others
            _record_error(run, results, arms, name, traceback.format_exc())
        _ordered(results, arms)
        run.write_results(results)


def _record_error(run, results, arms: dict, name: str, text: str) -> None:
    with (run.path / "errors.log").open("a") as f:
        f.write(f"--- {name}\n{text}\n")
    last = (text.strip().splitlines() or ["error"])[-1][:300]
    results.strategies[name] = ArmResult(type=arms[name][0], status="error", error=last)
    _ordered(results, arms)
    run.write_results(results)
    log(f"[red]✗ {name} failed:[/] {last} (traceback in {run.path / 'errors.log'})")


def _ordered(results, arms: dict) -> None:
    """The arms in the suite's order, whatever order their tasks finished in."""
    results.strategies = {n: results.strategies[n] for n in arms if n in results.strategies}
