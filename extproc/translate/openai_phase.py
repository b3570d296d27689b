"""OpenAI `phase` persistence (contract 3.4): for a custom LLM of kind `openai` at OpenAI
itself, the `phase` of each assistant message the Responses API returned is remembered in
`temp_phase` and put back on that message when the client sends the conversation again (chat
completions have no field for it).

The key is sha256hex(user id | task id | the message's texts), as the reference computes it. The
lookup runs before the request goes upstream (bounded by the directory timeout: a miss only
loses the hint); the insert runs in the background, never delaying the stream.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import asyncpg

from extproc.db import POSTGRES_ERRORS

logger = logging.getLogger(__name__)

OPENAI_BASE_URL = "https://api.openai.com/v1"
# The event loop keeps only weak references to tasks; the request's state may go first.
_PENDING: set[asyncio.Task[None]] = set()

_SELECT = "SELECT key, value FROM temp_phase WHERE key = ANY($1::text[])"
_INSERT = "INSERT INTO temp_phase (key, value) VALUES ($1, $2) ON CONFLICT DO NOTHING"


def phase_key(user_id: str, task_id: str | None, texts: list[str]) -> str:
    return hashlib.sha256("|".join([user_id, task_id or "", *texts]).encode()).hexdigest()


def message_texts(content: object) -> list[str]:
    """The `input_text`/`output_text` parts of a Responses message, in order."""
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        return []
    return [
        part["text"]
        for part in content
        if isinstance(part, dict) and part.get("type") in ("input_text", "output_text") and isinstance(part.get("text"), str)
    ]


@dataclass(slots=True)
class PhaseMemory:
    pool: asyncpg.Pool
    timeout: float
    user_id: str
    task_id: str | None

    async def inject(self, body: dict[str, Any]) -> None:
        """Puts the remembered phase on each assistant message of a Responses request body."""
        messages = [m for m in body.get("input") or () if isinstance(m, dict) and m.get("role") == "assistant"]
        if not messages:
            return
        keys = [phase_key(self.user_id, self.task_id, message_texts(m.get("content"))) for m in messages]
        try:
            async with asyncio.timeout(self.timeout):
                async with self.pool.acquire() as connection:
                    rows = await connection.fetch(_SELECT, list(set(keys)))
        except POSTGRES_ERRORS as exc:
            logger.error("temp_phase lookup failed", extra={"error": repr(exc)})
            return
        phases = {row["key"]: row["value"] for row in rows}
        for message, key in zip(messages, keys, strict=True):
            if key in phases:
                message["phase"] = phases[key]
            else:
                logger.warning("no phase remembered for an assistant message", extra={"user_id": self.user_id})

    def remember(self, texts: list[str], phase: str) -> asyncio.Task[None]:
        """Called by the response translator; the insert runs as a task of its own."""
        task = asyncio.get_running_loop().create_task(self._insert(phase_key(self.user_id, self.task_id, texts), phase))
        _PENDING.add(task)
        task.add_done_callback(_PENDING.discard)
        return task

    async def _insert(self, key: str, phase: str) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                async with self.pool.acquire() as connection:
                    await connection.execute(_INSERT, key, phase)
        except POSTGRES_ERRORS as exc:
            logger.error("temp_phase insert failed", extra={"error": repr(exc)})
