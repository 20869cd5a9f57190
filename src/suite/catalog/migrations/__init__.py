"""The catalog branch of the suite's Alembic environment (branch label `catalog`)."""
