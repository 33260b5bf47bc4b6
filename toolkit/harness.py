"""The harness: the same split through every arm, scored the same way, written
to one run directory."""

from __future__ import annotations

import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from strategies.registry import strategy_class
from toolkit import cluster, preflight
from toolkit.backends import NotMeasured
from toolkit.cache import PredictionCache, content_hash
from toolkit.config import LoadedSuite
from toolkit.data import Example, stratify_ok, subsample
from toolkit.errors import UserError
from toolkit.models import pick_device, pick_dtype
from toolkit.progress import log, task_bar
from toolkit.records import (
    ArmCost,
    ArmInfo,
    ArmResult,
    Context,
    DataSummary,
    JudgeCost,
    MajorityBaseline,
    ModelInfo,
    RunResults,
    Sample,
)
from toolkit.resources import Resources
from toolkit.runs import RunDir, environment, now_iso
from toolkit.scoring.judge import not_measured_reason
from toolkit.scoring.scorers import scorer_for
from toolkit.training import distributed as D

CHUNK_BATCHES = 2  # a local arm's answers are scored and appended to samples.jsonl every 2 batches


def select_arms(loaded: LoadedSuite, only: list[str] | None) -> dict[str, tuple[str, Any]]:
    """The arms to run, in order: those named (all, without `only`), plus the members of a
    named ensemble that were left out; every ensemble after the arms it combines."""
    names = list(loaded.arms) if not only else list(only)
    unknown = [a for a in names if a not in loaded.arms]
    if unknown:
        raise UserError(f"'{unknown[0]}' is not an arm of this suite (arms: {', '.join(loaded.arms)})",
                        file=loaded.path, field="--strategies")
    combines = {a for a in names if getattr(loaded.arms[a][1], "combines", False)}
    added = [m for a in names if a in combines for m in loaded.arms[a][1].members if m not in names]
    if added:
        log(f"the ensemble{'s' if len(combines) > 1 else ''} {', '.join(sorted(combines))} also run"
            f"{'' if len(combines) > 1 else 's'} {', '.join(dict.fromkeys(added))}, whose answers "
            f"{'they combine' if len(combines) > 1 else 'it combines'}")
    order = [a for a in dict.fromkeys(names + added) if a not in combines] + [a for a in names if a in combines]
    return {a: loaded.arms[a] for a in order}


def limit_test(test: list[Example], limit: int | None, *, seed: int, stratify: bool) -> tuple[list[Example], list[str]]:
    """`--limit N`: a seeded sample of N test examples (stratified by label for label tasks),
    in file order, and a note saying so. The first N lines would be biased whenever a file
    is sorted (by label, by source, by difficulty)."""
    if not limit or limit >= len(test):
        return test, []
    keep = {e.id for e in subsample(test, limit, seed=seed, stratify=stratify)}
    strat = ", stratified by label" if stratify and stratify_ok([e.label for e in test], limit) else ""
    return [e for e in test if e.id in keep], [
        f"--limit {limit}: scored a random sample of {limit} of the {len(test)} test examples (seed {seed}{strat})"]


def resolved_config(loaded: LoadedSuite, arms: dict, limit: int | None, run: RunDir) -> dict:
    """The suite as it ran, every default filled in: what `serve` rebuilds arms from. The
    suite file and data folder are recorded relative to the run directory (a run moved
    together with its suite still finds its data) and as they were (a run moved alone)."""
    cfg = loaded.suite.model_dump(mode="json")
    cfg["strategies"] = {name: {"type": stype, **c.model_dump(mode="json")} for name, (stype, c) in arms.items()}
    cfg["metrics"] = loaded.suite.metric_names
    cfg["_suite_file"] = run.relative(loaded.path)
    cfg["_suite_file_absolute"] = str(loaded.path.resolve())
    cfg["_data_dir"] = run.relative(loaded.data_dir) if loaded.data_dir else None
    cfg["_data_dir_absolute"] = str(loaded.data_dir.resolve()) if loaded.data_dir else None
    cfg["_limit"] = limit
    return cfg


