"""The generation worker: one thread per device owns the engine; everything else enqueues and observes.

A FIFO of job ids; queued jobs can be cancelled (they never run), a running job stops at its next step.
Events (`job.status`, `job.progress`, `job.preview`, `engine.state`, `model.load_progress`) go to subscribers
(SSE, Socket.IO) and to core's event bus when it is there. torch is imported on the worker thread only.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from suite.core.db import session_scope, utcnow
from suite.core.errors import Conflict, NotFound, RateLimited, SuiteError, Unavailable
from suite.imagegen import infotext, service
from suite.imagegen.models import FINISHED, GenImage, GenJob, ImageModel, JobLora, Lora

log = logging.getLogger("suite.imagegen.worker")
Listener = Callable[[str, dict[str, Any]], None]


class OutputWriteFailed(SuiteError):
    code = "output_write_failed"
    status_code = 500


@dataclass
class Signals:
    cancel: threading.Event = field(default_factory=threading.Event)
    interrupt: threading.Event = field(default_factory=threading.Event)
    skip: threading.Event = field(default_factory=threading.Event)


@dataclass
class JobHandle:
    id: str
    payload: dict[str, Any]
    owner_user_id: int | None = None
    client_id: str | None = None
    origin: str = "native"
    status: str = "queued"
    step: int = 0
    total: int = 0
    signals: Signals = field(default_factory=Signals)
    done: threading.Event = field(default_factory=threading.Event)
    result: dict[str, Any] = field(default_factory=dict)
    created: float = field(default_factory=time.monotonic)
    last_progress: float = 0.0
    started: float | None = None


class BusForwarder:
    """Job events to core's event bus (other processes, WebSocket topics) from a thread of its own, so a slow
    bus (Redis) never delays a generation step. Bounded: progress is dropped before a status is."""

    LIMIT = 1000

    def __init__(self) -> None:
        self._queue: deque[tuple[str, dict[str, Any]]] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def send(self, event: str, data: dict[str, Any]) -> None:
        with self._cond:
            if len(self._queue) >= self.LIMIT and event in ("job.progress", "job.preview"):
                return
            self._queue.append((event, data))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="imagegen-events", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        from suite.core import events

        while True:
            with self._cond:
                if not self._queue and not self._cond.wait(timeout=5):
                    self._thread = None
                    return  # idle: the next event starts a new thread
                batch = list(self._queue)
                self._queue.clear()
            for event, data in batch:
                try:
                    events.publish(events.job_topic(data["job_id"]), event, data)
                except Exception as exc:  # the bus being down never stops generation
                    log.debug("imagegen event not published on the bus: %s", exc)

    def flush(self, timeout: float = 2.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._cond:
                if not self._queue:
                    return
            time.sleep(0.01)


class Worker:
    def __init__(
        self,
        *,
        device: str | None = None,
        threads: int | None = None,
        queue_limit: int | None = None,
    ) -> None:
        s = service.settings()
        self.device_setting = device or s.device
        self.threads = threads or s.threads
        self.queue_limit = queue_limit or s.queue_limit
        self.progress_interval = 1.0 / s.progress_hz
        self.idle_unload_s = s.idle_unload_s
        self.options = {
            k: getattr(s, k) for k in ("vae_slicing", "vae_tiling", "cpu_offload", "channels_last", "compile")
        }
        self.engine: Any = None
        self._queue: deque[str] = deque()
        self._controls: deque[tuple[Callable[[Any], Any], Future[Any]]] = deque()
        self._handles: dict[str, JobHandle] = {}
        self._cond = threading.Condition()
        self._listeners: list[Listener] = []
        self._stopping = False
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self.current: JobHandle | None = None
        self.thread: threading.Thread | None = None
        self.last_activity = time.monotonic()
        self.engine_info: dict[str, Any] = {"state": "starting", "device": self.device_setting, "model": None}
        self._bus = BusForwarder()

    # lifecycle ----------------------------------------------------------------------------------------------
    def start(self, *, wait: bool = True, recover: bool = True) -> Worker:
        self.thread = threading.Thread(
            target=self._main, args=(recover,), name="imagegen-worker", daemon=True
        )
        self.thread.start()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 120) -> None:
        self._ready.wait(timeout)
        if self._start_error is not None:
            raise self._start_error

    def stop(self, timeout: float = 10) -> bool:
        """Interrupt the running job (it ends `interrupted` at its next step) or model load, leave queued native
        jobs queued for the next start (A1111 ones end `interrupted`: their caller is gone), fail pending
        control calls, unload the model and join the thread. False when the thread did not end in time."""
        with self._cond:
            self._stopping = True
            if self.current is not None:
                self.current.signals.cancel.set()
            self._cond.notify_all()
        if self.engine is not None:
            self.engine.load_cancel.set()
        if self.thread is None or self.thread is threading.current_thread():
            return True
        self.thread.join(timeout)
        if self.thread.is_alive():
            log.warning("the imagegen worker did not stop within %.0f s", timeout)
            return False
        return True

    @property
    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    # events -------------------------------------------------------------------------------------------------
    def subscribe(self, listener: Listener) -> Callable[[], None]:
        with self._cond:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._cond, contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return unsubscribe

    def emit(self, event: str, data: dict[str, Any]) -> None:
        for listener in list(self._listeners):
            try:
                listener(event, data)
            except Exception:  # a broken subscriber never stops generation
                log.exception("imagegen listener failed")
        if "job_id" in data:
            self._bus.send(event, data)

    def _status_event(self, h: JobHandle, error: dict[str, str] | None = None) -> None:
        self.emit(
            "job.status",
            {
                "job_id": h.id,
                "status": h.status,
                "position": self.position(h.id),
                "error": error,
                "owner_user_id": h.owner_user_id,
                "client_id": h.client_id,
            },
        )

    # submission and control ---------------------------------------------------------------------------------
    def submit(
        self, payload: dict[str, Any], *, owner_user_id: int | None, client_id: str | None, origin: str
    ) -> int:
        """Queue a job made by `service.create_job`; RateLimited when the queue is full. Its position."""
        h = JobHandle(
            id=payload["job_id"],
            payload=payload,
            owner_user_id=owner_user_id,
            client_id=client_id,
            origin=origin,
        )
        with self._cond:
            if len(self._queue) >= self.queue_limit:
                raise RateLimited(
                    f"the generation queue is full ({self.queue_limit} jobs)",
                    retry_after=max(1.0, len(self._queue) * 1.0),
                    code="queue_full",
                )
            self._handles[h.id] = h
            self._queue.append(h.id)
            self._cond.notify_all()
            position = len(self._queue)
        self._status_event(h)
        return position

    def check_capacity(self) -> None:
        with self._cond:
            if len(self._queue) >= self.queue_limit:
                raise RateLimited(
                    f"the generation queue is full ({self.queue_limit} jobs)",
                    retry_after=max(1.0, float(len(self._queue))),
                    code="queue_full",
                )

    def handle(self, job_id: str) -> JobHandle | None:
        return self._handles.get(job_id)

    def position(self, job_id: str) -> int | None:
        with self._cond:
            try:
                return self._queue.index(job_id) + 1
            except ValueError:
                return 0 if self.current is not None and self.current.id == job_id else None

    @property
    def queue_length(self) -> int:
        return len(self._queue)

    @property
    def busy(self) -> bool:
        return self.current is not None

    def cancel(self, job_id: str) -> str:
        """'cancelled' for a queued job (it never runs), 'cancelling' for the running one."""
        with self._cond:
            if job_id in self._queue:
                self._queue.remove(job_id)
                h = self._handles[job_id]
                h.status = "cancelled"
                queued = True
            elif self.current is not None and self.current.id == job_id:
                self.current.signals.cancel.set()
                if self.engine is not None and self.engine.state == "loading":
                    self.engine.load_cancel.set()  # its model is loading: stop that too
                return "cancelling"
            else:
                queued = False
        if queued:
            with service.write_lock, session_scope() as s:
                job = s.get(GenJob, job_id)
                if job is not None and job.status == "queued":
                    job.status = "cancelled"
                    job.finished_at = utcnow()
            self._finish(h)
            return "cancelled"
        with service.write_lock, session_scope() as s:
            job = s.get(GenJob, job_id)
            if job is None:
                raise NotFound(f"job {job_id!r} not found", code="job_not_found")
            if job.status in FINISHED:
                raise Conflict(f"job {job_id} already {job.status}", code="job_finished")
            job.status = "cancelled"  # queued in the database but not in this process's queue
            job.finished_at = utcnow()
        return "cancelled"

    def cancel_load(self) -> bool:
        """Stop the model load in progress at its next component (False when none is loading). The job that
        needed it ends `cancelled`; a `load` call gets 409 load_cancelled."""
        engine = self.engine
        if engine is None or engine.state != "loading":
            return False
        engine.load_cancel.set()
        return True

    def interrupt(self) -> None:
        """A1111 interrupt: the running job stops at its next step and keeps its partial images."""
        h = self.current
        if h is not None:
            h.signals.interrupt.set()

    def skip(self) -> None:
        h = self.current
        if h is not None:
            h.signals.skip.set()

    def call(self, fn: Callable[[Any], Any], *, timeout: float | None = 600) -> Any:
        """Run fn(engine) on the worker thread after the running job (before queued ones); its result."""
        fut: Future[Any] = Future()
        with self._cond:
            if self._stopping or not self.alive:
                raise Unavailable("the generation worker is stopping", code="engine_stopped")
            self._controls.append((fn, fut))
            self._cond.notify_all()
        return fut.result(timeout)

    # the thread ---------------------------------------------------------------------------------------------
    def _main(self, recover: bool) -> None:
        try:
            from suite.imagegen import ml

            self.ml = ml
            s = service.settings()
            self.engine = ml.Engine(
                device=self.device_setting,
                dtype=s.dtype,
                threads=self.threads,
                options=self.options,
                memory_margin_mb=s.memory_margin_mb,
                lora_cache=s.lora_cache,
            )
            self.engine.bind_owner()
            self._publish_engine()
            if recover:
                self._recover()
        except BaseException as exc:
            self._start_error = exc
            self.engine_info = {
                "state": "error",
                "device": self.device_setting,
                "model": None,
                "error": str(exc),
            }
            self._ready.set()
            return
        self._ready.set()
        while True:
            with self._cond:
                while not self._stopping and not self._queue and not self._controls:
                    waited = self._cond.wait(timeout=self.idle_unload_s or None)
                    if (
                        not waited
                        and self.idle_unload_s
                        and self.engine.pipe is not None
                        and time.monotonic() - self.last_activity >= self.idle_unload_s
                    ):
                        break
                if self._stopping:
                    break
                control = self._controls.popleft() if self._controls else None
                job_id = self._queue.popleft() if control is None and self._queue else None
                h = self._handles.get(job_id) if job_id else None
                self.current = h
            if control is not None:
                fn, fut = control
                try:
                    fut.set_result(fn(self.engine))
                except BaseException as exc:
                    fut.set_exception(exc)
                self._publish_engine()
            elif h is not None:
                try:
                    self._run(h)
                finally:
                    with self._cond:
                        self.current = None
            elif self.engine.pipe is not None:  # idle unload
                self.engine.unload()
                self._publish_engine()
            self.last_activity = time.monotonic()
        self._shutdown()

    def _shutdown(self) -> None:
        with self._cond:
            pending = list(self._queue)
            self._queue.clear()
            controls = list(self._controls)
            self._controls.clear()
        for _fn, fut in controls:
            fut.set_exception(Unavailable("the generation worker stopped", code="engine_stopped"))
        for job_id in pending:
            h = self._handles[job_id]
            if h.origin == "native":
                continue  # stays queued in the database; re-queued on the next start
            with service.write_lock, session_scope() as s:
                job = s.get(GenJob, job_id)
                if job is not None and job.status == "queued":
                    job.status = "interrupted"
                    job.finished_at = utcnow()
            h.status = "interrupted"
            self._finish(h)
        with contextlib.suppress(Exception):
            if self.engine is not None:
                self.engine.unload()
        self._bus.flush()

    def _publish_engine(self) -> None:
        """Broadcast the engine's state when it changed (not after every job)."""
        if self.engine is not None:
            info = self.engine.describe()
            if info == self.engine_info:
                return
            self.engine_info = info
        self.emit("engine.state", dict(self.engine_info))

    def _recover(self) -> None:
        """After a restart: running and queued A1111 jobs -> interrupted; queued native ones re-queued."""
        with service.write_lock, session_scope() as s:
            from sqlalchemy import select

            rows = list(
                s.scalars(
                    select(GenJob).where(GenJob.status.in_(("queued", "running"))).order_by(GenJob.created_at)
                )
            )
            for job in rows:
                if job.id in self._handles:
                    continue
                if job.status == "running" or job.origin != "native" or job.mode != "txt2img":
                    job.status = "interrupted"
                    job.finished_at = utcnow()
                    job.error_code = "interrupted"
                    job.error_message = "the server stopped while this job was queued or running"
                    continue
                model = s.get(ImageModel, job.model_id) if job.model_id else None
                if model is None:
                    job.status = "failed"
                    job.error_code = "model_not_found"
                    job.error_message = "its model was removed"
                    continue
                loras = []
                for jl in s.scalars(select(JobLora).where(JobLora.job_id == job.id)):
                    lora = s.get(Lora, jl.lora_id)
                    if lora is not None:
                        loras.append((lora.name, jl.weight, str(service.lora_path(lora)), lora.short_hash))
                payload = {
                    "job_id": job.id,
                    "model": service.model_spec(model),
                    "loras": loras,
                    "init_image": None,
                    "mask": None,
                    "a1111": False,
                }
                h = JobHandle(
                    id=job.id, payload=payload, owner_user_id=job.owner_user_id, client_id=job.client_id
                )
                self._handles[h.id] = h
                self._queue.append(h.id)

    def ensure_model(self, spec: dict[str, Any]) -> float:
        """Load the job's model when another (or none) is resident; returns the load time in ms."""
        if self.engine.model_key == spec["sha256"] and self.engine.state == "loaded":
            return 0.0
        t0 = time.perf_counter()

        def progress(done: int, total: int, phase: str) -> None:
            self.emit(
                "model.load_progress", {"model_id": spec["id"], "done": done, "total": total, "phase": phase}
            )

        config = None
        if spec.get("config_skeleton"):
            from suite.imagegen import skeletons

            config = skeletons.ensure(spec["config_skeleton"])  # bundled ones build their tokenizer once
        self.engine.load_cancel.clear()
        self.engine.state = "loading"
        self._publish_engine()
        try:
            self.engine.load(
                Path(spec["path"]), key=spec["sha256"], single_file_config=config, progress=progress
            )
        except BaseException:
            if self.engine.state == "loading":  # refused before the engine changed anything
                self.engine.state = "loaded" if self.engine.pipe is not None else "idle"
            raise
        finally:
            self._publish_engine()
        return (time.perf_counter() - t0) * 1000

    def _run(self, h: JobHandle) -> None:
        ml = self.ml
        with service.write_lock, session_scope() as s:
            job = s.get(GenJob, h.id)
            if job is None or job.status != "queued":
                h.status = job.status if job is not None else "cancelled"
                self._finish(h)
                return
            job.status = "running"
            job.started_at = utcnow()
            job.queue_ms = (job.started_at - job.created_at).total_seconds() * 1000
            p = dict(job.params)
            h.total = job.total_steps
        h.status = "running"
        h.started = time.monotonic()
        self._status_event(h)
        fields: dict[str, Any] = {}
        error: dict[str, str] | None = None
        written: list[Path] = []
        try:
            fields["load_ms"] = self.ensure_model(h.payload["model"])
            req = ml.GenRequest(
                mode=p["mode"],
                prompt=p["prompt"],
                negative_prompt=p.get("negative_prompt", ""),
                sampler=p["sampler"],
                schedule=p.get("schedule"),
                a1111=bool(h.payload.get("a1111")),
                steps=p["steps"],
                cfg_scale=p["cfg_scale"],
                width=p["width"],
                height=p["height"],
                seed=p["seed"],
                batch_size=p["batch_size"],
                n_iter=p["n_iter"],
                clip_skip=p.get("clip_skip", 1),
                loras=[(n, w, Path(f)) for n, w, f, _h in h.payload.get("loras", [])],
                init_image=h.payload.get("init_image"),
                mask=h.payload.get("mask"),
                strength=p.get("strength", 0.75),
            )
            tokens = self.engine.encode_tokens(req.prompt)
            if tokens > 77:
                fields["warnings"] = [f"prompt has {tokens} tokens; CLIP truncated it to 77"]
            preview_every = int(p.get("preview_every") or service.settings().preview_every or 0)
            t0 = time.perf_counter()
            result = self.engine.generate(
                req,
                signals=h.signals,
                on_step=lambda it, step, lat: self._on_step(h, req, it, step, lat, preview_every),
            )
            fields["gen_ms"] = (time.perf_counter() - t0) * 1000
            self._progress(h, h.total, h.total, "saving", force=True)
            t1 = time.perf_counter()
            written = self._save(h, p, result)
            fields["save_ms"] = (time.perf_counter() - t1) * 1000
            h.status = "interrupted" if result.interrupted else "succeeded"
            h.result["seeds"] = result.seeds
        except ml.JobCancelled:
            h.status = "interrupted" if self._stopping else "cancelled"
        except ml.LoadCancelled as exc:
            h.status = "interrupted" if self._stopping else "cancelled"
            error = None if self._stopping else {"code": exc.code, "message": exc.message}
            if self.engine.state == "loading":
                self.engine.state = "idle"
        except BaseException as exc:
            h.status = "failed"
            if ml.is_oom(exc):
                ml.free_memory(self.engine.device)
                error = {"code": "out_of_memory", "message": f"out of memory: {service.OOM_ADVICE}"}
            elif isinstance(exc, SuiteError):
                error = {"code": exc.code, "message": exc.message}
            else:
                log.exception("imagegen job %s failed", h.id)
                error = {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"}
            if self.engine.state in ("loading", "unloading"):
                self.engine.state = "idle"
            if not isinstance(exc, Exception):
                raise
        finally:
            try:
                with service.write_lock, session_scope() as s:
                    job = s.get(GenJob, h.id)
                    if job is not None:
                        job.status = h.status
                        job.finished_at = utcnow()
                        job.step = h.step
                        for key in ("load_ms", "gen_ms", "save_ms"):
                            if key in fields:
                                setattr(job, key, round(fields[key], 3))
                        if fields.get("warnings"):
                            job.warnings = [*(job.warnings or []), *fields["warnings"]]
                        if error:
                            job.error_code, job.error_message = error["code"], error["message"]
                        for row in h.result.pop("rows", []):
                            s.add(GenImage(**row))
            except BaseException:
                for path in written:
                    path.unlink(missing_ok=True)
                raise
            finally:
                self._publish_engine()
                self._finish(h, error)

    def _finish(self, h: JobHandle, error: dict[str, str] | None = None) -> None:
        h.done.set()
        self._status_event(h, error)
        # keep finished handles briefly for pollers; the database is the record
        if len(self._handles) > 1000:
            for key in [k for k, v in self._handles.items() if v.done.is_set()][:500]:
                self._handles.pop(key, None)

    def _on_step(self, h: JobHandle, req: Any, it: int, step: int, latents: Any, preview_every: int) -> None:
        h.step = it * req.steps + step
        self._progress(h, h.step, h.total, "sampling")
        if preview_every and latents is not None and step % preview_every == 0:
            for index, png in enumerate(self.ml.latents_preview(latents)):
                self.emit(
                    "job.preview",
                    {
                        "job_id": h.id,
                        "step": h.step,
                        "index": index,
                        "png_b64": base64.b64encode(png).decode(),
                    },
                )

    def _progress(self, h: JobHandle, done: int, total: int, phase: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and done < total and now - h.last_progress < self.progress_interval:
            return
        h.last_progress = now
        elapsed = now - (h.started or now)
        eta = elapsed / done * (total - done) if done else None
        self.emit(
            "job.progress",
            {
                "job_id": h.id,
                "done": done,
                "total": total,
                "message": phase,
                "phase": phase,
                "eta_s": round(eta, 3) if eta is not None else None,
            },
        )

    def _save(self, h: JobHandle, p: dict[str, Any], result: Any) -> list[Path]:
        """PNG files (tmp, fsync, rename) with the A1111 parameters chunk; rows are added with the job."""
        from PIL.PngImagePlugin import PngInfo

        model = h.payload["model"]
        lora_hashes = {n: short for n, _w, _f, short in h.payload.get("loras", [])}
        day = utcnow().strftime("%Y/%m/%d")
        root = service.outputs_root()
        written: list[Path] = []
        rows = []
        texts = []
        try:
            folder = root / day
            folder.mkdir(parents=True, exist_ok=True)
            for idx, (img, seed) in enumerate(zip(result.images, result.seeds, strict=True)):
                text = infotext.build(
                    prompt=p["prompt"],
                    negative_prompt=p.get("negative_prompt", ""),
                    steps=p["steps"],
                    sampler=p["sampler"],
                    schedule=p.get("schedule"),
                    cfg_scale=p["cfg_scale"],
                    seed=seed,
                    width=img.width,
                    height=img.height,
                    model_hash=model["short_hash"],
                    model_name=model["name"],
                    clip_skip=p.get("clip_skip", 1),
                    lora_hashes=lora_hashes,
                    denoising_strength=p.get("strength") if p["mode"] != "txt2img" else None,
                )
                rel = f"{day}/{h.id}-{idx}.png"
                path = root / rel
                tmp = path.with_name(path.name + ".tmp")
                info = PngInfo()
                info.add_text("parameters", text)
                buf = io.BytesIO()
                img.save(buf, format="PNG", pnginfo=info)
                data = buf.getvalue()
                try:
                    with tmp.open("wb") as fh:
                        fh.write(data)
                        fh.flush()
                        os.fsync(fh.fileno())
                    os.replace(tmp, path)
                finally:
                    tmp.unlink(missing_ok=True)
                written.append(path)
                rows.append(
                    {
                        "job_id": h.id,
                        "idx": idx,
                        "seed": seed,
                        "relpath": rel,
                        "width": img.width,
                        "height": img.height,
                        "sha256": hashlib.sha256(data).hexdigest(),
                        "bytes": len(data),
                        "infotext": text,
                    }
                )
                texts.append(text)
        except OSError as exc:
            for path in written:
                path.unlink(missing_ok=True)
            raise OutputWriteFailed(f"cannot write images under {root}: {exc.strerror or exc}") from None
        h.result["rows"] = rows
        h.result["infotexts"] = texts
        h.result["paths"] = [str(w) for w in written]
        return written


_worker: Worker | None = None
_worker_lock = threading.Lock()


def get_worker(*, start: bool = True) -> Worker:
    """The process's worker (started on first use)."""
    global _worker
    with _worker_lock:
        if _worker is None or not _worker.alive:
            if not start:
                raise NotFound("the generation worker is not running", code="engine_stopped")
            _worker = Worker().start()
        return _worker


def current_worker() -> Worker | None:
    return _worker


def shutdown_worker(timeout: float = 10) -> None:
    global _worker
    with _worker_lock:
        if _worker is not None:
            _worker.stop(timeout)
            _worker = None
