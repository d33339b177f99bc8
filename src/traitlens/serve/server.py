"""Running the app under uvicorn: in the foreground (the CLI) or in a background thread
on a loopback port (tests, benchmarks, the playground screenshot)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

MAX_CONNECTIONS = 256
"""Concurrent connections uvicorn accepts before it answers 503 (the engine's queue and
timeouts bound the work; this bounds sockets and their buffers)."""


def serve_forever(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    limit_concurrency: int = MAX_CONNECTIONS,
) -> None:
    """Serve ``app`` until interrupted (Ctrl-C); the engine stops at shutdown."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, limit_concurrency=limit_concurrency)


@contextmanager
def running_server(
    app: Any, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0
) -> Iterator[str]:
    """Serve ``app`` from a daemon thread for the block; yields its base URL
    (``port=0``: a free port picked by the OS)."""
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        lifespan="on",
        limit_concurrency=MAX_CONNECTIONS,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="traitlens-uvicorn", daemon=True)
    thread.start()
    waited = 0.0
    while not server.started:
        if not thread.is_alive() or waited > timeout:
            raise RuntimeError(f"uvicorn did not start on {host}:{port}")
        time.sleep(0.02)
        waited += 0.02
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout)