def new_results(loaded: LoadedSuite, data, test: list[Example], limit_note: list[str], device: str, dtype: str,
                run: RunDir) -> RunResults:
    suite = loaded.suite
    results = RunResults(
        suite=suite.name, status="started", started=now_iso(), task=suite.task, description=suite.description,
        generator=suite.generator.model, embedder=suite.embedder.model, device=device, dtype=dtype,
        expected_queries=suite.decision.expected_queries,
        expected_queries_is_default="expected_queries" not in suite.decision.model_fields_set,
        data=DataSummary(**data.splits.sizes(), test_scored=len(test), notes=data.splits.notes + limit_note,
                         knowledge_base_documents=len(data.kb.documents) if data.kb else 0,
                         extra_train=data.extra_train),
        metrics_order=suite.metric_names, inputs=run.inputs(loaded.path, loaded.data_dir, data.files,
                                                                        data.datasets))
    if data.labels:
        results.labels = data.labels
        if data.splits.train and test:  # what always answering the commonest train label would score
            top = Counter(e.label for e in data.splits.train).most_common(1)[0][0]
            results.majority_baseline = MajorityBaseline(label=top, accuracy=sum(e.label == top for e in test) / len(test))
    return results


def run_suite(loaded: LoadedSuite, *, only: list[str] | None = None, limit: int | None = None,
              out: Path | None = None, reports_root: Path = Path("reports"),
              models_checked: bool = False, data=None, fold: dict | None = None) -> tuple[RunDir | None, RunResults | None]:
    """Every selected arm of the suite on its test split, into a new run directory. Returns
    (None, None) in the helper processes of a distributed launch. `models_checked`: the
    caller (run_seeds, run_folds) already checked the models the suite names. `data`: the
    suite's data with the splits to use (run_folds: one fold's), checked by the caller;
    `fold` says which fold, for config.yaml."""

    suite = loaded.suite
    arms = select_arms(loaded, only)
    if data is None:
        data = preflight.check_run(loaded, arms, out, reports_root, models=not models_checked)
    else:
        preflight.check_suite(loaded, data, arms)
    test, limit_note = limit_test(data.splits.test, limit, seed=suite.seed, stratify=suite.has_labels)
    local = suite.generator.backend == "transformers"
    device = pick_device(suite.generator.device) if local else "api"
    dtype = str(pick_dtype(device, suite.generator.dtype)).replace("torch.", "") if local else "api"

    if D.is_distributed():
        # Under a launcher every process trains each trained arm together (DDP); process 0
        # alone then answers and writes, finding the adapters in the cache.
        D.init()
        train_together(arms, Resources(suite, data.labels, data.kb, None), data)
        D.go_solo()
        if not D.is_main():
            return None, None

    run = RunDir.create(out, suite.name, reports_root)
    run.write_config({**resolved_config(loaded, arms, limit, run), **({"_fold": fold} if fold else {})})
    run.write_env(environment(device, dtype))
    results = new_results(loaded, data, test, limit_note, device, dtype, run)
    run.write_results(results)
    log(f"[bold]{suite.name}[/]: {len(test)} test examples, {len(data.splits.train)} train, "
        f"{len(data.splits.validation)} validation · {len(arms)} arms · {device}/{dtype} · run dir {run.path}")

    store = PredictionCache()
    res = Resources(suite, data.labels, data.kb, run.path, store)
    try:
        if cluster.active():
            cluster.run_arms(loaded, arms, res, data, test, run, results)
        else:
            run_arms(arms, res, data, test, run, results)
        results.status = "error" if results.failed else "success"
    except KeyboardInterrupt:
        results.status = "cancelled"
        raise
    except UserError as e:
        results.status = "error"
        results.error = str(e)
        raise
    finally:
        results.finished = now_iso()
        run.write_results(results)
        res.close()
        store.close()
    return run, results


