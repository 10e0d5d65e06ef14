"""The named errors of jobs and promises: each names the bad value and what was expected."""

from __future__ import annotations

from routing.errors import ShardlineError


class InvalidWork(ShardlineError, ValueError):
    """A job or promise request that cannot be accepted; ``field`` names the bad input."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class WorkNotFound(ShardlineError, LookupError):
    """No job or promise with this id (or it expired)."""


class NotOwner(ShardlineError, PermissionError):
    """The caller does not own the job or promise it tried to see or control."""


class IdTaken(ShardlineError, ValueError):
    """A client-chosen id (of a promise) that is already in use."""


class InvalidTransition(ShardlineError, ValueError):
    """A control request that does not apply in the current status (e.g. resume a finished job)."""


class InvalidKind(ShardlineError, ValueError):
    """A ``JOB_KINDS`` or ``PROMISE_KINDS`` entry that cannot be loaded; the message names it."""
