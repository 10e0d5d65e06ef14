"""One home for turning ``REDIS_URL`` into a redis-py client, for every client shardline builds.

``redis://``, ``rediss://`` and ``unix://`` URLs are redis-py's own (``Redis.from_url``).
kombu's Sentinel form, ``sentinel://[:password@]h1:p1;sentinel://h2:p2/DB``, names the
sentinels; the client asks them for the master of ``REDIS_SENTINEL_MASTER`` through redis-py's
:class:`redis.sentinel.Sentinel`, and asks again whenever it reconnects: after a failover it
follows the new master, and a write that reaches a demoted master (``READONLY``) comes back as a
``ConnectionError`` that the caller's retry policy treats like any dropped connection.

Workers and beat read the same URL through kombu's own ``sentinel`` transport
(``celeryconfig.broker_transport_options``), so both sides resolve the master alike. The
password in the URL is the master's (as kombu reads it); the sentinels' own credentials are
``REDIS_SENTINEL_USERNAME`` / ``REDIS_SENTINEL_PASSWORD``. No protocol is written here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.sentinel import Sentinel

SENTINEL_SCHEME = "sentinel"
#: kombu's default sentinel port, for a ``sentinel://host`` without one.
DEFAULT_SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelUrl:
    """What a ``sentinel://`` URL says: the sentinels, the database and the master's login."""

    sentinels: tuple[tuple[str, int], ...]
    db: int
    username: str | None
    password: str | None

    def kombu_url(self) -> str:
        """The URL as kombu reads it: kombu takes the database and the login from the first
        part only, so each part carries the database and the first carries the login."""
        login = ""
        if self.password is not None or self.username is not None:
            login = f"{self.username or ''}:{self.password or ''}@"
        parts = [f"{SENTINEL_SCHEME}://{login if i == 0 else ''}{host}:{port}/{self.db}"
                 for i, (host, port) in enumerate(self.sentinels)]
        return ";".join(parts)


def is_sentinel(url: str) -> bool:
    return url.strip().lower().startswith(f"{SENTINEL_SCHEME}://")


def parse_sentinel_url(url: str) -> SentinelUrl:
    """``sentinel://[user:pass@]h1:p1;sentinel://h2:p2/DB`` -> its parts; the database and the
    login may be written on any part, and must agree where written twice."""
    sentinels: list[tuple[str, int]] = []
    dbs: set[int] = set()
    logins: set[tuple[str | None, str | None]] = set()
    for part in filter(None, (p.strip() for p in url.split(";"))):
        split = urlsplit(part)
        if split.scheme.lower() != SENTINEL_SCHEME or not split.hostname:
            raise ValueError(f"REDIS_URL parts must look like sentinel://host:port, got "
                             f"{split.scheme}://{split.hostname or ''}")
        sentinels.append((split.hostname, split.port or DEFAULT_SENTINEL_PORT))
        path = split.path.strip("/")
        if path:
            if not path.isdigit():
                raise ValueError(f"the database in REDIS_URL must be a number, got {path!r}")
            dbs.add(int(path))
        if split.password is not None or split.username:
            logins.add((unquote(split.username) if split.username else None,
                        unquote(split.password) if split.password is not None else None))
    if len(dbs) > 1 or len(logins) > 1:
        raise ValueError("the parts of a sentinel REDIS_URL name different databases or logins")
    username, password = next(iter(logins), (None, None))
    return SentinelUrl(tuple(sentinels), next(iter(dbs), 0), username, password)


def broker_url(url: str) -> str:
    """``url`` as kombu must read it (a sentinel URL with its database on every part)."""
    return parse_sentinel_url(url).kombu_url() if is_sentinel(url) else url


def client_for(url: str, **redis_kwargs: Any) -> redis.Redis:
    """A client of the Redis master that ``url`` names; ``redis_kwargs`` go to the client
    (timeouts, ``decode_responses``, retry policy) as they would to ``Redis.from_url``."""
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **redis_kwargs)
    import celeryconfig

    settings = celeryconfig.settings
    target = parse_sentinel_url(url)
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_kwargs(settings))
    login = {k: v for k, v in (("username", target.username), ("password", target.password))
             if v is not None}
    return sentinel.master_for(settings.redis_sentinel_master, db=target.db,
                               **login, **redis_kwargs)


def sentinel_kwargs(settings: Any) -> dict[str, Any]:
    """How to talk to the sentinels themselves: short timeouts (a dead sentinel is skipped
    for the next) and their own login, if they have one."""
    kwargs: dict[str, Any] = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0}
    if settings.redis_sentinel_username:
        kwargs["username"] = settings.redis_sentinel_username
    if settings.redis_sentinel_password:
        kwargs["password"] = settings.redis_sentinel_password
    return kwargs
