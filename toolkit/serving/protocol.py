"""What travels over the wire: OpenAI's request and response shapes as pydantic models, its
error JSON, and the typed context a request carries through the server.

Every request body is declared here, with the bounds the server enforces, so the published
`/openapi.json` says exactly what a handler accepts (a schema-driven fuzzer generates from
it) and a malformed request is refused alone, before it can reach another request's batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

MAX_STOP = 4                 # stop strings per request (OpenAI's limit)
MAX_STOP_CHARS = 128         # characters per stop string: each is matched at every generated token
MAX_PROMPTS = 32             # prompts in one /v1/completions request
MAX_N = 16                   # choices per prompt
MAX_MESSAGES = 512           # messages in one chat request
INT64 = 2 ** 63              # seeds are 64-bit signed integers, as OpenAI's

Seed = Annotated[int, Field(ge=-INT64, le=INT64 - 1)]
StopString = Annotated[str, StringConstraints(min_length=1, max_length=MAX_STOP_CHARS)]
Stop = StopString | Annotated[list[StopString], Field(max_length=MAX_STOP)] | None
User = Annotated[str, StringConstraints(max_length=256)]


class Error(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error JSON: every 4xx and 5xx this server sends has this shape."""
    error: Error


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class ApiError(Exception):
    """Raised anywhere in a handler: the app shell answers it as OpenAI's error JSON."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code
        self.headers = headers

    def body(self) -> dict:
        return error_body(self.message, self.kind, self.param, self.code)


def busy() -> ApiError:
    return ApiError(429, "too many requests are waiting; retry shortly", "rate_limit_error", None,
                    "rate_limit_exceeded", headers={"Retry-After": "1"})


def closing() -> ApiError:
    return ApiError(503, "the server is shutting down", "server_error", None, "server_closing")


# the documented error answers of every route (the fuzzer checks responses against them)
ERRORS: dict[int | str, dict[str, Any]] = {s: {"model": ErrorResponse} for s in (400, 401, 403, 404, 408, 413, 421,
                                                                                  422, 429, 502, 503)}
# chat and text completions answer `stream: true` with server-sent events
STREAMED = {**ERRORS, 200: {"content": {"text/event-stream": {"schema": {
    "anyOf": [{"type": "object"}, {"type": "string"}],
    "description": "each event's data: a chunk object (or an error object), then the string [DONE]"}}}}}


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_call_id...: accepted, not used
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(BaseModel):
    model: str | None = Field(None, max_length=256)
    n: int = Field(1, ge=1, le=MAX_N)
    temperature: float | None = Field(None, ge=0, le=2)
    stop: Stop = None
    seed: Seed | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: User | None = None

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def wanted_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    prompt: Annotated[str, StringConstraints(min_length=1)] | Annotated[
        list[Annotated[str, StringConstraints(min_length=1)]], Field(min_length=1, max_length=MAX_PROMPTS)]
    max_tokens: int | None = Field(None, ge=0)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=5)

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def wanted_tokens(self) -> int | None:
        return self.max_tokens


class FeedbackRequest(BaseModel):
    request_id: str = Field(min_length=1, max_length=128)
    score: float | None = Field(None, ge=0, le=1, description="0 (bad) .. 1 (good); thumbs up/down is 1/0")
    correction: str | None = Field(None, max_length=65536)
    comment: str | None = Field(None, max_length=65536)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatChoice(BaseModel):
    index: int
    message: dict[str, Any]
    finish_reason: str | None


class ChatResponse(BaseModel):
    model_config = ConfigDict(extra="allow")  # the `adaptbench` field of served arms
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None


class CompletionResponse(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "adaptbench"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class FeedbackResponse(BaseModel):
    object: Literal["feedback"] = "feedback"
    request_id: str
    arm: str
    recorded: bool


@dataclass
class ServeContext:
    """One request on its way through the server (vLLM's ServeContext): who asked for what,
    what it was turned into, and when."""
    request_id: str
    endpoint: str                 # "chat.completions" | "completions"
    asked: str | None             # the model name the client sent
    target: Any                   # what answers: toolkit.serving.targets.Target
    routed: bool = False          # the A/B router chose the target
    user: str | None = None
    question: str = ""            # what is logged as the input
    prompt: Any = None            # what the engine generates from: rendered text (local) or messages (remote)
    passages: list = field(default_factory=list)
    settings: Any = None          # toolkit.backends.Settings
    prompt_tokens: int = 0
    t0: float = field(default_factory=time.perf_counter)
    created: int = field(default_factory=lambda: int(time.time()))

    def extra(self) -> dict | None:
        """The `adaptbench` field of a served arm's response (None for a plain model)."""
        if not getattr(self.target, "is_arm", False):
            return None
        return {"request_id": self.request_id, "arm": self.target.name, "routed": self.routed,
                "passages": [{"doc_id": p.doc_id, "score": round(float(p.score), 4)} for p in self.passages]}


class Hyperparameters(BaseModel):
    """A fine-tuning job's hyperparameters, as OpenAI takes them: a number or "auto". The
    server's quotas (toolkit.serving.ft_jobs.Quotas) may bound them further."""
    model_config = ConfigDict(allow_inf_nan=False)
    n_epochs: Literal["auto"] | Annotated[int, Field(ge=1, le=1000)] = "auto"
    learning_rate_multiplier: Literal["auto"] | Annotated[float, Field(gt=0, le=100)] = "auto"
    batch_size: Literal["auto"] | Annotated[int, Field(ge=1, le=256)] = "auto"


class JobRequest(BaseModel):
    training_file: str = Field(max_length=64)
    model: str = Field(max_length=256)
    validation_file: str | None = Field(None, max_length=64)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    suffix: Annotated[str, StringConstraints(max_length=40, pattern=r"^[A-Za-z0-9_.\-]*$")] | None = None
    seed: Annotated[int, Field(ge=0, le=2 ** 31 - 1)] | None = None


class FileObject(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    object: Literal["file"]
    bytes: int
    created_at: int
    filename: str
    purpose: str


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]


class Deleted(BaseModel):
    id: str
    object: str
    deleted: bool


class JobObject(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    object: Literal["fine_tuning.job"]
    created_at: int
    model: str
    status: str


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobObject]
    has_more: bool


class EventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    has_more: bool
