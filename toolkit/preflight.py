"""Every check of what the user controls that the suite schema alone cannot make: the
settings against the data, the models the suite names, LoRA target modules, the
run directory and the cache. They run before any model loads and before anything is
written, so bad input costs a second and leaves nothing behind (exit 2, one line
naming file, line and field).

`check_run` is the one entry point `adaptbench run` (and `--seeds`) goes through;
`adaptbench validate` runs the light checks (no torch import).
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path
from typing import Any

from toolkit.config import LoadedSuite, arm_generator
from toolkit.data.suite_data import TaskData, load_task_data
from toolkit.errors import UserError
from toolkit.models import (
    BUNDLED_EMBEDDERS,
    BUNDLED_GENERATORS,
    bundled_file,
    dequantised_folder,
    dtype_override,
    pick_device,
)


def check_run(loaded: LoadedSuite, arms: dict[str, tuple[str, Any]], out: Path | None, reports_root: Path, *,
              models: bool = True) -> TaskData:
    """Everything that can be wrong with a run's input, before a model loads or the run
    directory exists: the data (read here once, and returned), the arms' settings against it,
    the output folder, the cache and, with `models`, every model the suite names (an API
    endpoint answers GET /v1/models)."""
    data = load_task_data(loaded)
    check_suite(loaded, data, arms)
    check_out(out, reports_root)
    check_cache()
    if models:
        check_models(loaded, arms)
    check_index_server(loaded, arms)
    return data


def check_index_server(loaded: LoadedSuite, arms: dict[str, tuple[str, Any]]) -> None:
    """A Chroma server the retrieving arms would use answers its heartbeat (one line otherwise)."""
    if not any(getattr(cfg, "needs_knowledge_base", False) for _, cfg in arms.values()):
        return
    # chromadb, httpx: imported on first use, not when this module loads
    from toolkit.retrieval import chroma_server, connect

    server = chroma_server(loaded.suite.kb_chroma)
    if server is not None:
        try:
            connect(server)
        except UserError as e:
            raise UserError(e.message, file=loaded.path if loaded.suite.kb_chroma else None, field=e.field) from None


def check_suite(loaded: LoadedSuite, data, arms: dict[str, tuple[str, Any]]) -> None:
    """The arms' settings against the loaded data. Cheap: no model, no torch."""
    splits = data.splits
    for name, (stype, cfg) in arms.items():
        where = lambda *f: loaded.where("strategies", name, *f)  # noqa: E731
        if stype in ("few_shot", "finetune", "rag_finetune") and not splits.train:
            raise UserError("the train split is empty, and this arm learns from it", **where())
        if "early_stopping_patience" not in type(cfg).model_fields:  # what follows are fine-tuning settings
            continue
        needs_val = [("early_stopping_patience", bool(cfg.early_stopping_patience)),
                     ("load_best_model_at_end", cfg.load_best_model_at_end),
                     ("metric_for_best_model", cfg.metric_for_best_model != "loss"),
                     ("search", cfg.search is not None)]
        for field, on in needs_val:
            if on and not splits.validation:
                raise UserError("needs a validation split: give data.validation, data.validation_split, or "
                                "data.file with split.validation above 0", **where(field))
        if cfg.augment and cfg.augment.model:
            check_model_name(cfg.augment.model, **where("augment", "model"))


def check_models(loaded: LoadedSuite, arms: dict[str, tuple[str, Any]]) -> None:
    """Every model the suite names can be found, the device exists, and LoRA's target
    modules exist in the generator. Imports torch, loads no weights."""

    s = loaded.suite
    check_model_name(s.embedder.model, kind="embedder", **loaded.where("embedder", "model"))
    if s.judge and not s.judge.base_url:
        check_model_name(s.judge.model, **loaded.where("judge", "model"))
    dtype_override()  # a bad $ADAPTBENCH_DTYPE
    checked: set[str] = set()
    for name, (stype, cfg) in arms.items():
        gen = arm_generator(s.generator, cfg.generator)
        own = ("strategies", name, "generator") if cfg.generator else ("generator",)
        if gen.backend == "openai":
            if gen.tokenizer:
                check_model_name(gen.tokenizer, **loaded.where(*own, "tokenizer"))
            if gen.model_dump_json() not in checked:  # each endpoint and model once
                # the backends (httpx, rich) load only for a suite with an API arm
                from toolkit.backends.openai_api import check_endpoint

                try:
                    check_endpoint(gen, ".".join(own))
                except UserError as e:
                    raise UserError(e.message, **loaded.where(*own, e.field.rsplit(".", 1)[-1])) from None
                checked.add(gen.model_dump_json())
            continue
        check_model_name(gen.model, **loaded.where(*own, "model"))
        try:
            device = pick_device(gen.device)
        except UserError as e:
            raise UserError(e.message, **loaded.where(*own, "device")) from None
        method = getattr(cfg, "method", None)
        if method == "qlora":
            where = loaded.where("strategies", name, "method")
            if not device.startswith("cuda"):
                raise UserError("method: qlora needs a CUDA GPU (4-bit bitsandbytes kernels); use method: lora on "
                                "this machine", **where)
            if importlib.util.find_spec("bitsandbytes") is None:
                raise UserError("method: qlora needs bitsandbytes: pip install bitsandbytes", **where)
        if method in ("lora", "qlora") and isinstance(cfg.target_modules, list):
            check_target_modules(gen.model, cfg.target_modules, **loaded.where("strategies", name, "target_modules"))


