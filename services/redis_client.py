"""The one way shardline opens a Redis client (timeouts, keepalive, reconnect policy)."""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from routing.redis_url import client_for


def connect(url: str) -> redis.Redis:
    """A client with bounded timeouts that retries a dropped connection a few times."""
    return client_for(
        url,
        decode_responses=True,
        socket_timeout=30,
        socket_connect_timeout=5,
        socket_keepalive=True,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=5),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )
