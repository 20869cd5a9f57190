"""The generation worker: one thread per device owns the engine; everything else enqueues and observes.

A FIFO of job ids; queued jobs can be cancelled (they never run), a running job stops at its next step.
Events (`job.status`, `job.progress`, `job.preview`, `engine.state`, `model.load_progress`) go to subscribers
(SSE, Socket.IO) and to core's event bus when it is there. torch is imported on the worker thread only. A lock
file per device (`devicelock`) keeps a second process's worker off a device this one owns. What the thread does
with one job is in `runner`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from suite.core.db import session_scope, utcnow
from suite.core.errors import Conflict, NotFound, RateLimited, Unavailable
from suite.imagegen import heap, runner, service
from suite.imagegen.devicelock import DeviceLock
from suite.imagegen.handles import BusForwarder, JobHandle, Listener
from suite.imagegen.models import FINISHED, GenJob

log = logging.getLogger("suite.imagegen.worker")
RECENT_IMAGES = 256
A1111_PNGS = 8
A1111_PNG_BYTES = 64 * 1024 * 1024


class Worker:
    def __init__(
        self,
        *,
        device: str | None = None,
        threads: int | None = None,
        queue_limit: int | None = None,
        lock_wait_s: float | None = None,
    ) -> None:
        s = service.settings()
        self.lock_wait_s = s.device_lock_wait_s if lock_wait_s is None else lock_wait_s
        self.device_lock: DeviceLock | None = None
        self.ml: Any = None
        self.device_setting = device or s.device
        self.threads = threads or s.threads
        self.queue_limit = queue_limit or s.queue_limit
        self.progress_interval = 1.0 / s.progress_hz
        self.idle_unload_s = s.idle_unload_s
        self.malloc_tuning = s.malloc_tuning
        self.main_arena = False  # whether the thread shares glibc's main malloc arena (heap.start_thread)
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
        # recent images for GET /images/{id} without a database read: id -> (relpath, owner, size)
        self.recent_images: OrderedDict[int, tuple[str, int | None, int]] = OrderedDict()
        # A1111 jobs' PNG bytes until their blocked call answers (a few, not a cache)
        self.a1111_pngs: OrderedDict[str, list[bytes]] = OrderedDict()

    # lifecycle ----------------------------------------------------------------------------------------------
    def start(self, *, wait: bool = True, recover: bool = True) -> Worker:
        self.thread, self.main_arena = heap.start_thread(
            lambda: self._main(recover), name="imagegen-worker", tuned=self.malloc_tuning
        )
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
        data: dict[str, Any] = {
            "job_id": h.id,
            "status": h.status,
            "position": self.position(h.id),
            "error": error,
            "owner_user_id": h.owner_user_id,
            "client_id": h.client_id,
        }
        if h.read is not None:  # the terminal status carries the images: no GET of the job needed
            data["images"] = h.read["images"]
        self.emit("job.status", data)

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
            device = ml.resolve_device(self.device_setting)
            self.device_lock = DeviceLock(device)
            self.device_lock.acquire(wait_s=self.lock_wait_s)  # before any pipeline exists on the device
            self.engine = ml.Engine(
                device=device,
                dtype=s.dtype,
                threads=self.threads,
                options=self.options,
                memory_margin_mb=s.memory_margin_mb,
                lora_cache=s.lora_cache,
            )
            self.engine.bind_owner()
            self._publish_engine()
            if recover:
                runner.recover(self)
        except BaseException as exc:
            if self.device_lock is not None:
                self.device_lock.release()
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
                    runner.run_job(self, h)
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
        if self.device_lock is not None:
            self.device_lock.release()
        self._bus.flush()

    def ensure_model(self, spec: dict[str, Any]) -> float:
        """Load `spec`'s model unless it is resident (worker thread only); the load time in ms."""
        return runner.ensure_model(self, spec)

    def _publish_engine(self) -> None:
        """Broadcast the engine's state when it changed (not after every job)."""
        if self.engine is not None:
            info = self.engine.describe()
            if info == self.engine_info:
                return
            self.engine_info = info
        self.emit("engine.state", dict(self.engine_info))

    def remember_images(self, h: JobHandle, image_ids: list[int], saved: Any) -> None:
        """Keep where a finished job's images are (and an A1111 job's PNG bytes) for its caller's next read."""
        with self._cond:
            for image_id, row in zip(image_ids, saved.rows, strict=True):
                self.recent_images[image_id] = (row["relpath"], h.owner_user_id, row["bytes"])
            while len(self.recent_images) > RECENT_IMAGES:
                self.recent_images.popitem(last=False)
            if h.origin == "a1111":
                self.a1111_pngs[h.id] = list(saved.data)
                while len(self.a1111_pngs) > A1111_PNGS or (
                    sum(map(len, (b for pngs in self.a1111_pngs.values() for b in pngs))) > A1111_PNG_BYTES
                ):
                    self.a1111_pngs.popitem(last=False)  # the caller reads its files instead

    def forget_image(self, image_id: int) -> None:
        with self._cond:
            self.recent_images.pop(image_id, None)

    def _finish(self, h: JobHandle, error: dict[str, str] | None = None) -> None:
        h.done.set()
        self._status_event(h, error)
        # keep finished handles briefly for pollers; the database is the record
        if len(self._handles) > 1000:
            for key in [k for k, v in self._handles.items() if v.done.is_set()][:500]:
                self._handles.pop(key, None)


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
