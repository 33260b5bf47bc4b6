"""The package as a user gets it: the wheel built from this tree, installed into a fresh venv
with no checkout on the path, runs the bundled demo from an empty folder. Its dependencies come
from the test environment (a path line, so nothing is downloaded); adaptbench itself comes only
from the wheel."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import REPO


def _run(*args, **kw):
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=900, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, args))}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return r


@pytest.mark.slow
def test_the_wheel_runs_the_demo_from_an_empty_folder(tmp_path, shared_models_cache):
    # built from a copy: setuptools' build/ folder would otherwise carry stale files between builds
    src = tmp_path / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "reports", "__pycache__", ".pytest_cache"))
    wheels = tmp_path / "wheels"
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", wheels, src)
    wheel = next(wheels.glob("adaptbench-*.whl"))
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    py = venv / "bin" / "python"
    fresh_site = Path(_run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    # the test environment's packages (torch, transformers, the bundled models...) but not its
    # editable adaptbench: a path line in a .pth adds the folder without running its .pth files
    deps = [p for p in {*site.getsitepackages(), sysconfig.get_paths()["purelib"]} if Path(p).is_dir()]
    (fresh_site / "test-deps.pth").write_text("\n".join(deps) + "\n")
    _run(py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel)

    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ADAPTBENCH_DATA_DIR")}
    env.update(ADAPTBENCH_CACHE=str(shared_models_cache), ADAPTBENCH_OFFLINE="1", ADAPTBENCH_DTYPE="float32")
    where = _run(py, "-c", "import toolkit; print(toolkit.__file__)", cwd=empty, env=env).stdout.strip()
    assert Path(where).is_relative_to(fresh_site), where  # from the wheel, not the checkout
    adaptbench = venv / "bin" / "adaptbench"
    version = _run(adaptbench, "--version", cwd=empty, env=env).stdout
    assert version.startswith("adaptbench ") and "0." in version
    assert "demo" in _run(adaptbench, "ls", cwd=empty, env=env).stdout
    _run(adaptbench, "run", "demo", "-n", "4", "-s", "zero_shot", "--quiet", cwd=empty, env=env)
    runs = list((empty / "reports").iterdir())
    assert len(runs) == 1
    results = json.loads((runs[0] / "results.json").read_text())
    assert results["status"] == "success" and results["strategies"]["zero_shot"]["metrics"]["token_f1"]["n"] == 4
    assert (runs[0] / "report.html").is_file()
    assert sorted(p.name for p in empty.iterdir()) == ["reports"]  # nothing else written where it ran

    # your own data, from the wheel: init writes a suite, data check reads it (templates shipped)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "tickets.csv").write_text("text,team\n" + "".join(
        f"order {i} is {['late', 'broken', 'lost'][i % 3]},{['shipping', 'repairs', 'claims'][i % 3]}\n"
        for i in range(60)))
    _run(adaptbench, "init", "tickets.csv", cwd=mine, env=env)
    r = subprocess.run([str(adaptbench), "data", "check", "tickets.yaml", "--no-probe", "--near", "0", "-q"],
                       cwd=mine, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode in (0, 1), r.stderr[-3000:]
    assert (mine / "reports" / "data-tickets" / "data_report.html").stat().st_size > 5000
