"""The run record: typed, versioned, read only through RunDir; older versions migrate,
newer ones are refused, damaged ones are one-line errors."""

from __future__ import annotations

import json

import pytest

from toolkit.errors import UserError
from toolkit.records import RESULTS_VERSION, ArmResult, RunResults, Sample, migrate
from toolkit.runs import RunDir

# results.json as adaptbench wrote it before records had a version (fields of that time only)
V1 = {
    "suite": "demo", "status": "success", "started": "2026-11-01T10:00:00+00:00", "finished": "2026-11-01T10:05:00+00:00",
    "task": "qa", "description": None, "generator": "smollm2-135m-instruct", "embedder": "all-minilm-l6-v2",
    "device": "cpu", "dtype": "bfloat16", "expected_queries": 10000,
    "data": {"train": 40, "validation": 8, "test": 24, "test_scored": 24, "notes": [], "knowledge_base_documents": 12},
    "metrics_order": ["token_f1"],
    "strategies": {
        "zero_shot": {"type": "zero_shot", "status": "success", "fingerprint": "abc",
                      "model": {"backend": "transformers", "model": "smollm2-135m-instruct", "where": "cpu/bfloat16"},
                      "metrics": {"token_f1": {"mean": 0.2, "ci_low": 0.1, "ci_high": 0.3, "n": 24}},
                      "cost": {"setup_s": 0.0, "latency_p50_s": 1.0, "latency_p95_s": 2.0, "compute_s_per_answer": 0.1,
                               "prompt_tokens_mean": 50.0, "completion_tokens_mean": 10.0, "cached_answers": 0},
                      "info": {}},
        "rag": {"type": "rag", "status": "started"},
    },
}


def write_run(tmp_path, results: dict, samples: list[dict] | None = None):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(results))
    if samples is not None:
        (run / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    return RunDir(run)


def test_a_version_1_record_is_read_through_its_migration(tmp_path):
    r = write_run(tmp_path, V1).results()
    assert isinstance(r, RunResults) and r.version == RESULTS_VERSION and r.inputs is None
    zs = r.strategies["zero_shot"]
    assert isinstance(zs, ArmResult) and zs.metrics["token_f1"].higher_is_better  # the default of that time
    assert zs.cost.alone_s is None and zs.cost.latency_kind == "per batch"  # not measured back then: None, not 0
    # an arm that never finished is an error with the reason, not a crash in every reader
    assert r.strategies["rag"].status == "error" and "did not finish" in r.strategies["rag"].error
    assert list(r.ok_arms()) == ["zero_shot"] and r.failed == ["rag"]
    assert json.loads((tmp_path / "run" / "results.json").read_text()) == V1  # read, never rewritten


def test_a_record_round_trips_and_keeps_unmeasured_values(tmp_path):
    r = write_run(tmp_path, V1).results()
    r.strategies["zero_shot"].metrics["token_f1"].mean = float("nan")  # a metric no example could give
    RunDir(tmp_path / "run").write_results(r)
    again = RunDir(tmp_path / "run").results()
    assert again.model_dump(exclude={"strategies"}) == r.model_dump(exclude={"strategies"})
    assert not again.strategies["zero_shot"].metrics["token_f1"].measured


def test_a_newer_record_is_refused_not_misread(tmp_path):
    with pytest.raises(UserError, match="newer adaptbench .*upgrade") as e:
        write_run(tmp_path, {**V1, "version": RESULTS_VERSION + 1}).results()
    assert "results.json" in str(e.value)


@pytest.mark.parametrize("change, words", [
    ({"strategies": []}, "not an adaptbench results file"),
    ({"data": "lots"}, "damaged results file"),
    ({"version": "two"}, "unknown results version"),
])
def test_a_damaged_record_is_one_line_naming_the_file(tmp_path, change, words):
    with pytest.raises(UserError, match=words) as e:
        write_run(tmp_path, {**V1, **change}).results()
    assert "\n" not in str(e.value) and "results.json" in str(e.value)


def test_an_unknown_field_is_refused_where_the_record_is_strict(tmp_path):
    bad = json.loads(json.dumps(V1))
    bad["strategies"]["zero_shot"]["cost"]["latency_p50"] = 1.0  # a typo would otherwise vanish
    with pytest.raises(UserError, match="strategies.zero_shot.cost.latency_p50"):
        write_run(tmp_path, {**bad, "version": RESULTS_VERSION}).results()


def test_samples_keep_what_is_whole_after_a_kill_and_name_a_bad_line(tmp_path):
    row = {"strategy": "zero_shot", "id": "q1", "input": "Q?", "output": "A", "scores": {"token_f1": 1.0}}
    run = write_run(tmp_path, V1, [row, {**row, "id": "q2"}])
    with (run.samples).open("a") as f:
        f.write('{"strategy": "zero_sh')  # killed mid-write
    got = run.read_samples()
    assert [s.id for s in got] == ["q1", "q2"] and isinstance(got[0], Sample) and got[0].score("token_f1") == 1.0
    run.samples.write_text(json.dumps(row) + "\nnot json\n" + json.dumps(row) + "\n")
    with pytest.raises(UserError, match="samples.jsonl:2: damaged samples file"):
        run.read_samples()


def test_a_v1_record_migrates_step_by_step():
    out = migrate(V1)
    assert out["version"] == RESULTS_VERSION and V1.get("version") is None  # the input is not mutated