def run_arms(arms: dict, res, data, test: list[Example], run: RunDir, results: RunResults) -> None:
    """Each arm in turn, the record rewritten after each. An arm that fails is recorded as an
    error with its traceback in errors.log, and the others still run; bad input (UserError)
    and Ctrl-C stop the run."""
    answered: dict[str, dict] = {}  # arm -> id -> Prediction, for the ensembles that follow
    for name, (stype, cfg) in arms.items():
        try:
            if getattr(cfg, "combines", False):
                results.strategies[name] = run_ensemble(name, stype, cfg, res, test, run, answered, results)
            else:
                results.strategies[name], answered[name] = run_arm(name, stype, cfg, res, data, test, run)
        except (UserError, KeyboardInterrupt):
            raise
        except Exception as e:  # one arm failing must not lose the others
            with (run.path / "errors.log").open("a") as f:
                f.write(f"--- {name}\n{traceback.format_exc()}\n")
            results.strategies[name] = ArmResult(type=stype, status="error", error=f"{type(e).__name__}: {e}")
            log(f"[red]✗ {name} failed:[/] {type(e).__name__}: {e} (traceback in {run.path / 'errors.log'})")
        finally:
            res.release_adapters()
        run.write_results(results)


def train_together(arms: dict, res, data) -> None:
    for name, (stype, cfg) in arms.items():
        cls = strategy_class(stype)
        if cls.trains:
            if D.is_main():
                log(f"[bold cyan]▶ {name}[/]: training in {D.world_size()} processes")
            cls(name, cfg, res).prepare(data.splits.train, data.splits.validation)
    D.barrier()


SINGLE_SAMPLE = 4  # test questions a local arm answers one at a time, for its single-request latency


def run_arm(name: str, stype: str, cfg, res, data, test: list[Example], run: RunDir) -> tuple[ArmResult, dict]:
    """Prepare one arm, answer the test split chunk by chunk (each chunk scored and appended to
    samples.jsonl as it finishes, so a killed run keeps what it answered), then aggregate.
    Returns the record and id -> Prediction."""

    suite = res.suite
    strategy = strategy_class(stype)(name, cfg, res)
    log(f"[bold cyan]▶ {name}[/]")
    t0 = time.perf_counter()
    strategy.prepare(data.splits.train, data.splits.validation)
    prepare_s = time.perf_counter() - t0
    scoring = ArmScoring(suite, res, strategy)
    t1 = time.perf_counter()
    preds = answer_and_score(name, strategy, scoring, test, run)
    answer_s = time.perf_counter() - t1
    single = strategy.single_latency([e.to_query() for e in test[:SINGLE_SAMPLE]])
    scored, not_measured, unmeasured = scoring.aggregate(test)

    fp = strategy.fingerprint()
    backend = strategy.backend()
    cost = arm_cost(strategy, [preds[e.id] for e in test], prepare_s, answer_s, single)
    if scoring.judged:
        cost.judge = scoring.judge_cost()
    result = ArmResult(
        type=stype, status="success", fingerprint=content_hash(fp),
        # the parts' hashes let `serve` say what differs when it rebuilds an arm that is not as evaluated
        fingerprint_parts={k: content_hash(v, 12) for k, v in fp.items()},
        model=ModelInfo(**backend.describe()), metrics=scored.metrics, **scored.record,
        unmeasured=unmeasured, not_measured=not_measured,
        not_applicable=[m for m in suite.metric_names if m not in scored.metrics and m not in not_measured],
        cost=cost, info=ArmInfo(**{k: v for k, v in strategy.info.items() if k != "build_s"}))
    head = ", ".join(f"{k} {v.mean:.3f}" for k, v in list(result.metrics.items())[:3])
    log(f"[green]✓ {name}[/]: {head} · setup {cost.setup_s:.1f}s · p50 {cost.latency_p50_s:.2f}s"
        + (f" · {cost.cached_answers} of {len(test)} answers from the cache" if cost.cached_answers else ""))
    return result, preds


