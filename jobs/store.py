"""One job's state in Redis: the record, its lease, its checkpoints. Every write is fenced.

A run owns a job only while the record's ``holder`` names it; every progress, checkpoint and
finish write is a Lua script that first checks the holder, so a run that lost its lease (a
worker presumed dead, a revoked task) can never overwrite the run that replaced it. The
processed item ids are appended by the same script that writes the checkpoint, so the id list
and the checkpoint position never disagree, even across ``kill -9``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis

from jobs.records import JobRecord, JobStatus
from routing import keys

# KEYS: job  ARGV: holder, now, task_id -> 1 taken, 0 not runnable
_ACQUIRE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return 0 end
if (redis.call('HGET', KEYS[1], 'holder') or '') ~= '' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'running', 'holder', ARGV[1], 'beat_at', ARGV[2],
           'updated_at', ARGV[2], 'task_id', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'runs', 1)
return 1
"""

# KEYS: job  ARGV: holder, now, current, message -> control request, or 'lost'
_PROGRESS = """
if redis.call('HGET', KEYS[1], 'holder') ~= ARGV[1] then return 'lost' end
redis.call('HSET', KEYS[1], 'current', ARGV[3], 'message', ARGV[4], 'beat_at', ARGV[2],
           'updated_at', ARGV[2])
return redis.call('HGET', KEYS[1], 'control') or ''
"""

# KEYS: job, checkpoint, processed  ARGV: holder, now, position, state, ttl, message, ids...
_CHECKPOINT = """
if redis.call('HGET', KEYS[1], 'holder') ~= ARGV[1] then return 'lost' end
redis.call('SET', KEYS[2], cjson.encode({position = tonumber(ARGV[3]), state = ARGV[4]}),
           'EX', ARGV[5])
for i = 7, #ARGV do redis.call('RPUSH', KEYS[3], ARGV[i]) end
redis.call('EXPIRE', KEYS[3], ARGV[5])
redis.call('HSET', KEYS[1], 'current', ARGV[3], 'message', ARGV[6], 'beat_at', ARGV[2],
           'updated_at', ARGV[2])
return redis.call('HGET', KEYS[1], 'control') or ''
"""

# KEYS: job, checkpoint  ARGV: holder ('' = any), status, now, result, error, drop_checkpoint,
# message ('' = keep)
_SETTLE = """
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'holder') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'holder', '', 'control', '', 'updated_at', ARGV[3])
if ARGV[2] ~= 'paused' and ARGV[2] ~= 'queued' then
  redis.call('HSET', KEYS[1], 'finished_at', ARGV[3])
end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'result', ARGV[4]) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[5]) end
if ARGV[6] == '1' then redis.call('DEL', KEYS[2]) end
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'message', ARGV[7]) end
return 1
"""

# KEYS: job, checkpoint  ARGV: request ('pause'|'cancel'|'resume'), now -> outcome
_CONTROL = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
local req = ARGV[1]
if status == 'completed' or status == 'failed' or status == 'cancelled' then return 'finished' end
if req == 'resume' then
  if status == 'paused' then
    redis.call('HSET', KEYS[1], 'status', 'queued', 'control', '', 'updated_at', ARGV[2])
    return 'requeue'
  end
  redis.call('HSET', KEYS[1], 'control', '', 'updated_at', ARGV[2])
  return 'noop'
end
if status == 'running' then
  redis.call('HSET', KEYS[1], 'control', req, 'updated_at', ARGV[2])
  if req == 'cancel' then redis.call('HSET', KEYS[1], 'cancel_at', ARGV[2]) end
  return 'requested'
end
if req == 'pause' then
  if status == 'queued' then
    redis.call('HSET', KEYS[1], 'status', 'paused', 'updated_at', ARGV[2])
  end
  return 'paused'
end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'control', '', 'holder', '',
           'updated_at', ARGV[2], 'finished_at', ARGV[2])
redis.call('DEL', KEYS[2])
return 'cancelled'
"""

# KEYS: job  ARGV: expected holder, now -> 1 if re-queued
_RECLAIM = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if redis.call('HGET', KEYS[1], 'holder') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued', 'holder', '', 'updated_at', ARGV[2])
return 1
"""


# KEYS: job  ARGV: dispatch id, now, replaces ('' = any) -> 1 recorded, 0 not to be sent
_NOTE_DISPATCH = """
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return 0 end
if ARGV[3] ~= '' and redis.call('HGET', KEYS[1], 'dispatch_id') ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[1], 'dispatch_id', ARGV[1], 'dispatched_at', ARGV[2])
return 1
"""


@dataclass
class Checkpoint:
    position: int
    state: dict[str, Any]


