"""OpenAI `phase` persistence (contract 3.4): a phase the Responses API gave an assistant
message is stored in `temp_phase` under sha256hex(user|task|texts) and put back on that
message when the conversation is sent again, by the same user in the same task only."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import asyncpg
import orjson
import pytest

from extproc.db.migrate import migrate
from extproc.translate.chat import ChunkWriter
from extproc.translate.chat_to_responses import ResponsesTranslator, responses_request
from extproc.translate.openai_phase import PhaseMemory


@pytest.fixture(scope="module")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=0, max_size=4)
    async with pool.acquire() as connection:
        await migrate(connection)
    try:
        yield pool
    finally:
        await pool.close()


DONE_ITEM = {
    "type": "response.output_item.done",
    "output_index": 0,
    "item": {"id": "msg_1", "type": "message", "role": "assistant", "phase": "commentary",
             "content": [{"type": "output_text", "text": "Final answer."}]},
}


async def test_a_streamed_phase_is_remembered_and_put_back(pool: asyncpg.Pool) -> None:
    memory = PhaseMemory(pool, 2.0, "user-1", "task-1")
    inserts: list[asyncio.Task[None]] = []
    translator = ResponsesTranslator(ChunkWriter(model="m"), lambda texts, phase: inserts.append(memory.remember(texts, phase)))
    translator.feed(b"data: " + orjson.dumps(DONE_ITEM) + b"\n\n")
    await asyncio.gather(*inserts)

    [row] = await pool.fetch("SELECT key, value FROM temp_phase")
    assert row["value"] == "commentary"
    assert row["key"] == hashlib.sha256(b"user-1|task-1|Final answer.").hexdigest()

    conversation = {"messages": [
        {"role": "user", "content": "Go"},
        {"role": "assistant", "content": "Final answer."},
        {"role": "assistant", "content": "Something else"},
    ]}

    def body() -> dict:
        return responses_request(conversation, model="gpt-5", api_key="k", force_reasoning=False,
                                 legacy_extension=False).body

    same_task = body()
    await memory.inject(same_task)
    assert same_task["input"][1] == {"role": "assistant", "content": [{"type": "output_text", "text": "Final answer."}],
                                     "phase": "commentary"}
    assert "phase" not in same_task["input"][2]

    other_task = body()
    await PhaseMemory(pool, 2.0, "user-1", "task-2").inject(other_task)
    assert "phase" not in other_task["input"][1]