def run_ensemble(name: str, stype: str, cfg, res, test: list[Example], run: RunDir, answered: dict[str, dict],
                 results: RunResults) -> ArmResult:
    """Combine the members' answers of this run (no model call, except best_of's scoring), score
    the combined answers as any arm's, and cost them as the sum of the members'."""
    suite = res.suite
    for m in cfg.members:
        if m not in answered:
            a = results.strategies.get(m)
            raise RuntimeError(f"member '{m}' has no answers in this run"
                               + (f" ({a.status}: {a.error})" if a else ""))
    log(f"[bold cyan]▶ {name}[/]: {cfg.method} of {', '.join(cfg.members)}")
    strategy = strategy_class(stype)(name, cfg, res)
    t0 = time.perf_counter()
    combined = strategy.combine([e.to_query() for e in test], {m: answered[m] for m in cfg.members})
    answer_s = time.perf_counter() - t0
    scoring = ArmScoring(suite, res, strategy)
    for i in range(0, len(test), 256):
        chunk = test[i:i + 256]
        scores = scoring.score(chunk, combined[i:i + 256])
        run.append_samples([sample_row(name, e, p, s) for e, p, s in zip(chunk, combined[i:i + 256], scores)])
    scored, not_measured, unmeasured = scoring.aggregate(test)
    members = {m: results.strategies[m] for m in cfg.members}
    cost = ensemble_cost(combined, members, answer_s)
    if scoring.judged:
        cost.judge = scoring.judge_cost()
    fp = {"type": stype, "config": cfg.model_dump(exclude={"ray"}), "members": {m: a.fingerprint for m, a in members.items()}}
    if cfg.method == "best_of":
        fp["scorer"] = strategy.backend().identity()
    result = ArmResult(
        type=stype, status="success", fingerprint=content_hash(fp),
        fingerprint_parts={k: content_hash(v, 12) for k, v in fp.items()},
        model=ModelInfo(backend="ensemble", model=" + ".join(cfg.members), where=cfg.method),
        metrics=scored.metrics, **scored.record, unmeasured=unmeasured, not_measured=not_measured,
        not_applicable=[m for m in suite.metric_names if m not in scored.metrics and m not in not_measured],
        cost=cost, info=ArmInfo(**strategy.info))
    head = ", ".join(f"{k} {v.mean:.3f}" for k, v in list(result.metrics.items())[:3])
    log(f"[green]✓ {name}[/]: {head} · combined in {answer_s:.1f}s · "
        + ", ".join(f"{m} {k}" for m, k in strategy.info["answers_taken"].items()) + " answers taken")
    return result


def ensemble_cost(ordered: list, members: dict[str, ArmResult], answer_s: float) -> ArmCost:
    """An ensemble costs what its members cost together: every member's setup, and per answer
    the sum of their tokens, seconds and $ (they answer one after another on one machine)."""
    cs = [a.cost for a in members.values()]
    lat = np.array([p.latency_s for p in ordered])

    def total(field: str) -> float | None:
        vals = [getattr(c, field) for c in cs]
        return None if any(v is None for v in vals) else float(sum(vals))

    cost = ArmCost(
        setup_s=round(sum(c.setup_s for c in cs), 3), setup_breakdown_s={m: a.cost.setup_s for m, a in members.items()},
        setup_s_this_run=0.0, answer_s_this_run=round(answer_s, 3),
        latency_p50_s=float(np.percentile(lat, 50)), latency_p95_s=float(np.percentile(lat, 95)),
        latency_kind="per batch" if any(c.latency_kind == "per batch" for c in cs) else "per request",
        compute_s_per_answer=float(np.mean([p.compute_s for p in ordered])),
        prompt_tokens_mean=float(np.mean([p.prompt_tokens for p in ordered])),
        completion_tokens_mean=float(np.mean([p.completion_tokens for p in ordered])),
        cached_answers=sum(bool(p.cached) for p in ordered),
        single_request_latency_s=None if any(c.alone_s is None for c in cs) else float(sum(c.alone_s for c in cs)),
        usd_per_1k_queries=total("usd_per_1k_queries"), setup_usd=total("setup_usd"),
        api_usd_per_1k_queries=total("api_usd_per_1k_queries"))
    if cost.single_request_latency_s is not None:  # what one caller waits: each member's one answer in turn
        cost.single_request_sample = min((c.single_request_sample for c in cs if c.single_request_sample), default=None)
    extra_s = cost.compute_s_per_answer - sum(c.compute_s_per_answer for c in cs)  # best_of's own scoring
    rate = next((c.usd_per_hour for c in cs if c.usd_per_hour), None)
    if cost.usd_per_1k_queries is not None and rate and extra_s > 0:
        cost.usd_per_1k_queries += extra_s * 1000 / 3600 * rate
    sources = {c.usd_source for c in cs if c.usd_source}
    if cost.usd_per_1k_queries is not None and sources:
        cost.usd_source = "the sum of its members' (" + "; ".join(sorted(sources)) + ")"
    return cost


