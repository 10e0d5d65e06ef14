"""Steady chat load from several producer threads, each owning a fixed set of users.

A publish that fails (Redis restarting) is retried with backoff under the same task id, so a
publish that did reach Redis and is sent again is answered once (the done-marker). A user's
next message is published only after the previous one was, so each user's order is defined.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

from celery import Celery

from routing import ChatMessage, send

#: Give up on one message after this long (Redis down far longer than any restart here).
PUBLISH_DEADLINE_S = 60.0


@dataclass
class LoadLog:
    sent: dict[str, int] = field(default_factory=dict)  # user -> messages published
    publish_retries: int = 0
    unpublished: int = 0


def producer_app(url: str) -> Celery:
    app = Celery("chaos-producer")
    app.config_from_object("celeryconfig")
    app.conf.broker_url = url
    return app


def publish(app: Celery, message: ChatMessage, task_id: str, log: LoadLog, *,
            scripted: bool = False) -> bool:
    """Publish until it succeeds or :data:`PUBLISH_DEADLINE_S` passes (then False).
    ``scripted``: through ``routing.send`` (the publish script, which waits for
    REDIS_WAIT_REPLICAS; the message id keeps a retry from publishing twice), else through
    Celery's ``send_task``."""
    deadline = time.monotonic() + PUBLISH_DEADLINE_S
    delay = 0.05
    while True:
        try:
            if scripted:
                send(app, message)
            else:
                app.send_task(message.task_name, args=(message.user_id, message.text),
                              kwargs=message.task_kwargs(), task_id=task_id)
            return True
        except Exception:  # any broker error: the message is not known to be stored
            if time.monotonic() > deadline:
                return False
            log.publish_retries += 1
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 2.0)


class Producers:
    """``threads`` producers over ``users`` users, one message per thread every ``pause_s``."""

    def __init__(self, app: Celery, *, users: int, threads: int, pause_s: float,
                 proactive_every: int = 5, run_id: str = "", scripted: bool = False) -> None:
        self.app = app
        self.scripted = scripted
        self.users = [f"chaos-{n}" for n in range(users)]
        self.threads = threads
        self.pause_s = pause_s
        self.proactive_every = proactive_every
        self.run_id = run_id or f"{int(time.time())}"
        self.log = LoadLog(sent={u: 0 for u in self.users})
        self.stopping = threading.Event()
        self._workers: list[threading.Thread] = []

    def start(self) -> None:
        for n in range(self.threads):
            mine = self.users[n :: self.threads]
            thread = threading.Thread(target=self._produce, args=(mine, n), daemon=True,
                                      name=f"producer-{n}")
            thread.start()
            self._workers.append(thread)

    def _produce(self, users: list[str], seed: int) -> None:
        rng = random.Random(seed)
        while not self.stopping.is_set():
            user = rng.choice(users)
            seq = self.log.sent[user]
            proactive = self.proactive_every > 0 and seq % self.proactive_every == 4
            message = ChatMessage(user, f"message {seq} from {user}", sent_at=time.time(),
                                  proactive=proactive, message_id=f"{user}-{seq}",
                                  extra={"seq": seq})
            if publish(self.app, message, f"{self.run_id}-{user}-{seq}", self.log,
                       scripted=self.scripted):
                self.log.sent[user] = seq + 1
            else:
                self.log.unpublished += 1
            self.stopping.wait(self.pause_s * rng.uniform(0.5, 1.5))

    def stop(self) -> None:
        self.stopping.set()
        for thread in self._workers:
            thread.join()
