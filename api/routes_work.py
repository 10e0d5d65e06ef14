"""Jobs and promises over HTTP: each caller sees and controls only what it owns."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.auth import Owner
from api.schemas import JobIn, PromiseBatchIn, PromiseIn
from api.state import State
from jobs.control import cancel_job, create_job, owned_job, pause_job, resume_job
from promises.service import PromiseSpec

jobs = APIRouter(prefix="/v1/jobs", tags=["jobs"])
promises = APIRouter(prefix="/v1/promises", tags=["promises"])


@jobs.post("", status_code=202)
def create(body: JobIn, st: State,
           owner: Owner) -> dict[str, Any]:
    """Queue a job on its workload queue with ``priority`` (0 highest)."""
    return create_job(st.jobs, st.producer, kind=body.kind, owner=owner,
                      priority=body.priority, params=body.params).public()


@jobs.get("")
def list_jobs(st: State, owner: Owner) -> list[dict[str, Any]]:
    return [j.public() for j in st.jobs.find(owner)]


@jobs.get("/{job_id}")
def job_status(job_id: str, st: State,
               owner: Owner) -> dict[str, Any]:
    """Status and progress (current, total, percent, message)."""
    return owned_job(st.jobs, job_id, owner).public()


@jobs.post("/{job_id}/pause")
def pause(job_id: str, st: State,
          owner: Owner) -> dict[str, Any]:
    """Stop at the next checkpoint (cooperative)."""
    return pause_job(st.jobs, job_id, owner).public()


@jobs.post("/{job_id}/resume")
def resume(job_id: str, st: State,
           owner: Owner) -> dict[str, Any]:
    """Continue right after the last checkpointed item."""
    return resume_job(st.jobs, st.producer, job_id, owner).public()


@jobs.post("/{job_id}/cancel")
def cancel(job_id: str, st: State,
           owner: Owner) -> dict[str, Any]:
    """Stop at the next checkpoint, or be revoked after JOB_CANCEL_GRACE_S."""
    return cancel_job(st.jobs, st.producer, job_id, owner,
                      st.settings.job_cancel_grace_s).public()


def _spec(p: PromiseIn) -> PromiseSpec:
    return PromiseSpec(user_id=p.user_id, type=p.type, description=p.description,
                       params=p.params, parents=p.parents, id=p.id)


@promises.post("", status_code=202)
def create_promise(body: PromiseIn, st: State,
                   owner: Owner) -> dict[str, Any]:
    """One promise; ``parents`` are ids of existing promises of the caller."""
    return st.promises.create([_spec(body)], owner)[0].public()


@promises.post("/batch", status_code=202)
def create_dag(body: PromiseBatchIn, st: State,
               owner: Owner) -> list[dict[str, Any]]:
    """A DAG at once; promises name each other by their ``id``. All or nothing."""
    return [p.public() for p in st.promises.create([_spec(p) for p in body.promises], owner)]


@promises.get("")
def list_promises(st: State,
                  owner: Owner) -> list[dict[str, Any]]:
    return [p.public() for p in st.promises.store.find(owner=owner)]


@promises.get("/{promise_id}")
def promise_status(promise_id: str, st: State,
                   owner: Owner) -> dict[str, Any]:
    return st.promises.owned(promise_id, owner).public()


@promises.post("/{promise_id}/cancel")
def cancel_promise(promise_id: str, st: State,
                   owner: Owner) -> dict[str, Any]:
    """Cancel a pending or running promise; its children fail or are skipped."""
    return st.promises.cancel(promise_id, owner).public()
