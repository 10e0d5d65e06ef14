"""The wire form of an ordered message: the kombu envelope Celery's ``send_task`` would publish.

Celery spends about a millisecond of CPU per ``send_task`` (configuration lookups, kombu's
per-message binding copies, two ``saferepr`` calls); a producer sending thousands of messages
pays that per message. :class:`EnvelopeBuilder` writes the same envelope directly: protocol 2
headers, a JSON body base64-encoded as kombu's Redis transport stores it, and the properties
a worker reads. ``tests/test_batch_dispatch.py`` compares it field by field with what
``send_task`` publishes, so a Celery upgrade that changes the format fails there, not in
production.

Four headers are shardline's own: ``shardline_user``, the canonical user id (a shard host reads
it to run several users of one shard at once, ``shardhost.protocol``), ``published_at``
(producer clock, unix seconds: the age of the oldest waiting message), ``shardline_epoch``, the
shard-map epoch the message was routed under (``routing.shardmap``), and ``shardline_seq``, the
user's sequence number, which only the publish script in Redis can know: the envelope carries
:data:`SEQ_PLACEHOLDER` and the script puts the number in its place (``routing.publish``). A
builder given ``max_payload_bytes`` refuses a body the worker would refuse
(``routing.payload``). This module builds; it never publishes.
"""

from __future__ import annotations

import base64
import time
from typing import Any

from celery import Celery
from celery.utils.nodenames import anon_nodename
from celery.utils.saferepr import saferepr
from kombu.utils.json import dumps
from kombu.utils.uuid import uuid

from routing.payload import check_payload, task_body

#: Header holding the user's sequence number of an ordered message (assigned at publish).
SEQ_HEADER = "shardline_seq"
#: Header holding the shard-map epoch a message was routed under (absent: a pinned map).
EPOCH_HEADER = "shardline_epoch"
#: Header naming the message's user (canonical id): a shard host runs different users' messages
#: of one shard at once, and reads the user here without decoding the body.
USER_HEADER = "shardline_user"
#: Header holding the producer's clock at publish time, in unix seconds.
PUBLISHED_AT_HEADER = "published_at"
#: JSON text the publish script replaces with the sequence number (quotes included).
SEQ_PLACEHOLDER = '"@shardline-seq@"'
_SEQ_MARK = SEQ_PLACEHOLDER.strip('"')


class EnvelopeBuilder:
    """Builds protocol-2 task envelopes for one producer app (its reply-to id and origin)."""

    def __init__(self, app: Celery, *, max_payload_bytes: int | None = None) -> None:
        #: The worker's payload limit: a bigger body raises ``InvalidDispatch`` (None: no check).
        self.max_payload_bytes = max_payload_bytes
        self.reply_to = app.thread_oid
        self.origin = anon_nodename()
        self.args_max = app.amqp.argsrepr_maxsize
        self.kwargs_max = app.amqp.kwargsrepr_maxsize
        self.max_levels = app.conf.task_repr_maxlevels

    def build(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], *,
              queue: str, task_id: str | None = None, epoch: int | None = None,
              numbered: bool = True, headers: dict[str, Any] | None = None) -> tuple[str, str]:
        """``(task id, envelope JSON)`` of one task for ``queue``, routed under ``epoch``.

        ``numbered``: the JSON holds the seq mark for the publish script; control messages
        (barrier markers, ``release_held``, notices, replays) are not numbered and carry no
        ``shardline_seq``. ``headers``: extra message headers, as ``send_task(headers=...)``.
        """
        body = task_body(args, kwargs)
        if self.max_payload_bytes is not None:
            check_payload(body, self.max_payload_bytes)
        task_id = task_id or uuid()
        message_headers = {
            **(headers or {}),
            "lang": "py",
            "task": name,
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": saferepr(args, self.args_max, maxlevels=self.max_levels),
            "kwargsrepr": saferepr(kwargs, self.kwargs_max, maxlevels=self.max_levels),
            "origin": self.origin,
            "ignore_result": None,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
            PUBLISHED_AT_HEADER: time.time(),
        }
        if epoch is not None:
            message_headers[EPOCH_HEADER] = epoch
        if numbered:
            message_headers[SEQ_HEADER] = _SEQ_MARK
        envelope = {
            "body": base64.b64encode(body).decode("ascii"),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": message_headers,
            "properties": {
                "correlation_id": task_id,
                "reply_to": self.reply_to,
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": uuid(),
            },
        }
        return task_id, dumps(envelope)
