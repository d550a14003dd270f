"""Request guards that act before a route reads anything: framing, the body-size cap, the API token.

A pure ASGI middleware, so it sees the request before FastAPI reads its body: a request that will be refused
is refused from its headers, and a body is counted as it is received, whatever its headers claimed.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import HTTPException
from starlette.datastructures import Headers
from starlette.responses import JSONResponse

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CLOSE = {"Connection": "close"}  # a refused request's unread body is never read: the connection ends


def token_ok(authorization: str | None, token: str | None) -> bool:
    """Whether `Authorization: Bearer <token>` carries the token (no token set: always). The scheme is
    case-insensitive (RFC 9110); the token is compared in constant time."""
    if not token:
        return True
    scheme, _, given = (authorization or "").strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


class BodyTooLarge(HTTPException):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body over {max_bytes} bytes", headers=CLOSE)


class BodyGuard:
    """Refuses ambiguous framing and oversized or unauthenticated bodies before they are read."""

    def __init__(self, app: ASGIApp, max_bytes: int, token: str | None) -> None:
        self.app, self.max_bytes, self.token = app, max_bytes, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(scope)
        if refusal is not None:
            status, detail = refusal
            await JSONResponse({"detail": detail}, status, headers=CLOSE)(scope, receive, send)
            return
        received, started = 0, False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise BodyTooLarge(self.max_bytes)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge as e:  # raised past the app (FastAPI turns it into its 413 itself)
            if started:
                raise
            await JSONResponse({"detail": e.detail}, 413, headers=CLOSE)(scope, receive, send)

    def refusal(self, scope: Scope) -> tuple[int, str] | None:
        """(status, detail) for a request refused from its head alone."""
        headers = Headers(scope=scope)
        length, chunked = headers.get("content-length"), headers.get("transfer-encoding")
        if length is not None and chunked is not None:
            return 400, "both Content-Length and Transfer-Encoding: refused (ambiguous framing)"
        if chunked is not None:
            return 411, "chunked request bodies are not accepted; send Content-Length"
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return 413, f"request body over {self.max_bytes} bytes"
        if scope["method"] in MUTATING and not token_ok(headers.get("authorization"), self.token):
            return 401, "missing or wrong API token (Authorization: Bearer <token>)"
        return None
