"""WebSocket endpoint streaming one event-bus topic to a client."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["events"])
