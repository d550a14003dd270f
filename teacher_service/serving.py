"""Run the service under uvicorn with its connection limits (docs/security.md).

uvicorn bounds idle keep-alive connections but not a request head that never completes: a client that opens
connections and sends headers slowly, or never finishes them, held each one forever. `HeadTimeoutH11` closes
a connection whose next request head has not arrived within `header_timeout_s`.
"""

from __future__ import annotations

import asyncio

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from robustkd.teacher_service.app import create_app
from robustkd.teacher_service.memory import MALLOC
from robustkd.teacher_service.settings import Settings, is_loopback


class InsecureBind(ValueError):
    """Serving beyond loopback without an API token, and without `insecure`."""


class HeadTimeoutH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head."""

    header_timeout_s = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def _arm(self) -> None:
        self.loop.call_later(self.header_timeout_s, self._expire, self.cycle)

    def _expire(self, armed_with: object) -> None:
        # no new request head since the deadline was set (a new request replaces `cycle`), and none in flight
        idle = armed_with is None or armed_with.response_complete
        if self.cycle is armed_with and idle and not self.transport.is_closing():
            self.transport.close()


def check_bind(settings: Settings, host: str, insecure: bool) -> None:
    """Refuse a bind beyond loopback without a token: anyone who reaches it could run jobs and delete caches."""
    if not is_loopback(host) and not settings.api_token and not insecure:
        raise InsecureBind(
            f"refusing to serve on {host} without an API token: anyone who can reach it could submit jobs and "
            "delete caches. Set ROBUSTKD_API_TOKEN to a secret (e.g. the output of `python -c \"import secrets; "
            "print(secrets.token_hex(32))\"`), bind 127.0.0.1, or pass --insecure to serve openly anyway")


def server_config(settings: Settings, host: str, port: int) -> uvicorn.Config:
    settings = settings.model_copy(update={"host": host, "port": port})
    protocol = type("H11", (HeadTimeoutH11,), {"header_timeout_s": settings.header_timeout_s})
    return uvicorn.Config(create_app(settings), host=host, port=port, log_level="info", http=protocol,
                          limit_concurrency=settings.limit_concurrency,
                          timeout_keep_alive=settings.timeout_keep_alive_s,
                          h11_max_incomplete_event_size=settings.max_header_bytes,
                          timeout_graceful_shutdown=settings.timeout_graceful_shutdown_s,
                          backlog=settings.backlog)


def serve(settings: Settings, host: str | None = None, port: int | None = None, insecure: bool = False) -> None:
    """Serve until stopped; InsecureBind for an open bind without a token (unless `insecure`)."""
    host, port = host or settings.host, port or settings.port
    check_bind(settings, host, insecure)
    MALLOC.tune(settings.malloc_arenas, settings.stream_mmap_threshold)
    uvicorn.Server(server_config(settings, host, port)).run()
