"""A publish that ran in Redis but whose reply was lost: the producer publishes again (same
task ids), and neither the user nor the order alarm may notice.

The reply is lost for real: a TCP proxy in front of the producer's Redis forwards the publish
script's call, and when Redis answers it closes the producer's connection instead of passing
the reply on. The producer sees a dropped connection after Redis has enqueued the message.
"""

from __future__ import annotations

import socket
import threading

from deploy.launcher import wait_for_workers
from routing import ChatMessage, keys, queue_for, send
from tests.harness import producer_for, wait_until

USER = "retry-user"


class ReplyDropper:
    """A TCP proxy to Redis; once armed, the next EVALSHA is forwarded and its reply is
    dropped: the client's connection is closed as the reply arrives."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.armed = threading.Event()
        #: Replies dropped so far.
        self.dropped = 0
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream_port))
            self._sockets += [client, server]
            doomed = threading.Event()  # this connection's publish reply is to be dropped
            for pump, src, dst in ((self._requests, client, server),
                                   (self._replies, server, client)):
                thread = threading.Thread(target=pump, args=(src, dst, doomed), daemon=True)
                self._threads.append(thread)
                thread.start()

    def _requests(self, client: socket.socket, server: socket.socket,
                  doomed: threading.Event) -> None:
        try:
            while data := client.recv(65536):
                if self.armed.is_set() and b"EVALSHA" in data:
                    self.armed.clear()
                    doomed.set()
                server.sendall(data)
        except OSError:
            pass
        finally:
            _shut(client, server)

    def _replies(self, server: socket.socket, client: socket.socket,
                 doomed: threading.Event) -> None:
        try:
            while data := server.recv(65536):
                if doomed.is_set():  # Redis ran the script: it answers only after running it
                    self.dropped += 1
                    return
                client.sendall(data)
        except OSError:
            pass
        finally:
            _shut(client, server)

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        _shut(*self._sockets)
        for s in self._sockets:
            s.close()
        for thread in self._threads:
            thread.join(5)


def _shut(*sockets: socket.socket) -> None:
    for s in sockets:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _outbox_texts(rclient, user: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [f["text"] for _, f in rclient.xrange(keys.outbox(user))]


def test_a_lost_publish_reply_is_retried_without_a_gap(redis_server, redis_url, rclient,
                                                       producer, workers):
    """Four messages, the 2nd (with a message id) and the 3rd (without) each published
    through a dropped reply, then retried by the producer. Every message must be answered
    once, in order, the order alarm must count nothing, and the 2nd must come back as
    published with its number (not as a duplicate of itself).

    Breaks if the publish script treats a retry of a claimed message as a duplicate (the
    caller was told "duplicate" for its own first publish, so the API left it out of the
    ingest log), or if a copy of an unclaimed message, skipped by the worker's done-marker,
    leaves its number as a gap that counts on shardline_order_violations_total."""
    proxy = ReplyDropper(redis_server.port)
    app = producer_for(f"redis://127.0.0.1:{proxy.port}/0")
    try:
        workers.start_shards(4, producer)
        wait_for_workers(producer, [queue_for(USER)])
        first = send(app, ChatMessage(USER, "m1", message_id="m1"))
        proxy.armed.set()
        claimed = send(app, ChatMessage(USER, "m2", message_id="m2"))
        assert proxy.dropped == 1
        proxy.armed.set()
        unclaimed = send(app, ChatMessage(USER, "m3"))
        assert proxy.dropped == 2
        last = send(app, ChatMessage(USER, "m4", message_id="m4"))
    finally:
        app.close()
        proxy.close()
    assert (first.seq, claimed.seq, claimed.duplicate) == (1, 2, False)
    assert unclaimed.seq == 4  # its lost first publish was given 3
    assert last.seq == 5
    wait_until(lambda: rclient.llen(queue_for(USER)) == 0
               and len(_outbox_texts(rclient, USER)) >= 4, 60, what="every message answered")
    wait_until(lambda: rclient.hget(keys.USER_STARTED_SEQ, USER) == "5", 30,
               what="the last number started")
    texts = [t.split(" (turn")[0] for t in _outbox_texts(rclient, USER)]
    assert texts == ["re: m1", "re: m2", "re: m3", "re: m4"]
    assert rclient.hgetall(keys.ORDER_VIOLATIONS) == {}
