"""job workers: core_worker (consumers' heartbeats) and core_job.worker_id

Revision ID: b23fc80270e5
Revises: 8da487ad0a90
Create Date: 2026-11-22 04:50:29.151129
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b23fc80270e5"
down_revision: str | Sequence[str] | None = "8da487ad0a90"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "core_worker",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_core_worker")),
    )
    with op.batch_alter_table("core_job", schema=None) as batch_op:
        batch_op.add_column(sa.Column("worker_id", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("core_job", schema=None) as batch_op:
        batch_op.drop_column("worker_id")

    op.drop_table("core_worker")
