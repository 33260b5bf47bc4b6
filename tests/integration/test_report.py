"""Recommendation, paired statistics, run-to-run comparison: from run directories only."""

import json
import subprocess
import sys

import numpy as np
import pytest
from test_harness import SCRIPT, make_suite, scripted  # noqa: F401  (fixture)

from tests.conftest import REPO
from toolkit.harness import run_suite
from toolkit.records import RunResults, Sample
from toolkit.reporting import decision
from toolkit.scoring import stats


def fake_results(arms: dict[str, tuple[float, float, float, float]]) -> RunResults:
    """arms: name -> (token_f1 mean, setup_s, p50 latency, compute_s per answer)."""
    return RunResults.model_validate({
        "suite": "fake", "status": "success", "started": "2026-01-01T00:00:00+00:00", "task": "qa",
        "data": {"train": 10, "validation": 0, "test": 100, "test_scored": 100},
        "metrics_order": ["token_f1"], "strategies": {
            n: {"type": "rag" if "rag" in n else "zero_shot", "status": "success",
                "metrics": {"token_f1": {"mean": q, "ci_low": q - 0.05, "ci_high": q + 0.05, "n": 100}},
                "cost": {"setup_s": s, "latency_p50_s": lat, "latency_p95_s": lat, "compute_s_per_answer": c,
                         "prompt_tokens_mean": 10, "completion_tokens_mean": 5, "setup_breakdown_s": {"index": s}}}
            for n, (q, s, lat, c) in arms.items()}})


def samples_of(rows: list[dict]) -> list[Sample]:
    """samples.jsonl rows from the fields a test cares about."""
    return [Sample.model_validate({"input": "", "output": "", **r}) for r in rows]


def test_weights_decide_and_sensitivity_finds_the_switch():
    res = fake_results({"cheap": (0.60, 0.0, 0.5, 0.05), "rag": (0.80, 60.0, 2.0, 0.2)})
    assert decision.decide(res, {"quality": 1.0, "latency": 0, "cost_per_query": 0, "setup": 0,
                                 "knowledge_update": 0, "data_needed": 0}).winner == "rag"
    assert decision.decide(res, {"quality": 0.0}).winner == "cheap"
    rows = {r["criterion"]: r["winners"] for r in decision.sensitivity(res)}
    q = rows["quality"]
    assert q[0][1] == "cheap" and q[-1][1] == "rag" and 0 < q[-1][0] < 1  # the switch point is reported


def test_parse_weights_errors():
    from toolkit.errors import UserError
    assert decision.parse_weights("quality=0.7, latency=0.1") == {"quality": 0.7, "latency": 0.1}
    with pytest.raises(UserError, match="unknown criterion"):
        decision.parse_weights("vibes=1")
    with pytest.raises(UserError, match="not a number"):
        decision.parse_weights("quality=high")


def test_paired_bootstrap_and_mcnemar():
    rng = np.random.default_rng(0)
    a = (rng.random(300) < 0.7).astype(float)
    b = a.copy()
    flip = rng.choice(300, 60, replace=False)
    b[flip] = 0.0  # b is worse on up to 60 examples
    d, lo, hi, p = stats.paired_bootstrap(a, b)
    assert d > 0 and lo > 0 and p < 0.01
    assert stats.mcnemar(a, b) < 0.01
    d, lo, hi, p = stats.paired_bootstrap(a, a)
    assert d == 0 and p == 1.0 and lo <= 0 <= hi
    assert stats.mcnemar(a, a) == 1.0


def thirty_question_suite(tmp_path, tiny_llama, answers: dict):
    import yaml

    from tests.conftest import write_jsonl
    from toolkit.suites import load_suite
    write_jsonl(tmp_path / "train.jsonl", [{"question": "train q", "answer": "x"}])
    write_jsonl(tmp_path / "test.jsonl", [{"question": f"Q{i}?", "answer": f"A{i}"} for i in range(30)])
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({
        "name": "thirty", "task": "qa", "instruction": "Answer.", "data": {"train": "train.jsonl", "test": "test.jsonl"},
        "generator": {"model": str(tiny_llama)}, "strategies": {"echo": {"type": "scripted", "answers": answers}}}))
    return load_suite(tmp_path / "s.yaml")


