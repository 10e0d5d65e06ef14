"""The one way shardline opens a Redis client (timeouts, keepalive, reconnect policy)."""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from routing.credentials import auth_message, auth_problem
from routing.errors import RedisAuthFailed

#: Connections one client may open. A shard host's worker threads share one client and each
#: may hold a connection at once (SHARD_HOST_THREADS of them): redis-py 8's default pool of 100
#: refused the 101st with "Too many connections". Redis' own default ``maxclients``.
MAX_CONNECTIONS = 10_000


def connect(url: str) -> redis.Redis:
    """A client with bounded timeouts that retries a dropped connection a few times."""
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=30,
        socket_connect_timeout=5,
        socket_keepalive=True,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=5),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        max_connections=MAX_CONNECTIONS,
    )


def check_credentials(url: str) -> None:
    """Raise :class:`routing.errors.RedisAuthFailed` if Redis at ``url`` refuses the
    credentials. An unreachable Redis passes: every caller already waits for it to come up,
    but a refused password never heals, so it must stop a process before it starts work."""
    # One attempt: a down Redis must not delay a worker's start (it retries on its own).
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5,
                                  retry=Retry(NoBackoff(), 0))
    try:
        client.ping()
    except redis.RedisError as exc:
        if problem := auth_problem(exc):
            raise RedisAuthFailed(auth_message(url, problem)) from exc
    finally:
        client.close()
