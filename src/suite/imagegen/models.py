"""imagegen tables: models, LoRAs, jobs, images and the A1111 options store."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

import suite.core.models  # noqa: F401  (core_user, the target of imagegen_job.owner_user_id, in the metadata)
from suite.core.db import Base, utcnow

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")
FINISHED = frozenset({"succeeded", "failed", "cancelled", "interrupted"})


class ImageModel(Base):
    __tablename__ = "imagegen_model"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    family: Mapped[str] = mapped_column(String(32), default="sd15")
    source: Mapped[str] = mapped_column(String(16), default="dir")  # dir | single_file | download | builtin
    path: Mapped[str] = mapped_column(Text)
    config_skeleton: Mapped[str | None] = mapped_column(String(32))
    sha256: Mapped[str] = mapped_column(String(64))
    short_hash: Mapped[str] = mapped_column(String(10))
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    prediction_type: Mapped[str] = mapped_column(String(16), default="epsilon")
    status: Mapped[str] = mapped_column(String(16), default="ok")  # ok | missing | corrupt
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    added_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    verified_at: Mapped[datetime | None] = mapped_column(DateTime)


class Lora(Base):
    __tablename__ = "imagegen_lora"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    alias: Mapped[str] = mapped_column(String(100))
    filename: Mapped[str] = mapped_column(String(120))
    sha256: Mapped[str] = mapped_column(String(64))
    short_hash: Mapped[str] = mapped_column(String(12))
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    family: Mapped[str | None] = mapped_column(String(32))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    added_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class GenJob(Base):
    __tablename__ = "imagegen_job"
    __table_args__ = (
        Index("ix_imagegen_job_status_created", "status", "created_at"),
        Index("ix_imagegen_job_owner_created", "owner_user_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_user_id: Mapped[int | None] = mapped_column(ForeignKey("core_user.id", ondelete="SET NULL"))
    client_id: Mapped[str | None] = mapped_column(String(64))
    origin: Mapped[str] = mapped_column(String(8), default="native")  # native | a1111 | cli
    mode: Mapped[str] = mapped_column(String(8), default="txt2img")
    status: Mapped[str] = mapped_column(String(12), default="queued")
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prompt: Mapped[str] = mapped_column(Text, default="")
    model_id: Mapped[int | None] = mapped_column(ForeignKey("imagegen_model.id", ondelete="SET NULL"))
    model_sha256: Mapped[str | None] = mapped_column(String(64))
    sampler: Mapped[str] = mapped_column(String(40))
    schedule: Mapped[str | None] = mapped_column(String(16))
    seed: Mapped[int] = mapped_column(BigInteger)
    steps: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    batch_size: Mapped[int] = mapped_column(Integer, default=1)
    n_iter: Mapped[int] = mapped_column(Integer, default=1)
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer, default=0)
    warnings: Mapped[list[str]] = mapped_column(JSON, default=list)
    error_code: Mapped[str | None] = mapped_column(String(40))
    error_message: Mapped[str | None] = mapped_column(Text)
    parent_job_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    queue_ms: Mapped[float | None] = mapped_column(Float)
    load_ms: Mapped[float | None] = mapped_column(Float)
    gen_ms: Mapped[float | None] = mapped_column(Float)
    save_ms: Mapped[float | None] = mapped_column(Float)

    images: Mapped[list[GenImage]] = relationship(
        back_populates="job", cascade="all, delete-orphan", passive_deletes=True, order_by="GenImage.idx"
    )
    loras: Mapped[list[JobLora]] = relationship(cascade="all, delete-orphan", passive_deletes=True)


class JobLora(Base):
    __tablename__ = "imagegen_job_lora"

    job_id: Mapped[str] = mapped_column(ForeignKey("imagegen_job.id", ondelete="CASCADE"), primary_key=True)
    lora_id: Mapped[int] = mapped_column(ForeignKey("imagegen_lora.id", ondelete="CASCADE"), primary_key=True)
    weight: Mapped[float] = mapped_column(Float)


class GenImage(Base):
    __tablename__ = "imagegen_image"
    __table_args__ = (UniqueConstraint("job_id", "idx"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("imagegen_job.id", ondelete="CASCADE"), index=True)
    idx: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(BigInteger)
    relpath: Mapped[str] = mapped_column(String(255))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(Integer)
    infotext: Mapped[str] = mapped_column(Text)
    nsfw: Mapped[bool | None] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    job: Mapped[GenJob] = relationship(back_populates="images")


class Option(Base):
    __tablename__ = "imagegen_option"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
