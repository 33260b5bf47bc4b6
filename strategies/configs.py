"""Settings of each strategy, as typed configs with help text.

Kept apart from the strategy modules so validating a suite never imports torch.
Names follow what users know: `num_fewshot` (lm-evaluation-harness), `r`,
`lora_alpha`, `lora_dropout`, `target_modules` (peft), `learning_rate`,
`num_train_epochs`, `per_device_train_batch_size` (TrainingArguments).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from toolkit.parts import part


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RayResources(Settings):
    """What one arm's task asks of a Ray cluster (`adaptbench run --ray`)."""

    num_cpus: float | None = Field(None, gt=0, description=(
        "CPUs the task reserves (default 1); a local model uses that many threads."))
    num_gpus: float | None = Field(None, ge=0, description=(
        "GPUs the task reserves (default: 1 for an arm whose model is local, on device auto or cuda, when the "
        "cluster has GPUs, as a local run would use the GPU; else 0; a fraction shares one GPU between tasks)."))
    memory_gb: float | None = Field(None, gt=0, description="Memory the task reserves, in GiB (default: none).")
    max_retries: int = Field(2, ge=0, le=10, description=(
        "Times a task is run again when its worker or node dies; answers it finished are taken from the "
        "driver's cache, not recomputed. A Python error in the arm is recorded, never retried."))


class StrategyConfig(Settings):
    needs_knowledge_base: ClassVar[bool] = False
    trains_locally: ClassVar[bool] = False
    combines: ClassVar[bool] = False  # an ensemble: combines other arms' answers

    generator: dict[str, Any] | None = Field(None, description=(
        "This arm's own generator, as settings on top of the suite's `generator:` (e.g. `{backend: openai, "
        "base_url: ..., model: gpt-4o-mini, api_key_env: OPENAI_API_KEY}`), so one suite can compare a hosted "
        "model with a local one on the same split."), **part("arm"))
    ray: RayResources | None = Field(None, description=(
        "Under `adaptbench run --ray`: the resources this arm's task reserves, e.g. `{num_gpus: 1, num_cpus: 8}`. "
        "Where the arm runs, not what it is: it changes no result and no fingerprint."), **part("scheduling"))


class ZeroShotConfig(StrategyConfig):
    """The instruction and the question, nothing else."""


class FewShotConfig(StrategyConfig):
    """k solved examples from the train split before the question."""

    num_fewshot: int = Field(3, ge=1, le=64, description="Examples shown before the question (k).", **part("prompt"))
    selection: Literal["similarity", "random"] = Field("similarity", description=(
        "'similarity': the k train examples nearest to the question by embedding; "
        "'random': k random train examples (seeded)."), **part("prompt"))
    max_prompt_tokens: int = Field(1024, ge=64, description=(
        "Token budget of the whole prompt; the least similar examples are dropped to fit."), **part("prompt"))


class RetrievalConfig(StrategyConfig):
    needs_knowledge_base: ClassVar[bool] = True

    chunk_size: int = Field(256, ge=16, description="Chunk size in tokens of the sentence splitter.",
        **part("retrieval"))
    chunk_overlap: int = Field(32, ge=0, description="Overlap in tokens between consecutive chunks.",
        **part("retrieval"))
    top_k: int = Field(3, ge=1, le=50, description="Passages retrieved per question and put in the prompt.",
        **part("retrieval"))

    @model_validator(mode="after")
    def _overlap_fits(self) -> "RetrievalConfig":
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_size ({self.chunk_size})")
        return self


class RagConfig(RetrievalConfig):
    """Retrieved passages from the knowledge base in the prompt (chunked by llama-index, searched in Chroma)."""


BEST_MODEL_METRICS = {"loss": None, "token_f1": "qa", "exact_match": "qa", "contains": "qa", "rouge_l": "qa",
                      "accuracy": "classification", "macro_f1": "classification"}  # metric -> task it needs

TUNABLE = ("learning_rate", "r", "lora_alpha", "lora_dropout", "num_train_epochs", "per_device_train_batch_size",
           "gradient_accumulation_steps", "warmup_ratio", "weight_decay", "lr_scheduler_type")


class SearchConfig(Settings):
    """Hyperparameter search: every trial is trained (and cached) and scored on the
    validation split; the trial with the lowest validation loss answers the test split."""

    method: Literal["grid", "random"] = Field("grid", description="'grid': every combination; 'random': `trials` of them.")
    trials: int | None = Field(None, ge=1, description="Random search: how many combinations (grid: at most this many).")
    space: dict[str, list] = Field(description=(
        f"Setting -> values to try, e.g. {{learning_rate: [5.0e-4, 2.0e-3], r: [8, 16]}}. Settings: {', '.join(TUNABLE)}."))
    seed: int = Field(0, ge=0, description="Seed of the random choice of combinations.")

    @model_validator(mode="after")
    def _valid_space(self) -> "SearchConfig":
        for k, v in self.space.items():
            if k not in TUNABLE:
                raise ValueError(f"'{k}' cannot be searched (choose from: {', '.join(TUNABLE)})")
            if not isinstance(v, list) or not v:
                raise ValueError(f"'{k}' needs a non-empty list of values")
        if not self.space:
            raise ValueError("give at least one setting to search")
        if self.method == "random" and not self.trials:
            raise ValueError("random search needs `trials`")
        return self


