"""Flower, the Celery monitor, runs against a shardline deployment and sees its workers."""

from __future__ import annotations

import sys

import httpx

from deploy.embedded_redis import free_port
from tests.harness import wait_until


def test_flower_lists_a_running_shard_worker(workers):
    """Breaks if ``celery -A tasks flower`` cannot start with shardline's configuration (e.g.
    the app fails to import, or the broker settings are unusable by Flower), or if Flower's
    HTTP API cannot see a shard worker (its remote-control mailbox unreachable)."""
    port = free_port()
    workers.env["FLOWER_UNAUTHENTICATED_API"] = "true"
    workers.start_shard(0)
    workers.start("flower", [sys.executable, "-m", "celery", "-A", "tasks", "flower",
                             f"--port={port}", "--address=127.0.0.1"])
    seen: dict[str, object] = {}

    def lists_the_worker() -> bool:
        try:
            reply = httpx.get(f"http://127.0.0.1:{port}/api/workers",
                              params={"refresh": "1"}, timeout=10)
        except httpx.TransportError:
            return False
        if reply.status_code != 200:
            return False
        seen.update(reply.json())
        return any(name.startswith("shard-0@") and _queues(info) == ["shard.0"]
                   for name, info in seen.items())

    wait_until(lists_the_worker, 90, interval_s=0.5,
               what="Flower listing shard-0 and the queue it consumes")


def _queues(info: object) -> list[str]:
    if not isinstance(info, dict):
        return []
    return [q["name"] for q in info.get("active_queues") or []]
