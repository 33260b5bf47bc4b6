"""A short measured probe of training throughput, for `adaptbench data check`'s time estimate.

It builds the arm's model and batches exactly as toolkit.training.trainer does (the same
model preparation, collator, precision and TrainingArguments batching), runs a few optimizer
steps of the HF Trainer on a seeded sample of the train split, and times the steps after the
first (which pays for warm-up). Nothing is saved."""

from __future__ import annotations

import random
import tempfile
import time
from typing import Any

from toolkit.chat import TrainItem, tokenize_item
from toolkit.config import LoadedSuite, arm_generator
from toolkit.data import Example
from toolkit.models import load_tokenizer, pick_device, pick_dtype, resolve_generator
from toolkit.parts import values_of
from toolkit.progress import status
from toolkit.prompts import build_messages
from toolkit.training.trainer import batching_recipe, prepare_model

STEPS = 4  # the first warms up; the other three are timed


def probe_throughput(loaded: LoadedSuite, arm: str, cfg, train: list[Example], *, tok=None,
                     labels: list[str] | None = None) -> dict[str, Any]:
    """{tokens_per_s, device, dtype, steps, batch_size, seconds}: the trainer's speed on this machine."""
    # torch, transformers: imported on first use, not when this module loads
    import torch
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    s = loaded.suite
    gen = arm_generator(s.generator, cfg.generator)
    settings = values_of(cfg, "training")
    ref = resolve_generator(gen.model)
    device = pick_device(gen.device)
    dtype = pick_dtype(device, gen.dtype)
    tok = load_tokenizer(ref.path)
    tok.padding_side = "right"
    bs = settings["per_device_train_batch_size"]
    sample = random.Random(s.seed).sample(train, min(len(train), bs * STEPS))
    listed = labels if getattr(cfg, "label_list", True) else None
    items = [tokenize_item(tok, TrainItem(build_messages(s.instruction, listed, e.input), e.target),
                           settings["max_seq_length"]) for e in sample]
    while len(items) < bs * STEPS:  # a tiny train split: the same examples again
        items += items[:bs * STEPS - len(items)]
    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if device.startswith("cuda"):
                torch.cuda.synchronize()  # a step's kernels finish before its time is read
            marks.append(time.perf_counter())

    with status(f"Measuring training speed ({arm}: {STEPS} steps of {bs} on {device})"), \
            tempfile.TemporaryDirectory(prefix="adaptbench-probe-") as work:
        collator, batching, attn = batching_recipe(tok, device, settings.get("padding_free", "auto"))
        model = prepare_model(ref, device, dtype, settings, attn)
        args = TrainingArguments(output_dir=work, per_device_train_batch_size=bs, max_steps=STEPS,
                                 learning_rate=settings["learning_rate"], report_to="none", disable_tqdm=True,
                                 save_strategy="no", logging_strategy="no", seed=s.seed,
                                 bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16, use_cpu=device == "cpu",
                                 dataloader_pin_memory=device != "cpu", remove_unused_columns=False,
                                 train_sampling_strategy="sequential")
        trainer = Trainer(model=model, args=args, train_dataset=items, data_collator=collator, callbacks=[Clock()])
        trainer.remove_callback(PrinterCallback)
        trainer.train()
        del trainer, model
    timed = items[bs:bs * STEPS]  # sequential sampling: the steps after the first saw these
    seconds = marks[-1] - marks[0]
    tokens = sum(len(x["input_ids"]) for x in timed)
    return {"tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None, "device": device,
            "dtype": str(dtype).replace("torch.", ""), "steps_timed": STEPS - 1, "batch_size": bs,
            "seconds": round(seconds, 2), "method": settings["method"]}
