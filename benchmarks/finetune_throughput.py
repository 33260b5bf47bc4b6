#!/usr/bin/env python3
"""LoRA fine-tuning throughput: plain Hugging Face Trainer (default padding, random
order, fp32 weights, full-vocabulary logits at every position) vs adaptbench's recipe
(toolkit.training.trainer.batching_recipe: padding-free packed rows with FlashAttention-2 when
installed, else length-grouped left-padded batches; the LM head at the answer positions
only; bf16 weights where the device has bf16, as `ADAPTBENCH_DTYPE` allows; SDPA; freed
activations kept mapped, as `adaptbench` sets glibc's malloc at start), on the same model,
data and number of epochs, measured side by side in one run.

    ADAPTBENCH_DTYPE=float32 python benchmarks/finetune_throughput.py   # what a CPU without bf16 does

    python benchmarks/finetune_throughput.py                     # bundled SmolLM2-135M, CPU or GPU
    python benchmarks/finetune_throughput.py --shape llama-1b     # random weights shaped like a 1B Llama (GPU)

Prints real (non-padding) tokens/s of each, the ratio, peak memory, final validation
loss, and MFU. FLOPs per trained token for LoRA ≈ 4·N (forward 2N + input-gradient 2N;
frozen weights get no weight-gradient) + 12·L·s·d for attention scores (forward and
backward, s = sequence length, d = hidden size); MFU = achieved FLOP/s / peak FLOP/s
(peak from --peak-tflops; defaults: H100 989, H200 989 bf16 dense; none on CPU). Both
recipes are credited with the same FLOPs per token (the LM head at every position), so
adaptbench's figure is useful work per second. Ends with `name: value` lines.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("ADAPTBENCH_OFFLINE", "1")  # toolkit/__init__.py: the hub libraries offline

SHAPES = {  # random-weight Llama shapes for throughput (no trained weights needed)
    "llama-0.5b": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                       num_key_value_heads=16),
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8),
}


def build_items(n: int, seed: int):
    """Demo questions with 0-3 knowledge-base passages: realistic, varied lengths."""
    from toolkit.data import read_examples
    from toolkit.data.kb import read_knowledge_base
    from toolkit.prompts import build_messages
    from toolkit.training.trainer import TrainItem

    root = Path(__file__).resolve().parent.parent
    ex = read_examples(root / "eval_suites" / "demo" / "train.jsonl", task="qa")
    docs = read_knowledge_base(root / "knowledge_bases" / "halcyra").documents
    rng = random.Random(seed)
    items = []
    for i in range(n):
        e = ex[i % len(ex)]
        passages = [d.text for d in rng.sample(docs, rng.randint(0, 3))]
        items.append(TrainItem(build_messages("Answer briefly.", None, e.input, passages=passages), e.target))
    return items


def load_model(args, dtype, device, attn="sdpa"):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from toolkit.models import load_tokenizer, resolve_generator
    ref = resolve_generator("smollm2-135m-instruct")
    tok = load_tokenizer(ref.path)
    if args.shape:
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=len(tok), max_position_embeddings=4096, tie_word_embeddings=True,
                          **SHAPES[args.shape])
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=attn)
    else:
        model = AutoModelForCausalLM.from_pretrained(ref.path, dtype=dtype, attn_implementation=attn)
    return model.to(device), tok


def run(args, recipe: str, items, val_items) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments, set_seed

    from toolkit.models import keep_freed_memory, pick_device, pick_dtype
    from toolkit.training.trainer import batching_recipe, flash_attention_available, tokenize_item

    set_seed(0)
    device = pick_device("auto")
    ours = recipe == "adaptbench"
    if ours:  # as `adaptbench` does at start: freed activations stay mapped (no page faults per step)
        keep_freed_memory()
    dtype = pick_dtype(device) if ours else torch.float32
    model, tok = load_model(args, dtype, device,
                            "flash_attention_2" if ours and flash_attention_available(device) else "sdpa")
    tok.padding_side = "right"
    if ours:  # exactly the batching `adaptbench run` trains with
        collator, batching, attn = batching_recipe(tok, device, "auto")
    else:
        collator = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)
        batching, attn = {"train_sampling_strategy": "random"}, "sdpa"
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    train_ds = [tokenize_item(tok, t, 1024) for t in items]
    val_ds = [tokenize_item(tok, t, 1024) for t in val_items]
    targs = TrainingArguments(
        output_dir=f"/tmp/adaptbench-bench-{recipe}", per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size, num_train_epochs=args.epochs, learning_rate=1e-3, report_to="none",
        save_strategy="no", eval_strategy="no", logging_steps=10_000, disable_tqdm=True, seed=0,
        use_cpu=device == "cpu", remove_unused_columns=False, dataloader_pin_memory=device != "cpu",
        bf16=ours and dtype == torch.bfloat16, fp16=ours and dtype == torch.float16, **batching,
    )
    trainer = Trainer(model=model, args=targs, train_dataset=train_ds, data_collator=collator)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    trainer.train()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    tokens = sum(len(x["input_ids"]) for x in train_ds) * args.epochs
    val_loss = trainer.evaluate(val_ds)["eval_loss"]
    n_params = sum(p.numel() for p in model.parameters())
    cfg = model.config
    mean_len = tokens / args.epochs / len(train_ds)
    flops_per_token = 4 * n_params + 12 * cfg.num_hidden_layers * mean_len * cfg.hidden_size
    peak = (torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    out = {"recipe": recipe, "device": device, "dtype": str(dtype).replace("torch.", ""), "tokens": tokens,
           "attention": attn, "collator": type(collator).__name__, "seconds": dt, "tokens_per_s": tokens / dt, "val_loss": val_loss, "peak_mem_gib": peak,
           "achieved_tflops": flops_per_token * tokens / dt / 1e12}
    if args.peak_tflops:
        out["mfu"] = out["achieved_tflops"] / args.peak_tflops
    del trainer, model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=96, help="training examples per epoch")
    p.add_argument("--epochs", type=int, default=3, help="passes over them (the final validation loss is compared)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--shape", choices=list(SHAPES), help="random-weight model of this shape instead of SmolLM2")
    p.add_argument("--peak-tflops", type=float, help="device peak bf16 TFLOP/s for MFU (H100/H200 SXM: 989)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--one", choices=["plain", "adaptbench"], help=argparse.SUPPRESS)  # child process
    args = p.parse_args()
    import torch
    if args.peak_tflops is None and torch.cuda.is_available() and "H100" in torch.cuda.get_device_name(0) + "H200":
        args.peak_tflops = 989.0
    if args.one:
        print(json.dumps(run(args, args.one, build_items(args.examples, 0), build_items(32, 1))))
        return
    # each recipe in its own process, so peak memory and warm caches are its own
    res = {}
    for recipe in ("plain", "adaptbench"):
        cmd = [sys.executable, __file__, "--one", recipe, "--examples", str(args.examples), "--epochs", str(args.epochs),
               "--batch-size", str(args.batch_size)] + (["--shape", args.shape] if args.shape else []) \
            + (["--peak-tflops", str(args.peak_tflops)] if args.peak_tflops else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"{recipe} run failed:\n{out.stderr[-3000:]}")
        res[recipe] = json.loads(out.stdout.strip().splitlines()[-1])
    plain, ours = res["plain"], res["adaptbench"]
    for r in (plain, ours):
        print(f"{r['recipe']:10s} {r['device']}/{r['dtype']:8s} {r['attention']}/{r['collator']:26s} {r['tokens_per_s']:8.0f} tok/s  "
              f"{r['seconds']:6.1f} s  val loss {r['val_loss']:.4f}  peak mem {r['peak_mem_gib']:.2f} GiB  "
              f"{r['achieved_tflops']:.3f} TFLOP/s" + (f"  MFU {r['mfu']:.1%}" if "mfu" in r else ""))
    ratio = ours["tokens_per_s"] / plain["tokens_per_s"]
    dloss = (ours["val_loss"] - plain["val_loss"]) / plain["val_loss"]
    print(f"speed-up {ratio:.2f}x   validation loss change {dloss:+.1%}")
    if args.json:
        args.json.write_text(json.dumps({"plain": plain, "adaptbench": ours, "ratio": ratio}, indent=2))
    print(f"cpu: {cpu_name()}")
    print(f"precision: plain {plain['dtype']}, adaptbench {ours['dtype']}")
    print(f"plain_tokens_per_s: {plain['tokens_per_s']:.1f}")
    print(f"adaptbench_tokens_per_s: {ours['tokens_per_s']:.1f}")
    print(f"plain_peak_mem_gib: {plain['peak_mem_gib']:.2f}")
    print(f"adaptbench_peak_mem_gib: {ours['peak_mem_gib']:.2f}")
    print(f"val_loss_change_pct: {dloss * 100:+.2f}")
    print(f"speedup: {ratio:.2f}")


def cpu_name() -> str:
    """The CPU model and whether it has native bf16 (the figures depend on both)."""
    import platform

    from toolkit.models import cpu_supports_bf16
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores, native bf16: {'yes' if cpu_supports_bf16() else 'no'}"


if __name__ == "__main__":
    main()
