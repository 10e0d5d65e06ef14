"""Every process takes ``REDIS_URL=sentinel://...`` (kombu's form) with REDIS_SENTINEL_MASTER:
the CLI, shard hosts, the maintenance worker, beat, the API and the metrics exporter, against a
master, a replica and three sentinels started by the test."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

import celeryconfig
from deploy.embedded_redis import free_port
from deploy.launcher import PROJECT_DIR, child_env, wait_for_workers
from deploy.sentinel_group import MASTER_NAME, SentinelGroup
from routing import ChatMessage, PublishFailed, keys, send
from routing.queues import shard_queue
from routing.redis_url import SentinelUrl, broker_url, client_for, parse_sentinel_url
from tests.harness import WorkerSet, producer_for, wait_until


def test_the_database_and_login_of_a_sentinel_url_reach_kombu() -> None:
    """kombu reads the database and the password from the first part only; the URL written
    with ``/DB`` on the last part (the documented form) must mean the same database to every
    process. Fails if ``broker_url`` passes the URL to kombu unchanged (kombu: database 0)."""
    url = "sentinel://:s3cret@h1:26379;sentinel://h2:26380/3"
    assert parse_sentinel_url(url) == SentinelUrl((("h1", 26379), ("h2", 26380)), 3, None,
                                                  "s3cret")
    assert broker_url(url) == "sentinel://:s3cret@h1:26379/3;sentinel://h2:26380/3"
    assert broker_url("redis://h:6379/2") == "redis://h:6379/2"
    with pytest.raises(ValueError, match="different databases"):
        parse_sentinel_url("sentinel://h1:1/1;sentinel://h2:2/2")


def test_every_process_runs_on_a_sentinel_url(sentinel_group: SentinelGroup,
                                              tmp_path: Path) -> None:
    """A message sent with ``shardline send`` is answered by a shard worker, beat's
    maintenance task runs on the maintenance worker, ``shardline status`` reads the deployment,
    the API's /healthz and the exporter's /metrics answer: all through the sentinels. Fails
    with "Redis URL must specify one of ..." (the CLI, the exporter, the API) or "'master_name'
    transport option must be specified" (workers, beat) without ``routing.redis_url``."""
    url = sentinel_group.url
    with client_for(url, decode_responses=True) as client:
        client.flushall()
    api_port, metrics_port = free_port(), free_port()
    env = dict(SHARDLINE_HOME=str(tmp_path / "home"), SHARD_COUNT="2",
               REDIS_SENTINEL_MASTER=MASTER_NAME, MAINTENANCE_INTERVAL_S="1",
               API_PORT=str(api_port), METRICS_PORT=str(metrics_port))
    workers = WorkerSet(url, tmp_path, "host-k1", **env)
    app = producer_for(url)
    try:
        workers.start_shard(0)
        workers.start_shard(1)
        workers.start_celery("maintenance", "-Q", "maintenance", "-P", "solo")
        workers.start("beat", [sys.executable, "-m", "celery", "-A", "tasks", "beat", "-s",
                               str(tmp_path / "beat-schedule"), "-l", "INFO"])
        workers.start("api", [sys.executable, "-m", "api"])
        workers.start("metrics", [sys.executable, "-m", "metrics"])
        wait_for_workers(app, [shard_queue(0), shard_queue(1)])
        cli_env = child_env(url, **env)
        sent = subprocess.run([sys.executable, "-m", "cli.main", "send", "sentinel-user", "hi"],
                              env=cli_env, cwd=PROJECT_DIR, capture_output=True, text=True,
                              timeout=60)
        assert sent.returncode == 0, sent.stderr
        with client_for(url, decode_responses=True) as client:
            wait_until(lambda: client.xlen(keys.outbox("sentinel-user")) == 1, 60,
                       what="the reply")
        wait_until(lambda: "shardline.maintenance" in workers.log("maintenance")
                   and "succeeded" in workers.log("maintenance"), 60,
                   what="beat's maintenance task on the maintenance worker")
        status = subprocess.run([sys.executable, "-m", "cli.main", "status"], env=cli_env,
                                cwd=PROJECT_DIR, capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stderr
        assert "shard.0" in status.stdout

        def answers(port: int, path: str) -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_until(lambda: answers(api_port, "/healthz"), 60, interval_s=0.5, what="/healthz")
        wait_until(lambda: answers(metrics_port, "/metrics"), 60, interval_s=0.5,
                   what="/metrics")
    finally:
        workers.stop_all()
        app.close()


def test_a_producer_on_a_demoted_master_raises_publish_failed(
        sentinel_group: SentinelGroup, monkeypatch: pytest.MonkeyPatch) -> None:
    """A producer whose fixed URL points at a server that is now a replica (``READONLY``, as
    the old master is after a failover) retries within PUBLISH_RETRY_S and then raises
    PublishFailed. Fails if the READONLY error (a script error from the publish script)
    escapes as a raw ``ResponseError`` traceback (it did)."""
    sentinel_group.wait_ready()
    replica = next(s for s in sentinel_group.servers if s.port != sentinel_group.master_port())
    monkeypatch.setattr(celeryconfig, "settings",
                        dataclasses.replace(celeryconfig.settings, publish_retry_s=1.0))
    app = producer_for(replica.url)
    try:
        with pytest.raises(PublishFailed, match="READONLY"):
            send(app, ChatMessage("ro-user", "hello"))
    finally:
        app.close()
