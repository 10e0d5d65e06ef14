"""The worker's Redis transport: kombu's, with a gate for list items that are not envelopes.

kombu's ``Channel._brpop_read`` pops an item and parses it with ``json.loads`` before any
consumer code runs; an item that is not JSON, or JSON that is not a kombu envelope, raises
there, and Celery stops the worker ("Unrecoverable error: JSONDecodeError"). The popped item
is gone by then (it never reaches ``unacked``), so a supervisor restart loses it and the next
bad item crashes the worker again. Here the BRPOP reply is checked first: an item kombu could
not turn into a message is dead-lettered (``raw``) and the read reports "nothing arrived".

A solo shard worker (a channel consuming exactly one shard queue) takes messages with the shard
protocol's take (``shardhost.protocol``: one Lua call that checks the shard lease and moves the
head into ``shardline:inflight:shard.N``) instead of BRPOP, and waits for an empty queue with a
blocking peek that moves nothing. kombu's BRPOP removes the message first and records it in
``unacked`` afterwards, from the client: a kill -9 of the worker, or a Redis crash, between the
two loses the message (the chaos suite lost one message this way in about one run in four). The
take is atomic, so a taken message is always either in the queue or in the in-flight list; and
it is conditional on the lease, so a worker paused between its own lease check and the take (the
take window) takes nothing once a standby owns the shard. For these messages the in-flight list
replaces kombu's ``unacked`` record (:class:`InflightQoS`): the ack removes them from it, and
the shard's next lease owner restores whatever is left, at the head (``shardhost.stranded``).
Shard messages never carry a priority (the router refuses one), so a shard queue has no priority
sub-lists to read.

Only workers use this transport (``ShardlineConsumer.connection_for_read``); it must never
change what a valid envelope looks like to kombu.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from queue import Empty
from time import monotonic
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads as kombu_loads

from metrics.schema import UNKNOWN
from routing import keys
from routing.queues import shard_of_queue
from routing.redis_url import is_sentinel
from routing.replies import as_text
from services.deadletter import DeadLetter
from services.registry import services
from shardhost.protocol import LeaseNotOwned, parse_take, script_text, take_args
from shardhost.solo_lease import ensure_lease_fresh, held_lease, lease_lost
from tasks.instrumentation import task_metrics

log = logging.getLogger(__name__)


def envelope_problem(item: Any) -> str | None:
    """Why kombu could not deliver the raw list item ``item``, or ``None`` if it can."""
    return read_envelope(item)[1]


def read_envelope(item: Any) -> tuple[dict[str, Any] | None, str | None]:
    """(the envelope, None) of a raw list item kombu can deliver, else (None, why not)."""
    try:
        text = item.decode("utf-8") if isinstance(item, bytes) else str(item)
    except UnicodeDecodeError:
        return None, "list item is not UTF-8"
    try:
        payload = json.loads(text)
    except ValueError as exc:
        return None, f"list item is not JSON: {exc}"
    problem = _envelope_shape_problem(payload)
    return (None, problem) if problem else (payload, None)


def _envelope_shape_problem(payload: Any) -> str | None:
    if not isinstance(payload, dict):
        return f"list item is JSON {type(payload).__name__}, not a kombu envelope object"
    props = payload.get("properties")
    if not isinstance(props, dict):
        return "envelope has no properties object"
    if not isinstance(props.get("delivery_tag"), str):
        return "envelope has no delivery_tag string"
    info = props.get("delivery_info")
    if not (isinstance(info, dict) and isinstance(info.get("exchange"), str)
            and isinstance(info.get("routing_key"), str)):
        return "envelope has no delivery_info with exchange and routing_key"
    for name in ("content-type", "content-encoding"):
        if payload.get(name) is not None and not isinstance(payload[name], str):
            return f"envelope {name} is not a string"
    if payload.get("headers") is not None and not isinstance(payload["headers"], dict):
        return "envelope headers are not an object"
    body, encoding = payload.get("body"), props.get("body_encoding")
    if body and not isinstance(body, str):
        return "envelope body is not a string"
    if encoding not in (None, "base64"):
        return f"unknown body_encoding {encoding!r}"
    if body and encoding == "base64":
        try:
            base64.b64decode(body.encode("utf-8"))
        except ValueError as exc:
            return f"body is not valid base64: {exc}"
    return None


def dead_letter_raw(queue: str, item: Any, reason: str) -> None:
    """Park a list item kombu cannot read (``envelope_problem``) with ``reason``."""
    raw = item.decode("utf-8", "backslashreplace") if isinstance(item, bytes) else str(item)
    try:
        services().get("dead_letters").park(DeadLetter(reason=reason, queue=queue, raw=raw))
    except Exception:  # the worker must survive even if the record cannot be written
        log.exception("could not dead-letter a bad item from %s", queue)
    if recorder := task_metrics():
        recorder.dead_lettered(UNKNOWN, queue)
    log.error("dead-lettered a raw item from %s that kombu cannot read: %s", queue, reason)


class _GuardedRedis(redis.Redis):
    def parse_response(self, connection: Any, command_name: Any, **options: Any) -> Any:
        reply = super().parse_response(connection, command_name, **options)
        if command_name == "BRPOP" and reply:
            dest, item = reply
            problem = envelope_problem(item)
            if problem is not None:
                queue = as_text(dest)
                dead_letter_raw(queue, item, problem)
                return None  # kombu reads this as "nothing arrived" and polls again
        return reply


class InflightQoS(kombu_redis.QoS):
    """kombu's ack emulation; for a message taken into an in-flight list, that list *is* its
    unacked record.

    kombu writes each delivered message to its global ``unacked`` hash (a round trip and two
    writes per message) so that it can come back after the visibility timeout. A shard's
    in-flight list already holds it, and the shard's lease owner, not the visibility timeout,
    brings it back, at the head. So a taken message is tracked in memory only; its ack is one
    LREM; a requeue (reject, or a restore at shutdown) puts it back at the head of its queue.
    Messages of other queues keep kombu's behaviour.
    """

    channel: GuardedChannel

    def append(self, message: Any, delivery_tag: str) -> None:
        if delivery_tag in self.channel.taken:
            virtual.QoS.append(self, message, delivery_tag)  # in memory only
            return
        super().append(message, delivery_tag)

    def _remove_from_indices(self, delivery_tag: str, pipe: Any = None) -> Any:
        taken = self.channel.taken.pop(delivery_tag, None)
        if taken is None:
            return super()._remove_from_indices(delivery_tag, pipe)
        queue, raw = taken
        with self.pipe_or_acquire(pipe) as pipe:
            return pipe.lrem(keys.inflight(queue), 1, raw)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if requeue and self._put_back(delivery_tag):
            virtual.QoS.ack(self, delivery_tag)
            return
        super().reject(delivery_tag, requeue)

    def restore_by_tag(self, tag: Any, client: Any = None, leftmost: bool = False) -> None:
        if not self._put_back(bytes_to_str(tag)):
            super().restore_by_tag(tag, client, leftmost)

    def _put_back(self, delivery_tag: str) -> bool:
        taken = self.channel.taken.pop(delivery_tag, None)
        if taken is None:
            return False
        self.channel._put_back(*taken)
        return True


class GuardedChannel(kombu_redis.Channel):
    QoS = InflightQoS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        #: delivery tag -> (queue, raw item) of each message taken into an in-flight list.
        self.taken: dict[str, tuple[str, bytes]] = {}
        #: The shard command in flight: (queue, "take" or "wait"), or None.
        self._moving_from: tuple[str, str] | None = None
        #: Take next (the last take or wait saw a message), else wait for one.
        self._take_next = True
        self._pooled_client: Any = None
        super().__init__(*args, **kwargs)

    def _get_client(self) -> Any:
        client = super()._get_client()
        return client if self.global_keyprefix else _GuardedRedis

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        # kombu builds a new redis-py client object for every call (twice per message: the
        # unacked record and the ack), which cost about 0.4 ms of CPU per message here. A
        # client object holds no connection of its own (each command takes one from the
        # pool), so one per pool is reused.
        if client:
            yield client
            return
        pool = self.pool
        if self._pooled_client is None or self._pooled_client.connection_pool is not pool:
            self._pooled_client = self._create_client()
        yield self._pooled_client

    def inflight_queue(self) -> str | None:
        """The shard queue this channel takes from with BLMOVE, or ``None`` (plain BRPOP)."""
        queues = list(self.active_queues)
        if len(queues) != 1 or self.global_keyprefix or shard_of_queue(queues[0]) is None:
            return None
        return queues[0]

    def _brpop_start(self, timeout: float | None = None) -> None:
        queue = self.inflight_queue()
        if queue is None:
            super()._brpop_start(timeout)
            return
        ensure_lease_fresh()
        lease = held_lease()
        if timeout is None:
            timeout = self.brpop_timeout
        self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()  # type: ignore[assignment]
        if self._take_next and lease is not None:
            # The take checks the lease in the same atomic step (shardhost/lua/take.lua).
            self._moving_from = (queue, "take")
            self.client.connection.send_command(
                "EVAL", script_text("take"), 3, queue, keys.inflight(queue), lease.key,
                *take_args(lease.token, 1, 1))
        else:
            # Wait without taking: the head goes back where it was, so a worker paused here
            # while its lease passes to a standby has taken nothing when it resumes.
            self._moving_from = (queue, "wait")
            self.client.connection.send_command(
                "BLMOVE", queue, queue, "RIGHT", "RIGHT", timeout or 0)

    def _brpop_read(self, **options: Any) -> bool:
        pending, self._moving_from = self._moving_from, None
        if pending is None:
            return bool(super()._brpop_read(**options))
        queue, kind = pending
        try:
            try:
                reply = self.client.parse_response(self.client.connection, "EVAL", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if kind == "wait":
                self._take_next = reply is not None  # None: timed out, the queue is empty
                raise Empty()
            try:
                taken = parse_take(reply)
            except LeaseNotOwned:
                lease_lost(f"the take from {queue} found the shard lease held by another "
                           "owner (was the process paused?)")
                raise
            if not taken.items:
                self._take_next = False
                raise Empty()
            item = taken.items[0]
            problem = envelope_problem(item)
            if problem is not None:
                dead_letter_raw(queue, item, problem)
                self.client.lrem(keys.inflight(queue), 1, item)
                raise Empty()
            if queue not in self.connection._callbacks:
                # The consumer was cancelled (warm shutdown) while the take was pending.
                # kombu would reject-requeue it at the tail ("Requeuing undeliverable
                # message"), behind the user's later messages; it goes back to the head.
                self._put_back(queue, item)
                raise Empty()
            payload = kombu_loads(bytes_to_str(item))
            self.taken[payload["properties"]["delivery_tag"]] = (queue, item)
            self.connection._deliver(payload, queue)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]
            self._flush_brpop_reauth()

    def _put_back(self, queue: str, item: bytes) -> None:
        """Return a taken message from the in-flight list to the head of ``queue``, atomically
        (this worker holds the lease, so nobody else took anything from ``queue`` since)."""
        with self.conn_or_acquire() as client, client.pipeline() as pipe:
            pipe.lrem(keys.inflight(queue), 1, item)
            pipe.rpush(queue, item)
            pipe.execute()
        log.info("put a message taken from %s back at its head", queue)


class GuardedTransport(kombu_redis.Transport):
    Channel = GuardedChannel


class GuardedSentinelChannel(GuardedChannel, kombu_redis.SentinelChannel):
    """The same channel on kombu's sentinel transport (a ``sentinel://`` REDIS_URL): its
    connections ask the sentinels for the master, so a worker follows a failover."""


class GuardedSentinelTransport(kombu_redis.SentinelTransport):
    Channel = GuardedSentinelChannel


def guarded_transport(broker_url: str) -> str:
    """The guarded transport for ``broker_url``'s scheme, by name, not by class: kombu puts it
    into the connection's info, which ``celery inspect stats`` sends back as JSON; a class there
    fails to encode, and the worker never answers (``EncodeError: Object of type type is not
    JSON serializable``)."""
    transport = GuardedSentinelTransport if is_sentinel(broker_url) else GuardedTransport
    return f"{transport.__module__}:{transport.__qualname__}"
