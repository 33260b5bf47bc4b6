"""What a request can be answered by, for both `adaptbench serve` modes: a plain model
(`--model`, and the models its fine-tuning jobs made) or an arm of a run (`RUN_DIR --arm`),
and the A/B router in front of the arms.

A target turns a request into what the engine generates from (`prepare`): a rendered
prompt, its token count, the generation settings and, for an arm, the passages it
retrieved. It checks the request against the model's context there, alone, before anything
is queued.
"""

from __future__ import annotations

import copy
import hashlib
import threading
from typing import Any

from toolkit.backends import Settings
from toolkit.serving.protocol import ApiError, ServeContext


def context_of(generator) -> int:
    """The most tokens (prompt plus answer) a local model attends to."""
    cfg = generator.model.config
    n = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 2048
    return int(n)


def check_length(ctx: ServeContext, context: int, max_prompt_tokens: int) -> None:
    """400 `context_length_exceeded`, as OpenAI says it, when prompt plus answer do not fit."""
    want = ctx.settings.max_tokens
    if max_prompt_tokens and ctx.prompt_tokens > max_prompt_tokens:
        raise ApiError(400, f"This server takes prompts of at most {max_prompt_tokens} tokens. However, your "
                       f"prompt has {ctx.prompt_tokens} tokens. Please reduce the length of the prompt.",
                       param="messages" if ctx.endpoint == "chat.completions" else "prompt",
                       code="context_length_exceeded")
    if ctx.prompt_tokens + want > context:
        raise ApiError(400, f"This model's maximum context length is {context} tokens. However, you requested "
                       f"{ctx.prompt_tokens + want} tokens ({ctx.prompt_tokens} in the prompt, {want} for the "
                       f"completion). Please reduce the length of the prompt or the completion.",
                       param="messages" if ctx.endpoint == "chat.completions" else "prompt",
                       code="context_length_exceeded")


def settings_for(req, default, max_tokens_cap: int):
    """The request's generation settings over `default` (toolkit.backends.Settings)."""
    want = req.wanted_tokens()
    if want is not None and want > max_tokens_cap:
        raise ApiError(400, f"max_tokens is {want}; this server generates at most {max_tokens_cap}",
                       param="max_tokens")
    stop = req.stops()
    temperature = float(req.temperature) if req.temperature is not None else default.temperature
    if temperature < 1e-5:  # sampling at 1e-300 divides the logits into infinities: that is greedy
        temperature = 0.0
    return Settings(want if want is not None else default.max_tokens, tuple(stop) if stop else tuple(default.stop),
                    temperature, req.seed if req.seed is not None else default.seed)


def private_tokenizer(generator):
    """A copy of a generator's tokenizer for counting prompt tokens on request threads: a fast
    tokenizer is not safe to share with the engine's thread, which changes its padding state
    ("Already borrowed")."""
    return copy.deepcopy(generator.tokenizer)


class Target:
    """Something that answers: a name, the engine key of its model (None: not local), and
    how a request becomes its prompt."""

    name: str
    is_arm = False
    key: int | None = None
    generator: Any = None
    likelihood = False
    run: str | None = None

    def prepare(self, ctx: ServeContext, req, limits) -> None:
        raise NotImplementedError

    def card(self) -> dict:
        return {"id": self.name, "object": "model", "created": 0, "owned_by": "adaptbench"}


class ModelTarget(Target):
    """A local model behind `serve --model`: the base, or a fine-tuning job's model. A chat is
    rendered with the model's chat template; a text completion of the base model continues
    the prompt as given (lm-evaluation-harness sends those), and of a fine-tuned model
    answers the prompt as one user turn, the way its training rendered each example."""

    def __init__(self, name: str, key: int, generator, *, fine_tuned: bool = False, root: str | None = None):
        self.name, self.key, self.generator, self.fine_tuned = name, key, generator, fine_tuned
        self.root = root  # the base model a fine-tuned one was trained from
        self.default = Settings(256, (), 0.0, None)
        self.tokenizer = private_tokenizer(generator)

    def prepare(self, ctx: ServeContext, req, limits, prompt: str | None = None, raw: bool = False) -> None:
        """`prompt`: one of a completion request's prompts (default the first); `raw`: score
        the text as given (echo with logprobs), whatever model it is."""
        default = self.default if ctx.endpoint == "chat.completions" else Settings(16, (), 0.0, None)
        ctx.settings = settings_for(req, default, limits.max_tokens)
        tok = self.tokenizer
        if ctx.endpoint == "chat.completions":
            messages = [{"role": m.role, "content": m.text()} for m in req.messages]
            ctx.question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
            ctx.prompt = self.render(messages)
        else:
            ctx.question = prompt if prompt is not None else req.prompts()[0]
            ctx.prompt = self.render([{"role": "user", "content": ctx.question}]) if self.fine_tuned and not raw \
                else ctx.question
        ctx.prompt_tokens = len(tok(ctx.prompt, add_special_tokens=False)["input_ids"])
        check_length(ctx, context_of(self.generator), limits.max_prompt_tokens)

    def render(self, messages) -> str:
        try:
            return self.generator.render(messages)
        except Exception as e:  # noqa: BLE001 -- a chat template refuses this conversation: that request's 400
            raise ApiError(400, f"the model's chat template cannot render these messages: {str(e)[:200]}",
                           param="messages") from None

    def card(self) -> dict:
        return {**super().card(), **({"parent": self.root} if self.fine_tuned else {})}


