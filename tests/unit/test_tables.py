"""Parquet files, save_to_disk folders and hub datasets as a suite's data, read through the
`datasets` library and pyarrow with datasets the test writes itself (no network)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from tests.conftest import MINIMAL_SUITE, REPO
from toolkit.data.suite_data import load_task_data
from toolkit.errors import UserError
from toolkit.runs import RunDir
from toolkit.suites import load_suite

ROWS = [{"text": f"What is item {i}?", "category": ["red", "green", "blue"][i % 3]} for i in range(30)]


def suite(tmp_path, data: dict, task: str = "classification") -> "object":
    cfg = {**yaml.safe_load(MINIMAL_SUITE), "task": task, "data": data}
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return load_suite(p)


def test_a_suite_reads_parquet_and_saved_datasets_with_class_labels(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(ROWS[:24]), tmp_path / "train.parquet")
    features = datasets.Features({"text": datasets.Value("string"),
                                  "category": datasets.ClassLabel(names=["red", "green", "blue"])})
    test = datasets.Dataset.from_list([{"text": r["text"], "category": ["red", "green", "blue"].index(r["category"])}
                                       for r in ROWS[24:]], features=features)
    datasets.DatasetDict({"test": test}).save_to_disk(str(tmp_path / "saved"))
    fields = {"input": "text", "label": "category"}
    data = load_task_data(suite(tmp_path, {"train": {"path": "train.parquet", "fields": fields},
                                           "test": {"path": "saved", "split": "test", "fields": fields}}))
    assert len(data.splits.train) == 24 and len(data.splits.test) == 6
    assert {e.label for e in data.splits.test} <= {"red", "green", "blue"}  # names, not ClassLabel indices
    assert data.splits.train[0].origin.endswith("train.parquet:1")
    assert sorted(p.name for p in data.files) == ["saved", "train.parquet"]
    inputs = RunDir(tmp_path / "run").inputs(tmp_path / "s.yaml", None, data.files)
    assert set(inputs.files) == {"../saved", "../train.parquet"}  # the folder is hashed too

    with pytest.raises(UserError, match=r"holds the splits test: say which one with `split:`"):
        load_task_data(suite(tmp_path, {"train": {"path": "train.parquet", "fields": fields},
                                        "test": {"path": "saved", "fields": fields}}))
    with pytest.raises(UserError, match=r"`split` is for a Hugging Face dataset"):
        load_task_data(suite(tmp_path, {"train": {"path": "train.parquet", "split": "x", "fields": fields},
                                        "test": {"path": "saved", "split": "test", "fields": fields}}))


def test_hostile_parquet_files_are_one_line_errors(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not really\x00\xff" * 100)
    pq.write_table(pa.Table.from_pylist([{"colour": "red"}] * 5), tmp_path / "wrong.parquet")
    pq.write_table(pa.Table.from_pylist([{"question": "q?", "answer": "a"}] * 3), tmp_path / "ok.parquet")
    with pytest.raises(UserError, match="not a readable Parquet file") as e:
        load_task_data(suite(tmp_path, {"train": "junk.parquet", "test": "ok.parquet"}, task="qa"))
    assert "junk.parquet" in str(e.value)
    with pytest.raises(UserError, match=r"wrong\.parquet:1") as e:
        load_task_data(suite(tmp_path, {"train": "wrong.parquet", "test": "ok.parquet"}, task="qa"))
    assert "\n" not in str(e.value)


def test_a_hub_dataset_without_network_is_a_one_line_error_before_any_model_loads(tmp_path):
    bad = tmp_path / "hub.yaml"
    cfg = {**yaml.safe_load(MINIMAL_SUITE), "data": {"train": {"hf": "no-such-org/no-such-dataset", "split": "train"},
                                                     "test": {"hf": "no-such-org/no-such-dataset", "split": "test"}}}
    bad.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-m", "toolkit.cli", "validate", str(bad)], capture_output=True, text=True,
                       cwd=REPO, timeout=120, env={"PATH": "/usr/bin:/bin", "ADAPTBENCH_OFFLINE": "1",
                                                   "HOME": str(tmp_path), "ADAPTBENCH_CACHE": str(tmp_path / "c")})
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip().splitlines()
    assert len(line) == 1 and "no-such-org/no-such-dataset" in line[0] and "data.train.hf" in line[0], r.stderr
    assert "torch" not in r.stdout
    with pytest.raises(UserError, match="needs `split:`"):
        cfg["data"]["train"] = {"hf": "x/y"}
        bad.write_text(yaml.safe_dump(cfg))
        load_task_data(load_suite(bad))
    with pytest.raises(UserError, match="give a data file's `path` or a Hugging Face dataset's `hf`"):
        cfg["data"]["train"] = {"hf": "x/y", "path": "a.jsonl"}
        bad.write_text(yaml.safe_dump(cfg))
        load_suite(bad)
