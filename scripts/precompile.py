"""Byte-compile what adaptbench imports, after `pip install --no-compile`.

pip byte-compiles every module of every package it installs, and most of them are
never imported here (transformers alone ships some 400 model architectures): on 2
cores that was ~60 s of a ~100 s setup. `make setup` installs with --no-compile and then
runs this script, which imports every module that the project's own code names
(`import x` and `from x import y`, found with ast, including imports inside functions)
and the classes behind the bundled models, so Python writes their .pyc files once.
Anything missed is compiled on first import, as for any source install.

Run with PYTHONDONTWRITEBYTECODE unset, or nothing is written.
"""

import ast
import importlib
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OWN = ("toolkit", "strategies", "tests")  # the project's packages: nothing to warm there

# Reached through transformers' lazy auto classes or chromadb's settings, not named in our code.
EXTRA = [
    "transformers.models.llama.modeling_llama",  # SmolLM2
    "transformers.models.bert.modeling_bert",  # all-MiniLM-L6-v2
    "transformers.modeling_gguf_pytorch_utils",
    "transformers.integrations.ggml",
    "transformers.trainer",
    "peft.tuners.lora.model",
    "chromadb.api.rust",
    "chromadb.api.segment",
    "chromadb.telemetry.product.posthog",
    "gguf.gguf_reader",
    "transformers.integrations.gguf",
    "transformers.models.bert.tokenization_bert_fast",
    "ragas.metrics",
    "llama_index.core.bridge.langchain",
    "langchain_community.chat_models",
    "rapidfuzz.process",
    "matplotlib.backends.backend_agg",
    "matplotlib.backends.backend_svg",
]


def named_modules(folders: list[Path]) -> set[str]:
    """Every third-party import in the given source folders, as "module" (`import module`)
    or "module:name" (`from module import name`); the project's own packages are left out."""
    names: set[str] = set()
    for folder in folders:
        for path in folder.rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names.update(a.name for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names.update(f"{node.module}:{a.name}" for a in node.names)
    return {n for n in names if n.split(":")[0].split(".")[0] not in OWN}


def warm(name: str) -> bool:
    module, _, attr = name.partition(":")
    try:
        mod = importlib.import_module(module)
        if attr:
            try:  # a submodule, or a lazily imported attribute (transformers, peft)
                importlib.import_module(f"{module}.{attr}")
            except ImportError:
                getattr(mod, attr, None)
        return True
    except Exception:  # an optional dependency that is absent: nothing to compile
        return False


def main() -> None:
    t0 = time.perf_counter()
    names = named_modules([ROOT / d for d in (*OWN, "benchmarks")])
    warnings.simplefilter("ignore")
    done = sum(warm(n) for n in sorted(names) + EXTRA)
    compiled = sum(1 for m in list(sys.modules.values()) if getattr(m, "__cached__", None))
    print(f"precompiled {compiled} modules behind {done} imports in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
