"""The app shell both `adaptbench serve` modes share: the Guard in front of every route (API
key, Host allow-list, cross-site writes, body caps, the request counter), OpenAI's error JSON
for every failure, /healthz and /metrics, and the HTTP server with its timeouts.

Endpoint families attach their routers (toolkit.serving.endpoints); the composition is in
toolkit.serving.serve.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import signal
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from uvicorn.protocols.http.h11_impl import H11Protocol

from toolkit.errors import UserError
from toolkit.serving.protocol import ApiError, error_body

OPEN_PATHS = ("/healthz",)     # answered without the API key (load balancers, liveness probes)
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/feedback", "/v1/files",
             "/v1/fine_tuning/jobs", "/metrics", "/healthz")
LOOPBACK_NAMES = ("localhost",)  # and any loopback IP address (127.0.0.0/8, ::1)


@dataclass
class Limits:
    """What one request may ask of the server; every bound is checked before it is queued."""
    max_tokens: int = 4096            # tokens one answer may generate
    max_prompt_tokens: int = 0        # > 0: tokens one prompt may hold (else the model's context)
    max_body: int = 1 << 20           # bytes of a JSON request body (413 past it)
    max_upload: int = 64 << 20        # bytes of a fine-tuning file upload
    max_queue: int = 256              # requests waiting for the engine (429 past it)
    max_batch_tokens: int = 0         # > 0: tokens (prompt + max_tokens) one batch holds
    max_connections: int = 512        # open connections (uvicorn answers 503 past it)
    header_timeout_s: float = 10.0    # a connection must send its request headers within this
    body_timeout_s: float = 30.0      # ... and its body within this
    write_timeout_s: float = 30.0     # a response part the client does not take within this ends it
    max_logprob_tokens: int = 4096    # tokens of a text scored with logprobs (full-vocabulary logits)
    keep_alive_s: int = 5             # an idle keep-alive connection is closed after this


def _host_of(value: str) -> str:
    """The name in a Host header value (or an Origin's netloc), without its port."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _is_loopback(name: str) -> bool:
    try:
        return ipaddress.ip_address(name).is_loopback  # exactly an address: "127.evil.example" is a name
    except ValueError:
        return False


class Guard:
    """ASGI middleware in front of every route. Written as plain ASGI rather than a Starlette
    BaseHTTPMiddleware so an oversized body is refused without being read, a chunked one
    without being read past the cap, and a stream's status is what is counted.

    - with an API key: a bearer token on every route but /healthz (constant-time compare);
    - without one: only loopback Host names (DNS rebinding makes a page on another site
      reach a loopback server under its own name: 421), and no cross-site write (a POST
      whose Origin is another site: 403), so a web page cannot drive a keyless server;
    - body caps: `max_body` for JSON, `max_upload` for POST /v1/files;
    - counts every /v1 request by arm, endpoint and status in Prometheus."""

    def __init__(self, app, *, api_key: str | None, limits: Limits, metrics=None, model: str = "",
                 allowed_hosts: tuple[str, ...] = ()):
        self.app, self.limits, self.metrics, self.model = app, limits, metrics, model
        self.key = api_key.encode() if api_key else None
        self.hosts = {h.lower() for h in (*LOOPBACK_NAMES, *allowed_hosts)}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {"code": 500}
        scope.setdefault("state", {})

        async def send_seen(msg):
            if msg["type"] == "http.response.start":
                status["code"] = msg["status"]
            await send(msg)

        counted = self.metrics is not None and scope["path"].startswith("/v1/")
        if counted:
            self.metrics.in_flight.inc()
        try:
            await self._guarded(scope, receive, send_seen)
        finally:
            if counted:
                self.metrics.in_flight.dec()
                path = next((e for e in ENDPOINTS if scope["path"] == e or scope["path"].startswith(e + "/")), "other")
                state = scope["state"]
                code = state.get("status") or status["code"]  # a stream that failed after its 200
                self.metrics.requests.labels(arm=state.get("arm", self.model), endpoint=path, status=str(code)).inc()

    async def _guarded(self, scope, receive, send):
        """Auth, Host and Origin checks, body caps and deadlines, then the app, with the
        request's metrics. One function: the wrapped receive/send close over the request's
        own counters and state, which helpers would have to thread through every call."""
        headers = {k.lower(): v for k, v in scope.get("headers") or []}
        method = scope.get("method", "GET")
        if self.key is not None:
            if scope["path"] not in OPEN_PATHS:
                scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
                if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode("latin-1"), self.key):
                    return await send_json(send, 401, error_body(
                        "Incorrect API key provided: send `Authorization: Bearer KEY` with the server's key",
                        "invalid_request_error", None, "invalid_api_key"))
        else:
            raw_host = headers.get(b"host", b"").decode("latin-1").strip().lower()
            host = _host_of(raw_host)
            if "*" not in self.hosts and host not in self.hosts and not _is_loopback(host):
                return await send_json(send, 421, error_body(
                    f"this server answers loopback names only (Host '{host[:64]}'); start it with --api-key-env to "
                    f"serve other names", "invalid_request_error", None, "misdirected_request"))
            origin = headers.get(b"origin")
            if origin is not None and method not in ("GET", "HEAD", "OPTIONS"):
                # same origin means the same host and port as the request's: a page on another port of
                # this machine is another site too
                if origin.decode("latin-1").split("://", 1)[-1].strip().lower().rstrip("/") != raw_host:
                    return await send_json(send, 403, error_body(
                        "a cross-site request cannot write to a server without an API key", "invalid_request_error",
                        None, "cross_site_request"))
        cap = self.limits.max_upload if scope["path"] == "/v1/files" else self.limits.max_body
        too_big = error_body(f"the request body is over {cap} bytes", "invalid_request_error", None,
                             "request_too_large")
        declared = headers.get(b"content-length")
        send = self._timed_send(send)
        if b"transfer-encoding" in headers:
            declared = None  # chunked wins over a Content-Length (h11 does so): count what arrives
        if declared is not None:
            try:
                if int(declared) > cap:
                    return await send_json(send, 413, too_big)
            except ValueError:
                return await send_json(send, 400, error_body("bad Content-Length", "invalid_request_error"))
            return await self.app(scope, self._timed_receive(receive), send)
        if method not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        # a chunked body: read it up to the cap, then hand it on
        chunks, size = [], 0
        receive_in_time = self._timed_receive(receive)
        while True:
            try:
                msg = await receive_in_time()
            except TimeoutError:
                return await send_json(send, 408, error_body("the request body did not arrive in time",
                                                             "invalid_request_error", None, "request_timeout"))
            if msg["type"] == "http.disconnect":
                return
            size += len(msg.get("body", b""))
            if size > cap:
                return await send_json(send, 413, too_big)
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        body = b"".join(chunks)
        done = False

        async def replay():
            nonlocal done
            if not done:
                done = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


    def _timed_receive(self, receive):
        """The body must arrive within `body_timeout_s` (a client sending a byte every few seconds
        would hold its connection, and its worker, for ever)."""
        state: dict = {"deadline": None, "done": False}

        async def timed():
            if state["done"]:  # the body is in: later receives wait for a disconnect, for as long as it takes
                return await receive()
            now = asyncio.get_running_loop().time()
            if state["deadline"] is None:
                state["deadline"] = now + self.limits.body_timeout_s
            msg = await asyncio.wait_for(receive(), timeout=max(state["deadline"] - now, 0.001))
            if msg.get("type") != "http.request" or not msg.get("more_body"):
                state["done"] = True
            return msg
        return timed

    def _timed_send(self, send):
        """A response that its client does not read within `write_timeout_s` is abandoned (a
        stalled stream reader would hold its generation and connection for ever)."""
        async def timed(msg):
            await asyncio.wait_for(send(msg), timeout=self.limits.write_timeout_s)
        return timed


