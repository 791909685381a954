"""HTTP publisher for backend services: POST /api/v1/publish with retries.

Every publish carries an id (generated when not given), so retries after a timeout or a 503
are stored and delivered once.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import httpx


class PublishError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code


class Publisher:
    def __init__(self, base_url: str, token: str, *, timeout_s: float = 10.0,
                 retry_for_s: float = 30.0) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), timeout=timeout_s,
            headers={"authorization": f"Bearer {token}"})
        self._retry_for_s = retry_for_s

    async def publish(self, channel: str, type_: str, payload: dict[str, Any], *,
                      event_id: str | None = None, ephemeral: bool = False) -> dict[str, Any]:
        """Publish; returns `{id, offset, epoch, ...}` once stored. Retries 503s and transport
        errors with full-jitter backoff until retry_for_s; raises PublishError otherwise."""
        body: dict[str, Any] = {"channel": channel, "type": type_, "payload": payload,
                                "id": event_id or uuid.uuid4().hex}
        if ephemeral:
            body["ephemeral"] = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._retry_for_s
        attempt = 0
        while True:
            try:
                r = await self._client.post("/api/v1/publish", json=body)
                if r.status_code == 200:
                    result: dict[str, Any] = r.json()
                    return result
                err = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
                failure = PublishError(r.status_code, err.get("code", "error"), err.get("error", r.text))
                if r.status_code != 503:
                    raise failure
            except httpx.TransportError as e:
                failure = PublishError(0, "transport", str(e))
            attempt += 1
            if loop.time() >= deadline:
                raise failure
            await asyncio.sleep(random.uniform(0, min(2.0, 0.05 * 2 ** attempt)))

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> Publisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
