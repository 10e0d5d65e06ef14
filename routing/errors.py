"""The named errors a producer can see. Each message names the bad value and what was expected."""

from __future__ import annotations


class ShardlineError(Exception):
    """Base of every error shardline raises on purpose."""


class InvalidUserId(ShardlineError, ValueError):
    """A user id that cannot be routed: not an int >= 0, not a non-empty str of <= 256 chars
    of valid Unicode text (no lone surrogates)."""


class InvalidDispatch(ShardlineError, ValueError):
    """A publish option that would break per-user order (queue, priority, ETA), or a bad payload."""


class PublishFailed(ShardlineError, ConnectionError):
    """The broker could not be reached within the producer's retry budget."""


class RedisAuthFailed(PublishFailed):
    """Redis refused the credentials (wrong password, unknown user, an ACL without a needed
    command or key). Raised at once: retrying cannot help. A :class:`PublishFailed`, so
    callers that handle an unreachable broker handle this too."""


#: Exit status of a worker or beat whose Redis refused the credentials (EX_CONFIG): a
#: supervisor must not restart it in a loop, as restarting cannot heal it.
EXIT_AUTH_FAILED = 78