class AugmentConfig(Settings):
    """Paraphrase augmentation: each training question also appears in `paraphrases`
    reworded forms written by the generator model, with the same answer. Ovadia et al.
    (2023) found repeated paraphrases are what lets fine-tuning absorb new facts."""

    paraphrases: int = Field(2, ge=1, le=16, description="Paraphrases per training example.")
    temperature: float = Field(0.7, gt=0, le=2, description="Sampling temperature of the paraphrasing model.")
    model: str | None = Field(None, description="Paraphrasing model (default: the suite's generator).")
    seed: int = Field(0, ge=0, description="Sampling seed; paraphrases are cached per seed.")


class FinetuneConfig(StrategyConfig):
    """LoRA (or full) fine-tuning on the train split with the Hugging Face Trainer. Its parts:
    `training` (what the trainer reads: method, LoRA, TrainingArguments, evaluation), `data` (what
    it trains on), `search`, `api` (method openai_api) and the arm's own `generator`."""

    method: Literal["lora", "full", "qlora", "openai_api"] = Field("lora", description=(
        "'lora': low-rank adapters (peft); 'full': every weight; 'qlora': LoRA on a 4-bit base "
        "(needs CUDA and bitsandbytes); 'openai_api': through an OpenAI-compatible fine-tuning API "
        "(OpenAI, or `adaptbench serve --model`): the arm's generator (`backend: openai`, base_url, model, "
        "api_key_env) names the endpoint and base model; the train split is uploaded, a job is created "
        "with num_train_epochs, per_device_train_batch_size and learning_rate (as a multiplier of 1e-3), "
        "polled, and the fine-tuned model answers."), **part("training"))
    poll_s: float = Field(2.0, gt=0, description="method openai_api: seconds between polls of the job.", **part("api"))
    r: int = Field(16, ge=1, description="LoRA rank.", **part("training"))
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator (scale = lora_alpha / r).",
        **part("training"))
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.", **part("training"))
    target_modules: list[str] | str = Field("all-linear", description=(
        "Modules that get adapters: 'all-linear' or a list such as [q_proj, v_proj]."), **part("training"))
    learning_rate: float = Field(1e-3, gt=0, description="Peak learning rate.", **part("training"))
    num_train_epochs: float = Field(3, gt=0, description="Passes over the train split.", **part("training"))
    per_device_train_batch_size: int = Field(8, ge=1, description="Examples per device and forward pass.",
        **part("training"))
    gradient_accumulation_steps: int = Field(1, ge=1, description="Forward passes per optimiser step.",
        **part("training"))
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of steps spent warming up the learning rate.",
        **part("training"))
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.", **part("training"))
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "linear", description="Learning-rate schedule after warmup.", **part("training"))
    max_seq_length: int = Field(384, ge=16, description="Training examples are truncated to this many tokens.",
        **part("training"))
    eval_strategy: Literal["epoch", "steps", "no"] = Field("epoch", description=(
        "When to compute validation loss: every epoch, every `eval_steps` steps, or never."), **part("training"))
    eval_steps: int | None = Field(None, ge=1, description="With eval_strategy: steps, evaluate every this many steps.",
        **part("training"))
    early_stopping_patience: int | None = Field(None, ge=1, description=(
        "Stop after this many evaluations without improvement of the validation loss (needs a validation split)."),
        **part("training"))
    load_best_model_at_end: bool = Field(False, description=(
        "Keep the best checkpoint (by metric_for_best_model) instead of the last one."), **part("training"))
    metric_for_best_model: str = Field("loss", description=(
        "What early stopping and load_best_model_at_end follow on the validation split: 'loss', or a task "
        "metric computed from the model's answers at every evaluation (qa: token_f1, exact_match, contains, "
        "rouge_l; classification: accuracy, macro_f1). Task metrics cost one generation pass per evaluation."),
        **part("training"))
    padding_free: Literal["auto"] | bool = Field("auto", description=(
        "Pack each batch into one row without padding (position ids restart per example). 'auto': only "
        "when FlashAttention-2 is installed (CUDA), whose kernel makes packing free; otherwise batches of "
        "similar length are padded, which measured faster on CPU."), **part("training"))
    balance: Literal["oversample", "undersample", "class_weight"] | None = Field(None, description=(
        "Classification: even out imbalanced labels in training. 'oversample': seeded repeats of the rarer "
        "labels' examples up to the commonest label's count; 'undersample': a seeded sample of each label down "
        "to the rarest's; 'class_weight': every example kept once, its answer tokens' loss weighted by "
        "n / (labels x its label's count), as scikit-learn's class_weight='balanced'. The test split is never "
        "touched."), **part("training"))
    label_list: bool = Field(True, description=(
        "Label tasks: list the suite's labels in the prompt, as zero_shot does. false trains and answers with "
        "the instruction alone: the model learns the labels from its training answers, and with many labels "
        "every example gets much shorter (banking77: 38 prompt tokens instead of 590)."), **part("data"))
    augment: AugmentConfig | None = Field(None, description=(
        "Paraphrased copies of the training questions, written by the suite's generator (knowledge injection)."),
        **part("data"))
    max_train_examples: int | None = Field(None, ge=1, description="Train on at most this many examples (seeded subsample).",
        **part("data"))
    seed: int | None = Field(None, ge=0, description="Training seed (defaults to the suite seed).", **part("data"))
    search: SearchConfig | None = Field(None, description="Hyperparameter search over a few settings (optional).",
        **part("search"))

    @property
    def trains_locally(self) -> bool:  # type: ignore[override]
        return self.method != "openai_api"

    @field_validator("target_modules")
    @classmethod
    def _modules(cls, v: list[str] | str) -> list[str] | str:
        if isinstance(v, str):
            if v != "all-linear":
                raise ValueError(f"'{v}': give 'all-linear' or a list of module names such as [q_proj, v_proj]")
        elif not v or not all(isinstance(m, str) and m.strip() for m in v):
            raise ValueError("give at least one module name, e.g. [q_proj, v_proj]")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "FinetuneConfig":
        if self.search:  # every value of the space must be a valid setting, caught now rather than at trial k
            for k, values in self.search.space.items():
                for v in values:
                    try:
                        type(self).model_validate({**self.model_dump(exclude={"search"}), k: v})
                    except ValidationError as e:
                        raise ValueError(f"search.space.{k}: {v!r} is not a valid value: "
                                         f"{e.errors()[0]['msg']}") from None
        if self.eval_strategy == "steps" and not self.eval_steps:
            raise ValueError("eval_strategy: steps needs eval_steps")
        if (self.early_stopping_patience or self.load_best_model_at_end) and self.eval_strategy == "no":
            raise ValueError("early stopping and load_best_model_at_end need eval_strategy epoch or steps")
        if self.metric_for_best_model not in BEST_MODEL_METRICS:
            raise ValueError(f"metric_for_best_model '{self.metric_for_best_model}' is not one of: "
                             f"{', '.join(BEST_MODEL_METRICS)}")
        return self


