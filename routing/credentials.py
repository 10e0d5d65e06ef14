"""Redis URLs in output, and errors that mean "Redis refused these credentials".

Every place that shows a Redis URL (start-up lines, error messages) passes it through
:func:`redact_url` first: a password must never reach a terminal, a log or an API response.
Authentication errors are told apart from "unreachable" here, once, so that producers, the
CLI and workers fail at once on them instead of retrying a password that will never work.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis

#: What a redacted password reads as.
MASK = "****"

#: Error texts of a refused login or a missing ACL permission (the last two are how Redis
#: words a command or key an ACL forbids inside a Lua script).
_REFUSALS = ("WRONGPASS", "NOAUTH", "NOPERM", "can't run this command",
             "No permissions to access")

#: Query parameters that carry a secret (redis-py and kombu accept these in the URL).
_SECRET_PARAMS = frozenset({"password", "sentinel_password"})


def redact_url(url: str | None) -> str:
    """``url`` with every password replaced by :data:`MASK`; the user name stays (it helps
    to tell which ACL user was refused). Handles kombu's ``a;b`` lists of URLs."""
    if not url:
        return ""
    return ";".join(_redact_one(part) for part in url.split(";"))


def _redact_one(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK  # unparseable: show nothing rather than risk a secret
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{host}" if has_password else f"{user}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, MASK if k in _SECRET_PARAMS else v) for k, v in pairs],
                          safe="/*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def auth_problem(exc: BaseException) -> redis.RedisError | None:
    """The Redis credentials error behind ``exc`` (kombu and Celery wrap it), or ``None``.

    A wrong password or unknown user (``WRONGPASS``), a missing password (``NOAUTH``) and
    an ACL user that lacks a command or key (``NOPERM``) all count: none of them heals by
    retrying. Note redis-py's ``AuthenticationError`` is a ``ConnectionError``, so a plain
    ``except ConnectionError`` would retry it as if Redis were down.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (redis.AuthenticationError, redis.exceptions.NoPermissionError)):
            return current
        if isinstance(current, redis.ResponseError) and any(
                refusal in str(current) for refusal in _REFUSALS):
            return current
        current = current.__cause__ or current.__context__
    return None


def auth_message(url: str | None, problem: BaseException) -> str:
    """A one-line explanation of a credentials error for ``url``, without its password."""
    return (f"Redis at {redact_url(url)} refused the credentials: {problem} "
            "(check the user name and password in REDIS_URL, and the ACL of that user)")
