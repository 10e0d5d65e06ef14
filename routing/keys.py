"""Every Redis key shardline writes, in one module, so the whole key space is visible at once.

Producers and workers both use these names, so they live at the bottom layer (routing/).
kombu's own keys (queues ``shard.N``, ``_kombu.binding.*``) are kombu's and are not listed
here, except the two unacked keys the shard lease's crash recovery reads (at the bottom).
"""

from __future__ import annotations

PREFIX = "shardline:"


def outbox(user: str) -> str:
    """Stream of one user's delivered replies, in delivery order."""
    return f"{PREFIX}outbox:{user}"


#: Stream of (user, entry id) pointers across all users, in delivery order; relays read it.
OUTBOX_FEED = f"{PREFIX}outbox-feed"
#: Consumer group of the chat relays on :data:`OUTBOX_FEED`.
RELAY_GROUP = "relays"
#: Hash user -> id of the last outbox entry a relay delivered to the chat service.
RELAY_DELIVERED = f"{PREFIX}relay:delivered"


def history(user: str) -> str:
    """List of one user's recent conversation turns (JSON), capped."""
    return f"{PREFIX}history:{user}"


def done(task_id: str) -> str:
    """Marker that an ordered message's reply was stored; written atomically with the reply."""
    return f"{PREFIX}done:{task_id}"


#: Sorted set of dead-letter ids scored by the time they were parked.
DEAD_LETTER_INDEX = f"{PREFIX}dead-letters"
#: Hash dead-letter id -> JSON record (reason, task, user, arguments, error, attempts, time).
DEAD_LETTER_RECORDS = f"{PREFIX}dead-letter-records"
#: Hash "component@host:pid" -> number of times it was built, written by the service registry.
REGISTRY_BUILDS = f"{PREFIX}registry:builds"


def hold(user: str) -> str:
    """Set of the dead-letter ids that hold one user's later ordered messages (hold mode)."""
    return f"{PREFIX}hold:{user}"


def held(user: str) -> str:
    """List of one user's ordered messages held behind a parked one (JSON), oldest first."""
    return f"{PREFIX}held:{user}"


def breaker_failures(name: str) -> str:
    """Counter of consecutive failures of the guarded call ``name``."""
    return f"{PREFIX}breaker:{name}:failures"


def breaker_open(name: str) -> str:
    """Exists (with a TTL of the open period) while breaker ``name`` is open."""
    return f"{PREFIX}breaker:{name}:open"


def breaker_thresholds(name: str) -> str:
    """Hash of breaker ``name``'s thresholds as the workers run it (``failures``, ``open_s``):
    written by each worker process that builds it, read by the CLI and the exporter."""
    return f"{PREFIX}breaker:{name}:thresholds"


def breaker_probe(name: str) -> str:
    """Half-open probe token: the one caller that SET NX it makes the trial call."""
    return f"{PREFIX}breaker:{name}:probe"


def dedup(user: str, message_id: str) -> str:
    """Producer-side idempotency key of one (user, message id); its value is the task id."""
    return f"{PREFIX}dedup:{user}:{message_id}"


#: Counter of dispatches dropped as duplicates of an earlier (user, message id).
DUPLICATES_DROPPED = f"{PREFIX}duplicates-dropped"
#: Hash user -> the last sequence number given to one of the user's ordered messages.
USER_SEQ = f"{PREFIX}user-seq"
#: Hash user -> the highest sequence number of the user's ordered messages that started on a
#: worker (the worker-side order check, ``services.sequence``).
USER_STARTED_SEQ = f"{PREFIX}user-started-seq"

# ---- shard map and online rescale (routing/shardmap.py, services/barrier.py) ----------
#: Hash ``count`` (shard queues), ``epoch`` (incremented by each rescale), ``switched_at``
#: (Redis time of the last rescale). Absent: ``SHARD_COUNT`` shards, epoch 0.
SHARD_MAP = f"{PREFIX}shard-map"
#: Hash epoch -> the shard count of that epoch (written by each rescale; never changed).
SHARD_MAP_EPOCHS = f"{PREFIX}shard-map:epochs"
#: Counter of publish batches refused because they were routed under an old epoch.
STALE_EPOCH_PUBLISHES = f"{PREFIX}stale-epoch-publishes"


