"""`adaptbench serve --model`: a base model behind the OpenAI-compatible app, in the
foreground, until Ctrl-C (requests in flight finish first)."""

from __future__ import annotations

import signal
import sys
import threading

from toolkit.errors import UserError


def serve_model(model: str, *, name: str, host: str, port: int, max_batch: int, max_wait_ms: float,
                dtype: str = "auto", device: str = "auto") -> int:
    import uvicorn

    from toolkit.config import GeneratorConfig
    from toolkit.backends.generation import Generator
    from toolkit.progress import status
    from toolkit.serving.openai_app import Engine, create_app, free_port

    with status(f"loading {model}"):
        gen = Generator.load(GeneratorConfig(model=model, dtype=dtype, device=device))
    engine = Engine(gen, max_batch=max_batch, max_wait_ms=max_wait_ms, background=False)
    port = port or free_port(host)
    server = uvicorn.Server(uvicorn.Config(create_app(engine, name), host=host, port=port, log_level="warning",
                                           access_log=False))
    # HTTP on a thread, the model on the main thread (see Engine)
    http = threading.Thread(target=server.run, name="http", daemon=True)
    http.start()
    print(f"serving {name} ({gen.device}/{str(gen.model.dtype).replace('torch.', '')}) at http://{host}:{port}/v1 "
          f"- batches of up to {max_batch}; Ctrl-C stops", file=sys.stderr, flush=True)
    def stop(signum, frame):
        # first Ctrl-C (or SIGTERM): stop accepting, answer what is in flight, then return;
        # a second one stops at once
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