async def send_json(send, status: int, obj: dict) -> None:
    data = json.dumps(obj).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


# what pydantic says when a value is not of a union member's type; the member whose bound it
# broke says more ("n_epochs: less than or equal to 50" rather than "should be 'auto'")
_TYPE_ERRORS = {"literal_error", "string_type", "int_type", "int_parsing", "float_type", "float_parsing", "bool_type",
                "bool_parsing", "list_type", "dict_type", "model_type", "model_attributes_type", "none_required",
                "is_instance_of", "int_from_float"}


def _loc(error: dict) -> str | None:
    """The field a validation error names, as a dotted path: pydantic's union-member and
    validator names ("literal['auto']", "function-after[...]", "str") left out."""
    parts = [str(x) for x in error.get("loc", ())[1:]
             if isinstance(x, int) or not ("[" in str(x) or "(" in str(x) or x in ("str", "int", "float", "bool", "list",
                                                                                  "dict") or str(x).startswith(
                 ("function-", "constrained-")))]
    return ".".join(parts) or None


def _first_error(errors: list[dict]) -> tuple[dict, str | None]:
    if not errors:
        return {}, None
    field = _loc(errors[0])
    same = [e for e in errors if _loc(e) == field]
    return next((e for e in same if e.get("type") not in _TYPE_ERRORS), errors[0]), field


