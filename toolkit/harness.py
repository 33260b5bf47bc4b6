"""The harness: the same split through every arm, scored the same way, written
to one run directory."""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.training import distributed as D
from toolkit import preflight
from toolkit.cache import PredictionCache, content_hash
from toolkit.config import LoadedSuite
from toolkit.data import Example
from toolkit.errors import UserError
from toolkit.progress import log, task_bar
from toolkit.runs import RunDir, environment, now_iso

CHUNK_BATCHES = 2  # a local arm's answers are scored and appended to samples.jsonl every 2 batches


def select_arms(ls: LoadedSuite, only: list[str] | None) -> dict[str, tuple[str, Any]]:
    if not only:
        return dict(ls.arms)
    unknown = [a for a in only if a not in ls.arms]
    if unknown:
        raise UserError(f"'{unknown[0]}' is not an arm of this suite (arms: {', '.join(ls.arms)})",
                        file=ls.path, field="--strategies")
    return {a: ls.arms[a] for a in only}


def limit_test(test: list[Example], limit: int | None, *, seed: int, stratify: bool) -> tuple[list[Example], list[str]]:
    """`--limit N`: a seeded sample of N test examples (stratified by label for label tasks),
    in file order, and a note saying so. The first N lines would be biased whenever a file
    is sorted (by label, by source, by difficulty)."""
    if not limit or limit >= len(test):
        return test, []
    from toolkit.data import stratify_ok, subsample
    keep = {e.id for e in subsample(test, limit, seed=seed, stratify=stratify)}
    strat = ", stratified by label" if stratify and stratify_ok([e.label for e in test], limit) else ""
    return [e for e in test if e.id in keep], [
        f"--limit {limit}: scored a random sample of {limit} of the {len(test)} test examples (seed {seed}{strat})"]


def resolved_config(ls: LoadedSuite, arms: dict, limit: int | None) -> dict:
    cfg = ls.suite.model_dump(mode="json")
    cfg["strategies"] = {name: {"type": stype, **c.model_dump(mode="json")} for name, (stype, c) in arms.items()}
    cfg["metrics"] = ls.suite.metric_names
    cfg["_suite_file"] = str(ls.path.resolve())
    cfg["_data_dir"] = str(ls.data_dir.resolve()) if ls.data_dir else None
    cfg["_limit"] = limit
    return cfg


def run_suite(ls: LoadedSuite, *, only: list[str] | None = None, limit: int | None = None,
              out: Path | None = None, reports_root: Path = Path("reports")) -> tuple[RunDir, dict]:
    from toolkit.models import pick_device, pick_dtype
    from toolkit.resources import Resources
    from toolkit.data.suite_data import load_task_data

    suite = ls.suite
    arms = select_arms(ls, only)
    # Everything that can be wrong with the input is checked before a model loads or the
    # run directory exists; API endpoints answer GET /v1/models first.
    data = load_task_data(ls)
    preflight.check_suite(ls, data, arms)
    preflight.check_out(out, reports_root)
    preflight.check_cache()
    preflight.check_models(ls, arms)
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
            return None, {}

    run = RunDir.create(out, suite.name, reports_root)
    run.write_config(resolved_config(ls, arms, limit))
    run.write_env(environment(data.files, device, dtype))
    results: dict[str, Any] = {
        "suite": suite.name, "status": "started", "started": now_iso(), "task": suite.task,
        "description": suite.description, "generator": suite.generator.model, "embedder": suite.embedder.model,
        "device": device, "dtype": dtype, "expected_queries": suite.decision.expected_queries,
        "expected_queries_is_default": "expected_queries" not in suite.decision.model_fields_set,
        "data": {**data.splits.sizes(), "test_scored": len(test), "notes": data.splits.notes + limit_note,
                 "knowledge_base_documents": len(data.kb.documents) if data.kb else 0,
                 "extra_train": data.extra_train},
        "metrics_order": suite.metric_names, "strategies": {},
    }
    if data.labels:
        results["labels"] = data.labels
        if data.splits.train and test:  # what always answering the commonest train label would score
            from collections import Counter
            top = Counter(e.label for e in data.splits.train).most_common(1)[0][0]
            results["majority_baseline"] = {"label": top, "accuracy": sum(e.label == top for e in test) / len(test)}
    run.write_results(results)
    log(f"[bold]{suite.name}[/]: {len(test)} test examples, {len(data.splits.train)} train, "
        f"{len(data.splits.validation)} validation · {len(arms)} arms · {device}/{dtype} · run dir {run.path}")

    store = PredictionCache()
    res = Resources(suite, data.labels, data.kb, run.path, store)
    try:
        for name, (stype, cfg) in arms.items():
            try:
                results["strategies"][name] = run_arm(name, stype, cfg, res, data, test, run)
            except (UserError, KeyboardInterrupt):
                raise
            except Exception as e:  # one arm failing must not lose the others
                (run.path / "errors.log").open("a").write(f"--- {name}\n{traceback.format_exc()}\n")
                results["strategies"][name] = {"type": stype, "status": "error", "error": f"{type(e).__name__}: {e}"}
                log(f"[red]✗ {name} failed:[/] {type(e).__name__}: {e} (traceback in {run.path / 'errors.log'})")
            finally:
                res.release_adapters()
            run.write_results(results)
        failed = [n for n, r in results["strategies"].items() if r.get("status") == "error"]
        results["status"] = "error" if failed else "success"
    except KeyboardInterrupt:
        results["status"] = "cancelled"
        raise
    except UserError as e:
        results["status"] = "error"
        results["error"] = str(e)
        raise
    finally:
        results["finished"] = now_iso()
        run.write_results(results)
        res.close()
        store.close()
    return run, results