class ArmScoring:
    """One arm's scoring: the task's scorer (from the registry), plus what a model adds on
    top for the tasks whose scorer asks for it: gold-answer likelihood and judged metrics."""

    def __init__(self, suite, res, strategy):
        self.suite, self.res, self.strategy = suite, res, strategy
        scorer = scorer_for(suite.task)
        self.scorer = scorer(metrics=suite.metric_names, seed=suite.seed, labels=res.labels,
                             doc_text={d.id: d.text for d in res.kb.documents} if res.kb else None,
                             embedder=suite.embedder.model)
        wanted = [m for m in suite.metric_names if m in scorer.judged]
        self.not_measured = {m: r for m in wanted if (r := not_measured_reason(m, suite.judge, strategy.retrieves))}
        self.judged = [m for m in wanted if m not in self.not_measured]
        self.likelihood = scorer.likelihood_metric in suite.metric_names and strategy.scores_likelihood
        self.judge_usage = np.zeros(3)  # input tokens, output tokens, seconds
        self.judge_errors: dict[str, int] = {}
        self.rows: dict[str, dict] = {}

    def score(self, chunk: list[Example], preds: list) -> list[dict]:
        scores = self.scorer.score(chunk, preds, retrieves=self.strategy.retrieves)
        if self.likelihood:
            try:
                add_answer_nll(self.strategy, chunk, scores)
            except NotMeasured as e:
                self.not_measured[self.scorer.likelihood_metric] = str(e)
                self.likelihood = False
        if self.judged:
            self.judge_usage += add_judge_scores(self.res.judge(), self.judged, self.strategy.retrieves, chunk, preds,
                                                 scores, self.res.store, self.judge_errors)
        self.rows.update({e.id: sc for e, sc in zip(chunk, scores)})
        return scores

    def aggregate(self, test: list[Example]):
        """(Scored, not_measured, unmeasured) over the test split, in test order (aggregation
        pairs rows with gold labels)."""
        rows = [self.rows[e.id] for e in test]
        if self.scorer.likelihood_metric in self.not_measured:
            for r in rows:
                r.pop("answer_nll", None)
                r.pop("base_answer_nll", None)
        scored = self.scorer.aggregate(rows, test)
        unmeasured = {}
        for m in self.judged:  # judged rows that still failed are counted, never averaged as 0
            missing = sum(1 for r in rows if isinstance(r.get(m), float) and r[m] != r[m])
            if missing:
                unmeasured[m] = missing
            if m not in scored.metrics:
                self.not_measured[m] = f"the judge's output could not be scored for any of the {len(rows)} examples"
        return scored, self.not_measured, unmeasured

    def judge_cost(self) -> JudgeCost:
        u = self.judge_usage
        return JudgeCost(input_tokens=int(u[0]), output_tokens=int(u[1]), seconds=round(float(u[2]), 3),
                         model=self.suite.judge.model, errors=self.judge_errors,
                         usd=token_usd(self.suite.prices, u[0], u[1]))


