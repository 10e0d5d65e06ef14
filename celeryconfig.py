"""All configuration: read from environment variables here and nowhere else.

``settings`` holds shardline's own options; the lowercase module attributes below it are
Celery's settings, derived from ``settings``. Every variable, its default and its meaning
is listed in the configuration table, docs/configuration.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

from kombu import Queue

from routing.credentials import MASK, redact_url
from routing.queues import DEFAULT_QUEUE, MAINTENANCE_QUEUE, WORKLOAD_QUEUES
from routing.redis_url import broker_url as kombu_broker_url
from routing.redis_url import sentinel_kwargs


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be a number, got {raw!r}") from None


def _str(name: str, default: str) -> str:
    return os.environ.get(name) or default


def _choice(name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = _str(name, default)
    if value not in allowed:
        raise ValueError(f"environment variable {name} must be one of {allowed}, got {value!r}")
    return value


def _database_url(raw: str) -> str:
    """SQLAlchemy needs a driver name: ``postgresql://`` means psycopg 3 here."""
    for plain in ("postgresql://", "postgres://"):
        if raw.startswith(plain):
            return "postgresql+psycopg://" + raw[len(plain):]
    return raw


def _embedded_redis_url(home: Path) -> str | None:
    """URL of the private Redis server a running launcher wrote down, if any."""
    try:
        return (home / "redis.url").read_text().strip() or None
    except OSError:
        return None


def parse_shard_range(raw: str, shard_count: int) -> tuple[int, ...]:
    """``"0-3"``, ``"5"`` or ``"0-1,4"`` -> the shard numbers; empty means every shard."""
    if not raw.strip():
        return tuple(range(shard_count))
    shards: list[int] = []
    for part in raw.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi or lo)
        except ValueError:
            raise ValueError(f"SHARD_RANGE must look like '0-3' or '0,2', got {raw!r}") from None
        if not 0 <= first <= last < shard_count:
            raise ValueError(f"SHARD_RANGE {raw!r} is outside 0-{shard_count - 1}")
        shards.extend(range(first, last + 1))
    return tuple(sorted(set(shards)))


def _components(raw: str, variable: str = "EXTRA_COMPONENTS") -> tuple[tuple[str, str], ...]:
    """``"name=package.module:factory,..."`` -> ((name, spec), ...)."""
    pairs = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, sep, spec = item.partition("=")
        if not sep or not name.strip() or ":" not in spec:
            raise ValueError(f"{variable} entries look like name=module:factory, got {item!r}")
        pairs.append((name.strip(), spec.strip()))
    return tuple(pairs)


def _on_failure(raw: str) -> str:
    if raw not in ("skip", "hold"):
        raise ValueError(f"ORDERED_ON_FAILURE must be skip or hold, got {raw!r}")
    return raw


def _positive(name: str, default: float) -> float:
    value = _float(name, default)
    if value <= 0:
        raise ValueError(f"environment variable {name} must be > 0, got {value}")
    return value


def _at_least(name: str, default: int, lowest: int) -> int:
    value = _int(name, default)
    if value < lowest:
        raise ValueError(f"environment variable {name} must be >= {lowest}, got {value}")
    return value


def _shard_lease_ttl(ttl_s: float) -> float:
    # A take blocks up to 1 s (kombu's brpop_timeout); a worker stops taking 0.6 x TTL after
    # its last renewal, so 0.4 x TTL must exceed that 1 s (shardhost/solo_lease.py).
    if ttl_s < 3.0:
        raise ValueError(f"SHARD_LEASE_TTL_S must be >= 3, got {ttl_s}")
    return ttl_s


def _limit(name: str, default: int) -> int | None:
    """A per-child limit: a positive integer, or 0 for none."""
    value = _int(name, default)
    if value < 0:
        raise ValueError(f"environment variable {name} must be >= 0 (0: no limit), got {value}")
    return value or None


def _job_soft_time_limit(hard_s: int) -> float | None:
    # The soft limit must strike before the hard one (SIGKILL, nothing saved), with time
    # left to settle: by default 60 s before it, or at 90% of a hard limit shorter than 10 min.
    value = _float("JOB_SOFT_TIME_LIMIT_S", max(hard_s - 60.0, hard_s * 0.9))
    if value < 0 or value >= hard_s:
        raise ValueError(f"JOB_SOFT_TIME_LIMIT_S ({value:g}) must be below TASK_TIME_LIMIT_S "
                         f"({hard_s}), or 0 for none: the hard limit kills a run unsaved")
    return value or None


#: Settings that are secrets, and settings that are URLs which may carry one: masked in the
#: repr, which ``celery inspect conf`` sends to whoever asks (``settings`` is in this module).
_SECRETS = frozenset({"ai_api_key", "telegram_bot_token", "telegram_webhook_secret",
                      "api_tokens", "redis_sentinel_password"})
