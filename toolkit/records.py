"""The run record: what a run directory's results.json and samples.jsonl hold, as typed,
versioned models. The harness writes them and every reader (report, decision, compare,
seeds, serve, scripts) reads them through `toolkit.runs.RunDir`, by attribute.

A results.json older than RESULTS_VERSION is brought up to date by `migrate` when it is
read (never rewritten in place); one newer than this adaptbench is refused with a message
that says so, instead of being misread."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

RESULTS_VERSION = 2


class Record(BaseModel):
    # forbid: a field this version does not know is a record written by another version
    # (the version check says which) or a typo in the writer, never silently dropped
    model_config = ConfigDict(extra="forbid")


class MetricValue(Record):
    """A mean over the test examples with its 95% bootstrap interval."""
    mean: float
    ci_low: float
    ci_high: float
    n: int
    higher_is_better: bool = True

    @property
    def measured(self) -> bool:
        return not math.isnan(self.mean)


class ModelInfo(Record):
    """For the report: which model answered, through what, where it ran."""
    backend: str
    model: str
    where: str

    @property
    def label(self) -> str:
        return f"{self.model} ({self.backend}, {self.where})"


class JudgeCost(Record):
    input_tokens: int
    output_tokens: int
    seconds: float
    model: str
    errors: dict[str, int] = Field(default_factory=dict)
    usd: float | None = None


class ArmCost(Record):
    """Setup, latency, tokens and money of one arm (see harness.arm_cost for how each is measured)."""
    setup_s: float
    setup_breakdown_s: dict[str, float] = Field(default_factory=dict)
    setup_s_this_run: float = 0.0
    answer_s_this_run: float = 0.0
    latency_p50_s: float
    latency_p95_s: float
    latency_kind: Literal["per batch", "per request"] = "per batch"
    compute_s_per_answer: float
    prompt_tokens_mean: float
    completion_tokens_mean: float
    cached_answers: int = 0
    single_request_latency_s: float | None = None
    single_request_sample: int | None = None
    api_requests_concurrency: int | None = None
    usd_per_1k_queries: float | None = None
    setup_usd: float | None = None
    usd_source: str | None = None
    api_usd_per_1k_queries: float | None = None
    usd_per_hour: float | None = None
    judge: JudgeCost | None = None

    @property
    def priced(self) -> bool:
        """Both a setup price and a per-query price are known."""
        return self.usd_per_1k_queries is not None and self.setup_usd is not None

    @property
    def alone_s(self) -> float | None:
        """What one caller waits for one answer: an API arm's per-request p50, a local arm's
        measured one-at-a-time latency (None for runs older than that measurement)."""
        return self.latency_p50_s if self.latency_kind == "per request" else self.single_request_latency_s


class ConfusionMatrix(Record):
    labels: list[str]
    columns: list[str]       # the labels, then "(unmapped)"
    matrix: list[list[int]]  # rows: gold label; columns: predicted


class ParaphraseExample(Record):
    original: str
    paraphrases: list[str]
    rejected: list[str] = Field(default_factory=list)


class AugmentInfo(Record):
    """finetune's `augment`: paraphrased training questions, what was kept and what it cost."""
    paraphrases_added: int
    paraphrases_requested: int
    paraphrases_rejected: int
    paraphrase_s: float
    paraphrases_cached: bool = False
    paraphrase_examples: list[ParaphraseExample] = Field(default_factory=list)


class ArmInfo(BaseModel):
    """What an arm's `prepare` recorded. The fields the readers use are declared; a strategy
    may add its own (kept as extra fields, e.g. `best_eval_<metric>`)."""
    model_config = ConfigDict(extra="allow")

    # finetune
    method: str | None = None
    train_examples: int | None = None
    truncated_examples: int | None = None  # training examples longer than max_seq_length, cut from the left
    truncated_tokens: int | None = None
    train_tokens: int | None = None
    train_s: float | None = None
    tokens_per_s: float | None = None
    device: str | None = None
    dtype: str | None = None
    processes: int = 1
    padding_free: bool = False
    history: list[dict[str, Any]] = Field(default_factory=list)
    initial_eval_loss: float | None = None
    metric_for_best_model: str | None = None
    stopped_early: bool = False
    epochs_run: float | None = None
    cached: bool = False
    adapter_dir: str | None = None  # relative to the run directory
    adapter_key: str | None = None
    augment: AugmentInfo | None = None
    balance: dict[str, Any] | None = None  # finetune balance: method, label counts before (and after), weights
    trials: list[dict[str, Any]] | None = None
    chosen_params: dict[str, Any] | None = None
    # finetune, method openai_api
    fine_tuning_job: str | None = None
    fine_tuned_model: str | None = None
    endpoint: str | None = None
    # rag, rag_finetune
    index_key: str | None = None
    chunks: int | None = None
    index_cached: bool | None = None
    index_where: str | None = None  # "embedded" or "chroma server"
    index_collection: str | None = None
    hnsw: dict[str, Any] | None = None
    knowledge_update_s: float | None = None  # one changed document absorbed, at the index's measured rates
    index_update: dict[str, Any] | None = None  # what this run's incremental update did (documents, seconds)
    # few_shot
    pool_size: int | None = None
    prompts_over_budget: int | None = None  # few_shot: questions whose examples did not all fit max_prompt_tokens
    shots_dropped: int | None = None
    # ensemble
    members: list[str] | None = None
    ensemble_method: str | None = None
    member_weights: dict[str, float] | None = None
    answers_taken: dict[str, int] | None = None  # member -> how many of the ensemble's answers were its answer
    # rag, rag_finetune: questions whose prompt plus max_new_tokens exceed the model's context
    prompts_over_context: int | None = None
    context_tokens_over: int | None = None
    context_length: int | None = None

    def extra(self, key: str, default: Any = None) -> Any:
        """A strategy's own field (one this model does not declare)."""
        return (self.model_extra or {}).get(key, default)