def train_together(arms: dict, res, data) -> None:
    from strategies.registry import strategy_class

    for name, (stype, cfg) in arms.items():
        cls = strategy_class(stype)
        if cls.trains:
            if D.is_main():
                log(f"[bold cyan]▶ {name}[/]: training in {D.world_size()} processes")
            cls(name, cfg, res).prepare(data.splits.train, data.splits.validation)
    D.barrier()


SINGLE_SAMPLE = 4  # test questions a local arm answers one at a time, for its single-request latency


def run_arm(name: str, stype: str, cfg, res, data, test: list[Example], run: RunDir) -> dict:
    from strategies.registry import strategy_class
    from toolkit.scoring import metrics as M
    from toolkit.backends import NotMeasured
    from toolkit.scoring.judge import JUDGE_METRICS, not_measured_reason

    suite = res.suite
    strategy = strategy_class(stype)(name, cfg, res)
    log(f"[bold cyan]▶ {name}[/]")
    t0 = time.perf_counter()
    strategy.prepare(data.splits.train, data.splits.validation)
    prepare_s = time.perf_counter() - t0
    backend = strategy.backend()
    gen = strategy.gen_cfg

    rows_by_id: dict[str, dict] = {}
    preds: dict[str, Any] = {}
    doc_text = {d.id: d.text for d in res.kb.documents} if res.kb else None
    # answers are scored and appended to samples.jsonl chunk by chunk (a local arm: every two
    # batches; an API arm: every four rounds of concurrent requests)
    step = gen.batch_size * CHUNK_BATCHES if backend.batched else gen.concurrency * 4
    wanted = [m for m in suite.metric_names if m in JUDGE_METRICS] if suite.task == "qa" else []
    not_measured = {m: r for m in wanted if (r := not_measured_reason(m, suite.judge, strategy.retrieves))}
    judged = [m for m in wanted if m not in not_measured]
    likelihood = suite.task == "qa" and "perplexity" in suite.metric_names and strategy.scores_likelihood
    judge_usage = np.zeros(3)  # input tokens, output tokens, seconds
    judge_errors: dict[str, int] = {}
    t1 = time.perf_counter()
    by_id = {e.id: e for e in test}
    # the prompts of the whole split, sorted by length once: every generation batch holds
    # prompts of similar length (less padding)
    sequence = [by_id[q.id] for q in strategy.order([e.to_query() for e in test])]
    with task_bar(f"{name}: answering", len(test)) as advance:
        for i in range(0, len(sequence), step):
            chunk = sequence[i:i + step]
            new = strategy.answer([e.to_query() for e in chunk])
            if len(new) != len(chunk):
                raise RuntimeError(f"strategy returned {len(new)} predictions for {len(chunk)} queries")
            preds.update({p.id: p for p in new})
            chunk_preds = [preds[e.id] for e in chunk]
            if suite.task == "qa":
                scores = M.score_qa(chunk, chunk_preds, metrics=suite.metric_names, doc_text=doc_text,
                                    embedder=suite.embedder.model, retrieves=strategy.retrieves)
                if likelihood:
                    try:
                        add_answer_nll(strategy, chunk, scores)
                    except NotMeasured as e:
                        not_measured["perplexity"] = str(e)
                        likelihood = False
                if judged:
                    judge_usage += add_judge_scores(res.judge(), judged, strategy.retrieves, chunk, chunk_preds,
                                                    scores, res.store, judge_errors)
            elif suite.task == "regression":
                scores = M.score_regression(chunk, chunk_preds)
            else:
                scores = M.score_classification(chunk, chunk_preds, labels=res.labels)
            rows_by_id.update({e.id: sc for e, sc in zip(chunk, scores)})
            run.append_samples([sample_row(name, e, p, s) for e, p, s in zip(chunk, chunk_preds, scores)])
            advance(len(chunk))
    answer_s = time.perf_counter() - t1
    single = strategy.single_latency([e.to_query() for e in test[:SINGLE_SAMPLE]])
    rows = [rows_by_id[e.id] for e in test]  # test order: aggregation pairs rows with gold labels
    if "perplexity" in not_measured:
        for r in rows:
            r.pop("answer_nll", None)
            r.pop("base_answer_nll", None)

    fp = strategy.fingerprint()
    # the parts' hashes let `serve` say what differs when it rebuilds an arm that is not as evaluated
    result: dict[str, Any] = {"type": stype, "status": "success", "fingerprint": content_hash(fp),
                              "fingerprint_parts": {k: content_hash(v, 12) for k, v in fp.items()},
                              "model": backend.describe()}
    if suite.task == "qa":
        agg = M.aggregate_qa(rows, metrics=suite.metric_names, seed=suite.seed)
    elif suite.task == "regression":
        agg = M.aggregate_regression(rows, metrics=suite.metric_names, seed=suite.seed)
        result["parse_failures"] = int(sum(r["parse_failure_rate"] for r in rows))
    else:
        agg, confusion = M.aggregate_classification(rows, [e.label for e in test], labels=res.labels,
                                                    metrics=suite.metric_names, seed=suite.seed)
        result["confusion_matrix"] = confusion
    result["metrics"] = {k: v.to_dict() for k, v in agg.items()}
    if rows and "base_answer_nll" in rows[0]:  # the same gold answers under the untrained base model
        result["perplexity_base"] = M.perplexity([r["base_answer_nll"] for r in rows],
                                                 [r["answer_tokens"] for r in rows], seed=suite.seed).to_dict()
    for m in judged:  # judged rows that still failed are counted, never averaged as 0
        missing = sum(1 for r in rows if isinstance(r.get(m), float) and r[m] != r[m])
        if missing:
            result.setdefault("unmeasured", {})[m] = missing
        if m not in agg:
            not_measured[m] = f"the judge's output could not be scored for any of the {len(rows)} examples"
    if not_measured:
        result["not_measured"] = not_measured
    result["not_applicable"] = [m for m in suite.metric_names if m not in agg and m not in not_measured]
    result["cost"] = arm_cost(strategy, [preds[e.id] for e in test], prepare_s, answer_s, single)
    if judged:
        result["cost"]["judge"] = {"input_tokens": int(judge_usage[0]), "output_tokens": int(judge_usage[1]),
                                   "seconds": round(float(judge_usage[2]), 3), "model": suite.judge.model}
        if judge_errors:
            result["cost"]["judge"]["errors"] = judge_errors
        usd = token_usd(suite.prices, judge_usage[0], judge_usage[1])
        if usd is not None:
            result["cost"]["judge"]["usd"] = usd
    result["info"] = {k: v for k, v in strategy.info.items() if k != "build_s"}
    head = ", ".join(f"{k} {v['mean']:.3f}" for k, v in list(result["metrics"].items())[:3])
    cached = result["cost"]["cached_answers"]
    log(f"[green]✓ {name}[/]: {head} · setup {result['cost']['setup_s']:.1f}s · p50 {result['cost']['latency_p50_s']:.2f}s"
        + (f" · {cached} of {len(test)} answers from the cache" if cached else ""))
    return result


