"""Which shard lease a running ordered task's reply commit must still hold, per thread.

A solo shard worker holds one lease for its whole process (``shardhost.solo_lease``); a shard
host runs many shards' messages on its threads, so each run says, for its own thread, which
lease it runs under (:func:`running_under`). A commit refused by the fence means the lease
passed to another owner: a solo worker ends its process; a host's run stops with
:class:`LeaseLost` (not an ``Exception``, so no in-place retry catches it) and its message is
left in flight for the next owner, unacked.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

from services.conversation import Fence
from shardhost import solo_lease

_local = threading.local()


class LeaseLost(BaseException):  # noqa: N818 - it stops a run like KeyboardInterrupt does
    """The lease this run's shard was taken under is no longer its host's."""


@contextmanager
def running_under(fence: Fence) -> Iterator[None]:
    """Commits of the ordered task run in this block are fenced on ``fence``."""
    _local.fence = fence
    try:
        yield
    finally:
        _local.fence = None


def commit_fence() -> Fence | None:
    """The lease the running task's commit must still hold (``None``: not on a shard)."""
    fence: Fence | None = getattr(_local, "fence", None)
    return fence if fence is not None else solo_lease.commit_fence()


def lease_lost(why: str) -> NoReturn:
    """Stop the running task: a host's run raises :class:`LeaseLost`; a solo worker exits."""
    if getattr(_local, "fence", None) is not None:
        raise LeaseLost(why)
    solo_lease.lease_lost(why)
    raise AssertionError("unreachable: solo_lease.lease_lost ends the process")
