"""What a job is: its status values and the record the API, the CLI and the worker read."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class JobStatus(StrEnum):
    #: Waiting in its workload queue (or re-queued after a pause or a lost worker).
    QUEUED = "queued"
    #: A worker holds the job's lease and is processing items.
    RUNNING = "running"
    #: Stopped at a checkpoint on request, or by the soft time limit (``JOB_SOFT_TIME_LIMIT_S``,
    #: its ``message`` says so); ``resume`` continues after the last checkpointed item.
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    #: Stopped on request; its checkpoint is deleted.
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass
class JobRecord:
    id: str
    kind: str
    owner: str
    priority: int
    status: JobStatus
    params: dict[str, Any]
    total: int
    current: int = 0
    message: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    finished_at: float | None = None
    result: Any = None
    error: str | None = None
    control: str = ""
    runs: int = 0
    #: The position each run started at: ``[0, 40]`` = a second run resumed after item 40.
    resumed_from: list[int] = field(default_factory=list)
    task_id: str = ""
    holder: str = ""
    beat_at: float = 0.0
    cancel_at: float = 0.0
    #: Task id and time of the job's last dispatch: the maintenance pass re-sends a queued job
    #: whose message the broker no longer holds (``jobs.control.redispatch_lost_jobs``).
    dispatch_id: str = ""
    dispatched_at: float = 0.0

    @property
    def percent(self) -> float:
        return round(100.0 * self.current / self.total, 1) if self.total else 100.0

    @classmethod
    def from_hash(cls, h: dict[str, str]) -> JobRecord:
        return cls(
            id=h["id"], kind=h["kind"], owner=h["owner"], priority=int(h["priority"]),
            status=JobStatus(h["status"]), params=json.loads(h.get("params") or "{}"),
            total=int(h.get("total") or 0), current=int(h.get("current") or 0),
            message=h.get("message", ""), created_at=float(h.get("created_at") or 0),
            updated_at=float(h.get("updated_at") or 0),
            finished_at=float(h["finished_at"]) if h.get("finished_at") else None,
            result=json.loads(h["result"]) if h.get("result") else None,
            error=h.get("error") or None, control=h.get("control", ""),
            runs=int(h.get("runs") or 0),
            resumed_from=json.loads(h.get("resumed_from") or "[]"),
            task_id=h.get("task_id", ""), holder=h.get("holder", ""),
            beat_at=float(h.get("beat_at") or 0), cancel_at=float(h.get("cancel_at") or 0),
            dispatch_id=h.get("dispatch_id", ""),
            dispatched_at=float(h.get("dispatched_at") or 0),
        )

    def public(self) -> dict[str, Any]:
        """The view the API and the CLI show (no lease internals)."""
        return {
            "id": self.id, "kind": self.kind, "owner": self.owner, "priority": self.priority,
            "status": self.status.value, "params": self.params,
            "progress": {"current": self.current, "total": self.total,
                         "percent": self.percent, "message": self.message},
            "created_at": self.created_at, "updated_at": self.updated_at,
            "finished_at": self.finished_at, "result": self.result, "error": self.error,
            "control": self.control or None, "runs": self.runs,
            "resumed_from": self.resumed_from,
        }
