"""The worker service registry: heavy components built once per worker process.

``start()`` runs from ``worker_process_init`` (in the main process for the solo pool, in each
child for prefork) and ``close()`` from the matching shutdown signal. Tasks reach components
only through :func:`services` and never construct them. A component declared optional that
fails to import or start is logged once and left out; the rest of the worker runs.

Each build is counted in Redis (``REGISTRY_BUILDS``, field ``component@host:pid``) so an
operator, and a test, can see that nothing is rebuilt per task.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from routing import keys
from services.ai.base import AIHandler, load_handler
from services.barrier import DrainBarrier
from services.breaker import AI_BREAKER, BreakerGuardedHandler, CircuitBreaker
from services.conversation import ConversationStore
from services.deadletter import DeadLetterStore
from services.hold import HoldStore
from services.redis_client import connect
from services.sequence import SequenceCheck

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Component:
    name: str
    build: Callable[[Any, dict[str, Any]], Any]
    optional: bool = False


def _ai(settings: Any, built: dict[str, Any]) -> AIHandler:
    # Every worker of the deployment shares one breaker: its state lives in Redis.
    breaker = CircuitBreaker(built["redis"], AI_BREAKER, failures=settings.breaker_failures,
                             open_s=settings.breaker_open_s)
    breaker.record_thresholds()  # readers show the workers' threshold, not their own env's
    return BreakerGuardedHandler(load_handler(settings.ai_handler, settings), breaker)


def _conversations(settings: Any, built: dict[str, Any]) -> ConversationStore:
    return ConversationStore(
        built["redis"], history_limit=settings.history_limit, done_ttl_s=settings.dedup_window_s
    )


#: Build order matters: later components may use earlier ones (``built``).
COMPONENTS: list[Component] = [
    Component("redis", lambda s, b: connect(s.redis_url)),
    Component("ai", _ai),
    Component("conversations", _conversations),
    Component("dead_letters", lambda s, b: DeadLetterStore(b["redis"])),
    Component("holds", lambda s, b: HoldStore(b["redis"])),
    Component("barriers", lambda s, b: DrainBarrier(b["redis"], s.shard_count)),
    Component("sequence", lambda s, b: SequenceCheck(b["redis"])),
]


def _factory(spec: str) -> Callable[[Any, dict[str, Any]], Any]:
    def build(settings: Any, built: dict[str, Any]) -> Any:
        module_name, _, attr = spec.partition(":")
        return getattr(importlib.import_module(module_name), attr)(settings)

    return build


def extra_components(settings: Any) -> list[Component]:
    """Deployment-specific components from ``EXTRA_COMPONENTS``; all optional."""
    return [Component(name, _factory(spec), optional=True)
            for name, spec in settings.extra_components]


class ServiceRegistry:
    def __init__(self, settings: Any, components: list[Component] | None = None) -> None:
        self.settings = settings
        if components is None:
            components = COMPONENTS + extra_components(settings)
        self.components = components
        self._built: dict[str, Any] = {}
        self.unavailable: dict[str, str] = {}
        #: The process this registry belongs to: a forked child must build its own.
        self.pid = os.getpid()

    def start(self) -> None:
        for component in self.components:
            try:
                self._built[component.name] = component.build(self.settings, self._built)
            except Exception as exc:
                if not component.optional:
                    raise
                self.unavailable[component.name] = f"{type(exc).__name__}: {exc}"
                log.warning("optional component %s unavailable, going on without it: %s",
                            component.name, exc)
        self._record_builds()

    def _record_builds(self) -> None:
        client: redis.Redis = self._built["redis"]
        where = f"{socket.gethostname()}:{os.getpid()}"
        with client.pipeline(transaction=False) as pipe:
            for name in self._built:
                pipe.hincrby(keys.REGISTRY_BUILDS, f"{name}@{where}", 1)
            pipe.execute()

    def get(self, name: str) -> Any:
        try:
            return self._built[name]
        except KeyError:
            reason = self.unavailable.get(name, "not declared")
            raise LookupError(f"component {name!r} is unavailable ({reason})") from None

    def has(self, name: str) -> bool:
        return name in self._built

    def close(self) -> None:
        for name, component in reversed(list(self._built.items())):
            closer = getattr(component, "close", None)
            if callable(closer):
                try:
                    closer()
                except Exception:  # closing must not mask the shutdown
                    log.exception("closing component %s failed", name)
        self._built.clear()


_registry: ServiceRegistry | None = None


def start_services(settings: Any) -> ServiceRegistry:
    """Build this process's components (idempotent within one process)."""
    global _registry
    if _registry is None or _registry.pid != os.getpid():
        registry = ServiceRegistry(settings)
        registry.start()
        _registry = registry
    return _registry


def services() -> ServiceRegistry:
    """The accessor tasks use. Fails loudly if the worker did not start the registry."""
    if _registry is None or _registry.pid != os.getpid():
        raise RuntimeError(
            "service registry not started in this process: worker_process_init did not run"
        )
    return _registry


def stop_services() -> None:
    global _registry
    if _registry is not None and _registry.pid == os.getpid():
        _registry.close()
    _registry = None
