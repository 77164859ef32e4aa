"""What every request passes before the app reads any of it: the token and the body size.

An ASGI middleware, so that a request without the token is refused (401) before its body is
read, and a body over the limit (413) before it is parsed: from its Content-Length at once,
or as it streams in, keeping at most the limit in memory. Both answer with the service's
JSON error body.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

PROTECTED = "/api/"  # paths that need the token; /health, / and /docs do not


def authorized(header: bytes | None, token: str) -> bool:
    """Whether an Authorization header carries ``Bearer <token>`` (constant-time compare)."""
    scheme, _, given = (header or b"").decode("latin-1").partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(given.strip().encode(),
                                                                 token.encode())


class Gate:
    """Refuse /api requests without ``token`` (when set) and bodies over ``max_bytes``."""

    def __init__(self, app: ASGIApp, token: str | None, max_bytes: int) -> None:
        self.app, self.token, self.max_bytes = app, token, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.token is not None and scope["path"].startswith(PROTECTED) and \
                not authorized(headers.get(b"authorization"), self.token):
            return await _answer(send, 401, "missing or wrong token: send the header "
                                 "'Authorization: Bearer TOKEN' with the token the server was "
                                 "started with (--token or CLEARVAE_TOKEN)",
                                 [(b"www-authenticate", b"Bearer")])
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            return await self._too_large(send)
        chunks, size, more = [], 0, True
        while more:  # the body, at most max_bytes of it, in memory
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._too_large(send)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body only a disconnect can come

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send) -> None:
        await _answer(send, 413, f"the request is larger than this server's limit of "
                      f"{self.max_bytes / 2**20:g} MB: send a smaller file",
                      detail={"limit_bytes": self.max_bytes})


async def _answer(send: Send, status: int, error: str, headers: list | None = None,
                  detail: Any = None) -> None:
    body = json.dumps({"error": error, "detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})
