"""Property-based poison test: over 1,000 random bad items pushed straight into a live shard
worker's list, interleaved with valid messages of a few users. The worker must stay up (same
PID), dead-letter every bad item, and answer every valid message in order.

Valid envelopes are built exactly as kombu builds them: one is published with routing.send,
read back raw from the list and used as the template."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from cli.chatload import check_order
from deploy.launcher import wait_for_workers
from metrics.schema import Outcome, labels_of
from routing import ChatMessage, keys, queue_for, send
from routing.queues import SEND_AI_RESPONSE, shard_of_queue
from tests.harness import wait_until

USERS = ["p1"] + [f"p{n}" for n in range(2, 500) if queue_for(f"p{n}") == queue_for("p1")][:2]
QUEUE = queue_for("p1")
MAX_PAYLOAD = 65536
BATCHES = 6
BATCH = 180  # 6 x 180 = 1,080 bad items

INVALID_USERS = st.sampled_from([True, False, None, -1, 1.5, "", "x" * 300, [1], {"a": 1}])
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                    | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=10)


def _b64(obj: Any) -> str:
    return base64.b64encode(json.dumps(obj).encode()).decode()


def _envelope(template: dict[str, Any], args: Any, kwargs: Any, *, task: Any = SEND_AI_RESPONSE,
              body: str | None = None, **top: Any) -> dict[str, Any]:
    env = json.loads(json.dumps(template))
    task_id = str(uuid.uuid4())
    env["headers"].update(id=task_id, root_id=task_id, task=task, argsrepr=repr(args),
                          kwargsrepr=repr(kwargs))
    env["properties"].update(correlation_id=task_id, delivery_tag=str(uuid.uuid4()))
    env["body"] = body if body is not None else _b64([args, kwargs, {"callbacks": None,
                                                                     "errbacks": None,
                                                                     "chain": None,
                                                                     "chord": None}])
    env.update(top)
    return env


def _poison(template: dict[str, Any]) -> st.SearchStrategy[str | bytes]:
    """One bad list item: raw garbage, foreign JSON, or a kombu envelope gone wrong."""
    t = template
    user = USERS[0]
    mutated = st.one_of(
        st.builds(lambda b: _envelope(t, [], {}, body=base64.b64encode(b).decode()),
                  st.binary(max_size=64)),
        st.builds(lambda j: _envelope(t, [], {}, body=_b64(j)), JSON),
        st.builds(lambda a, k: _envelope(t, a, k), JSON, JSON),
        st.builds(lambda name: _envelope(t, [user, "x"], {}, task=name),
                  st.text(max_size=30).filter(lambda s: not s.startswith("shardline."))),
        st.builds(lambda n: _envelope(t, [user, "x" * n], {}),
                  st.integers(MAX_PAYLOAD, 3 * MAX_PAYLOAD)),
        st.builds(lambda u: _envelope(t, [u, "x"], {}), INVALID_USERS),
        st.builds(lambda u: _envelope(t, [], {"user_id": u, "text": "x"}), INVALID_USERS),
        st.builds(lambda ct: _envelope(t, [user, "x"], {}, **{"content-type": ct}),
                  st.sampled_from(["application/x-python-serialize", "text/plain",
                                   "application/x-yaml", ""])),
        st.builds(lambda h: _envelope(t, [user, "x"], {}, headers=h), JSON),
        st.builds(lambda p: _envelope(t, [user, "x"], {}, properties=p), JSON),
        st.builds(lambda: _envelope(t, [user, "x"], {}, body="!!not base64!!")),
        st.builds(lambda: {**_envelope(t, [user, "x"], {}),
                           "headers": {**t["headers"], "task": SEND_AI_RESPONSE,
                                       "eta": "2030-01-01T00:00:00+00:00"}}),
    ).map(json.dumps)
    raw = st.one_of(st.binary(max_size=200), st.text(max_size=200), JSON.map(json.dumps))
    return st.one_of(mutated, raw)


def test_live_worker_survives_random_poison(producer, workers, rclient):
    """Breaks if any bad list item can stop the shard worker (kombu raises on non-JSON items in
    _brpop_read: without shardhost.transport's gate the worker exits), if a bad message is run
    or silently dropped instead of dead-lettered, or if a bad message blocks or reorders the
    valid ones behind it, or if a gate stops counting what it dead-letters (metrics)."""
    send(producer, ChatMessage(USERS[0], "template"))
    template = json.loads(rclient.rpop(QUEUE))
    assert template["properties"]["body_encoding"] == "base64"
    workers.env.update(MAX_PAYLOAD_BYTES=str(MAX_PAYLOAD))
    shard = shard_of_queue(QUEUE)
    assert shard is not None
    proc = workers.start_shard(shard)
    wait_for_workers(producer, [QUEUE])
    seq = {u: 0 for u in USERS}
    pushed = {"bad": 0, "valid": 0}

    @settings(max_examples=BATCHES, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.lists(_poison(template), min_size=BATCH, max_size=BATCH),
           st.lists(st.sampled_from(USERS), min_size=10, max_size=10), st.randoms())
    def batch(bad: list[str | bytes], users: list[str], rng: Any) -> None:
        slots: list[str | bytes | None] = list(bad)
        for _ in users:  # valid messages at random places (None marks a slot)
            slots.insert(rng.randint(0, len(slots)), None)
        valid = iter(users)
        items: list[str | bytes] = []
        for item in slots:
            if item is None:
                user = next(valid)
                item = json.dumps(_envelope(template, [user, f"{user}-{seq[user]}"],
                                            {"seq": seq[user]}))
                seq[user] += 1
                pushed["valid"] += 1
            items.append(item)
        pushed["bad"] += len(bad)
        rclient.lpush(QUEUE, *items)  # consumed in list order: the first item is read first
        wait_until(lambda: rclient.xlen(keys.OUTBOX_FEED) == pushed["valid"]
                   and rclient.llen(QUEUE) == 0, 120, what="every valid message answered")
        assert proc.poll() is None, workers.log(f"shard-{shard}")[-3000:]

    batch()
    assert pushed["bad"] >= 1000
    assert proc.poll() is None and workers.procs[f"shard-{shard}"].pid == proc.pid
    report = check_order(rclient, dict(seq))
    assert report.ok, report.bad_users
    # Every bad item is counted once as dead-lettered in the task metrics, whichever gate
    # (the transport's raw-item check or the consumer's preflight) caught it.

    def counted() -> int:
        return sum(int(n) for raw, n in rclient.hgetall(keys.TASK_OUTCOMES).items()
                   if labels_of(raw)[2] == Outcome.DEAD_LETTERED)

    # The worker writes a dead letter before it counts it: wait for both, then check that
    # nothing was counted twice.
    wait_until(lambda: rclient.zcard(keys.DEAD_LETTER_INDEX) == pushed["bad"]
               and counted() >= pushed["bad"], 30,
               what=f"{pushed['bad']} dead letters, each counted")
    assert rclient.zcard(keys.DEAD_LETTER_INDEX) == pushed["bad"]
    assert counted() == pushed["bad"]
