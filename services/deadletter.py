"""The dead-letter store: messages that cannot or did not succeed, parked with the reason.

Parking never raises into the caller's hot path beyond Redis errors: a shard worker parks a
poison message and moves on to the next one.
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
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    parked_at: float = field(default_factory=time.time)


class DeadLetterStore:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def park(self, letter: DeadLetter) -> str:
        if letter.raw is not None and len(letter.raw) > MAX_STORED_BODY:
            letter.raw = letter.raw[:MAX_STORED_BODY]
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.DEAD_LETTER_RECORDS, letter.id, json.dumps(asdict(letter), default=str))
            pipe.zadd(keys.DEAD_LETTER_INDEX, {letter.id: letter.parked_at})
            pipe.execute()
        return letter.id

    def list(self, limit: int = 100) -> list[DeadLetter]:
        ids = self.redis.zrange(keys.DEAD_LETTER_INDEX, 0, limit - 1)
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