class RagFinetuneConfig(FinetuneConfig, RetrievalConfig):
    """The fine-tuned model answering with retrieved passages, trained on prompts
    that include passages retrieved for each training question (RAFT-style)."""

    top_k: int = Field(2, ge=1, le=50, description="Passages retrieved per question, in training and at test time.",
        **part("retrieval"))
    num_train_epochs: float = Field(2, gt=0, description="Passes over the train split.", **part("training"))


class EnsembleConfig(StrategyConfig):
    """Combines other arms' answers to the same test questions: no prompt or model of its own
    (except `best_of`, which scores the members' answers with the arm's generator)."""

    combines: ClassVar[bool] = True

    members: list[str] = Field(min_length=2, description=(
        "The arms whose answers are combined (at least two, none of them an ensemble); they run first, and "
        "`--strategies` adds any that are left out."), **part("arm"))
    method: Literal["majority", "weighted", "likelihood_mean", "best_of"] = Field("majority", description=(
        "'majority': the answer most members give (labels, or QA answers after SQuAD normalisation; a tie goes to "
        "the member listed first); 'weighted': the same with `weights`; 'likelihood_mean': the label with the "
        "highest mean probability (soft voting; classification_mode: likelihood); 'best_of' (QA): the member "
        "answer with the lowest per-token negative log-likelihood under the arm's generator and a zero-shot "
        "prompt."), **part("arm"))
    weights: dict[str, float] | None = Field(None, description=(
        "Member -> vote weight for 'weighted' and 'likelihood_mean' (default 1 each), as scikit-learn's "
        "VotingClassifier(weights=...). Choose them on validation data, never on the test split."),
        **part("arm"))

    @field_validator("members")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if twice := next((m for m in v if v.count(m) > 1), None):
            raise ValueError(f"member '{twice}' is listed twice")
        return v

    @model_validator(mode="after")
    def _weights(self) -> "EnsembleConfig":
        if self.weights is not None:
            if bad := next((m for m in self.weights if m not in self.members), None):
                raise ValueError(f"weight for '{bad}', which is not a member ({', '.join(self.members)})")
            if any(not math.isfinite(w) or w < 0 for w in self.weights.values()):
                raise ValueError("weights must be finite numbers >= 0")
            if sum(self.weights.get(m, 1.0) for m in self.members) <= 0:
                raise ValueError("the weights add up to 0")
            if self.method in ("majority", "best_of"):
                raise ValueError(f"weights are for method weighted or likelihood_mean, not {self.method}")
        return self

    def weight(self, member: str) -> float:
        return float((self.weights or {}).get(member, 1.0))
