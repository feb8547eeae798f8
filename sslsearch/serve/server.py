"""Run the app with uvicorn: in the foreground (the CLI) or on a background thread (tests, benchmarks)."""
from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgumentError, SSLSearchError


def require_serve_extra() -> None:
    """Raise a one-line error when fastapi / uvicorn / python-multipart are not installed."""
    missing = []
    for module, package in (("fastapi", "fastapi"), ("uvicorn", "uvicorn"), ("multipart", "python-multipart")):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise SSLSearchError(f"`sslsearch serve` needs {', '.join(missing)}; install them with "
                             "`pip install 'sslsearch[serve]'`")


def run_server(app: Any, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info") -> None:
    """Serve ``app`` until interrupted (Ctrl-C)."""
    import uvicorn

    if not 0 <= port <= 65535:
        raise InvalidArgumentError(f"--port must be 0..65535, got {port}")
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=log_level == "debug")


@dataclass
class BackgroundServer:
    """A uvicorn server on a background thread; ``url`` is where it listens. ``stop()`` ends it."""

    url: str
    server: Any
    thread: threading.Thread

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> "BackgroundServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_background(app: Any, host: str = "127.0.0.1", port: int = 0, *, startup_timeout: float = 30.0
                     ) -> BackgroundServer:
    """Start ``app`` on a background thread (port 0: a free port) and wait until it accepts connections.

    Raises:
        SSLSearchError: the server did not start within ``startup_timeout`` seconds.
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="sslsearch-serve")
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise SSLSearchError(f"the background server did not start within {startup_timeout:g} s")
        time.sleep(0.02)
    bound_host, bound_port = sock.getsockname()[:2]
    return BackgroundServer(f"http://{bound_host}:{bound_port}", server, thread)
