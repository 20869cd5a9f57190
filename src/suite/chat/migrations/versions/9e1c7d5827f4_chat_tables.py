"""chat tables

Revision ID: 9e1c7d5827f4
Revises:
Create Date: 2026-11-22 01:46:55.508881
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "9e1c7d5827f4"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = ("chat",)
depends_on: str | Sequence[str] | None = "8da487ad0a90"


def upgrade() -> None:
    # chat_conversation.active_leaf_id -> chat_message is a cycle: inline on SQLite (not checked at CREATE),
    # added after chat_message elsewhere.
    sqlite = op.get_bind().dialect.name == "sqlite"
    leaf_fk = (
        [
            sa.ForeignKeyConstraint(
                ["active_leaf_id"],
                ["chat_message.id"],
                name=op.f("fk_chat_conversation_active_leaf_id_chat_message"),
                ondelete="SET NULL",
            )
        ]
        if sqlite
        else []
    )
    op.create_table(
        "chat_conversation",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("system_prompt", sa.Text(), nullable=True),
        sa.Column("model", sa.String(length=100), nullable=True),
        sa.Column("active_leaf_id", sa.String(length=36), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        *leaf_fk,
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["core_user.id"],
            name=op.f("fk_chat_conversation_user_id_core_user"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chat_conversation")),
    )
    with op.batch_alter_table("chat_conversation", schema=None) as batch_op:
        batch_op.create_index("ix_chat_conversation_user_updated", ["user_id", "updated_at"], unique=False)

    op.create_table(
        "chat_key_limit",
        sa.Column("api_token_id", sa.Integer(), nullable=False),
        sa.Column("requests_per_minute", sa.Integer(), nullable=True),
        sa.Column("tokens_per_minute", sa.Integer(), nullable=True),
        sa.Column("max_concurrent", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["api_token_id"],
            ["core_api_token.id"],
            name=op.f("fk_chat_key_limit_api_token_id_core_api_token"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("api_token_id", name=op.f("pk_chat_key_limit")),
    )
    op.create_table(
        "chat_request",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("client_request_id", sa.String(length=64), nullable=False),
        sa.Column("conversation_id", sa.String(length=36), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("user_message_id", sa.String(length=36), nullable=True),
        sa.Column("assistant_message_id", sa.String(length=36), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("deliveries", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(length=200), nullable=True),
        sa.Column("api_token_id", sa.Integer(), nullable=True),
        sa.Column("model", sa.String(length=100), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("content_sha256", sa.String(length=64), nullable=False),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("tokens_in", sa.Integer(), nullable=True),
        sa.Column("tokens_out", sa.Integer(), nullable=True),
        sa.Column("enqueued_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("first_token_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["chat_conversation.id"],
            name=op.f("fk_chat_request_conversation_id_chat_conversation"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["core_user.id"], name=op.f("fk_chat_request_user_id_core_user"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chat_request")),
        sa.UniqueConstraint(
            "user_id", "client_request_id", name=op.f("uq_chat_request_user_id_client_request_id")
        ),
    )
    with op.batch_alter_table("chat_request", schema=None) as batch_op:
        batch_op.create_index("ix_chat_request_conversation", ["conversation_id"], unique=False)
        batch_op.create_index("ix_chat_request_state", ["state"], unique=False)

    op.create_table(
        "chat_message",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("conversation_id", sa.String(length=36), nullable=False),
        sa.Column("parent_id", sa.String(length=36), nullable=True),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("request_id", sa.String(length=36), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=100), nullable=True),
        sa.Column("runtime", sa.String(length=100), nullable=True),
        sa.Column("finish_reason", sa.String(length=32), nullable=True),
        sa.Column("tokens_in", sa.Integer(), nullable=True),
        sa.Column("tokens_out", sa.Integer(), nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("completed_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["chat_conversation.id"],
            name=op.f("fk_chat_message_conversation_id_chat_conversation"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["chat_message.id"],
            name=op.f("fk_chat_message_parent_id_chat_message"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["chat_request.id"],
            name=op.f("fk_chat_message_request_id_chat_request"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chat_message")),
        sa.UniqueConstraint("request_id", "role", name=op.f("uq_chat_message_request_id_role")),
    )
    with op.batch_alter_table("chat_message", schema=None) as batch_op:
        batch_op.create_index(
            "ix_chat_message_conversation_created", ["conversation_id", "created_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_chat_message_parent_id"), ["parent_id"], unique=False)

    if not sqlite:
        op.create_foreign_key(
            op.f("fk_chat_conversation_active_leaf_id_chat_message"),
            "chat_conversation",
            "chat_message",
            ["active_leaf_id"],
            ["id"],
            ondelete="SET NULL",
        )
    # ### end Alembic commands ###


def downgrade() -> None:
    # ### commands auto generated by Alembic - please adjust! ###
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint(
            op.f("fk_chat_conversation_active_leaf_id_chat_message"), "chat_conversation", type_="foreignkey"
        )
    with op.batch_alter_table("chat_message", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_chat_message_parent_id"))
        batch_op.drop_index("ix_chat_message_conversation_created")

    op.drop_table("chat_message")
    with op.batch_alter_table("chat_request", schema=None) as batch_op:
        batch_op.drop_index("ix_chat_request_state")
        batch_op.drop_index("ix_chat_request_conversation")

    op.drop_table("chat_request")
    op.drop_table("chat_key_limit")
    with op.batch_alter_table("chat_conversation", schema=None) as batch_op:
        batch_op.drop_index("ix_chat_conversation_user_updated")

    op.drop_table("chat_conversation")
    # ### end Alembic commands ###
