"""Shared core: config, database, jobs, events, LLM, users and secrets."""
