"""A task that does next to nothing, for the bench's reference row: what Celery itself costs.

Workers load it with :data:`bench.noop.INCLUDE` (only the bench's workers do). Its one Redis
command appends to the outbox feed, which is how a drain is timed (``bench.drain``): the same
clock and the same end condition as the ordered drains, with none of their work (no order
check, history, AI call, commit or lease fence).
"""

from __future__ import annotations

from bench.noop import NAME
from routing import keys
from services.registry import services
from tasks.app import app


@app.task(name=NAME, acks_late=True, ignore_result=True)
def noop(n: int) -> None:
    services().get("redis").xadd(keys.OUTBOX_FEED, {"n": n})
