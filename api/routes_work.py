"""Jobs and promises over HTTP: each caller sees and controls only what it owns; the kinds
of work this deployment offers (built-in and ``JOB_KINDS`` / ``PROMISE_KINDS`` plug-ins)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from api.auth import Owner
from api.contract import errors, links
from api.schemas import ID_PATTERN, JobIn, JobKindOut, KindOut, KindsOut, PromiseBatchIn, PromiseIn
from api.state import State
from jobs.control import cancel_job, create_job, owned_job, pause_job, resume_job
from jobs.kinds import job_kinds, queue_of
from promises.kinds import promise_kinds
from promises.service import PromiseSpec

jobs = APIRouter(prefix="/v1/jobs", tags=["jobs"])
promises = APIRouter(prefix="/v1/promises", tags=["promises"])
kinds = APIRouter(prefix="/v1", tags=["jobs", "promises"])

#: A job or promise named by id: another owner's is 403, an unknown one 404.
OWNED = (401, 403, 404)
#: The form of job ids (hex) and promise ids (client-chosen); anything else is a 422.
JobId = Annotated[str, Path(pattern=ID_PATTERN, description="The id POST /v1/jobs answered.")]
PromiseIdPath = Annotated[str, Path(pattern=ID_PATTERN)]


@kinds.get("/kinds", response_model=KindsOut, responses=errors(401))
def list_kinds(_: Owner) -> KindsOut:
    """The job kinds and promise types this deployment runs, with the params each accepts."""
    return KindsOut(
        jobs=[JobKindOut(name=k.name, description=(type(k).__doc__ or "").strip(),
                         params=k.params_model.model_json_schema(),
                         queue=queue_of(k))
              for k in job_kinds().values()],
        promises=[KindOut(name=k.name, description=(k.work.__doc__ or "").strip(),
                          params=k.params_model.model_json_schema())
                  for k in promise_kinds().values()])


@jobs.post("", status_code=202, responses={**errors(400, 401, 503), **links(
    "job_status", "pause_job", "resume_job", "cancel_job", parameter="job_id")})
def create(body: JobIn, st: State,
           owner: Owner) -> dict[str, Any]:
    """Queue a job on its workload queue with ``priority`` (0 highest)."""
    return create_job(st.jobs, st.producer, kind=body.kind, owner=owner,
                      priority=body.priority, params=body.params).public()


@jobs.get("", responses=errors(401))
def list_jobs(st: State, owner: Owner) -> list[dict[str, Any]]:
    return [j.public() for j in st.jobs.find(owner)]


@jobs.get("/{job_id}", responses=errors(*OWNED), operation_id="job_status")
def job_status(job_id: JobId, st: State,
               owner: Owner) -> dict[str, Any]:
    """Status and progress (current, total, percent, message)."""
    return owned_job(st.jobs, job_id, owner).public()


@jobs.post("/{job_id}/pause", responses=errors(*OWNED, 409), operation_id="pause_job")
def pause(job_id: JobId, st: State,
          owner: Owner) -> dict[str, Any]:
    """Stop at the next checkpoint (cooperative)."""
    return pause_job(st.jobs, job_id, owner).public()


@jobs.post("/{job_id}/resume", responses=errors(*OWNED, 409, 503), operation_id="resume_job")
def resume(job_id: JobId, st: State,
           owner: Owner) -> dict[str, Any]:
    """Continue right after the last checkpointed item."""
    return resume_job(st.jobs, st.producer, job_id, owner).public()


@jobs.post("/{job_id}/cancel", responses=errors(*OWNED, 409, 503), operation_id="cancel_job")
def cancel(job_id: JobId, st: State,
           owner: Owner) -> dict[str, Any]:
    """Stop at the next checkpoint, or be revoked after JOB_CANCEL_GRACE_S."""
    return cancel_job(st.jobs, st.producer, job_id, owner,
                      st.settings.job_cancel_grace_s).public()


def _spec(p: PromiseIn) -> PromiseSpec:
    return PromiseSpec(user_id=p.user_id, type=p.type, description=p.description,
                       params=p.params, parents=p.parents, id=p.id)


@promises.post("", status_code=202, responses={**errors(400, 401, 403, 409, 503), **links(
    "promise_status", "cancel_promise", parameter="promise_id")})
def create_promise(body: PromiseIn, st: State,
                   owner: Owner) -> dict[str, Any]:
    """One promise; ``parents`` are ids of existing promises of the caller."""
    return st.promises.create([_spec(body)], owner)[0].public()


@promises.post("/batch", status_code=202, responses=errors(400, 401, 403, 409, 503))
def create_dag(body: PromiseBatchIn, st: State,
               owner: Owner) -> list[dict[str, Any]]:
    """A DAG at once; promises name each other by their ``id``. All or nothing."""
    return [p.public() for p in st.promises.create([_spec(p) for p in body.promises], owner)]


@promises.get("", responses=errors(401))
def list_promises(st: State,
                  owner: Owner) -> list[dict[str, Any]]:
    return [p.public() for p in st.promises.store.find(owner=owner)]


@promises.get("/{promise_id}", responses=errors(*OWNED), operation_id="promise_status")
def promise_status(promise_id: PromiseIdPath, st: State,
                   owner: Owner) -> dict[str, Any]:
    return st.promises.owned(promise_id, owner).public()


@promises.post("/{promise_id}/cancel", responses=errors(*OWNED, 409, 503),
               operation_id="cancel_promise")
def cancel_promise(promise_id: PromiseIdPath, st: State,
                   owner: Owner) -> dict[str, Any]:
    """Cancel a pending or running promise; its children fail or are skipped."""
    return st.promises.cancel(promise_id, owner).public()
