"""TCP proxies in front of a test's Redis that tamper with replies, for tests that need a
reply to arrive late (:class:`ReplyGate`) or never (:class:`ReplyDropper`)."""

from __future__ import annotations

import socket
import threading


def shut(*sockets: socket.socket) -> None:
    for s in sockets:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class RedisProxy:
    """Accepts clients on a free loopback port and pairs each with a connection to Redis;
    :meth:`requests` and :meth:`replies` move the bytes (subclasses decide how)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
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
            pair = threading.Event()  # shared by one connection's two directions
            for pump, src, dst in ((self.requests, client, server),
                                   (self.replies, server, client)):
                thread = threading.Thread(target=self._run, args=(pump, src, dst, pair),
                                          daemon=True)
                self._threads.append(thread)
                thread.start()

    def _run(self, pump, src: socket.socket, dst: socket.socket,  # type: ignore[no-untyped-def]
             pair: threading.Event) -> None:
        try:
            pump(src, dst, pair)
        except OSError:
            pass
        finally:
            shut(src, dst)

    def requests(self, client: socket.socket, server: socket.socket,
                 pair: threading.Event) -> None:
        while data := client.recv(65536):
            server.sendall(data)

    def replies(self, server: socket.socket, client: socket.socket,
                pair: threading.Event) -> None:
        while data := server.recv(65536):
            client.sendall(data)

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        shut(*self._sockets)
        for s in self._sockets:
            s.close()
        for thread in self._threads:
            thread.join(5)


class ReplyGate(RedisProxy):
    """Forwards requests at once and replies only while :attr:`open` is set."""

    def __init__(self, upstream_port: int) -> None:
        self.open = threading.Event()
        self.open.set()
        super().__init__(upstream_port)

    def replies(self, server: socket.socket, client: socket.socket,
                pair: threading.Event) -> None:
        while data := server.recv(65536):
            while not self.open.wait(0.2):
                if self._stop.is_set():
                    return
            client.sendall(data)

    def close(self) -> None:
        self.open.set()
        super().close()


class ReplyDropper(RedisProxy):
    """Once :attr:`armed`, the next EVALSHA is forwarded and its reply is dropped: the
    client's connection is closed as the reply arrives."""

    def __init__(self, upstream_port: int) -> None:
        self.armed = threading.Event()
        #: Replies dropped so far.
        self.dropped = 0
        super().__init__(upstream_port)

    def requests(self, client: socket.socket, server: socket.socket,
                 pair: threading.Event) -> None:
        while data := client.recv(65536):
            if self.armed.is_set() and b"EVALSHA" in data:
                self.armed.clear()
                pair.set()  # this connection's publish reply is to be dropped
            server.sendall(data)

    def replies(self, server: socket.socket, client: socket.socket,
                pair: threading.Event) -> None:
        while data := server.recv(65536):
            if pair.is_set():  # Redis ran the script: it answers only after running it
                self.dropped += 1
                return
            client.sendall(data)
