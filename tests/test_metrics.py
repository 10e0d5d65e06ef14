"""Prometheus metrics of a live deployment, scraped from the exporter; the API's own beside it.

Real shard workers (two solo processes), a prefork workload worker (two children), the
exporter (``python -m metrics``) and the API (``python -m api``) on one private Redis, under a
known load; every figure is checked exactly against the load (ages within the bounds the
test can know).
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

from deploy.embedded_redis import free_port
from deploy.launcher import wait_for_workers
from metrics.readings import published_at
from routing import ChatMessage, keys, queue_for, send
from routing.queues import SEND_AI_RESPONSE, shard_of_queue
from services.breaker import AI_BREAKER, CircuitBreaker
from tests.handlers import FAIL_TEXTS
from tests.harness import WorkerSet, wait_until

TASK = SEND_AI_RESPONSE
MAINTENANCE = "shardline.maintenance"
PROFILING_TASK = "shardline.jobs.profiling.run"

Figures = dict[tuple[str, frozenset[tuple[str, str]]], float]


def users_on(shard: int, count: int) -> list[str]:
    found = [f"m{n}" for n in range(5000) if shard_of_queue(queue_for(f"m{n}")) == shard]
    return found[:count]


def scrape(url: str) -> Figures:
    text = httpx.get(url, timeout=10).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(figures: Figures, metric: str, /, **labels: str) -> float | None:
    return figures.get((metric, frozenset(labels.items())))


def serving(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def start_exporter_and_api(workers: WorkerSet, tmp_path: Any) -> tuple[str, str]:
    metrics_port, api_port = free_port(), free_port()
    workers.env.update(METRICS_PORT=str(metrics_port), API_PORT=str(api_port),
                       API_HOST="127.0.0.1",
                       DATABASE_URL=f"sqlite:///{tmp_path / 'promises.db'}")
    workers.start("exporter", [sys.executable, "-m", "metrics"])
    workers.start("api", [sys.executable, "-m", "api"])
    exporter = f"http://127.0.0.1:{metrics_port}/metrics"
    api = f"http://127.0.0.1:{api_port}/metrics"
    wait_until(lambda: serving(exporter), 60, interval_s=0.2, what="the exporter")
    wait_until(lambda: serving(api), 60, interval_s=0.2, what="the API")
    return exporter, api


#: The shard workers' lease TTL: a held lease's heartbeat is never older than this. Not the
#: minimum (3 s): its 1.8 s give-up bound can end a healthy worker on a loaded machine.
LEASE_TTL_S = 6


def test_metrics_count_a_known_load_across_processes(workers, producer, rclient, tmp_path):
    """Breaks if a task outcome is lost or counted twice (a dead-lettered ordered task also
    counted as succeeded, in-place retries or poison messages not counted, prefork children
    not recording), if the histogram count differs from the runs, if queue depth ignores a
    priority sub-list or the oldest age ignores published_at (or workload sends lack it), if
    the lease or heartbeat gauges are wrong for held and free shards, or if dead letters,
    duplicates, order violations or the breaker are misreported; and if the API's /metrics
    serves any family the exporter serves (a Prometheus scraping both adds every sum twice)
    or lacks its own request counter."""
    workers.env.update(AI_HANDLER="tests.handlers:flaky", ORDERED_MAX_ATTEMPTS="3",
                       ORDERED_RETRY_BASE_S="0.01", BREAKER_FAILURES="100",
                       SHARD_LEASE_TTL_S=str(LEASE_TTL_S))
    exporter, api = start_exporter_and_api(workers, tmp_path)
    # Shards 0 and 1 run; shard 3 has no worker (messages wait); shard 2 sees nothing.
    workers.start_shard(0)
    workers.start_shard(1)
    workers.start_celery("workloads", "-Q", "default", "-c", "2")
    workers.start_maintenance()
    wait_for_workers(producer, ["shard.0", "shard.1", "default", "maintenance"])
    rclient.sadd(FAIL_TEXTS, "boom")

    zero, one, three = users_on(0, 2), users_on(1, 2), users_on(3, 2)
    for n in range(3):
        send(producer, ChatMessage(zero[n % 2], f"hello {n}"))
    first = send(producer, ChatMessage(zero[0], "once", message_id="m-1"))
    again = send(producer, ChatMessage(zero[0], "once", message_id="m-1"))
    assert not first.duplicate and again.duplicate
    for n in range(3):
        send(producer, ChatMessage(one[n % 2], f"hi {n}"))
    send(producer, ChatMessage(one[0], "boom"))  # fails 3 attempts: 2 retries, dead-lettered
    producer.send_task(TASK, args=(one[1], "poison"), kwargs={"bogus": 1})  # wrong arguments
    before_waiting = time.time()
    for n in range(3):
        send(producer, ChatMessage(three[n % 2], f"waiting {n}"))
    after_waiting = time.time()
    producer.send_task(PROFILING_TASK, args=["job-a"], priority=6)  # no profiling worker
    producer.send_task(PROFILING_TASK, args=["job-b"], priority=0)
    for _ in range(3):  # plus the one the workload worker sends itself when it starts
        producer.send_task(MAINTENANCE)
    rclient.hset(keys.ORDER_VIOLATIONS, "1", 3)

    def outbox_total() -> int:
        return sum(rclient.xlen(keys.outbox(u)) for u in zero + one)

    wait_until(lambda: outbox_total() == 7 and rclient.zcard(keys.DEAD_LETTER_INDEX) == 2,
               90, what="7 replies and 2 dead letters")

    def settled() -> bool:  # at least the expected runs; exactly is asserted below
        f = scrape(exporter)
        return ((value(f, "shardline_tasks_total", task=MAINTENANCE, queue="maintenance",
                       outcome="succeeded") or 0) >= 4
                and (value(f, "shardline_tasks_total", task=TASK, queue="shard.1",
                           outcome="succeeded") or 0) >= 3
                and (value(f, "shardline_tasks_total", task=TASK, queue="shard.0",
                           outcome="succeeded") or 0) >= 4
                # a dead letter is written before it is counted
                and (value(f, "shardline_tasks_total", task=TASK, queue="shard.1",
                           outcome="dead_lettered") or 0) >= 2
                and all((value(f, "shardline_task_duration_seconds_count", task=TASK,
                               queue=queue) or 0) >= 4 for queue in ("shard.0", "shard.1"))
                and (value(f, "shardline_task_duration_seconds_count", task=MAINTENANCE,
                           queue="maintenance") or 0) >= 4)

    wait_until(settled, 90, interval_s=0.2, what="every run recorded")
    breaker = CircuitBreaker(redis.Redis.from_url(workers.url), AI_BREAKER, failures=1,
                             open_s=600)
    try:
        breaker.call(lambda: 1 / 0)
    except ZeroDivisionError:
        pass
    oldest = {"shard.3": published_at(rclient.lindex("shard.3", -1)),
              "profiling": min(published_at(rclient.lindex(name, -1)) or math.inf
                               for name in ("profiling", "profiling:6"))}
    assert oldest["shard.3"] is not None and before_waiting <= oldest["shard.3"] <= after_waiting
    assert oldest["profiling"] < math.inf  # set by the before_task_publish handler

    for url in (exporter,):  # the one scrape target of the deployment-wide families
        scraped_from = time.time()
        f = scrape(url)
        scraped_until = time.time()
        assert value(f, "shardline_redis_up") == 1

        # Task outcomes and durations: exact, summed over every worker process.
        outcomes = {(dict(k[1])["task"], dict(k[1])["queue"], dict(k[1])["outcome"]): v
                    for k, v in f.items() if k[0] == "shardline_tasks_total"}
        assert outcomes == {
            (TASK, "shard.0", "succeeded"): 4,
            (TASK, "shard.1", "succeeded"): 3,
            (TASK, "shard.1", "retried_in_place"): 2,
            (TASK, "shard.1", "dead_lettered"): 2,  # the failing message and the poison one
            (MAINTENANCE, "maintenance", "succeeded"): 4,
        }, url
        for queue, runs in (("shard.0", 4), ("shard.1", 4)):
            assert value(f, "shardline_task_duration_seconds_count", task=TASK,
                         queue=queue) == runs
            assert value(f, "shardline_task_duration_seconds_bucket", task=TASK, queue=queue,
                         le="+Inf") == runs
            assert (value(f, "shardline_task_duration_seconds_sum", task=TASK, queue=queue)
                    or 0) > 0
        assert value(f, "shardline_task_duration_seconds_count", task=MAINTENANCE,
                     queue="maintenance") == 4

        # Queues: depth over priority sub-lists; age of the oldest waiting message.
        depths = {dict(k[1])["queue"]: v for k, v in f.items()
                  if k[0] == "shardline_queue_depth"}
        assert depths == {"shard.0": 0, "shard.1": 0, "shard.2": 0, "shard.3": 3,
                          "profiling": 2, "llm": 0, "promises": 0, "default": 0}
        ages = {dict(k[1])["queue"]: v for k, v in f.items()
                if k[0] == "shardline_queue_oldest_age_seconds"}
        assert set(ages) == set(depths)
        assert all(ages[q] == 0 for q in depths if depths[q] == 0), ages
        for queue, at in oldest.items():
            assert scraped_from - at <= ages[queue] <= scraped_until - at, (queue, ages)

        # Shards: leases and heartbeats.
        for shard, held in ((0, 1), (1, 1), (2, 0), (3, 0)):
            assert value(f, "shardline_shard_lease_up", shard=str(shard)) == held
            heartbeat = value(f, "shardline_shard_heartbeat_age_seconds", shard=str(shard))
            if held:
                assert heartbeat is not None and 0 <= heartbeat <= LEASE_TTL_S
            else:
                assert heartbeat is None
        violations = {dict(k[1])["shard"]: v for k, v in f.items()
                      if k[0] == "shardline_order_violations_total"}
        assert violations == {"0": 0, "1": 3, "2": 0, "3": 0}

        assert value(f, "shardline_dead_letters") == 2
        assert value(f, "shardline_duplicates_dropped_total") == 1
        assert value(f, "shardline_breaker_open", name=AI_BREAKER) == 1
        assert value(f, "shardline_breaker_state", name=AI_BREAKER, state="open") == 1
        assert value(f, "shardline_breaker_state", name=AI_BREAKER, state="closed") == 0
        api_counter = [k for k in f if k[0] == "shardline_api_requests_total"]
        assert not api_counter, "the API's own counter, on the API only"

    def families(url: str) -> set[str]:
        text = httpx.get(url, timeout=10).text
        return {family.name for family in text_string_to_metric_families(text)}

    deployment, own = families(exporter), families(api)
    assert "shardline_tasks" in deployment and "shardline_api_requests" in own
    assert not deployment & own, f"served by both the exporter and the API: {deployment & own}"