def test_compare_flags_regressions_and_gates_ci(tmp_path, tiny_llama, scripted):  # noqa: F811
    right = {f"Q{i}?": f"A{i}" for i in range(30)}
    run_a, _ = run_suite(thirty_question_suite(tmp_path, tiny_llama, right), out=tmp_path / "a")
    half = {f"Q{i}?": f"A{i}" for i in range(15)}
    run_b, _ = run_suite(thirty_question_suite(tmp_path, tiny_llama, half), out=tmp_path / "b")
    from toolkit.reporting.compare import compare_runs, list_runs
    cmp = compare_runs([run_a.path, run_b.path])
    f1 = next(r for r in cmp["rows"] if r["metric"] == "token_f1")
    assert f1["regression"] and f1["diff"] < 0 and f1["how"].startswith("paired")
    assert {r["run"] for r in list_runs(tmp_path)} == {str(run_a.path), str(run_b.path)}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "toolkit.cli", "compare", *map(str, args)],
                              cwd=REPO, capture_output=True, text=True)

    r = cli(run_a.path, run_b.path, "--fail-on-regression", "token_f1", "-o", tmp_path / "cmp")
    assert r.returncode == 3 and "regression: echo token_f1" in r.stderr
    assert (tmp_path / "cmp" / "compare.html").exists() and json.loads((tmp_path / "cmp" / "compare.json").read_text())["rows"]
    assert cli(run_a.path, run_a.path, "--fail-on-regression", "token_f1", "-o", tmp_path / "cmp2").returncode == 0
    r = cli(run_a.path, run_b.path, "--fail-on-regression", "bleu", "-o", tmp_path / "cmp3")
    assert r.returncode == 2 and "bleu" in r.stderr


def test_report_weights_override_changes_recommendation(tmp_path, tiny_llama, scripted):  # noqa: F811
    from toolkit.reporting.report import build
    loaded = make_suite(tmp_path, tiny_llama, {"good": {"type": "scripted", "answers": SCRIPT},
                                           "none": {"type": "scripted", "answers": {}}})
    run, _ = run_suite(loaded, out=tmp_path / "run")
    ctx = build(run.path)
    assert ctx["decision"].winner == "good" and ctx["recommendation"][0].startswith("Use good:")
    assert ctx["paired"]["exact_match"][0]["n"] == 4
    assert build(run.path, {"quality": 0.0, "data_needed": 1.0})["decision"] is not None


def test_prices_turn_seconds_into_dollars(tmp_path, tiny_llama, scripted):  # noqa: F811
    import yaml

    from toolkit.reporting.report import build, render_run
    from toolkit.suites import load_suite
    loaded = make_suite(tmp_path, tiny_llama, {"echo": {"type": "scripted", "answers": SCRIPT}})
    raw = yaml.safe_load(loaded.path.read_text())
    raw["prices"] = {"cpu_per_hour": 3.6, "gpu_per_hour": 7.2}
    loaded.path.write_text(yaml.safe_dump(raw))
    run, res = run_suite(load_suite(loaded.path), out=tmp_path / "run")
    c = res.strategies["echo"].cost
    rate = 7.2 if res.device.startswith("cuda") else 3.6
    assert c.usd_per_1k_queries == pytest.approx(c.compute_s_per_answer * 1000 / 3600 * rate)
    assert "per 1,000 queries at $" in " ".join(build(run.path)["recommendation"])
    _, html = render_run(run.path)
    assert "$ per 1,000 queries" in html.read_text()


@pytest.mark.parametrize("expected, words", [
    (10_000, "few_shot is within the margin of error and cheaper to set up (6.6 s against 12.7 min), but finetune "
             "costs less per query and is cheaper from about 304 queries on (10,000 expected)"),
    (100, "A cheaper choice within the margin of error: few_shot"),
])
def test_cheaper_means_cheaper_over_the_expected_volume_with_the_break_even(expected, words):
    from toolkit.reporting.report import recommendation

    # the held-out classification case: few_shot is quick to set up but slow per query
    res = fake_results({"finetune": (0.81, 762.0, 0.2, 0.108), "few_shot": (0.80, 6.59, 2.6, 2.592)})
    res.strategies["finetune"].type, res.strategies["few_shot"].type = "finetune", "few_shot"
    res.expected_queries, res.expected_queries_is_default = expected, expected == 10_000
    samples = samples_of([{"strategy": a, "id": str(i), "scores": {"token_f1": float(i % 2)}}
                          for a in ("finetune", "few_shot") for i in range(40)])  # the same answers: tied
    text = " ".join(recommendation(res, samples))
    assert text.startswith("Use finetune") and words in text, text
    if expected == 100:
        assert "beyond about 304 queries finetune is cheaper" in text
    assert ("10,000 expected queries (decision.expected_queries, the default)" in text) == (expected == 10_000)


