"""run --folds K: every pooled example tested once, mean ± std across folds and the pooled
estimate with its CI, paired on the pooled examples, and a run killed with SIGKILL resumes."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
import yaml
from test_harness import CALLS, scripted  # noqa: F401  (fixture)

from tests.conftest import REPO, write_jsonl
from toolkit.data import Example
from toolkit.errors import UserError
from toolkit.folds import fold_ids, run_folds
from toolkit.suites import load_suite

LABELS = ["billing", "shipping", "refund"]


def test_folds_are_stratified_seeded_and_cover_every_example_once():
    pool = [Example(id=f"e{i}", input=f"q{i}", target=LABELS[i % 3], label=LABELS[i % 3]) for i in range(30)]
    folds, how = fold_ids(pool, 5, seed=0, stratify=True)
    assert sorted(i for f in folds for i in f) == sorted(e.id for e in pool) and len(folds) == 5
    label = {e.id: e.label for e in pool}
    assert all(Counter(label[i] for i in f) == {lab: 2 for lab in LABELS} for f in folds)
    assert "stratified by label" in how and fold_ids(pool, 5, seed=0, stratify=True)[0] == folds
    assert fold_ids(pool, 5, seed=1, stratify=True)[0] != folds
    rare = pool + [Example(id="r", input="r", target="rare", label="rare")]
    assert "not stratified" in fold_ids(rare, 5, seed=0, stratify=True)[1]
    # more labels than folds still stratifies; a repeated question stays in one fold
    six = [Example(id=f"s{i}", input=f"Question {i // 2}?" if i < 4 else f"q{i}", target=f"l{i % 6}",
                   label=f"l{i % 6}") for i in range(60)]
    folds, how = fold_ids(six, 5, seed=0, stratify=True)
    assert "stratified by label" in how
    assert all(Counter(i for i in f) and len({int(i[1:]) % 6 for i in f}) == 6 for f in folds)
    where = {i: n for n, f in enumerate(folds) for i in f}
    assert where["s0"] == where["s1"] and where["s2"] == where["s3"]


def five_fold_suite(tmp_path, tiny_llama, arms=None):
    rows = [{"question": f"ticket {i}", "label": LABELS[i % 3]} for i in range(30)]
    write_jsonl(tmp_path / "train.jsonl", rows[:18])
    write_jsonl(tmp_path / "validation.jsonl", rows[18:21])
    write_jsonl(tmp_path / "test.jsonl", rows[21:])
    right = {r["question"]: r["label"] for r in rows}
    half = {q: (lab if int(q.split()[1]) % 2 else "billing") for q, lab in right.items()}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump({
        "name": "tickets", "task": "classification", "instruction": "Classify.", "labels": LABELS,
        "data": {"train": "train.jsonl", "validation": "validation.jsonl", "test": "test.jsonl"},
        "generator": {"model": str(tiny_llama)},
        "strategies": arms or {"good": {"type": "scripted", "answers": right},
                               "half": {"type": "scripted", "answers": half}},
        "metrics": ["accuracy", "macro_f1"]}))
    return load_suite(tmp_path / "suite.yaml")


def test_five_folds_pool_every_example_and_give_mean_std_and_a_pooled_ci(tmp_path, tiny_llama, scripted):  # noqa: F811
    parent, summary = run_folds(five_fold_suite(tmp_path, tiny_llama), 5, out=tmp_path / "cv")
    assert summary["folds"] == 5 and summary["pooled_examples"] == 30
    tested = []
    for k in range(5):
        res = json.loads((parent / f"fold-{k}" / "results.json").read_text())
        assert res["status"] == "success" and res["data"]["test"] == 6 and res["data"]["validation"] == 3
        assert res["data"]["train"] == 21
        tested += [json.loads(l)["id"] for l in (parent / f"fold-{k}" / "samples.jsonl").read_text().splitlines()
                   if '"good"' in l]
    assert len(tested) == len(set(tested)) == 30  # each example tested exactly once
    good, half = summary["arms"]["good"]["accuracy"], summary["arms"]["half"]["accuracy"]
    assert good["mean"] == 1.0 and good["std"] == 0.0 and good["n_folds"] == 5
    # "half" answers billing on every even ticket: right on the odd ones and on the billing ones
    expected = sum(1 for i in range(30) if i % 2 or i % 3 == 0) / 30
    assert half["pooled"]["mean"] == pytest.approx(expected)
    assert half["pooled"]["ci_low"] < expected < half["pooled"]["ci_high"] and half["pooled"]["n"] == 30
    assert len(half["values"]) == 5 and half["std"] > 0
    assert summary["arms"]["half"]["macro_f1"]["pooled"]["n"] == 30  # corpus-level metrics pool too
    pair = summary["paired"][0]
    assert {pair["a"], pair["b"]} == {"good", "half"} and pair["n"] == 30 and not pair["tied"]
    md = (parent / "folds.md").read_text()
    assert "5-fold cross-validation (5 folds stratified by label, seed 0)" in md and "pooled 1.000" in md
    # the same --out again: a finished k-fold run is refused, not overwritten
    with pytest.raises(UserError, match="finished k-fold run"):
        run_folds(five_fold_suite(tmp_path, tiny_llama), 5, out=tmp_path / "cv")
    with pytest.raises(UserError, match="another suite, data, --folds"):
        run_folds(five_fold_suite(tmp_path, tiny_llama), 3, out=tmp_path / "cv")


def test_extra_train_rows_train_every_fold_and_are_never_tested(tmp_path, tiny_llama, scripted):  # noqa: F811
    five_fold_suite(tmp_path, tiny_llama)
    # production feedback: two new questions and a copy of a train question (ticket 0)
    write_jsonl(tmp_path / "feedback.jsonl", [{"question": "ticket 100", "label": "refund"},
                                              {"question": "ticket 101", "label": "billing"},
                                              {"question": "Ticket 0!", "label": "billing"}])
    raw = yaml.safe_load((tmp_path / "suite.yaml").read_text())
    raw["data"]["extra_train"] = ["feedback.jsonl"]
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(raw))
    parent, summary = run_folds(load_suite(tmp_path / "suite.yaml"), 5, out=tmp_path / "cv")
    assert summary["pooled_examples"] == 30
    tested: set[str] = set()
    for k in range(5):
        res = json.loads((parent / f"fold-{k}" / "results.json").read_text())
        questions = {json.loads(line)["input"]
                     for line in (parent / f"fold-{k}" / "samples.jsonl").read_text().splitlines()}
        tested |= questions
        # 21 pooled rows + the two new questions + the copy of ticket 0 unless this fold tests ticket 0
        assert res["data"]["train"] == 21 + 2 + ("ticket 0" not in questions), (k, res["data"])
    assert len(tested) == 30 and not tested & {"ticket 100", "ticket 101", "Ticket 0!"}


def test_bad_fold_requests_are_one_line_errors(tmp_path, tiny_llama):
    five_fold_suite(tmp_path, tiny_llama, arms={"zero_shot": {}})
    env = {**os.environ, "ADAPTBENCH_DATA_DIR": ""}
    for args, msg in ((["--folds", "1"], "--folds: must be at least 2"),
                      (["--folds", "3", "--seeds", "2"], "--folds"),
                      (["--folds", "3", "--limit", "4"], "--folds"),
                      (["--folds", "40"], "cannot make 40 folds")):
        r = subprocess.run([sys.executable, "-m", "toolkit.cli", "run", str(tmp_path / "suite.yaml"), *args, "-q",
                            "--no-data-check", "-o", str(tmp_path / "out")],
                           capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
        assert not (tmp_path / "out").exists()


def test_a_k_fold_run_killed_with_sigkill_resumes_keeping_the_finished_folds(tmp_path, tiny_llama):
    loaded_dir = tmp_path / "suite"
    loaded_dir.mkdir()
    five_fold_suite(loaded_dir, tiny_llama, arms={
        "zero_shot": {}, "finetune": {"num_train_epochs": 4, "r": 4, "max_seq_length": 64, "eval_strategy": "no",
                                      "per_device_train_batch_size": 2}})
    out = tmp_path / "cv"
    cmd = [sys.executable, "-m", "toolkit.cli", "run", str(loaded_dir / "suite.yaml"), "--folds", "3",
           "--no-data-check", "-o", str(out)]
    env = {**os.environ, "ADAPTBENCH_CACHE": str(tmp_path / "cache"), "ADAPTBENCH_QUIET": ""}  # the log says what it kept
    p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = out / "fold-0" / "results.json"
    deadline = time.time() + 240
    while time.time() < deadline and p.poll() is None:
        if first.exists() and json.loads(first.read_text())["status"] == "success":  # the run's, not an arm's
            break
        time.sleep(0.05)
    assert p.poll() is None, p.communicate()[1][-2000:]
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not (out / "folds.json").exists()
    kept = first.stat().st_mtime_ns
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "fold 1/3: finished before, kept" in r.stderr.replace("\n", " ")
    assert first.stat().st_mtime_ns == kept
    summary = json.loads((out / "folds.json").read_text())
    assert summary["pooled_examples"] == 30 and set(summary["statuses"].values()) == {"success"}
    ids = [json.loads(l)["id"] for k in range(3) for l in (out / f"fold-{k}" / "samples.jsonl").read_text().splitlines()
           if '"zero_shot"' in l]
    assert len(ids) == len(set(ids)) == 30