def barrier(epoch: int) -> str:
    """Hash old shard -> ``passed`` / ``released``: the drain barrier of rescale ``epoch``.

    ``passed``: the shard's worker ran its epoch marker, so every message routed to it under
    an older epoch has run; ``released``: the users waiting for it were sent ``release_held``.
    """
    return f"{PREFIX}barrier:{epoch}"


def barrier_waiting(epoch: int, shard: int) -> str:
    """Set of the users whose new messages wait for old shard ``shard``'s ``epoch`` marker."""
    return f"{PREFIX}barrier:{epoch}:{shard}:waiting"

# ---- jobs (jobs/), promises' run log, HTTP ingest log (issue 5) ------------------------
#: Sorted set of job ids scored by creation time: the job index.
JOB_INDEX = f"{PREFIX}jobs"


def job(job_id: str) -> str:
    """Hash: one job's record (kind, owner, status, progress, lease, control request)."""
    return f"{PREFIX}job:{job_id}"


def job_checkpoint(job_id: str) -> str:
    """JSON of the job's last checkpoint: position (items done) and the state to continue."""
    return f"{PREFIX}job:{job_id}:checkpoint"


def job_processed(job_id: str) -> str:
    """List of the item ids a job committed, in order, written atomically with checkpoints."""
    return f"{PREFIX}job:{job_id}:processed"


#: Stream of promise work runs (started / finished / fenced-off), the audit trail of promises.
PROMISE_RUNS = f"{PREFIX}promise-runs"
#: Stream of every message the HTTP API accepted, oldest first: the source of catch-up.
INGEST_LOG = f"{PREFIX}ingest-log"


def shard_lease(shard: int) -> str:
    """Hash (owner token, fence, holder) of the one worker allowed to consume shard ``shard``.

    Expires after ``SHARD_LEASE_TTL_S`` unless its owner renews it.
    """
    return f"{PREFIX}shard-lease:{shard}"


def shard_fence(shard: int) -> str:
    """Counter incremented on each acquisition of shard ``shard``'s lease (the fencing token)."""
    return f"{PREFIX}shard-fence:{shard}"


def inflight(queue: str) -> str:
    """List of the messages a shard worker took from ``queue`` and has not acked yet.

    The worker moves each message here with one BLMOVE (atomic in Redis), so no crash of the
    worker or of Redis can lose a taken message; the shard's next lease owner puts what is left
    back at the head of ``queue``.
    """
    return f"{PREFIX}inflight:{queue}"

# ---- metrics (metrics/): written by the workers, read at scrape time -------------------
#: Hash JSON ``[task, queue, outcome]`` -> how many runs of ``task`` from ``queue`` ended with
#: ``outcome`` (``metrics.schema.Outcome``), summed over every worker process and host.
TASK_OUTCOMES = f"{PREFIX}metrics:task-outcomes"
#: Hash of the task duration histogram: JSON ``[task, queue, le]`` -> runs whose duration fell
#: in the bucket with upper bound ``le`` (not cumulative), and ``[task, queue, "sum"]`` /
#: ``[task, queue, "count"]`` (seconds, runs).
TASK_DURATIONS = f"{PREFIX}metrics:task-durations"
#: Hash shard number -> ordered messages that ran out of their user's sequence order there
#: (written by the worker-side order check; 0 when the field is absent).
ORDER_VIOLATIONS = f"{PREFIX}order-violations"


def completions(queue: str, second: int) -> str:
    """Counter of tasks from ``queue`` that finished in unix second ``second`` (short TTL)."""
    return f"{PREFIX}metrics:completions:{queue}:{second}"


# kombu's keys that shardline reads and writes (names fixed by kombu's Redis Channel defaults).
#: kombu's hash delivery tag -> JSON ``[message, exchange, routing_key]`` of unacked messages.
KOMBU_UNACKED = "unacked"
#: kombu's sorted set delivery tag -> time the message was delivered.
KOMBU_UNACKED_INDEX = "unacked_index"