class ArmResult(Record):
    type: str
    status: Literal["success", "error"]
    error: str | None = None
    fingerprint: str | None = None
    fingerprint_parts: dict[str, str] = Field(default_factory=dict)
    model: ModelInfo | None = None
    metrics: dict[str, MetricValue] = Field(default_factory=dict)
    perplexity_base: MetricValue | None = None  # the gold answers under the untrained base model
    confusion_matrix: ConfusionMatrix | None = None
    parse_failures: int | None = None
    unmeasured: dict[str, int] = Field(default_factory=dict)      # judged rows that failed, per metric
    not_measured: dict[str, str] = Field(default_factory=dict)    # metric -> why
    not_applicable: list[str] = Field(default_factory=list)
    cost: ArmCost | None = None
    info: ArmInfo = Field(default_factory=ArmInfo)

    @property
    def ok(self) -> bool:
        return self.status == "success"


class DataSummary(Record):
    train: int
    validation: int
    test: int
    test_scored: int
    notes: list[str] = Field(default_factory=list)
    knowledge_base_documents: int = 0
    extra_train: dict[str, int] = Field(default_factory=dict)


class MajorityBaseline(Record):
    label: str
    accuracy: float


class Inputs(Record):
    """Where the run's suite and data were, relative to the run directory (so the run can be
    moved together with them), as they were (absolute, for a run moved alone on the same
    machine), each data file's and folder's content hash, and each hub dataset's fingerprint."""
    suite_file: str
    suite_file_absolute: str
    data_dir: str | None = None
    data_dir_absolute: str | None = None
    files: dict[str, str] = Field(default_factory=dict)  # path relative to the run directory -> sha256
    datasets: dict[str, str] = Field(default_factory=dict)  # hf:ID/config:split -> the datasets fingerprint


class RunResults(Record):
    version: int = RESULTS_VERSION
    suite: str
    status: Literal["started", "success", "error", "cancelled"]
    started: str
    finished: str | None = None
    error: str | None = None
    task: str
    description: str | None = None
    generator: str | None = None
    embedder: str | None = None
    device: str | None = None
    dtype: str | None = None
    expected_queries: int | None = None
    expected_queries_is_default: bool = True
    data: DataSummary
    metrics_order: list[str] = Field(default_factory=list)
    labels: list[str] | None = None
    majority_baseline: MajorityBaseline | None = None
    inputs: Inputs | None = None  # None: a run older than version 2
    strategies: dict[str, ArmResult] = Field(default_factory=dict)

    def ok_arms(self) -> dict[str, ArmResult]:
        return {n: a for n, a in self.strategies.items() if a.ok}

    @property
    def failed(self) -> list[str]:
        return [n for n, a in self.strategies.items() if not a.ok]


class Context(Record):
    doc_id: str
    score: float
    text: str


class Sample(Record):
    """One line of samples.jsonl: one arm's answer to one test example, with its scores."""
    strategy: str
    id: str
    input: str
    target: str | None = None
    label: str | None = None
    context_ids: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    output: str
    contexts: list[Context] = Field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    compute_s: float = 0.0
    scores: dict[str, Any] = Field(default_factory=dict)  # metric -> value (None: unmeasured)
    cached: bool = False

    def score(self, metric: str) -> float | None:
        v = self.scores.get(metric)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v else None


# --- migrations -----------------------------------------------------------------

def _v1_to_v2(raw: dict) -> dict:
    """Version 1 (no `version` field) kept no inputs, and older runs of it lack fields added
    later: their defaults say what was not recorded. Arms that never finished (`started`) are
    errors."""
    raw = dict(raw)
    raw["version"] = 2
    raw.setdefault("inputs", None)
    arms = {}
    for name, a in (raw.get("strategies") or {}).items():
        if not isinstance(a, dict):  # left for validation to name
            arms[name] = a
            continue
        if a.get("status") != "success":
            a = {"type": a.get("type", name), "status": "error",
                 "error": a.get("error") or f"did not finish (status {a.get('status')!r})"}
        arms[name] = a
    raw["strategies"] = arms
    if isinstance(raw.get("data"), dict):
        raw["data"] = {"test_scored": raw["data"].get("test", 0), **raw["data"]}
    return raw


MIGRATIONS = {1: _v1_to_v2}  # version -> the function that brings it to version + 1


class RecordVersionError(ValueError):
    pass


def migrate(raw: dict) -> dict:
    """A results.json of any known version, as the current version's fields."""
    version = raw.get("version", 1)
    if not isinstance(version, int) or version < 1:
        raise RecordVersionError(f"unknown results version {version!r}")
    if version > RESULTS_VERSION:
        raise RecordVersionError(f"written by a newer adaptbench (results version {version}; this one reads up "
                                 f"to {RESULTS_VERSION}): upgrade adaptbench to read it")
    while version < RESULTS_VERSION:
        raw = MIGRATIONS[version](raw)
        version = raw["version"]
    return raw
