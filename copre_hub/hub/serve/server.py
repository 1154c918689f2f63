"""Running the endpoint on uvicorn: in the foreground (``copre-hub serve``) or in a background thread (tests,
benchmarks). The socket is bound here, before uvicorn starts, so port 0 picks a free port whose URL is known at once.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp

from copre_hub.errors import ConfigError
from copre_hub.hub.serve.app import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_CONCURRENT_UPLOADS, create_app
from copre_hub.hub.serve.storage import RepoStore

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
_STARTUP_TIMEOUT_S = 30.0
_BACKLOG = 2048


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port=0``: a free port).

    Raises:
        ConfigError: the address cannot be bound (in use, not local, no permission).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(_BACKLOG)  # connections queue from now on, even before uvicorn accepts them
    except OSError as error:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port} ({error.strerror}); choose another --host or --port."
        ) from error
    return sock


def url_of(sock: socket.socket) -> str:
    """``http://host:port`` of a bound socket."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def exposure_warnings(host: str, gated_reads: bool) -> list[str]:
    """What to warn about when serving on ``host``: nothing on loopback; elsewhere, that traffic is plain HTTP
    (copre-hub serve has no TLS: tokens and weights travel in the clear unless a TLS proxy sits in front) and, without
    ``--gated-reads``, that anyone who can reach the address reads every public repository."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost
        loopback = False
    if loopback:
        return []
    warnings = [
        f"{host} is reachable from other machines and this endpoint speaks plain HTTP: tokens and weights travel "
        "in the clear; put a TLS proxy in front of it, or bind 127.0.0.1."
    ]
    if not gated_reads:
        warnings.append(
            f"reads need no token: anyone who can reach {host} can download every public repository; pass "
            "--gated-reads to require one."
        )
    return warnings


def build_server(
    storage: str | Path,
    *,
    tokens: Iterable[str],
    gated_reads: bool = False,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_concurrent_uploads: int = DEFAULT_MAX_CONCURRENT_UPLOADS,
    log_level: str = "warning",
) -> uvicorn.Server:
    """A uvicorn server for the repositories under ``storage`` (see :func:`copre_hub.hub.serve.app.create_app`).

    ``log_level`` applies to uvicorn and to the ``copre_hub.serve`` logger; ``info`` and ``debug`` log every
    request.
    """
    app = create_app(
        RepoStore(storage),
        tokens=tokens,
        gated_reads=gated_reads,
        max_body_bytes=max_body_bytes,
        max_concurrent_uploads=max_concurrent_uploads,
    )
    return _server(app, log_level)


def _server(app: ASGIApp, log_level: str = "warning") -> uvicorn.Server:
    logging.getLogger("copre_hub.serve").setLevel(log_level.upper())
    access_log = log_level in ("info", "debug")
    return uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=access_log, lifespan="off"))


@contextlib.contextmanager
def running(
    storage: str | Path,
    *,
    tokens: Iterable[str],
    gated_reads: bool = False,
    host: str = DEFAULT_HOST,
    port: int = 0,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_concurrent_uploads: int = DEFAULT_MAX_CONCURRENT_UPLOADS,
) -> Iterator[str]:
    """Serve ``storage`` from a background thread for the duration of the block; yields the endpoint URL.

    Example:
        >>> with running(tmp_path, tokens=["secret"]) as url:  # doctest: +SKIP
        ...     HfApi(endpoint=url, token="secret").create_repo("org/name")
    """
    app = create_app(
        RepoStore(storage),
        tokens=tokens,
        gated_reads=gated_reads,
        max_body_bytes=max_body_bytes,
        max_concurrent_uploads=max_concurrent_uploads,
    )
    with serving(app, host=host, port=port) as url:
        yield url


@contextlib.contextmanager
def serving(app: ASGIApp, *, host: str = DEFAULT_HOST, port: int = 0) -> Iterator[str]:
    """Serve any ASGI ``app`` (e.g. :func:`create_app`'s, wrapped) from a background thread; yields its URL."""
    sock = bind(host, port)
    server = _server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="copre-hub-serve", daemon=True)
    thread.start()
    try:
        if not _wait_started(server, thread):
            raise RuntimeError("copre-hub serve did not start")
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(timeout=_STARTUP_TIMEOUT_S)
        sock.close()


def _wait_started(server: uvicorn.Server, thread: threading.Thread) -> bool:
    deadline = time.monotonic() + _STARTUP_TIMEOUT_S
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    return server.started