class JobStore:
    def __init__(self, client: redis.Redis, *, ttl_s: int) -> None:
        self.redis = client
        self.ttl_s = ttl_s
        self._acquire = client.register_script(_ACQUIRE)
        self._progress = client.register_script(_PROGRESS)
        self._checkpoint = client.register_script(_CHECKPOINT)
        self._settle = client.register_script(_SETTLE)
        self._control = client.register_script(_CONTROL)
        self._reclaim = client.register_script(_RECLAIM)
        self._note_dispatch = client.register_script(_NOTE_DISPATCH)

    # ---- producer side ----
    def create(self, record: JobRecord) -> None:
        now = time.time()
        fields: dict[str, str | int | float] = {
            "id": record.id, "kind": record.kind, "owner": record.owner,
            "priority": record.priority, "status": JobStatus.QUEUED.value,
            "params": json.dumps(record.params), "total": record.total, "current": 0,
            "message": "queued", "created_at": now, "updated_at": now, "runs": 0,
            "resumed_from": "[]", "holder": "", "control": "",
        }
        with self.redis.pipeline() as pipe:
            pipe.hset(keys.job(record.id), mapping=fields)  # type: ignore[arg-type]
            pipe.zadd(keys.JOB_INDEX, {record.id: now})
            pipe.execute()

    def get(self, job_id: str) -> JobRecord | None:
        raw = self.redis.hgetall(keys.job(job_id))
        return JobRecord.from_hash(raw) if raw else None  # type: ignore[arg-type]

    def find(self, owner: str | None = None, limit: int = 100) -> list[JobRecord]:
        ids = self.redis.zrevrange(keys.JOB_INDEX, 0, -1)
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:  # type: ignore[union-attr]
                pipe.hgetall(keys.job(str(job_id)))
            rows = pipe.execute()
        records = [JobRecord.from_hash(r) for r in rows if r]
        return [r for r in records if owner is None or r.owner == owner][:limit]

    def control(self, job_id: str, request: str) -> str:
        return str(self._control(keys=[keys.job(job_id), keys.job_checkpoint(job_id)],
                                 args=[request, time.time()]))

    def reclaim(self, job_id: str, holder: str) -> bool:
        return bool(self._reclaim(keys=[keys.job(job_id)], args=[holder, time.time()]))

    def note_dispatch(self, job_id: str, dispatch_id: str, *, replaces: str = "") -> bool:
        """Record the task id about to be sent for a queued job; False: do not send it.

        Recorded before the send, so a maintenance pass never takes a message still being sent
        for a lost one. Refused when the job is no longer queued (paused, cancelled, finished,
        gone) or, with ``replaces``, when another pass already re-sent that dispatch.
        """
        return bool(self._note_dispatch(keys=[keys.job(job_id)],
                                        args=[dispatch_id, time.time(), replaces]))

    def force_cancel(self, job_id: str) -> bool:
        return self.settle(job_id, "", JobStatus.CANCELLED, drop_checkpoint=True)

    def processed(self, job_id: str) -> list[str]:
        return list(self.redis.lrange(keys.job_processed(job_id), 0, -1))  # type: ignore[arg-type]

    def delete(self, job_id: str) -> None:
        with self.redis.pipeline() as pipe:
            pipe.delete(keys.job(job_id), keys.job_checkpoint(job_id), keys.job_processed(job_id))
            pipe.zrem(keys.JOB_INDEX, job_id)
            pipe.execute()

    # ---- worker side (fenced by holder) ----
    def acquire(self, job_id: str, holder: str, task_id: str) -> bool:
        return bool(self._acquire(keys=[keys.job(job_id)], args=[holder, time.time(), task_id]))

    def load_checkpoint(self, job_id: str) -> Checkpoint | None:
        raw = self.redis.get(keys.job_checkpoint(job_id))
        if not raw:
            return None
        data = json.loads(raw)  # type: ignore[arg-type]
        return Checkpoint(int(data["position"]), json.loads(data["state"]))

    def note_run_start(self, job_id: str, holder: str, position: int) -> None:
        record = self.get(job_id)
        if record is not None and record.holder == holder:
            self.redis.hset(keys.job(job_id), "resumed_from",
                            json.dumps([*record.resumed_from, position]))

    def progress(self, job_id: str, holder: str, current: int, message: str) -> str:
        return str(self._progress(keys=[keys.job(job_id)],
                                  args=[holder, time.time(), current, message]))

    def checkpoint(self, job_id: str, holder: str, position: int, state: dict[str, Any],
                   item_ids: list[str], message: str) -> str:
        return str(self._checkpoint(
            keys=[keys.job(job_id), keys.job_checkpoint(job_id), keys.job_processed(job_id)],
            args=[holder, time.time(), position, json.dumps(state), self.ttl_s, message,
                  *item_ids]))

    def settle(self, job_id: str, holder: str, status: JobStatus, *, result: Any = None,
               error: str = "", drop_checkpoint: bool = False, message: str = "") -> bool:
        return bool(self._settle(
            keys=[keys.job(job_id), keys.job_checkpoint(job_id)],
            args=[holder, status.value, time.time(),
                  "" if result is None else json.dumps(result), error,
                  "1" if drop_checkpoint else "0", message]))