def answer_and_score(name: str, strategy, scoring: ArmScoring, test: list[Example], run: RunDir) -> dict:
    """Every test example answered, scored and appended to samples.jsonl, chunk by chunk (a
    local arm: every two batches; an API arm: every four rounds of concurrent requests).
    Returns id -> prediction."""
    gen = strategy.gen_cfg
    step = gen.batch_size * CHUNK_BATCHES if strategy.backend().batched else gen.concurrency * 4
    by_id = {e.id: e for e in test}
    # the prompts of the whole split, sorted by length once: every generation batch holds
    # prompts of similar length (less padding)
    sequence = [by_id[q.id] for q in strategy.order([e.to_query() for e in test])]
    preds: dict[str, Any] = {}
    with task_bar(f"{name}: answering", len(test)) as advance:
        for i in range(0, len(sequence), step):
            chunk = sequence[i:i + step]
            new = strategy.answer([e.to_query() for e in chunk])
            if len(new) != len(chunk):
                raise RuntimeError(f"strategy returned {len(new)} predictions for {len(chunk)} queries")
            preds.update({p.id: p for p in new})
            chunk_preds = [preds[e.id] for e in chunk]
            scores = scoring.score(chunk, chunk_preds)
            run.append_samples([sample_row(name, e, p, s) for e, p, s in zip(chunk, chunk_preds, scores)])
            advance(len(chunk))
    return preds


def arm_cost(strategy, ordered: list, prepare_s: float, answer_s: float, single: list[float]) -> ArmCost:
    """Setup, latency, tokens and money of one arm. An API arm's latency is per request (what a
    caller waits) and its money is tokens at the model's prices; a local arm's latency is its
    batch wall time, beside a measured one-request latency, and its money is compute time at
    the suite's $ per hour."""
    suite, gen, backend = strategy.res.suite, strategy.gen_cfg, strategy.backend()
    lat = np.array([p.latency_s for p in ordered])
    build = strategy.info.get("build_s") or {}
    cost = ArmCost(
        setup_s=round(sum(build.values()), 3) if build else round(prepare_s, 3),
        setup_breakdown_s={k: round(v, 3) for k, v in build.items()},
        setup_s_this_run=round(prepare_s, 3), answer_s_this_run=round(answer_s, 3),
        latency_p50_s=float(np.percentile(lat, 50)), latency_p95_s=float(np.percentile(lat, 95)),
        latency_kind="per batch" if backend.batched else "per request",
        compute_s_per_answer=float(np.mean([p.compute_s for p in ordered])),
        prompt_tokens_mean=float(np.mean([p.prompt_tokens for p in ordered])),
        completion_tokens_mean=float(np.mean([p.completion_tokens for p in ordered])),
        cached_answers=sum(bool(p.cached) for p in ordered))
    if single:
        cost.single_request_latency_s = float(np.median(single))
        cost.single_request_sample = len(single)
    rate = suite.prices.gpu_per_hour if backend.device.startswith("cuda") else suite.prices.cpu_per_hour
    if gen.backend == "openai":
        cost.api_requests_concurrency = gen.concurrency
        if gen.input_per_1m_tokens is not None and gen.output_per_1m_tokens is not None:
            per_query = (cost.prompt_tokens_mean * gen.input_per_1m_tokens
                         + cost.completion_tokens_mean * gen.output_per_1m_tokens) / 1e6
            cost.usd_per_1k_queries = per_query * 1000
            # what was built here (an index, a few-shot pool) is billed at the local rate, if given
            cost.setup_usd = cost.setup_s / 3600 * rate if rate is not None else 0.0
            cost.usd_source = "the model's token prices"
    else:
        usd = token_usd(suite.prices, cost.prompt_tokens_mean, cost.completion_tokens_mean)
        if usd is not None:  # what these prompts and answers would cost at an API's token prices
            cost.api_usd_per_1k_queries = usd * 1000
        if rate is not None:  # measured seconds at the suite's $ per hour
            cost.usd_per_hour = rate
            cost.setup_usd = cost.setup_s / 3600 * rate
            cost.usd_per_1k_queries = cost.compute_s_per_answer * 1000 / 3600 * rate
            cost.usd_source = f"${rate:g}/h of compute"
    return cost


