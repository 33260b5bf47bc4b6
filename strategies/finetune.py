"""finetune: a LoRA adapter trained on the train split (Hugging Face Trainer +
peft), answering with the same prompt as zero_shot."""

from __future__ import annotations

from strategies.base import Prediction, Strategy
from toolkit.data import Example, Query, subsample
from toolkit.training import TrainItem, load_finetuned, train_lora

TRAIN_SETTINGS = ("r", "lora_alpha", "lora_dropout", "target_modules", "learning_rate", "num_train_epochs",
                  "per_device_train_batch_size", "warmup_ratio", "max_seq_length")


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
        self.adapter, self.info = train_lora(
            self.ctx.generator_ref, self.ctx.suite.generator, self.train_items(train), self.train_items(validation),
            settings, label=f"{self.name}: training", seed=seed)
        self.info["build_s"] = {"training": self.info["train_s"]}
        self.generator = None

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "adapter": self.info["adapter_key"]}

    def finetuned_generator(self):
        if self.generator is None:
            self.generator = load_finetuned(self.ctx.generator_ref, self.ctx.suite.generator, self.adapter)
        return self.generator

    def answer(self, queries: list[Query]) -> list[Prediction]:
        prompts = [self.messages(q.input) for q in queries]
        return self.generate(self.finetuned_generator(), prompts, queries)
