"""Alembic versions of the `chat` branch."""
