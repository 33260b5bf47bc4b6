"""finetune: a LoRA adapter trained on the train split (Hugging Face Trainer +
peft), answering with the same prompt as zero_shot."""

from __future__ import annotations

import itertools
import random
import shutil

from strategies.base import Strategy
from toolkit.data import Example, Query, subsample
from toolkit.training import TrainItem, load_finetuned, train_model

TRAIN_SETTINGS = ("method", "r", "lora_alpha", "lora_dropout", "target_modules", "learning_rate", "num_train_epochs",
                  "per_device_train_batch_size", "gradient_accumulation_steps", "warmup_ratio", "weight_decay",
                  "lr_scheduler_type", "max_seq_length", "eval_strategy", "eval_steps", "early_stopping_patience",
                  "load_best_model_at_end")


class Finetune(Strategy):
    type = "finetune"
    trains = True

    def train_items(self, examples: list[Example]) -> list[TrainItem]:
        return [TrainItem(self.messages(e.input), e.target) for e in examples]

    def prepare(self, train: list[Example], validation: list[Example]) -> None:
        seed = self.config.seed if self.config.seed is not None else self.ctx.suite.seed
        train = subsample(train, self.config.max_train_examples, seed=seed,
                          stratify=self.ctx.suite.task == "classification")
        settings = {k: getattr(self.config, k) for k in TRAIN_SETTINGS}
        items, val_items = self.train_items(train), self.train_items(validation)
        if self.config.search:
            self.adapter, self.info = self.search(settings, items, val_items, seed)
        else:
            self.adapter, self.info = train_model(self.ctx.generator_ref, self.ctx.suite.generator, items, val_items,
                                                  settings, label=f"{self.name}: training", seed=seed)
            self.info["build_s"] = {"training": self.info["train_s"]}
        if (self.adapter / "adapter_config.json").exists():  # LoRA adapters are small: keep one with the run
            dest = self.ctx.run_dir / "adapters" / self.name
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(self.adapter, dest)
            self.info["adapter_dir"] = str(dest.relative_to(self.ctx.run_dir))
        self.generator = None

    def search(self, settings: dict, items, val_items, seed: int):
        """Train every trial (each cached by content hash), keep the lowest validation loss.
        The whole search counts as setup cost."""
        from toolkit.errors import UserError

        sc = self.config.search
        if not val_items:
            raise UserError("hyperparameter search scores trials on the validation split, which is empty",
                            field=f"strategies.{self.name}.search")
        keys = list(sc.space)
        combos = [dict(zip(keys, vals)) for vals in itertools.product(*(sc.space[k] for k in keys))]
        if sc.method == "random":
            combos = random.Random(sc.seed).sample(combos, min(sc.trials, len(combos)))
        elif sc.trials:
            combos = combos[:sc.trials]
        trials = []
        for i, params in enumerate(combos, 1):
            folder, info = train_model(self.ctx.generator_ref, self.ctx.suite.generator, items, val_items,
                                       {**settings, **params}, seed=seed,
                                       label=f"{self.name}: trial {i}/{len(combos)} {params}")
            trials.append((params, folder, info))
        best = min(range(len(trials)), key=lambda i: trials[i][2]["best_eval_loss"])
        params, folder, info = trials[best]
        table = [{"trial": i + 1, **p, "best_eval_loss": t["best_eval_loss"], "train_s": t["train_s"],
                  "cached": t.get("cached", False), "chosen": i == best} for i, (p, _, t) in enumerate(trials)]
        return folder, {**info, "trials": table, "chosen_params": params,
                        "build_s": {"search": sum(t["train_s"] for _, _, t in trials)}}

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "adapter": self.info["adapter_key"]}

    def model(self):
        if self.generator is None:
            self.generator = load_finetuned(self.ctx.generator_ref, self.ctx.suite.generator, self.adapter)
        return self.generator

    def prompts(self, queries: list[Query]):
        return [self.messages(q.input) for q in queries], [[] for _ in queries]
