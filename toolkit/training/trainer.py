"""LoRA fine-tuning with the Hugging Face Trainer and peft.

Loss on the answer tokens only; validation loss every epoch; the adapter is
saved as safetensors with its adapter_config.json, under a content-hash key so
an unchanged rerun reuses it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from toolkit import progress
from toolkit.backends.generation import Generator
from toolkit.cache import cache_root, content_hash, locked
from toolkit.chat import TrainItem, tokenize_counted, tokenize_item  # noqa: F401 -- re-exported for callers
from toolkit.config import GeneratorConfig
from toolkit.errors import UserError
from toolkit.models import ModelRef, load_causal_lm, load_tokenizer, pick_device, pick_dtype
from toolkit.progress import console
from toolkit.training import distributed as D
from toolkit.training.distributed import world_size

ADAPTER_FORMAT = 3  # bump when the training recipe changes in a way settings do not capture


def adapter_key(ref: ModelRef, train: list[TrainItem], validation: list[TrainItem], settings: dict, gen: GeneratorConfig) -> str:
    extra = {"world_size": world_size()} if world_size() > 1 else {}  # N processes: N times the global batch
    device = pick_device(gen.device)
    dtype = str(pick_dtype(device, gen.dtype)).replace("torch.", "")  # resolved: bf16 and fp32 train differently
    if any(t.weight != 1.0 for t in train):  # class weights change the loss: a different adapter
        extra["weights"] = [t.weight for t in train]
    return content_hash({"base": ref.fingerprint, "train": [(t.messages, t.target) for t in train],
                         "validation": [(t.messages, t.target) for t in validation], "settings": settings,
                         "dtype": dtype, "device": device.split(":")[0], "format": ADAPTER_FORMAT, **extra})


def flash_attention_available(device: str) -> bool:
    return device.startswith("cuda") and importlib.util.find_spec("flash_attn") is not None


class AnswerLogitsOnly:
    """Batches whose LM head runs only where the loss looks: at the answer tokens.

    The loss ignores every prompt position, yet a plain causal-LM forward computes
    full-vocabulary logits there too (49k x hidden per token, then a float32 copy for the
    loss and its gradient): with ~200-token prompts and ~6-token answers that is most of the
    LM head's work and the largest tensors of the step. transformers' `logits_to_keep`
    computes logits only for the positions asked for, and the model's own loss is used.

    Padded batches are padded on the left, so every row's answer ends at the last position
    and `logits_to_keep` is one number (the longest answer + 1); position ids count real
    tokens only, as at generation time. Packed rows (padding-free) keep the exact positions
    that predict an answer token, with the matching `shift_labels`.
    """

    def __init__(self, tok, *, packed: bool, pad_to_multiple_of: int = 8):
        self.pad, self.packed, self.multiple = tok.pad_token_id, packed, pad_to_multiple_of

    def __call__(self, features: list[dict]) -> dict:
        # torch, numpy: imported on first use, not when this module loads
        import torch
        weights = [f.get("weight", 1.0) for f in features]
        # class weights (every training feature carries one; validation features none): the
        # loss weighs each example's answer tokens, even in a batch whose weights happen to be 1
        weighted = any("weight" in f for f in features)
        features = [{k: v for k, v in f.items() if k != "weight"} for f in features]
        if self.packed:
            # transformers, numpy, jinja2: imported on first use, not when this module loads
            from transformers import DataCollatorWithFlattening
            batch = DataCollatorWithFlattening(return_tensors="pt")(features)
            labels = batch["labels"][0]
            keep = (labels[1:] != -100).nonzero()[:, 0]  # positions whose next token is an answer token
            batch["logits_to_keep"] = keep
            batch["shift_labels"] = labels[keep + 1].unsqueeze(0)
            if weighted:
                per_token = torch.tensor([w for f, w in zip(features, weights) for _ in f["input_ids"]])
                batch["token_weights"] = per_token[keep + 1].unsqueeze(0)
            return batch
        width = max(len(f["input_ids"]) for f in features)
        width = -(-width // self.multiple) * self.multiple
        ids, mask, labels = [], [], []
        for f in features:
            n = width - len(f["input_ids"])
            ids.append([self.pad] * n + list(f["input_ids"]))
            mask.append([0] * n + [1] * len(f["input_ids"]))
            labels.append([-100] * n + list(f["labels"]))
        mask_t = torch.tensor(mask)
        labels_t = torch.tensor(labels)
        answer = (labels_t != -100).int()
        first = torch.where(answer.any(1), answer.argmax(1), torch.full((len(features),), width - 1))
        keep = int(width - first.min()) + 1  # the longest answer, plus the position that predicts its first token
        keep = min(keep, width)
        batch = {"input_ids": torch.tensor(ids), "attention_mask": mask_t,
                 "position_ids": (mask_t.cumsum(1) - 1).clamp(min=0), "labels": labels_t[:, -keep:],
                 "logits_to_keep": keep}
        if weighted:
            batch["token_weights"] = torch.tensor(weights, dtype=torch.float32)
        return batch


def weighted_answer_loss(logits, labels, weights, *, shifted: bool):
    """Cross-entropy over the answer tokens, each token weighted by its example's class weight:
    sum(w * ce) / sum(w) over the tokens the loss looks at, torch's CrossEntropyLoss(weight=...)
    reduction with the weight given per example instead of per vocabulary entry (a label spans
    several tokens, so a weight per target token id cannot express it). `shifted`: the labels
    are aligned with the logits already (a packed row's shift_labels); otherwise the logits at
    t predict the labels at t + 1, as the model's own loss shifts them. `weights`: per row
    (padded batches) or per kept position (packed)."""
    # torch, numpy: imported on first use, not when this module loads
    import torch
    import torch.nn.functional as F
    logits = logits.float()
    if not shifted:
        logits, labels = logits[:, :-1], labels[:, 1:]
        weights = weights[:, None].expand_as(labels)
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                         reduction="none").view_as(labels)
    w = weights.to(ce.dtype) * (labels != -100)
    return (ce * w).sum() / w.sum().clamp(min=torch.finfo(ce.dtype).tiny)


def weighted_trainer_class():
    """transformers.Trainer whose training loss weighs each example's answer tokens by its
    class weight (batches with `token_weights`); evaluation batches carry none, so the
    validation loss stays the plain one and comparable with an unweighted arm's. Each
    micro-batch's loss is its own weighted mean, which the Trainer divides by the accumulation
    steps: with gradient_accumulation_steps 1 (the default) that is exactly the weighted mean
    of the batch; above 1, micro-batches count equally rather than by their weight."""
    # transformers, numpy, jinja2: imported on first use, not when this module loads
    from transformers import Trainer

    class WeightedLossTrainer(Trainer):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.loss_is_scaled_for_ga = False  # a per-batch mean: the Trainer divides by accumulation steps

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            weights = inputs.pop("token_weights", None)
            if weights is None:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            labels, shift = inputs.pop("labels"), inputs.pop("shift_labels", None)
            outputs = model(**inputs)
            loss = weighted_answer_loss(outputs.logits, shift if shift is not None else labels, weights,
                                        shifted=shift is not None)
            return (loss, outputs) if return_outputs else loss

    return WeightedLossTrainer


def batching_recipe(tok, device: str, padding_free: bool | str) -> tuple[Any, dict, str]:
    """(collator, TrainingArguments extras, attention implementation) of adaptbench's batching.

    Padding-free (one row per batch, position ids restarting at every example, no attention
    mask, as transformers' DataCollatorWithFlattening builds it) when FlashAttention-2 is
    installed, whose variable-length kernel keeps examples apart at no cost. Without it the
    packed row still trains correctly (SDPA gets a block-diagonal mask built from the position
    ids), but that mask costs O(total length²): on CPU it measured 225 tok/s against 310-420
    tok/s for length-grouped padded batches, so 'auto' packs only with FlashAttention-2 and
    otherwise batches examples of similar length, padded to a multiple of 8. Either way the
    LM head runs at the answer positions only (AnswerLogitsOnly).
    """
    fa2 = flash_attention_available(device)
    packed = fa2 if padding_free == "auto" else bool(padding_free)
    attn = "flash_attention_2" if fa2 else "sdpa"
    # rows padded to a multiple of 8: also faster on CPU, where the kernels prefer aligned shapes
    # (benchmarks/finetune_throughput.py in float32 on a 2-core Zen 4: 206 tok/s against 170 unpadded)
    collator = AnswerLogitsOnly(tok, packed=packed)
    return collator, {"train_sampling_strategy": "random" if packed else "group_by_length"}, attn


def _rich_callback(total_steps: int, label: str):
    # transformers, numpy, jinja2: imported on first use, not when this module loads
    from transformers import TrainerCallback


    class RichProgress(TrainerCallback):
        p = None  # drawn only inside shown(): an evaluation before training logs nothing here

        @contextlib.contextmanager
        def shown(self):
            """The bar, for the duration of trainer.train(); stopped even when training raises.
            Bars opened inside it (validation answers for a task metric) draw nothing."""
            with progress.drawn(lambda: Progress(
                    TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"),
                    TimeRemainingColumn(), console=console)) as p:
                if p is not None:
                    self.p, self.t = p, p.add_task(label, total=total_steps, info="")
                try:
                    yield
                finally:
                    self.p = None

        def on_step_end(self, args, state, control, **kw):
            if self.p:
                self.p.update(self.t, completed=state.global_step)

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            parts = [f"loss {logs['loss']:.3f}" if "loss" in logs else "",
                     f"val {logs['eval_loss']:.3f}" if "eval_loss" in logs else ""]
            info = "  ".join(x for x in parts if x)
            if info and self.p:
                self.p.update(self.t, info=f"epoch {state.epoch or 0:.1f}  {info}")

    return RichProgress()


def prepare_model(ref: ModelRef, device: str, dtype, settings: dict[str, Any], attn: str = "sdpa"):
    """The model to train: LoRA adapters on the base, the base itself ('full'), or
    LoRA on a 4-bit base ('qlora', CUDA + bitsandbytes only)."""

    # torch, transformers, peft: imported on first use, not when this module loads
    import torch
    from peft import LoraConfig, get_peft_model

    method = settings["method"]
    if method == "qlora":
        if not device.startswith("cuda"):
            raise UserError("method: qlora needs a CUDA GPU (4-bit bitsandbytes kernels); use method: lora on CPU",
                            field="strategies.finetune.method")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise UserError("method: qlora needs bitsandbytes: pip install bitsandbytes", field="strategies.finetune.method")
        # torch, transformers, peft: imported on first use, not when this module loads
        from peft import prepare_model_for_kbit_training
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
                                   bnb_4bit_use_double_quant=True)
        model = AutoModelForCausalLM.from_pretrained(ref.path, quantization_config=quant, dtype=dtype,
                                                     device_map={"": device}, attn_implementation=attn)
        model = prepare_model_for_kbit_training(model)
    else:
        # full fine-tuning keeps fp32 master weights (bf16 autocast does the maths)
        model = load_causal_lm(ref, device, torch.float32 if method == "full" else dtype, attn=attn)
    model.config.use_cache = False
    if method in ("lora", "qlora"):
        lora = LoraConfig(r=settings["r"], lora_alpha=settings["lora_alpha"], lora_dropout=settings["lora_dropout"],
                          target_modules=settings["target_modules"], task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    model.train()
    return model


def _generative_eval(items: list[TrainItem], scorer, name: str, gen_cfg: GeneratorConfig, ref: ModelRef, device: str):
    """A callback that answers the validation prompts with the model being trained and adds
    `eval_<name>` to the evaluation metrics, so early stopping and best-checkpoint
    selection can follow a task metric (token F1, accuracy...) instead of the loss. It must
    run before EarlyStoppingCallback, which reads the same metrics dict."""
    # transformers, numpy, jinja2: imported on first use, not when this module loads
    from transformers import TrainerCallback

    class GenerativeEval(TrainerCallback):
        def on_evaluate(self, args, state, control, model=None, metrics=None, **kw):
            if model is None or metrics is None:
                return
            was_training = model.training
            model.eval()
            gen = Generator(gen_cfg, model, load_tokenizer(ref.path), ref, device)
            outs = gen.generate([t.messages for t in items], description="validation answers")
            metrics[f"eval_{name}"] = float(scorer([o.text for o in outs], items))
            state.log_history.append({"epoch": state.epoch, "step": state.global_step, f"eval_{name}": metrics[f"eval_{name}"]})
            if was_training:
                model.train()

    return GenerativeEval()


def train_model(ref: ModelRef, gen_cfg: GeneratorConfig, train: list[TrainItem], validation: list[TrainItem],
               settings: dict[str, Any], *, label: str, seed: int, scorer=None) -> tuple[Path, dict]:
    """Train (or reuse) an adapter (or, for method 'full', a whole model); returns (folder, train info).

    `scorer(outputs, items) -> float` computes settings['metric_for_best_model'] on the
    validation answers when it is a task metric rather than 'loss' (higher is better).
    Under a distributed launch every process calls this together; process 0 writes."""

    key = adapter_key(ref, train, validation, settings, gen_cfg)
    folder = cache_root() / "adapters" / key
    info_file = folder / "train_info.json"
    if info_file.exists():
        return folder, {**json.loads(info_file.read_text()), "cached": True}
    # Runs sharing a cache train each adapter once: the others wait here, then reuse it. (The
    # processes of one distributed launch train together instead, so they take no lock.)
    with (locked(folder) if not D.is_distributed() else contextlib.nullcontext()):
        if info_file.exists():
            return folder, {**json.loads(info_file.read_text()), "cached": True}
        return _train(ref, gen_cfg, train, validation, settings, key=key, folder=folder, label=label, seed=seed,
                      scorer=scorer)


def _train(ref: ModelRef, gen_cfg: GeneratorConfig, train: list[TrainItem], validation: list[TrainItem],
           settings: dict[str, Any], *, key: str, folder: Path, label: str, seed: int, scorer) -> tuple[Path, dict]:
    """One training run, as HF Trainer wants it set up: model and PEFT wrapping, datasets,
    collator, TrainingArguments, callbacks, train, save. One function on purpose: each step
    reads what the step before built (model, tokenizer, device, collator), and the order is
    the order of the peft and transformers guides."""

    # torch, transformers, numpy: imported on first use, not when this module loads
    import torch
    from transformers import EarlyStoppingCallback, PrinterCallback, Trainer, TrainingArguments, set_seed

    set_seed(seed)
    device = pick_device(gen_cfg.device)
    if device == "cuda" and D.is_distributed():
        device = f"cuda:{D.local_rank()}"
    dtype = pick_dtype(device, gen_cfg.dtype)
    tok = load_tokenizer(ref.path)
    tok.padding_side = "right"
    collator, batching, attn = batching_recipe(tok, device, settings.get("padding_free", "auto"))
    model = prepare_model(ref, device, dtype, settings, attn)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    max_len = settings["max_seq_length"]
    counted = [tokenize_counted(tok, t, max_len) for t in train]
    train_ds, lost = [x for x, _ in counted], [n for _, n in counted]  # truncation is counted, never silent
    val_ds = [tokenize_item(tok, t, max_len) for t in validation]
    bs, accum = settings["per_device_train_batch_size"], settings["gradient_accumulation_steps"]
    steps = math.ceil(math.ceil(len(train_ds) / (bs * D.world_size())) / accum * settings["num_train_epochs"])
    evaluate = settings["eval_strategy"] if val_ds else "no"
    keep_best = bool(val_ds) and (settings["load_best_model_at_end"] or settings["early_stopping_patience"])
    metric = settings.get("metric_for_best_model") or "loss"
    if metric != "loss" and scorer is None:
        raise ValueError(f"metric_for_best_model '{metric}' needs a scorer")
    work = folder.with_name(key + ".work")
    if D.is_main():
        shutil.rmtree(work, ignore_errors=True)
    args = TrainingArguments(
        output_dir=str(work), per_device_train_batch_size=bs,
        per_device_eval_batch_size=max(bs, 8),  # no activations kept for a backward pass: larger batches fit
        gradient_accumulation_steps=accum, num_train_epochs=settings["num_train_epochs"],
        learning_rate=settings["learning_rate"], lr_scheduler_type=settings["lr_scheduler_type"],
        warmup_steps=settings["warmup_ratio"], weight_decay=settings["weight_decay"],
        eval_strategy=evaluate, eval_steps=settings["eval_steps"],
        # checkpoints only when the best one must be found again (LoRA checkpoints are a few MB)
        save_strategy=evaluate if keep_best else "no", save_steps=settings["eval_steps"], save_total_limit=2,
        load_best_model_at_end=keep_best, metric_for_best_model=metric if metric != "loss" else "eval_loss",
        greater_is_better=metric != "loss",
        logging_steps=max(1, steps // 20), report_to="none", disable_tqdm=True, seed=seed, data_seed=seed,
        bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16, use_cpu=device == "cpu",
        dataloader_pin_memory=device != "cpu", remove_unused_columns=False, **batching,
        # evaluation needs the loss only: otherwise the Trainer gathers every validation token's
        # full-vocabulary logits (24 examples x 1,024 tokens x 49k vocabulary = 4.8 GB in fp32)
        prediction_loss_only=True,
    )
    bar = _rich_callback(steps, label)
    callbacks = [bar]
    if val_ds and metric != "loss":
        callbacks.append(_generative_eval(validation, scorer, metric, gen_cfg, ref, device))
    if val_ds and settings["early_stopping_patience"]:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=settings["early_stopping_patience"]))
    weighted = any(t.weight != 1.0 for t in train)
    if weighted:
        for x, t in zip(train_ds, train):
            x["weight"] = t.weight
    trainer = (weighted_trainer_class() if weighted else Trainer)(
        model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds or None, data_collator=collator,
        callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # our rich bar shows the losses; no raw dicts on stdout
    initial = trainer.evaluate() if val_ds and evaluate != "no" else {}  # the untrained starting point
    t0 = time.perf_counter()
    with bar.shown():
        trainer.train()
    train_s = time.perf_counter() - t0
    epochs_run = float(trainer.state.epoch or 0)
    tokens = sum(len(x["input_ids"]) for x in train_ds) * epochs_run
    history = [{k: v for k, v in h.items() if k in ("epoch", "step", "loss", "eval_loss", "learning_rate")
                or k == f"eval_{metric}"} for h in trainer.state.log_history]
    evals = [h["eval_loss"] for h in history if "eval_loss" in h and h.get("step", 0) > 0]
    scores = [h[f"eval_{metric}"] for h in history if f"eval_{metric}" in h and h.get("step", 0) > 0]
    info = {"method": settings["method"], "train_s": train_s, "train_examples": len(train_ds),
            "validation_examples": len(val_ds), "train_tokens": int(tokens), "epochs_run": epochs_run,
            "max_seq_length": max_len, "truncated_examples": sum(1 for n in lost if n),
            "truncated_tokens": int(sum(lost)),
            "stopped_early": epochs_run < settings["num_train_epochs"] - 1e-6,
            "initial_eval_loss": initial.get("eval_loss"),
            "best_eval_loss": min(evals) if evals else None, "final_eval_loss": evals[-1] if evals else None,
            "tokens_per_s": tokens / train_s if train_s else None, "processes": D.world_size(),
            "padding_free": collator.packed,
            "attention": attn, "trainable_params": int(n_trainable), "device": device,
            "dtype": str(dtype).replace("torch.", ""), "history": history, "settings": settings, "adapter_key": key}
    if metric != "loss":
        info["metric_for_best_model"] = metric
        info[f"initial_eval_{metric}"] = initial.get(f"eval_{metric}")
        info[f"best_eval_{metric}"] = max(scores) if scores else None
    if D.is_main():
        tmp = folder.with_name(key + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        trainer.model.save_pretrained(tmp)  # LoRA: adapter_model.safetensors + adapter_config.json; full: the model
        if settings["method"] == "full":
            tok.padding_side = "left"
            tok.save_pretrained(tmp)
        (tmp / "train_info.json").write_text(json.dumps(info, indent=2))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
        shutil.rmtree(work, ignore_errors=True)
    D.barrier()  # the others wait until the adapter is in the cache
    tok.padding_side = "left"
    return folder, {**info, "cached": False}