def test_retrieval_split_separates_missed_passages_from_unread_ones():
    from toolkit.reporting.report import quotes_passage, retrieval_split

    passage = {"doc_id": "d1", "score": 0.9, "text": "The Alder 3 was launched in   2011 by the Kestlewick works."}
    other = {"doc_id": "d2", "score": 0.5, "text": "Unrelated text."}

    def row(arm, i, hit, f1, output):
        return {"strategy": arm, "id": f"q{i}", "output": output, "contexts": [passage if hit else other],
                "scores": {"hit_at_k": float(hit), "token_f1": f1}}

    rows = [row("rag", 0, True, 1.0, "The Alder 3 was launched in 2011"), row("rag", 1, True, 0.5, "In 2011."),
            row("rag", 2, False, 0.0, "No idea"), row("zero_shot", 0, False, 0.2, "x")]
    rows[-1]["contexts"] = []
    (r,) = retrieval_split(samples_of(rows), "token_f1", ["rag", "zero_shot"])
    assert r == {"arm": "rag", "n_hit": 2, "n_miss": 1, "on_hit": 0.75, "on_miss": 0.0, "quoted": 1, "n": 3}
    (ctx,) = samples_of([{"strategy": "rag", "id": "p", "contexts": [passage]}])[0].contexts
    assert not quotes_passage("", [ctx]) and quotes_passage("Kestlewick  works.", [ctx])


def test_seeds_summary_says_whether_the_test_set_was_shared(tmp_path):
    from toolkit.seeds import render, summarise

    runs = []
    for seed, acc in ((0, 0.5), (1, 0.7)):
        d = tmp_path / f"seed-{seed}"
        d.mkdir()
        (d / "samples.jsonl").write_text("".join(
            json.dumps({"id": i, "strategy": "few_shot", "input": "", "output": ""}) + "\n" for i in "ab"))
        res = fake_results({"few_shot": (acc, 1.0, 1.0, 1.0)})
        res.metrics_order = ["accuracy"]
        res.strategies["few_shot"].metrics = {"accuracy": res.strategies["few_shot"].metrics["token_f1"]}
        runs.append((seed, d, res))
    summary = summarise(runs)
    assert summary["same_test_set"] is True
    assert summary["arms"]["few_shot"]["accuracy"]["std"] == pytest.approx(0.1414, abs=1e-4)
    assert "same in every seed" in render(summary)


def test_corpus_level_metrics_are_compared_by_resampling_examples():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    gold = [["cat", "dog", "fox"][i % 3] for i in range(60)]
    good = [g if rng.random() < 0.9 else "dog" for g in gold]
    bad = [g if rng.random() < 0.4 else None for g in gold]  # None: an output mapped to no label
    rows = [{"strategy": arm, "id": str(i), "label": g,
             "scores": {"accuracy": float(p == g), "mapped_label": p, "answer_nll": 2.0 + (arm == "bad"),
                        "answer_tokens": 2}}
            for arm, preds in (("good", good), ("bad", bad)) for i, (g, p) in enumerate(zip(gold, preds))]
    samples = samples_of(rows)
    [pair] = stats.compare_arms(samples, "macro_f1")
    expected = (f1_score(gold, good, average="macro")
                - f1_score(gold, [p or "(none)" for p in bad], labels=["cat", "dog", "fox"], average="macro"))
    assert pair.diff == pytest.approx(expected, abs=0.02) and pair.a_better and pair.ci_low > 0
    [ppl] = stats.compare_arms(samples, "perplexity")  # lower is better: "good" (e^1) beats "bad" (e^1.5)
    assert ppl.diff == pytest.approx(np.exp(1.0) - np.exp(1.5)) and ppl.a_better and not ppl.higher_is_better
    # a run whose samples lack what a corpus metric needs gets no pair, so no claimed win
    assert stats.compare_arms(samples_of([{**s, "scores": {"accuracy": 1.0}} for s in rows]), "macro_f1") == []


def test_many_labels_get_the_most_confused_pairs_not_a_wall_of_cells(tmp_path, tiny_llama, scripted):  # noqa: F811
    """Above 20 labels the report lists the most confused (gold, predicted) pairs with an example
    each, and draws the matrix of only the labels involved."""
    import yaml

    from tests.conftest import write_jsonl
    from toolkit.reporting.report import render_run
    from toolkit.suites import load_suite

    labels = [f"intent_{i:02d}" for i in range(25)]
    rows = [{"question": f"q{j} about {l}", "label": l} for l in labels for j in range(2)]
    write_jsonl(tmp_path / "train.jsonl", [{**r, "question": "train " + r["question"]} for r in rows])
    write_jsonl(tmp_path / "test.jsonl", rows)
    answers = {r["question"]: r["label"] for r in rows}
    answers.update({"q0 about intent_00": "intent_01", "q1 about intent_00": "intent_01",
                    "q0 about intent_02": "intent_03"})
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump({
        "name": "many", "task": "classification", "instruction": "Classify.", "labels": labels,
        "data": {"train": "train.jsonl", "test": "test.jsonl"},
        "generator": {"model": str(tiny_llama)},
        "strategies": {"script": {"type": "scripted", "answers": answers}}}))
    run, res = run_suite(load_suite(tmp_path / "suite.yaml"), out=tmp_path / "run")
    assert res.status == "success"
    md, html = render_run(run.path)
    page = html.read_text()
    assert 'id="confused"' in page and "Most confused labels: script (4 of 25)" in page
    first = page.index("intent_00</td><td class=\"text\">intent_01</td><td>2</td>")
    assert first < page.index("intent_02</td><td class=\"text\">intent_03</td><td>1</td>")
    assert "q0 about intent_00" in page[first:first + 400]
    assert "- intent_00 → intent_01: 2" in md.read_text()


