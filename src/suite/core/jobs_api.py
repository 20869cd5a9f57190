"""Jobs API: list, get and cancel jobs, scoped to their owner (admins see all)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, status
from pydantic import BaseModel, ConfigDict

from suite.core import tasks
from suite.core.auth import CurrentUser
from suite.core.db import SessionDep
from suite.core.models import Job

router = APIRouter(tags=["jobs"])

JobState = Literal["queued", "running", "retrying", "done", "failed", "cancelled", "interrupted"]
JobId = Annotated[str, Path(min_length=1, max_length=64, description="the job id (a UUID)")]


class JobRead(BaseModel):
    """A background job as users see it."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    domain: str
    name: str
    owner_id: int | None
    state: JobState
    attempts: int
    max_retries: int
    progress_done: int
    progress_total: int | None
    message: str | None
    error: str | None
    params: dict[str, Any]
    result: Any | None
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime


class JobPage(BaseModel):
    items: list[JobRead]
    total: int
    limit: int
    offset: int


@router.get("", response_model=JobPage)
@router.get("/", response_model=JobPage, include_in_schema=False)
def list_jobs(
    user: CurrentUser,
    session: SessionDep,
    state: Annotated[JobState | None, Query(description="only jobs in this state")] = None,
    domain: Annotated[str | None, Query(min_length=1, max_length=32)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> JobPage:
    """Your jobs, newest first (admins see everyone's)."""
    items = tasks.list_jobs(session, user=user, state=state, domain=domain, limit=limit, offset=offset)
    total = tasks.count_jobs(session, user=user, state=state, domain=domain)
    return JobPage(items=[JobRead.model_validate(j) for j in items], total=total, limit=limit, offset=offset)


@router.get("/{job_id}", response_model=JobRead)
def read_job(job_id: JobId, user: CurrentUser, session: SessionDep) -> Job:
    """One job: state, progress, result or error."""
    return tasks.get_job(session, job_id=job_id, user=user)


@router.post("/{job_id}/cancel", response_model=JobRead, status_code=status.HTTP_202_ACCEPTED)
def cancel_job(job_id: JobId, user: CurrentUser, session: SessionDep) -> Job:
    """Cancel: a queued job never runs; a running one stops at its next progress report. 409 when finished."""
    return tasks.cancel_job(session, job_id=job_id, user=user)