def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def build_app(*, title: str, description: str, routers: list, api_key: str | None = None, metrics=None,
              limits: Limits | None = None, model: str = "", allowed_hosts: tuple[str, ...] = (),
              state: dict | None = None) -> FastAPI:
    """A FastAPI app whose every error is OpenAI's error JSON, with /healthz, /metrics (when
    `metrics` is given), the given routers, and the Guard in front. `state` goes on
    `app.state` (the handlers' service objects)."""
    limits = limits or Limits()
    app = FastAPI(title=title, description=description)
    for k, v in (state or {}).items():
        setattr(app.state, k, v)
    app.state.limits = limits

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first, param = _first_error(exc.errors())
        if first.get("type") in ("json_invalid", "model_attributes_type") and not param:
            return error_response(ApiError(400, "We could not parse the JSON body of your request: it is not a "
                                           "JSON object"))
        return error_response(ApiError(400, f"{param or 'request body'}: {first.get('msg', 'invalid request')}",
                                       param=param))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(TimeoutError)
    async def too_slow(request: Request, exc: TimeoutError):  # the Guard's body deadline
        return JSONResponse(error_body("the request body did not arrive in time", "invalid_request_error", None,
                                       "request_timeout"), status_code=408)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        traceback.print_exc()
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "server_error"), status_code=500)

    @app.get("/healthz", include_in_schema=False)
    async def healthz():
        return {"status": "ok"}

    if metrics is not None:
        @app.get("/metrics", include_in_schema=False)
        async def prometheus():
            # prometheus-client: imported on first use, not when this module loads
            from toolkit.serving.metrics import CONTENT_TYPE_LATEST
            return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    for r in routers:
        app.include_router(r)
    app.add_middleware(Guard, api_key=api_key, limits=limits, metrics=metrics, model=model,
                       allowed_hosts=allowed_hosts)
    return app


class GuardedH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for a request's headers: uvicorn times out
    idle keep-alive connections but not one that opened and sends nothing (or a byte at a
    time), which holds a connection slot forever (slowloris)."""

    header_timeout = 10.0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._header_timer = None
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _busy(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and not self._busy():
            self._arm_header_timer()  # a new request begins: its headers must arrive in time
        super().data_received(data)
        if self._busy() and self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def connection_lost(self, exc) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)

    def _headers_late(self) -> None:
        self._header_timer = None
        if not self._busy() and not self.transport.is_closing():
            self.transport.close()


def uvicorn_config(app, host: str, port: int, limits: Limits):
    proto = type("GuardedH11", (GuardedH11,), {"header_timeout": limits.header_timeout_s})
    return uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, http=proto,
                          timeout_keep_alive=limits.keep_alive_s, limit_concurrency=limits.max_connections,
                          h11_max_incomplete_event_size=64 * 1024)  # request line + headers: 64 KiB at most


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LoopbackServer:
    """Runs an app with uvicorn in a background thread on 127.0.0.1 and a free port."""

    def __init__(self, app, port: int | None = None, limits: Limits | None = None):
        self.port = port or free_port()
        self.server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", self.port, limits or Limits()))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> "LoopbackServer":
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the loopback model server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def run_server(app, engine, host: str, port: int, banner: str, limits: Limits) -> int:
    """HTTP on a thread, the model on the main thread (see Engine), until Ctrl-C or SIGTERM:
    the first stops accepting and answers what is in flight; a second stops at once."""



    port = port or free_port(host)
    # The engine's generation loop is mostly Python between small kernels and holds the GIL most
    # of the time; a 1 ms switch interval (default 5 ms) lets the event loop thread in sooner, so
    # /healthz and new requests are answered promptly while a batch runs.
    sys.setswitchinterval(0.001)
    server = uvicorn.Server(uvicorn_config(app, host, port, limits))
    http = threading.Thread(target=server.run, name="http", daemon=True)
    http.start()
    print(f"{banner} at http://{host}:{port}/v1 - batches of up to {engine.max_batch}; Ctrl-C stops",
          file=sys.stderr, flush=True)

    def stop(signum, frame):
        if server.should_exit:
            raise KeyboardInterrupt
        server.should_exit = True
        print("stopping: finishing the requests in flight (Ctrl-C again to stop now)", file=sys.stderr, flush=True)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        engine.run(until=lambda: not http.is_alive())
    finally:
        engine.close()
    if not server.started:
        raise UserError(f"could not listen on {host}:{port} (in use?)", field="--port")
    return 0