def binary_probs_suite(tmp_path, tiny_llama, positive: str | None = None):
    """A two-label suite whose two scripted arms answer with label probabilities (as likelihood
    arms do): 'sharp' ranks the labels well and is overconfident, 'blunt' ranks them worse."""
    import yaml

    from tests.conftest import write_jsonl
    from toolkit.suites import load_suite

    rng = np.random.default_rng(0)
    rows = [{"question": f"message {i}", "label": "spam" if i % 3 == 0 else "ham"} for i in range(60)]
    write_jsonl(tmp_path / "train.jsonl", [{**r, "question": "train " + r["question"]} for r in rows[:10]])
    write_jsonl(tmp_path / "test.jsonl", rows)
    arms = {}
    for name, signal in (("sharp", 0.45), ("blunt", 0.1)):
        probs, answers = {}, {}
        for r in rows:
            p = float(np.clip(0.5 + (signal if r["label"] == "spam" else -signal) + rng.normal(0, 0.25), 0.01, 0.99))
            probs[r["question"]] = {"spam": round(p, 4), "ham": round(1 - p, 4)}
            answers[r["question"]] = "spam" if p >= 0.5 else "ham"
        arms[name] = {"type": "scripted", "answers": answers, "probs": probs}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump({
        "name": "binary", "task": "classification", "instruction": "Spam or ham?", "labels": ["ham", "spam"],
        **({"positive_label": positive} if positive else {}),
        "data": {"train": "train.jsonl", "test": "test.jsonl"}, "generator": {"model": str(tiny_llama)},
        "strategies": arms, "metrics": ["accuracy", "macro_f1", "roc_auc", "average_precision", "ece"]}))
    return load_suite(tmp_path / "suite.yaml")


def test_label_probabilities_draw_roc_pr_calibration_and_a_threshold_table(tmp_path, tiny_llama, scripted):  # noqa: F811
    from toolkit.reporting.report import render_run

    run, res = run_suite(binary_probs_suite(tmp_path, tiny_llama), out=tmp_path / "run")
    assert res.status == "success"
    sharp, blunt = res.strategies["sharp"].metrics, res.strategies["blunt"].metrics
    assert sharp["roc_auc"].mean > blunt["roc_auc"].mean and sharp["ece"].ci_low <= sharp["ece"].mean
    md, html = render_run(run.path)
    page, text = html.read_text(), md.read_text()
    assert 'id="label-scores"' in page and 'id="fig-reliability"' in page
    assert 'id="fig-roc"' in page and 'id="fig-pr"' in page
    assert f"AUC {sharp['roc_auc'].mean:.2f}" in page and "Calibration (reliability diagram)" in page
    # the rarer label (spam: 20 of 60) is the positive one; one row per threshold and a best-F1 row
    assert page.count('class="thresholds"') == 2 and "answer “spam” when p ≥" in page
    assert "Threshold table of sharp: answer `spam`" in text and "(20 `spam` and 40 other test examples)" in text
    assert "best F1 on this test split" in text and "the arm's own answer" in text

    # positive_label picks the other label; one outside the labels is refused with its line
    run2, _ = run_suite(binary_probs_suite(tmp_path / "b", tiny_llama, positive="ham"), out=tmp_path / "run2")
    assert "answer `ham` when its probability" in render_run(run2.path)[0].read_text()
    from toolkit.errors import UserError
    with pytest.raises(UserError, match="positive_label"):
        binary_probs_suite(tmp_path / "c", tiny_llama, positive="eggs")


def test_generated_answers_draw_no_label_curves(tmp_path, tiny_llama, scripted):  # noqa: F811
    from toolkit.reporting.report import render_run
    loaded = binary_probs_suite(tmp_path, tiny_llama)
    for arm in loaded.arms.values():
        arm[1].probs = {}
    run, res = run_suite(loaded, out=tmp_path / "run")
    assert "roc_auc" in res.strategies["sharp"].not_applicable
    page = render_run(run.path)[1].read_text()
    assert 'id="label-scores"' not in page and "fig-roc" not in page
    assert 'id="no-label-scores"' in page and "classification_mode: likelihood" in page  # and how to get them
