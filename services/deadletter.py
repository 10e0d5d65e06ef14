"""The dead-letter store: messages that cannot or did not succeed, parked with the reason.

Parking never raises into the caller's hot path beyond Redis errors: a shard worker parks a
poison message and moves on to the next one. With ``hold=True`` the parked letter also holds
its user's later ordered messages (``services.hold``), in the same atomic step. This store
never publishes or runs a message; replaying is the CLI's job (``cli/dlq.py``).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from routing import keys

#: Raw bodies longer than this are stored truncated (the reason says how long they were).
MAX_STORED_BODY = 4096


@dataclass
class DeadLetter:
    reason: str
    task: str | None = None
    queue: str | None = None
    user_id: str | None = None
    args: Any = None
    kwargs: Any = None
    error: str | None = None
    attempts: int = 0
    task_id: str | None = None
    raw: str | None = None
    #: True while this letter holds its user's later ordered messages (hold mode).
    holds: bool = False
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    parked_at: float = field(default_factory=time.time)


class DeadLetterStore:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def park(self, letter: DeadLetter, *, hold: bool = False,
             replaces: str | None = None) -> str:
        """Store ``letter``; with ``hold``, it also holds its user (instead of ``replaces``)."""
        if letter.raw is not None and len(letter.raw) > MAX_STORED_BODY:
            letter.raw = letter.raw[:MAX_STORED_BODY]
        letter.holds = bool(hold and letter.user_id is not None)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.DEAD_LETTER_RECORDS, letter.id, json.dumps(asdict(letter), default=str))
            pipe.zadd(keys.DEAD_LETTER_INDEX, {letter.id: letter.parked_at})
            if letter.holds and letter.user_id is not None:
                pipe.sadd(keys.hold(letter.user_id), letter.id)
                if replaces:
                    pipe.srem(keys.hold(letter.user_id), replaces)
            pipe.execute()
        return letter.id

    def list(self, limit: int = 100) -> list[DeadLetter]:
        ids: list[str] = self.redis.zrange(  # type: ignore[assignment]
            keys.DEAD_LETTER_INDEX, 0, limit - 1)
        if not ids:
            return []
        raw = self.redis.hmget(keys.DEAD_LETTER_RECORDS, ids)
        return [DeadLetter(**json.loads(r)) for r in raw if r]

    def get(self, letter_id: str) -> DeadLetter | None:
        raw = self.redis.hget(keys.DEAD_LETTER_RECORDS, letter_id)
        return DeadLetter(**json.loads(raw)) if raw else None

    def remove(self, letter_id: str) -> bool:
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(keys.DEAD_LETTER_RECORDS, letter_id)
            pipe.zrem(keys.DEAD_LETTER_INDEX, letter_id)
            removed, _ = pipe.execute()
        return bool(removed)

    def count(self) -> int:
        return int(self.redis.zcard(keys.DEAD_LETTER_INDEX))