_URLS = frozenset({"external_redis_url", "redis_url", "database_url"})


@dataclass(frozen=True, repr=False)
class Settings:
    home: Path
    #: REDIS_URL exactly as given; None means "use the embedded server".
    external_redis_url: str | None
    #: The URL to use: REDIS_URL, else the one a running launcher wrote to ``home``.
    redis_url: str | None
    shard_count: int
    shard_range: tuple[int, ...]
    ai_handler: str
    ai_latency_ms: int
    ai_base_url: str
    ai_model: str
    ai_api_key: str
    ai_timeout_s: float
    messenger: str
    telegram_bot_token: str
    telegram_api_base: str
    history_limit: int
    max_payload_bytes: int
    visibility_timeout_s: int
    task_time_limit_s: int
    workload_concurrency: int
    #: A workload worker's pool process is replaced after this many tasks (None: never).
    workload_max_tasks_per_child: int | None
    #: ... or once a task leaves it above this resident memory, in KiB (None: never).
    workload_max_memory_per_child_kb: int | None
    #: Seconds after which a job's run stops at its last checkpoint, paused (None: never).
    job_soft_time_limit_s: float | None
    redis_appendfsync: str
    log_level: str
    dedup_window_s: int
    #: Optional worker components "name=package.module:factory,..." (see services/registry.py).
    extra_components: tuple[tuple[str, str], ...]
    ordered_max_attempts: int
    ordered_retry_base_s: float
    ordered_retry_max_s: float
    # ---- jobs, promises, catch-up, HTTP API (issue 5) ----
    #: Checkpoint a job every this many items (JOB_CHECKPOINT_EVERY).
    job_checkpoint_every: int
    #: Seconds a finished job's record and checkpoint are kept (JOB_TTL_S).
    job_ttl_s: int
    #: Seconds a cancelled running job gets to reach a checkpoint before it is revoked.
    job_cancel_grace_s: float
    #: Seconds without a heartbeat after which a running job or promise counts as lost; also
    #: how long a queued job's message may be missing from the broker before it is re-sent.
    work_lease_s: float
    #: Seconds between beat passes (recovery of lost jobs/promises, cleanup).
    maintenance_interval_s: float
    #: SQLAlchemy URL of the promise store (DATABASE_URL, postgresql:// is translated).
    database_url: str
    #: ``fail`` or ``skip``: what a failed parent does to its pending children.
    promise_on_parent_failure: str
    #: Attempts of a promise's work before it is failed.
    promise_max_attempts: int
    #: Missed messages younger than this many seconds are replayed at start.
    catchup_window_s: int
    #: ``alice:token,bob:token``; empty disables auth and binds the API to loopback only.
    api_tokens: str
    telegram_webhook_secret: str
    #: Where ``python -m api`` listens (API_HOST, API_PORT); loopback forced without tokens.
    api_host: str
    api_port: int
    #: "skip": a parked message lets the user's later ones go on; "hold": they wait for it.
    ordered_on_failure: str
    #: Consecutive AI handler failures that open the circuit breaker.
    breaker_failures: int
    #: Seconds the breaker stays open before one probe call is let through.
    breaker_open_s: float
    #: Seconds a producer keeps retrying a publish while Redis is unreachable.
    publish_retry_s: float
    #: Seconds a shard lease lives unless renewed (renewed every third of it).
    shard_lease_ttl_s: float
    #: Seconds a process may use its cached shard map (count, epoch) before reading it again.
    shard_map_refresh_s: float
    #: ``hosts``: shard hosts run many shards per process; ``solo``: one solo worker per shard.
    shard_runtime: str
    #: Shard hosts ``python -m deploy.shards`` starts (SHARD_PROCESSES, default: the cores).
    shard_processes: int
    #: Messages of one shard that may run at once, each of a different user (SHARD_CONCURRENCY;
    #: 1 is the strict design: one message per shard at a time).
    shard_concurrency: int
    #: Worker threads of one shard host: how many messages it runs at once over all its shards.
    shard_host_threads: int
    #: Which of the SHARD_PROCESSES hosts this process is (set by the launcher / supervisor):
    #: it hosts the shards ``s`` with ``s % SHARD_PROCESSES == SHARD_HOST_SLOT``.
    shard_host_slot: int
    #: ``each``: a worker started as root prints Celery's SecurityWarning; ``once``: it does
    #: not (the launcher prints one notice for all the workers it starts).
    root_warning: str
    #: Where ``python -m metrics`` serves /metrics (METRICS_HOST, METRICS_PORT).
    metrics_host: str
    metrics_port: int
    # ---- production Redis: Sentinel and replication (issue 12) ----
    #: The master a ``sentinel://`` REDIS_URL asks the sentinels for (REDIS_SENTINEL_MASTER).
    redis_sentinel_master: str
    #: The sentinels' own login, if they require one (the master's is in REDIS_URL).
    redis_sentinel_username: str
    redis_sentinel_password: str
    #: Replicas that must hold a publish and a reply commit before either counts as done
    #: (``WAIT``); 0 does not wait: a failover may then lose acknowledged writes.
    redis_wait_replicas: int
    #: Milliseconds one WAIT may block; fewer replicas by then fails the publish or commit.
    redis_wait_timeout_ms: int
    #: Plug-in job kinds "name=package.module:factory,..." beside the built-ins (jobs/kinds.py).
    job_kinds: tuple[tuple[str, str], ...]
    #: Plug-in promise kinds, the same form (promises/kinds.py).
    promise_kinds: tuple[tuple[str, str], ...]

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _SECRETS and value:
                value = MASK
            elif f.name in _URLS and value:
                value = redact_url(value)
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    @classmethod
    def from_env(cls) -> Settings:
        home = Path(_str("SHARDLINE_HOME", ".shardline")).absolute()
        shard_count = _int("SHARD_COUNT", 64)
        if shard_count < 1:
            raise ValueError(f"SHARD_COUNT must be >= 1, got {shard_count}")
        visibility = _int("VISIBILITY_TIMEOUT_S", 7200)
        time_limit = _int("TASK_TIME_LIMIT_S", 1800)
        if time_limit >= visibility:
            raise ValueError(
                f"TASK_TIME_LIMIT_S ({time_limit}) must be below VISIBILITY_TIMEOUT_S "
                f"({visibility}), or a healthy long task would be delivered twice"
            )
        soft_limit = _job_soft_time_limit(time_limit)
        fsync = _str("REDIS_APPENDFSYNC", "everysec")
        if fsync not in ("everysec", "always", "no"):
            raise ValueError(f"REDIS_APPENDFSYNC must be everysec, always or no, got {fsync!r}")
        return cls(
            home=home,
            external_redis_url=os.environ.get("REDIS_URL") or None,
            redis_url=os.environ.get("REDIS_URL") or _embedded_redis_url(home),
            shard_count=shard_count,
            shard_range=parse_shard_range(_str("SHARD_RANGE", ""), shard_count),
            ai_handler=_str("AI_HANDLER", "services.ai.offline:OfflineResponder"),
            ai_latency_ms=_int("AI_LATENCY_MS", 0),
            ai_base_url=_str("AI_BASE_URL", "http://127.0.0.1:8080/v1"),
            ai_model=_str("AI_MODEL", "local-model"),
            ai_api_key=_str("AI_API_KEY", ""),
            ai_timeout_s=_float("AI_TIMEOUT_S", 60.0),
            messenger=_str("MESSENGER", "outbox"),
            telegram_bot_token=_str("TELEGRAM_BOT_TOKEN", ""),
            telegram_api_base=_str("TELEGRAM_API_BASE", "https://api.telegram.org"),
            history_limit=_int("HISTORY_LIMIT", 50),
            max_payload_bytes=_int("MAX_PAYLOAD_BYTES", 1024 * 1024),
            visibility_timeout_s=visibility,
            task_time_limit_s=time_limit,
            workload_concurrency=_int("WORKLOAD_CONCURRENCY", 2),
            workload_max_tasks_per_child=_limit("WORKLOAD_MAX_TASKS_PER_CHILD", 200),
            workload_max_memory_per_child_kb=_limit("WORKLOAD_MAX_MEMORY_PER_CHILD_KB",
                                                    512 * 1024),
            job_soft_time_limit_s=soft_limit,
            redis_appendfsync=fsync,
            log_level=_str("LOG_LEVEL", "INFO"),
            dedup_window_s=_int("DEDUP_WINDOW_S", 24 * 3600),
            extra_components=_components(_str("EXTRA_COMPONENTS", "")),
            ordered_max_attempts=max(_int("ORDERED_MAX_ATTEMPTS", 3), 1),
            ordered_retry_base_s=_float("ORDERED_RETRY_BASE_S", 0.2),
            ordered_retry_max_s=_float("ORDERED_RETRY_MAX_S", 10.0),
            job_checkpoint_every=max(_int("JOB_CHECKPOINT_EVERY", 10), 1),
            job_ttl_s=_int("JOB_TTL_S", 7 * 24 * 3600),
            job_cancel_grace_s=_float("JOB_CANCEL_GRACE_S", 30.0),
            work_lease_s=_float("WORK_LEASE_S", 120.0),
            maintenance_interval_s=_float("MAINTENANCE_INTERVAL_S", 30.0),
            database_url=_database_url(_str("DATABASE_URL", f"sqlite:///{home / 'promises.db'}")),
            promise_on_parent_failure=_choice("PROMISE_ON_PARENT_FAILURE", "fail",
                                              ("fail", "skip")),
            promise_max_attempts=max(_int("PROMISE_MAX_ATTEMPTS", 3), 1),
            catchup_window_s=_int("CATCHUP_WINDOW_S", 300),
            api_tokens=_str("API_TOKENS", ""),
            telegram_webhook_secret=_str("TELEGRAM_WEBHOOK_SECRET", ""),
            api_host=_str("API_HOST", "127.0.0.1"),
            api_port=_int("API_PORT", 8000),
            ordered_on_failure=_on_failure(_str("ORDERED_ON_FAILURE", "skip")),
            breaker_failures=max(_int("BREAKER_FAILURES", 5), 1),
            breaker_open_s=_float("BREAKER_OPEN_S", 30.0),
            publish_retry_s=_float("PUBLISH_RETRY_S", 10.0),
            shard_lease_ttl_s=_shard_lease_ttl(_float("SHARD_LEASE_TTL_S", 10.0)),
            shard_map_refresh_s=_positive("SHARD_MAP_REFRESH_S", 1.0),
            shard_runtime=_choice("SHARD_RUNTIME", "hosts", ("hosts", "solo")),
            shard_processes=_at_least("SHARD_PROCESSES", os.cpu_count() or 1, 1),
            shard_concurrency=_at_least("SHARD_CONCURRENCY", 1, 1),
            shard_host_threads=_at_least("SHARD_HOST_THREADS", 64, 1),
            shard_host_slot=_at_least("SHARD_HOST_SLOT", 0, 0),
            root_warning=_choice("ROOT_WARNING", "each", ("each", "once")),
            metrics_host=_str("METRICS_HOST", "127.0.0.1"),
            metrics_port=_int("METRICS_PORT", 9808),
            redis_sentinel_master=_str("REDIS_SENTINEL_MASTER", "mymaster"),
            redis_sentinel_username=_str("REDIS_SENTINEL_USERNAME", ""),
            redis_sentinel_password=_str("REDIS_SENTINEL_PASSWORD", ""),
            redis_wait_replicas=_at_least("REDIS_WAIT_REPLICAS", 0, 0),
            redis_wait_timeout_ms=_at_least("REDIS_WAIT_TIMEOUT_MS", 1000, 1),
            job_kinds=_components(_str("JOB_KINDS", ""), "JOB_KINDS"),
            promise_kinds=_components(_str("PROMISE_KINDS", ""), "PROMISE_KINDS"),
        )


