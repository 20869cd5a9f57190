"""Jobs API: list, get and cancel jobs, scoped to their owner (admins see all)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["jobs"])