def arm_cost(strategy, ordered: list, prepare_s: float, answer_s: float, single: list[float]) -> dict:
    """Setup, latency, tokens and money of one arm. An API arm's latency is per request (what a
    caller waits) and its money is tokens at the model's prices; a local arm's latency is its
    batch wall time, beside a measured one-request latency, and its money is compute time at
    the suite's $ per hour."""
    suite, gen = strategy.res.suite, strategy.gen_cfg
    lat = np.array([p.latency_s for p in ordered])
    build = strategy.info.get("build_s") or {}
    cost: dict[str, Any] = {
        "setup_s": round(sum(build.values()), 3) if build else round(prepare_s, 3),
        "setup_breakdown_s": {k: round(v, 3) for k, v in build.items()},
        "setup_s_this_run": round(prepare_s, 3),
        "answer_s_this_run": round(answer_s, 3),
        "latency_p50_s": float(np.percentile(lat, 50)), "latency_p95_s": float(np.percentile(lat, 95)),
        "latency_kind": "per batch" if strategy.backend().batched else "per request",
        "compute_s_per_answer": float(np.mean([p.compute_s for p in ordered])),
        "prompt_tokens_mean": float(np.mean([p.prompt_tokens for p in ordered])),
        "completion_tokens_mean": float(np.mean([p.completion_tokens for p in ordered])),
        "cached_answers": sum(bool(p.cached) for p in ordered),
    }
    if single:
        cost["single_request_latency_s"] = float(np.median(single))
        cost["single_request_sample"] = len(single)
    rate = suite.prices.gpu_per_hour if str(getattr(strategy.backend().backend, "device", "")).startswith("cuda") \
        else suite.prices.cpu_per_hour
    if gen.backend == "openai":
        cost["api_requests_concurrency"] = gen.concurrency
        if gen.input_per_1m_tokens is not None and gen.output_per_1m_tokens is not None:
            per_query = (cost["prompt_tokens_mean"] * gen.input_per_1m_tokens
                         + cost["completion_tokens_mean"] * gen.output_per_1m_tokens) / 1e6
            cost["usd_per_1k_queries"] = per_query * 1000
            # what was built here (an index, a few-shot pool) is billed at the local rate, if given
            cost["setup_usd"] = cost["setup_s"] / 3600 * rate if rate is not None else 0.0
            cost["usd_source"] = "the model's token prices"
    else:
        usd = token_usd(suite.prices, cost["prompt_tokens_mean"], cost["completion_tokens_mean"])
        if usd is not None:  # what these prompts and answers would cost at an API's token prices
            cost["api_usd_per_1k_queries"] = usd * 1000
        if rate is not None:  # measured seconds at the suite's $ per hour
            cost["usd_per_hour"] = rate
            cost["setup_usd"] = cost["setup_s"] / 3600 * rate
            cost["usd_per_1k_queries"] = cost["compute_s_per_answer"] * 1000 / 3600 * rate
            cost["usd_source"] = f"${rate:g}/h of compute"
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


def sample_row(arm: str, e: Example, p, scores: dict) -> dict:
    return {"strategy": arm, "id": e.id, "input": e.input, "target": e.target, "label": e.label,
            "context_ids": e.context_ids, "metadata": e.metadata, "output": p.output,
            "contexts": [{"doc_id": c.doc_id, "score": round(c.score, 4), "text": c.text} for c in p.contexts],
            "prompt_tokens": p.prompt_tokens, "completion_tokens": p.completion_tokens,
            "latency_s": round(p.latency_s, 4), "compute_s": round(p.compute_s, 4),
            "scores": {k: (None if isinstance(v, float) and v != v else v) for k, v in scores.items()},
            "cached": p.cached}
