"""Ensembles of arms: the members' answers of the run combined without a model call, scored,
costed as the members' sum, paired with each member, and refused where they cannot work."""

import json

import numpy as np
import pytest
import yaml
from test_harness import CALLS, scripted  # noqa: F401  (fixture)

from tests.conftest import write_jsonl
from toolkit.errors import UserError
from toolkit.harness import run_suite
from toolkit.reporting.report import render_run
from toolkit.suites import load_suite

LABELS = ["billing", "shipping", "refund"]


def label_suite(tmp_path, tiny_llama, ensemble: dict, *, mode: str = "generate", extra_arms: dict | None = None):
    """30 test questions, three scripted members that are each wrong on a different third
    (so a majority of the three is always right), and the ensemble arm `vote`."""
    rows = [{"question": f"ticket {i}", "label": LABELS[i % 3]} for i in range(30)]
    write_jsonl(tmp_path / "train.jsonl", [{**r, "question": "train " + r["question"]} for r in rows[:6]])
    write_jsonl(tmp_path / "test.jsonl", rows)
    arms = {}
    for k, name in enumerate(["a", "b", "c"]):
        answers, probs = {}, {}
        for i, r in enumerate(rows):
            wrong = i % 3 == k  # member k errs on every third question, a different third each
            ans = LABELS[(i + 1) % 3] if wrong else r["label"]
            answers[r["question"]] = f"The intent is {ans}."
            p = {lab: 0.1 for lab in LABELS}
            p[ans] = 0.8
            probs[r["question"]] = p
        arms[name] = {"type": "scripted", "answers": answers, "probs": probs if mode == "likelihood" else {}}
    arms.update(extra_arms or {})
    arms["vote"] = {"type": "ensemble", "members": ["a", "b", "c"], **ensemble}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump({
        "name": "tickets", "task": "classification", "instruction": "Classify.", "labels": LABELS,
        "classification_mode": mode, "data": {"train": "train.jsonl", "test": "test.jsonl"},
        "generator": {"model": str(tiny_llama)}, "strategies": arms}, sort_keys=False))
    return load_suite(tmp_path / "suite.yaml")


def test_majority_vote_combines_the_members_answers_without_asking_any_model(tmp_path, tiny_llama, scripted):  # noqa: F811
    loaded = label_suite(tmp_path, tiny_llama, {"method": "majority"})
    run, res = run_suite(loaded, out=tmp_path / "run")
    assert res.status == "success"
    calls = list(CALLS)
    acc = {n: a.metrics["accuracy"].mean for n, a in res.strategies.items()}
    assert acc["a"] == acc["b"] == acc["c"] == pytest.approx(2 / 3) and acc["vote"] == 1.0
    # the members answered (in chunks); the ensemble added no call of its own
    assert sum(calls) == 3 * 30
    vote = res.strategies["vote"]
    assert vote.type == "ensemble" and vote.info.members == ["a", "b", "c"] and vote.info.ensemble_method == "majority"
    assert sum(vote.info.answers_taken.values()) == 30
    # its cost is its members' together
    members = [res.strategies[m].cost for m in "abc"]
    assert vote.cost.setup_s == pytest.approx(sum(c.setup_s for c in members), abs=1e-3)
    assert vote.cost.compute_s_per_answer == pytest.approx(sum(c.compute_s_per_answer for c in members))
    assert vote.cost.prompt_tokens_mean == pytest.approx(3 * 3)
    samples = [json.loads(l) for l in (run.path / "samples.jsonl").read_text().splitlines()]
    assert sum(s["strategy"] == "vote" for s in samples) == 30
    md, html = render_run(run.path)
    page, text = html.read_text(), md.read_text()
    # paired with each member, and the verdict on its cost
    assert "<td>vote</td><td>a</td>" in page or "<td>a</td><td>vote</td>" in page
    assert 'id="ensembles"' in page and "vote (majority of a, b, c) beats its best member" in text
    assert "3.0× a's cost per query" in text


def test_weighted_and_soft_votes_follow_their_weights(tmp_path, tiny_llama, scripted):  # noqa: F811
    # weight 0 for b and c: the vote is a's answer every time
    run, res = run_suite(label_suite(tmp_path, tiny_llama, {"method": "weighted", "weights": {"a": 1, "b": 0, "c": 0}}),
                         out=tmp_path / "run")
    assert res.strategies["vote"].metrics["accuracy"].mean == pytest.approx(2 / 3)
    assert res.strategies["vote"].info.answers_taken == {"a": 30, "b": 0, "c": 0}
    # soft voting averages the label probabilities; the ensemble's own probabilities give roc_auc
    run, res = run_suite(label_suite(tmp_path / "soft", tiny_llama, {"method": "likelihood_mean"}, mode="likelihood"),
                         out=tmp_path / "run2")
    vote = res.strategies["vote"]
    assert vote.metrics["accuracy"].mean == 1.0 and "roc_auc" in vote.metrics
    row = next(json.loads(l) for l in (run.path / "samples.jsonl").read_text().splitlines() if '"vote"' in l)
    assert sum(row["scores"]["label_probs"].values()) == pytest.approx(1.0)
    assert row["scores"]["label_probs"][row["label"]] == pytest.approx((0.8 + 0.8 + 0.1) / 3)


