"""How every ``shardline`` command finds Redis, and the one line it prints when it cannot.

Commands take the URL from :func:`redis_url` and their client from :func:`redis_client`.
Errors are turned into one line by :class:`ShardlineGroup`, the class of the ``shardline``
group, around every command and subcommand, so no command prints a traceback for an
unreachable Redis or broker. Output names the server with its password masked.
"""

from __future__ import annotations

from typing import Any

import click
import redis
from kombu.exceptions import OperationalError

import celeryconfig
from routing.credentials import auth_message, auth_problem, redact_url
from routing.errors import ShardlineError
from services.redis_client import connect

NO_REDIS = ("no Redis: set REDIS_URL, or start the service with `make run` (shardline run) "
            "so its embedded Redis is found")


def redis_url() -> str:
    """The deployment's Redis URL; a one-line error when neither REDIS_URL nor a running
    launcher gives one."""
    url = celeryconfig.settings.redis_url
    if not url:
        raise click.ClickException(NO_REDIS)
    return url


def redis_client() -> redis.Redis:
    return connect(redis_url())


def shown_url() -> str:
    """The Redis URL as output may show it: any password masked."""
    return redact_url(celeryconfig.settings.redis_url) or "?"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def one_line(exc: BaseException) -> str:
    """What the command prints for ``exc`` (a Redis, broker or shardline error)."""
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError | OperationalError):
        return f"cannot reach Redis at {shown_url()}: {_first_line(exc)}"
    if isinstance(exc, redis.RedisError):
        return f"Redis at {shown_url()} answered with an error: {_first_line(exc)}"
    return _first_line(exc)


class ShardlineGroup(click.Group):
    """A click group whose commands (and subgroups) end with one line on a Redis, broker or
    shardline error instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException:
            raise
        except Exception as exc:
            # Refused credentials first, however deeply kombu or Celery wrapped them: retrying
            # cannot heal them, and they must not read as "unreachable".
            if (problem := auth_problem(exc)) is not None:
                raise click.ClickException(
                    auth_message(celeryconfig.settings.redis_url, problem)) from exc
            if isinstance(exc, redis.RedisError | OperationalError | ShardlineError):
                raise click.ClickException(one_line(exc)) from exc
            raise