class ArmTarget(Target):
    """An arm of a run, rebuilt as evaluated (toolkit.serving.arms.ServedArm): the question is
    the last user message (or the prompt); the arm builds its own prompt from it."""

    is_arm = True

    def __init__(self, arm, key: int | None, weight: float):
        self.arm, self.name, self.key, self.weight = arm, arm.name, key, weight
        self.generator = arm.backend.generator if arm.local else None
        self.tokenizer = private_tokenizer(self.generator) if self.generator is not None else None
        self.likelihood, self.run = arm.likelihood, arm.run
        self._lock = threading.Lock()  # retrieval and few-shot selection: one at a time per arm

    def prepare(self, ctx: ServeContext, req, limits) -> None:
        if ctx.endpoint == "chat.completions":
            users = [m for m in req.messages if m.role == "user"]
            ctx.question = users[-1].text() if users else ""
            if not ctx.question.strip():
                raise ApiError(422, "a served arm answers the last user message, and there is none (or it is empty)",
                               param="messages")
        else:
            prompts = req.prompts()
            if len(prompts) != 1 or not prompts[0].strip():
                raise ApiError(422, "a served arm answers one question: `prompt` must be one non-empty string",
                               param="prompt")
            if req.echo or req.logprobs is not None:
                raise ApiError(400, "echo and logprobs are for a base model (adaptbench serve --model); a served arm "
                               "answers its prompt", param="echo" if req.echo else "logprobs")
            if req.max_tokens == 0:
                raise ApiError(400, "max_tokens must be at least 1", param="max_tokens")
            ctx.question = prompts[0]
        ctx.settings = settings_for(req, self.arm.settings, limits.max_tokens)
        with self._lock:
            messages, ctx.passages = self.arm.prompt(ctx.question, ctx.request_id)
        if self.generator is None:
            ctx.prompt = messages  # the remote endpoint renders it
            ctx.prompt_tokens = self.arm.backend.count_tokens(messages)
        else:
            text = self.generator.render(messages)
            ctx.prompt_tokens = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            ctx.prompt = messages if self.likelihood else text  # a likelihood arm scores its labels after them
        if self.generator is not None:
            check_length(ctx, context_of(self.generator), limits.max_prompt_tokens)

    def card(self) -> dict:
        d = self.arm.describe
        return {**super().card(), "adaptbench": {"type": self.arm.type, "model": d.get("model"),
                                                 "where": d.get("where"), "weight": self.weight}}


class Router:
    """Weighted A/B routing, sticky per user: a user id hashes to the same point of [0, 1)
    on every request and every restart, so a user keeps seeing one arm. Requests without a
    user id are spread by their request id."""

    def __init__(self, weights: dict[str, float]):
        self.weights = {a: w for a, w in weights.items() if w > 0}
        total = sum(self.weights.values())
        self.cuts, acc = [], 0.0
        for arm, w in self.weights.items():
            acc += w / total
            self.cuts.append((acc, arm))

    def pick(self, key: str) -> str:
        point = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2 ** 64
        for cut, arm in self.cuts:
            if point < cut:
                return arm
        return self.cuts[-1][1]

    def shares(self) -> dict[str, float]:
        total = sum(self.weights.values())
        return {a: w / total for a, w in self.weights.items()}


class Targets:
    """The names a server answers to. `resolve` gives (target, routed) or a 404."""

    def __init__(self, name: str):
        self.name = name
        self.by_name: dict[str, Target] = {}

    def names(self) -> list[str]:
        return list(self.by_name)

    def unknown(self, model) -> ApiError:
        return ApiError(404, f"The model '{str(model)[:128]}' does not exist (this server serves: "
                        f"{', '.join(self.names())})", param="model", code="model_not_found")

    def resolve(self, model: str | None, user: str | None, request_id: str) -> tuple[Target, bool]:
        raise NotImplementedError

    def cards(self) -> list[dict]:
        return [t.card() for t in self.by_name.values()]


class ModelTargets(Targets):
    """`serve --model`: the base model under its served name, and fine-tuned models as their
    jobs succeed (added and removed while the server runs)."""

    def __init__(self, name: str, base: ModelTarget):
        super().__init__(name)
        self.base = base
        self.by_name[name] = base
        self._lock = threading.Lock()

    def add(self, target: Target) -> None:
        with self._lock:
            self.by_name = {**self.by_name, target.name: target}

    def remove(self, name: str) -> bool:
        with self._lock:
            if name not in self.by_name or name == self.name:
                return False
            self.by_name = {k: v for k, v in self.by_name.items() if k != name}
            return True

    def resolve(self, model, user, request_id):
        if model in (None, ""):
            return self.base, False
        t = self.by_name.get(model)
        if t is None:
            raise self.unknown(model)
        return t, False


class ArmTargets(Targets):
    """`serve RUN_DIR --arm`: each arm by its name, and the router's name (or none) for
    weighted, sticky routing between them."""

    def __init__(self, name: str, arms: list[ArmTarget], weights: dict[str, float]):
        super().__init__(name)
        self.by_name = {a.name: a for a in arms}
        self.router = Router(weights)
        shares = self.router.shares()
        for a in arms:
            a.weight = shares.get(a.name, 0.0)

    def names(self) -> list[str]:
        return ([self.name] if self.name not in self.by_name else []) + list(self.by_name)

    def resolve(self, model, user, request_id):
        if model in self.by_name:
            return self.by_name[model], False
        if model in (None, "", self.name):
            return self.by_name[self.router.pick(f"user:{user}" if user else request_id)], True
        raise self.unknown(model)

    def cards(self) -> list[dict]:
        out = super().cards()
        if self.name not in self.by_name:
            out.insert(0, {"id": self.name, "object": "model", "created": 0, "owned_by": "adaptbench",
                           "adaptbench": {"routes": self.router.shares()}})
        return out
