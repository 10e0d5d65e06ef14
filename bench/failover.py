"""What ``REDIS_WAIT_REPLICAS=1`` costs: publish throughput and reply-commit latency, with and
without the ``WAIT``, against a private master and one replica on loopback.

``python -m bench.failover`` prints the figures and writes them into bench/results.json under
``wait_replicas``; ``bench.run`` runs it too. Both sides run the same code (the publish script,
the commit script) one call at a time, so the difference is the ``WAIT`` round trip to the
replica's acknowledgement.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from deploy.embedded_redis import EmbeddedRedis
from routing import keys
from routing.publish import Outgoing, PublishScript
from services.conversation import ConversationStore

RESULTS = Path(__file__).resolve().parent / "results.json"
#: Calls per measurement; each measurement runs ROUNDS times and keeps the median.
CALLS = 2000
ROUNDS = 3


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def publish_rate(client: redis.Redis, wait: int) -> float:
    """Messages per second, one message per publish call (the API's and the CLI's case)."""
    script = PublishScript(client, 60, wait_replicas=wait)
    rates = []
    for r in range(ROUNDS):
        started = time.perf_counter()
        for n in range(CALLS):
            user = f"bench-{n % 50}"
            script([Outgoing(user=user, queue="bench.q", task_id=f"{wait}-{r}-{n}",
                             envelope='{"seq": "@shardline-seq@"}')])
        rates.append(CALLS / (time.perf_counter() - started))
        client.delete("bench.q")
    return _median(rates)


def commit_ms(client: redis.Redis, wait: int) -> float:
    """Mean milliseconds of one reply commit."""
    store = ConversationStore(client, history_limit=50, done_ttl_s=600, wait_replicas=wait)
    means = []
    for r in range(ROUNDS):
        started = time.perf_counter()
        for n in range(CALLS):
            store.commit(f"bench-{n % 50}", f"c{wait}-{r}-{n}",
                         [{"role": "assistant", "text": "reply"}], {"kind": "reply"})
        means.append((time.perf_counter() - started) * 1000 / CALLS)
    return _median(means)


def measure(work_dir: Path) -> dict[str, Any]:
    master = EmbeddedRedis(work_dir / "master")
    master.start()
    replica = EmbeddedRedis(work_dir / "replica",
                            extra_args=("--replicaof", "127.0.0.1", str(master.port)))
    try:
        replica.start()
        client = redis.Redis.from_url(master.url)
        _wait_online(client)
        out: dict[str, Any] = {"calls": CALLS, "rounds": ROUNDS, "replicas": 1}
        for wait in (0, 1):
            out[f"publish_per_s_wait{wait}"] = round(publish_rate(client, wait))
            out[f"commit_ms_wait{wait}"] = round(commit_ms(client, wait), 3)
        out["publish_cost_pct"] = round(
            100 * (1 - out["publish_per_s_wait1"] / out["publish_per_s_wait0"]), 1)
        out["commit_extra_ms"] = round(out["commit_ms_wait1"] - out["commit_ms_wait0"], 3)
        client.delete(keys.USER_SEQ)
        client.close()
        return out
    finally:
        replica.stop()
        master.stop()


def _wait_online(client: redis.Redis, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info: Any = client.info("replication")
        if int(info.get("connected_slaves", 0)) and info["slave0"]["state"] == "online":
            return
        time.sleep(0.1)
    raise TimeoutError("the replica did not come online")


def line(figures: dict[str, Any]) -> str:
    return (f"wait_replicas: publish {figures['publish_per_s_wait0']}/s -> "
            f"{figures['publish_per_s_wait1']}/s with WAIT 1 (-{figures['publish_cost_pct']}%), "
            f"commit {figures['commit_ms_wait0']} ms -> {figures['commit_ms_wait1']} ms")


def record(figures: dict[str, Any], path: Path = RESULTS) -> None:
    """Write ``figures`` under ``wait_replicas`` into the results file, keeping the rest."""
    data = json.loads(path.read_text()) if path.exists() else {}
    data["wait_replicas"] = figures
    path.write_text(json.dumps(data, indent=2) + "\n")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="shardline-bench-wait-") as tmp:
        figures = measure(Path(tmp))
    print(line(figures), flush=True)
    record(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
