"""producer_app(): one Celery app per name, broker URL and process, so a send costs a publish,
not the building of an app (about 5 ms each)."""

from __future__ import annotations

import os

from routing import ChatMessage, keys, producer_app, send


def test_sends_in_one_process_share_one_app(redis_url, rclient):
    """Breaks if producer_app() builds a new app per call (every send in a loop, every API
    request and CLI command paid for a fresh Celery app and a fresh Redis connection), or if
    the cache mixes up two brokers."""
    first = producer_app("cache-test", redis_url)
    send(first, ChatMessage("u1", "one"))
    again = producer_app("cache-test", redis_url)
    send(again, ChatMessage("u1", "two"))
    assert again is first
    assert producer_app("cache-test", redis_url.replace("/0", "/1")) is not first
    assert producer_app("other-name", redis_url) is not first
    assert rclient.hget(keys.USER_SEQ, "u1") == "2"


def test_a_forked_child_builds_its_own_app(redis_url, rclient):
    """Breaks if a forked child is handed the parent's app (and with it the parent's broker
    connections, which two processes must never share): the cache must check the pid."""
    parent = producer_app("fork-test", redis_url)
    send(parent, ChatMessage("u2", "from the parent"))  # the parent's connections are open
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave at once, never back into pytest
        try:
            child = producer_app("fork-test", redis_url)
            sent = send(child, ChatMessage("u2", "from the child")).seq
            os.write(write, f"{child is parent} {child is producer_app('fork-test', redis_url)} "
                            f"{sent}".encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        report = pipe.read()
    os.waitpid(pid, 0)
    assert report == "False True 2", report
    assert producer_app("fork-test", redis_url) is parent
