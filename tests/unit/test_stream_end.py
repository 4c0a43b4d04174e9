"""The tokenizer manager's stream loop sends a request's last update even when it arrives
while the previous chunk is being sent (the soak's lost stream ends, issue 16)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from radixlm.server.tokenizer_manager import ReqState, TokenizerManager


class FakeBuilder:
    def __init__(self) -> None:
        self.dirty = True
        self.finished = False
        self.tokens = 1
        self.meta = SimpleNamespace(index=0)

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "finished": self.finished}


def test_last_update_during_a_send_is_not_lost():
    async def run() -> list[dict]:
        b = FakeBuilder()
        st = ReqState(b, asyncio.Event(), ("r",))
        chunks = []
        tm = TokenizerManager.__new__(TokenizerManager)  # _stream uses no instance state
        async for chunk in tm._stream([st], False):
            chunks.append(chunk)
            if len(chunks) == 1:  # the final output lands while the first chunk is sent
                b.tokens, b.finished, b.dirty = 2, True, True
                st.wake.set()
        return chunks

    chunks = asyncio.run(asyncio.wait_for(run(), 5))
    assert chunks == [{"tokens": 1, "finished": False}, {"tokens": 2, "finished": True}]
