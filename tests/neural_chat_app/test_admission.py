"""The bounded queue gives back the place of a request whose client left before its stream was first read.

pytest tests/neural_chat_app/test_admission.py
"""

import asyncio
import gc
from types import SimpleNamespace

from neural_chat_app.server.admission import Admission
from neural_chat_app.server.generation_routes import Choice, Turn


def _turn(admission):
    state = SimpleNamespace(admission=admission)
    admission.reserve()
    return Turn(state, backend=None, messages=[], choices=[Choice(0, 0, [], None)], session=None, kind="chat")


def test_a_turn_dropped_before_its_stream_started_frees_its_place():
    admission = Admission(max_concurrent=1, max_queue=0)
    turn = _turn(admission)
    assert admission.waiting == 1
    del turn
    gc.collect()
    assert admission.waiting == 0
    _turn(admission)  # the place is usable again: no QueueFull


def test_a_started_turn_is_not_released_twice():
    admission = Admission(max_concurrent=1, max_queue=0)
    turn = _turn(admission)
    turn.refusal = "no"  # the shortest real path through run(): it cancels the reservation itself

    async def consume(started):
        return [chunk async for chunk in started.reply_chunks()]

    assert asyncio.run(consume(turn)) == ["no"]
    del turn
    gc.collect()
    assert admission.waiting == 0 and admission.running == 0
