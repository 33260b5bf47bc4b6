"""Settings of each strategy, as typed configs with help text.

Kept apart from the strategy modules so validating a suite never imports torch.
Names follow what users know: `num_fewshot` (lm-evaluation-harness), `r`,
`lora_alpha`, `lora_dropout`, `target_modules` (peft), `learning_rate`,
`num_train_epochs`, `per_device_train_batch_size` (TrainingArguments).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field


class StrategyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    needs_knowledge_base: ClassVar[bool] = False


class ZeroShotConfig(StrategyConfig):
    """The instruction and the question, nothing else."""


class FewShotConfig(StrategyConfig):
    """k solved examples from the train split before the question."""

    num_fewshot: int = Field(3, ge=1, le=64, description="Examples shown before the question (k).")
    selection: Literal["similarity", "random"] = Field("similarity", description=(
        "'similarity': the k train examples nearest to the question by embedding; "
        "'random': k random train examples (seeded)."))
    max_prompt_tokens: int = Field(1024, ge=64, description=(
        "Token budget of the whole prompt; the least similar examples are dropped to fit."))


class RetrievalConfig(StrategyConfig):
    needs_knowledge_base: ClassVar[bool] = True

    chunk_size: int = Field(256, ge=16, description="Chunk size in tokens of the sentence splitter.")
    chunk_overlap: int = Field(32, ge=0, description="Overlap in tokens between consecutive chunks.")
    top_k: int = Field(3, ge=1, le=50, description="Passages retrieved per question and put in the prompt.")


class RagConfig(RetrievalConfig):
    """Retrieved passages from the knowledge base in the prompt (llama-index + Chroma)."""


class FinetuneConfig(StrategyConfig):
    """LoRA fine-tuning on the train split with the Hugging Face Trainer."""

    method: Literal["lora"] = Field("lora", description="Fine-tuning method.")
    r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator (scale = lora_alpha / r).")
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] | str = Field("all-linear", description=(
        "Modules that get adapters: 'all-linear' or a list such as [q_proj, v_proj]."))
    learning_rate: float = Field(1e-3, gt=0, description="Peak learning rate (linear decay after warmup).")
    num_train_epochs: float = Field(3, gt=0, description="Passes over the train split.")
    per_device_train_batch_size: int = Field(8, ge=1, description="Examples per optimisation step and device.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of steps spent warming up the learning rate.")
    max_seq_length: int = Field(384, ge=16, description="Training examples are truncated to this many tokens.")
    max_train_examples: int | None = Field(None, ge=1, description="Train on at most this many examples (seeded subsample).")
    seed: int | None = Field(None, description="Training seed (defaults to the suite seed).")


class RagFinetuneConfig(FinetuneConfig, RetrievalConfig):
    """The fine-tuned model answering with retrieved passages, trained on prompts
    that include passages retrieved for each training question (RAFT-style)."""

    top_k: int = Field(2, ge=1, le=50, description="Passages retrieved per question, in training and at test time.")
    num_train_epochs: float = Field(2, gt=0, description="Passes over the train split.")