def test_naming_only_the_ensemble_runs_its_members_first(tmp_path, tiny_llama, scripted, monkeypatch):  # noqa: F811
    import toolkit.harness as H
    said = []
    monkeypatch.setattr(H, "log", lambda msg, *a, **k: said.append(msg))
    run, res = run_suite(label_suite(tmp_path, tiny_llama, {}), only=["vote"], out=tmp_path / "run")
    assert list(res.strategies) == ["a", "b", "c", "vote"]
    assert any("the ensemble vote also runs a, b, c" in m for m in said)


def test_a_failed_member_fails_the_ensemble_and_keeps_the_others(tmp_path, tiny_llama, scripted):  # noqa: F811
    loaded = label_suite(tmp_path, tiny_llama, {"members": ["a", "broken"]},
                         extra_arms={"broken": {"type": "scripted", "fail": True}})
    run, res = run_suite(loaded, out=tmp_path / "run")
    assert res.strategies["a"].status == "success" and res.strategies["vote"].status == "error"
    assert "member 'broken' has no answers" in res.strategies["vote"].error


def test_qa_majority_votes_on_normalised_answers(tmp_path, tiny_llama, scripted):  # noqa: F811
    write_jsonl(tmp_path / "train.jsonl", [{"question": "train q", "answer": "x"}])
    write_jsonl(tmp_path / "test.jsonl", [{"question": "Capital of France?", "answer": "Paris"},
                                          {"question": "2+2?", "answer": "4"}])
    arms = {"a": {"type": "scripted", "answers": {"Capital of France?": "Paris.", "2+2?": "5"}},
            "b": {"type": "scripted", "answers": {"Capital of France?": "Lyon", "2+2?": "4"}},
            "c": {"type": "scripted", "answers": {"Capital of France?": "the paris", "2+2?": "four"}},
            "vote": {"type": "ensemble", "members": ["a", "b", "c"]}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({
        "name": "qa", "task": "qa", "instruction": "Answer.", "data": {"train": "train.jsonl", "test": "test.jsonl"},
        "generator": {"model": str(tiny_llama)}, "strategies": arms, "metrics": ["exact_match"]}))
    run, res = run_suite(load_suite(tmp_path / "s.yaml"), out=tmp_path / "run")
    out = {json.loads(l)["input"]: json.loads(l)["output"] for l in (run.path / "samples.jsonl").read_text().splitlines()
           if json.loads(l)["strategy"] == "vote"}
    # "Paris." and "the paris" agree after normalisation: a's wording wins; 5 / 4 / four tie: the first member's
    assert out == {"Capital of France?": "Paris.", "2+2?": "5"}
    assert res.strategies["vote"].metrics["exact_match"].mean == 0.5


@pytest.mark.parametrize("ensemble, mode, message", [
    ({"members": ["a", "nope"]}, "generate", "'nope' is not an arm of this suite"),
    ({"members": ["a", "vote"]}, "generate", "cannot be its own member"),
    ({"members": ["a"]}, "generate", "at least 2"),
    ({"members": ["a", "a"]}, "generate", "listed twice"),
    ({"method": "likelihood_mean"}, "generate", "classification_mode: likelihood"),
    ({"method": "best_of"}, "generate", "task: qa"),
    ({"method": "weighted", "weights": {"z": 1}}, "generate", "not a member"),
    ({"method": "weighted", "weights": {"a": -1}}, "generate", ">= 0"),
    ({"method": "weighted", "weights": {"a": float("inf")}}, "generate", "finite"),
    ({"method": "majority", "weights": {"a": 2}}, "generate", "not majority"),
    ({"method": "vibes"}, "generate", "method"),
])
def test_bad_ensembles_are_refused_with_their_line(tmp_path, tiny_llama, scripted, ensemble, mode, message):  # noqa: F811
    with pytest.raises(UserError, match=message) as e:
        label_suite(tmp_path, tiny_llama, ensemble, mode=mode)
    assert "suite.yaml" in str(e.value) and "strategies.vote" in str(e.value)


def test_an_ensemble_of_ensembles_and_serving_one_are_refused(tmp_path, tiny_llama, scripted):  # noqa: F811
    with pytest.raises(UserError, match="is an ensemble itself"):
        label_suite(tmp_path, tiny_llama, {}, extra_arms={"v2": {"type": "ensemble", "members": ["vote", "a"]}})
    (tmp_path / "suite.yaml").unlink()
    run, _ = run_suite(label_suite(tmp_path / "s", tiny_llama, {}), out=tmp_path / "run")
    from toolkit.serving.arms import check_arms
    with pytest.raises(UserError, match="serve one of its members.*--arm a --arm b --arm c"):
        check_arms(run.path, ["vote"])


def test_decision_counts_an_ensembles_members_knowledge_update_and_data(tmp_path, tiny_llama, scripted):  # noqa: F811
    from toolkit.reporting.decision import criteria
    run, res = run_suite(label_suite(tmp_path, tiny_llama, {}), out=tmp_path / "run")
    raw = criteria(res)
    assert raw["vote"]["data_needed"] == max(raw[m]["data_needed"] for m in "abc")
    assert np.isfinite(raw["vote"]["cost_per_query"])
