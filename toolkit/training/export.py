"""`adaptbench export RUN_DIR --strategy ARM OUT [--merge]`: the fine-tuned result
as files plain transformers/peft can load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from toolkit.cache import cache_root
from toolkit.config import GeneratorConfig
from toolkit.errors import UserError
from toolkit.models import load_tokenizer, merged_model, resolve_generator
from toolkit.runs import RunDir


def export(run_dir: Path, arm: str, out: Path, *, merge: bool) -> Path:
    run = RunDir.open(run_dir)
    results = run.results()
    r = results.strategies.get(arm)
    if r is None:
        raise UserError(f"no arm '{arm}' in this run (arms: {', '.join(results.strategies)})", field="--strategy")
    info = r.info
    if not info.adapter_key:
        raise UserError(f"arm '{arm}' ({r.type}) trained nothing to export", field="--strategy")
    folder = run_dir / info.adapter_dir if info.adapter_dir else cache_root() / "adapters" / info.adapter_key
    if not folder.exists():
        raise UserError(f"the trained weights are gone from {folder} (cache cleared?); rerun the suite", field="--strategy")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError("exists and is not an empty folder", file=out, field="OUT")

    config = run.config()
    ref = resolve_generator(config["generator"]["model"])
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if merge:
        # merged on the CPU in float32, so the export does not depend on this machine's bf16 support
        model, _ = merged_model(ref, GeneratorConfig(model=ref.name, device="cpu", dtype="float32"), folder)
        model.save_pretrained(tmp)
    else:
        shutil.copytree(folder, tmp)
    load_tokenizer(ref.path).save_pretrained(tmp)
    (tmp / "adaptbench_export.json").write_text(json.dumps(
        {"run": str(run_dir), "arm": arm, "merged": merge, "base_model": ref.name, "train_info": info.extra("settings")},
        indent=2))
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out
