"""finetune: a LoRA adapter trained on the train split (Hugging Face Trainer +
peft), answering with the same prompt as zero_shot."""

from __future__ import annotations

import io
import itertools
import json
import random
import shutil
import time
from collections import Counter
from pathlib import Path

from strategies.base import Strategy
from toolkit.backends.openai_api import api_key
from toolkit.cache import cache_root, content_hash
from toolkit.chat import TrainItem
from toolkit.data import Example, Query, subsample
from toolkit.data.balance import balanced, class_weights
from toolkit.errors import UserError, inside
from toolkit.parts import values_of
from toolkit.progress import status
from toolkit.records import ArmInfo
from toolkit.training.augment import paraphrase
from toolkit.training.trainer import train_model


class Finetune(Strategy):
    type = "finetune"
    trains = True

    def train_items(self, examples: list[Example]) -> list[TrainItem]:
        return [TrainItem(self.messages(e.input), e.target) for e in examples]

    def prepare(self, train: list[Example], validation: list[Example]) -> None:
        seed = self.config.seed if self.config.seed is not None else self.res.suite.seed
        train = subsample(train, self.config.max_train_examples, seed=seed,
                          stratify=self.res.suite.has_labels)
        settings = values_of(self.config, "training")
        balance_info = {}
        if self.config.balance in ("oversample", "undersample"):
            train, balance_info = balanced(train, self.config.balance, seed)
        augment_info = {}
        if self.config.augment:
            train, augment_info = paraphrase(train, self.config.augment, self.res, self.gen_cfg)
        items, val_items = self.train_items(train), self.train_items(validation)
        if self.config.balance == "class_weight":
            weights = class_weights([e.label for e in train])
            items = [TrainItem(t.messages, t.target, weights[e.label]) for t, e in zip(items, train)]
            balance_info = {"method": "class_weight", "before": dict(sorted(Counter(e.label for e in train).items())),
                            "weights": {k: round(v, 4) for k, v in sorted(weights.items())}}
        if self.config.method == "openai_api":
            self.adapter, self.info = None, self.train_through_api(items, val_items, seed)
        elif self.config.search:
            self.adapter, self.info = self.search(settings, items, val_items, seed)
        else:
            self.adapter, self.info = train_model(self.res.ref(self.gen_cfg), self.gen_cfg, items, val_items,
                                                  settings, label=f"{self.name}: training", seed=seed,
                                                  scorer=self.scorer())
            self.info["build_s"] = {"training": self.info["train_s"]}
        if balance_info:
            self.info["balance"] = balance_info
        if augment_info:
            self.info = {**self.info, "augment": augment_info,
                         "build_s": {"paraphrasing": augment_info["paraphrase_s"], **self.info["build_s"]}}
        if self.res.run_dir and self.adapter and (self.adapter / "adapter_config.json").exists():  # LoRA adapters are small: keep one with the run
            dest = inside(self.res.run_dir / "adapters", self.name)  # the suite checked the name; this is the guard
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(self.adapter, dest)
            self.info["adapter_dir"] = str(dest.relative_to(self.res.run_dir))

    def train_through_api(self, items: list[TrainItem], val_items: list[TrainItem], seed: int) -> dict:
        """OpenAI's fine-tuning workflow: upload the examples as chat JSONL, create a job, poll it
        until it ends. The fine-tuned model's name is kept in the request cache, keyed on the
        endpoint, base model, examples and settings, so an unchanged rerun creates no job."""

        # openai: imported on first use, not when this module loads
        import openai


        g = self.gen_cfg
        jsonl = lambda xs: "".join(json.dumps({"messages": [*t.messages, {"role": "assistant", "content": t.target}]})  # noqa: E731
                                   + "\n" for t in xs).encode()
        hp = {"n_epochs": max(1, round(self.config.num_train_epochs)), "batch_size": self.config.per_device_train_batch_size,
              "learning_rate_multiplier": self.config.learning_rate / 1e-3}
        key = content_hash({"endpoint": g.endpoint, "model": g.model, "train": jsonl(items).decode(),
                            "validation": jsonl(val_items).decode(), "hyperparameters": hp, "seed": seed}, 32)
        if self.res.store and (hit := self.res.store.get_many("ftjob", [key]).get(key)):
            self.ft_model = hit["fine_tuned_model"]
            return {**hit, "cached": True, "build_s": {"fine-tuning job": hit["train_s"]}}
        client = openai.OpenAI(base_url=g.endpoint, api_key=api_key(g) or "not-needed", max_retries=g.max_retries,
                               timeout=g.timeout_s)
        t0 = time.perf_counter()
        try:
            train_file = client.files.create(file=(f"{self.name}-train.jsonl", io.BytesIO(jsonl(items))),
                                             purpose="fine-tune")
            val_file = client.files.create(file=(f"{self.name}-validation.jsonl", io.BytesIO(jsonl(val_items))),
                                           purpose="fine-tune") if val_items else None
            job = client.fine_tuning.jobs.create(training_file=train_file.id, model=g.model, seed=seed,
                                                 validation_file=val_file.id if val_file else None,
                                                 suffix=self.name[:40], hyperparameters=hp)
            with status(f"{self.name}: fine-tuning job {job.id} on {g.endpoint}"):
                while job.status not in ("succeeded", "failed", "cancelled"):
                    time.sleep(self.config.poll_s)
                    job = client.fine_tuning.jobs.retrieve(job.id)
        finally:
            client.close()
        if job.status != "succeeded":
            why = job.error.message if job.error and job.error.message else job.status
            raise RuntimeError(f"fine-tuning job {job.id} {job.status}: {why}")
        self.ft_model = job.fine_tuned_model
        info = {"fine_tuning_job": job.id, "fine_tuned_model": job.fine_tuned_model, "endpoint": g.endpoint,
                "train_examples": len(items), "trained_tokens": job.trained_tokens, "hyperparameters": hp,
                "train_s": time.perf_counter() - t0}
        if self.res.store:
            self.res.store.put_many("ftjob", {key: info})
        return {**info, "build_s": {"fine-tuning job": info["train_s"]}}

    def restore(self, run_dir, info: ArmInfo, train: list[Example], validation: list[Example]) -> None:
        """The adapter the run kept (run_dir/adapters/NAME), or the trained model in the cache;
        for method openai_api, the fine-tuned model the job made."""
        if self.config.method == "openai_api":
            self.adapter, self.ft_model = None, info.fine_tuned_model
            self.info = {"fine_tuned_model": self.ft_model}
            return
        key = info.adapter_key
        places = ([Path(run_dir) / info.adapter_dir] if info.adapter_dir else []) \
            + ([cache_root() / "adapters" / key] if key else [])
        found = next((p for p in places if (p / "adapter_config.json").exists() or (p / "config.json").exists()), None)
        if found is None:
            raise UserError(f"the model arm '{self.name}' trained is in neither the run directory nor the cache "
                            f"({', '.join(map(str, places)) or 'no adapter recorded'}); run the suite again",
                            file=run_dir, field="--arm")
        self.adapter, self.info = found, {"adapter_key": key}

    def search(self, settings: dict, items, val_items, seed: int):
        """Train every trial (each cached by content hash), keep the best by
        metric_for_best_model on the validation split (lowest loss, or highest task metric).
        The whole search counts as setup cost."""
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
            folder, info = train_model(self.res.ref(self.gen_cfg), self.gen_cfg, items, val_items,
                                       {**settings, **params}, seed=seed, scorer=self.scorer(),
                                       label=f"{self.name}: trial {i}/{len(combos)} {params}")
            trials.append((params, folder, info))
        metric = self.config.metric_for_best_model
        if metric == "loss":
            best = min(range(len(trials)), key=lambda i: trials[i][2]["best_eval_loss"])
        else:
            best = max(range(len(trials)), key=lambda i: trials[i][2][f"best_eval_{metric}"] or 0.0)
        params, folder, info = trials[best]
        table = [{"trial": i + 1, **p, "best_eval_loss": t["best_eval_loss"],
                  **({f"best_eval_{metric}": t[f"best_eval_{metric}"]} if metric != "loss" else {}),
                  "train_s": t["train_s"], "cached": t.get("cached", False), "chosen": i == best}
                 for i, (p, _, t) in enumerate(trials)]
        return folder, {**info, "trials": table, "chosen_params": params,
                        "build_s": {"search": sum(t["train_s"] for _, _, t in trials)}}

    def scorer(self):
        """The validation metric early stopping follows when it is not the loss."""
        metric = self.config.metric_for_best_model
        if metric == "loss":
            return None
        score = self.res.validation_scorer(metric)  # scoring is the harness's: strategies sit below it

        def on_items(outputs: list[str], items: list[TrainItem]) -> float:
            return score(outputs, [t.target for t in items])

        return on_items

    def backend(self):
        """The base model with this arm's adapter merged in (loaded on the first uncached request),
        or, for method openai_api, the fine-tuned model on the endpoint."""
        if self.config.method == "openai_api":
            return self.res.backend(self.gen_cfg.model_copy(update={"model": self.ft_model}))
        return self.res.backend(self.gen_cfg, adapter=self.adapter, adapter_key=self.info["adapter_key"])

    def prompts(self, queries: list[Query]):
        return [self.messages(q.input) for q in queries], [[] for _ in queries]