def check_model_name(name: str, *, kind: str = "generator", file=None, line=None, field=None) -> None:
    """A bundled name whose package is installed, a local model folder, or a Hugging Face id
    that can be fetched (offline: that is already in the local Hugging Face cache)."""

    where = {"file": file, "line": line, "field": field}
    bundled = BUNDLED_EMBEDDERS if kind == "embedder" else BUNDLED_GENERATORS
    if name in bundled:
        try:
            bundled_file(name, kind)
        except UserError as e:
            raise UserError(e.message, **where) from None
        return
    p = Path(name).expanduser()
    if p.exists():
        if not p.is_dir():
            raise UserError(f"'{name}' is a file; give a model folder (config.json and weights), a Hugging Face id, "
                            f"or a bundled name ({', '.join(bundled)})", **where)
        if not (p / "config.json").exists() and not (p / "modules.json").exists():
            raise UserError(f"'{name}' has no config.json: not a transformers or sentence-transformers model folder",
                            **where)
        return
    hub_id = name.count("/") == 1 and not name.startswith((".", "/", "~")) and " " not in name
    if not hub_id:
        raise UserError(f"'{name}' is neither a bundled {kind} ({', '.join(bundled)}), an existing folder, "
                        "nor a Hugging Face id (org/name)", **where)
    # huggingface-hub: imported on first use, not when this module loads
    from huggingface_hub import constants, try_to_load_from_cache
    if constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(name, "config.json"), str):
        raise UserError(f"'{name}' is not in the local Hugging Face cache, and HF_HUB_OFFLINE=1 forbids downloading "
                        f"it (download it once online, give a local folder, or use a bundled {kind})", **where)


def model_config(name: str):
    """The transformers config of a generator, without loading its weights."""
    # transformers, numpy, jinja2: imported on first use, not when this module loads
    from transformers import AutoConfig


    if name in BUNDLED_GENERATORS:
        folder = dequantised_folder(name)
        if (folder / "config.json").exists():
            return AutoConfig.from_pretrained(str(folder))
        gguf = bundled_file(name, "generator")
        return AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    return AutoConfig.from_pretrained(str(Path(name).expanduser()) if Path(name).expanduser().exists() else name)


def check_target_modules(model: str, modules: list[str], **where) -> None:
    """peft's own matching, on the model's architecture built on the meta device (no
    weights, no memory): a name that matches no layer, or a layer LoRA cannot adapt,
    is an error now rather than inside peft at training time."""

    # torch, transformers, peft: imported on first use, not when this module loads
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    def skeleton():
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return AutoModelForCausalLM.from_config(model_config(model))

    for m in modules:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                get_peft_model(skeleton(), LoraConfig(r=1, target_modules=[m], task_type="CAUSAL_LM"))
        except ValueError:
            net = skeleton()
            linear = sorted({n.rsplit(".", 1)[-1] for n, mod in net.named_modules() if isinstance(mod, torch.nn.Linear)})
            raise UserError(f"'{m}' is not a layer LoRA can adapt in {model} (its linear layers: {', '.join(linear)}; "
                            "or use all-linear)", **where) from None


def check_out(out: Path | None, reports_root: Path) -> None:
    """The run directory can be made: --out is a new or empty folder; somewhere writable."""
    if out is not None:
        out = Path(out)
        if out.exists():
            if not out.is_dir():
                raise UserError("exists and is a file; --out names the run directory to create", file=out, field="--out")
            if any(out.iterdir()):
                what = "a run" if (out / "results.json").exists() else "files"
                raise UserError(f"already holds {what}; give a new or empty folder", file=out, field="--out")
        _check_writable(out, "--out")
    else:
        _check_writable(reports_root, "reports folder")


def check_cache() -> None:
    root = os.environ.get("ADAPTBENCH_CACHE")
    if root:
        _check_writable(Path(root).expanduser(), "ADAPTBENCH_CACHE")


def _check_writable(path: Path, field: str) -> None:
    p = path.absolute()
    while not p.exists():
        p = p.parent
    if not p.is_dir():
        raise UserError(f"cannot create a folder under {p}: it is a file", file=path, field=field)
    if not os.access(p, os.W_OK | os.X_OK):
        raise UserError(f"cannot write under {p} (permission denied)", file=path, field=field)