settings = Settings.from_env()

# A worker started without REDIS_URL and without a running launcher fails on this host name,
# which says what is missing; the CLI checks first and prints how to fix it.
NO_REDIS_CONFIGURED = "redis://set-REDIS_URL-or-run-shardline-run.invalid:6379/0"

# ---- Celery settings -------------------------------------------------------------------
broker_url = kombu_broker_url(settings.redis_url or NO_REDIS_CONFIGURED)
broker_connection_retry_on_startup = True
broker_transport_options = {
    # Longer than any task may run (TASK_TIME_LIMIT_S), so a healthy task is never
    # delivered twice; crashed shard workers are recovered by their own shard, not by this.
    "visibility_timeout": settings.visibility_timeout_s,
    # Redis has no native priorities: kombu keeps one list per step (0 is highest) and
    # reads them priority-major. Only workload queues ever use a step other than 0.
    "priority_steps": [0, 3, 6, 9],
    "sep": ":",
    "queue_order_strategy": "priority",
    # kombu's sentinel transport (a sentinel:// broker URL) asks the sentinels for this master
    # on every connect; the plain Redis transport ignores both.
    "master_name": settings.redis_sentinel_master,
    "sentinel_kwargs": sentinel_kwargs(settings),
}

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
event_serializer = "json"

# Results are not stored: replies go to the outbox, jobs and promises keep their own state.
task_ignore_result = True
result_backend = None

task_acks_late = True
task_reject_on_worker_lost = False  # True would requeue at the tail: see docs/ordering.md
worker_prefetch_multiplier = 1
task_time_limit = settings.task_time_limit_s
task_routes = ("routing.router.route_task",)
task_default_queue = DEFAULT_QUEUE
task_create_missing_queues = True
worker_hijack_root_logger = False
worker_redirect_stdouts = False
worker_send_task_events = False
worker_consumer = "tasks.consumer:ShardlineConsumer"
imports = ("tasks.chat", "tasks.jobs", "tasks.promises", "tasks.rescale")

task_queues = [Queue(name) for name in (*WORKLOAD_QUEUES, MAINTENANCE_QUEUE)]

# Beat: recovery of lost jobs and promises, and cleanup of expired job records (issue 5).
# The router sends it to the maintenance queue (routing.queues.MAINTENANCE_TASKS).
beat_schedule = {
    "shardline-maintenance": {
        "task": "shardline.maintenance",
        "schedule": settings.maintenance_interval_s,
    },
}