def token_usd(prices, input_tokens: float, output_tokens: float) -> float | None:
    """$ for these tokens at the suite's API prices, or None without prices."""
    if prices.input_per_1m_tokens is None or prices.output_per_1m_tokens is None:
        return None
    return float(input_tokens * prices.input_per_1m_tokens + output_tokens * prices.output_per_1m_tokens) / 1e6


def add_answer_nll(strategy, chunk: list[Example], scores: list[dict]) -> None:
    """Gold-answer NLL under the arm's prompts and model (and, for trained arms, the base
    model) into each example's scores. The scorer owns the targets. The backend's request
    cache keys them on the model, the prompt and the answer, so arms that put the same prompt
    to the same model share them (finetune's base-model perplexity is zero_shot's)."""
    queries = [e.to_query() for e in chunk]
    targets = [e.target for e in chunk]
    for kind in ["answer_nll"] + (["base_answer_nll"] if strategy.trains else []):
        got = strategy.loglikelihood(queries, targets, base=kind == "base_answer_nll")
        for g, s in zip(got, scores):
            s[kind] = g.nll
            s["answer_tokens"] = g.tokens


def add_judge_scores(judge, metrics: list[str], retrieves: bool, chunk: list[Example], preds, scores: list[dict],
                     store: PredictionCache, errors: dict[str, int] | None = None) -> np.ndarray:
    """ragas judged scores into each example's scores. Measured values are cached by what
    was judged (question, answer text, reference, passages) and the judge and embedder
    models; unmeasured (NaN) rows are asked again on the next run. The judge's failures, by
    kind, are added to `errors`."""
    who = {**judge.fingerprint, "embedder": judge.embedder_name, "metrics": metrics}
    keys = [content_hash({"judge": who, "question": e.input, "answer": p.output, "reference": e.target,
                          "passages": [c.text for c in p.contexts] if retrieves else None}, 32)
            for e, p in zip(chunk, preds)]
    have = store.get_many("judge", keys)
    todo = [i for i, k in enumerate(keys) if k not in have]
    usage = np.zeros(3)
    if todo:
        # one judged row takes several judge calls (seconds each on a local CPU model): say
        # what the answering bar is waiting for
        log(f"  judging {len(todo)} answers × {len(metrics)} metrics with {judge.cfg.model} "
            f"({judge.cfg.concurrency} requests at a time)")
        t0 = time.perf_counter()
        jr = judge.score([chunk[i] for i in todo], [preds[i] for i in todo], metrics, retrieves=retrieves)
        usage[:] = (jr.input_tokens, jr.output_tokens, time.perf_counter() - t0)
        if errors is not None:
            for k, v in jr.errors.items():
                errors[k] = errors.get(k, 0) + v
        store.put_many("judge", {keys[i]: row for i, row in zip(todo, jr.rows) if all(v == v for v in row.values())})
        have.update({keys[i]: row for i, row in zip(todo, jr.rows)})
    for k, s in zip(keys, scores):
        s.update(have[k])
    return usage


def sample_row(arm: str, e: Example, p, scores: dict) -> Sample:
    return Sample(strategy=arm, id=e.id, input=e.input, target=e.target, label=e.label,
                  context_ids=e.context_ids or [], metadata=e.metadata or {}, output=p.output,
                  contexts=[Context(doc_id=c.doc_id, score=round(c.score, 4), text=c.text) for c in p.contexts],
                  prompt_tokens=p.prompt_tokens, completion_tokens=p.completion_tokens,
                  latency_s=round(p.latency_s, 4), compute_s=round(p.compute_s, 4),
                  scores={k: (None if isinstance(v, float) and v != v else v) for k, v in scores.items()},
                  cached=bool(p.cached))
