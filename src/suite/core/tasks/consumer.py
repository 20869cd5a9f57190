"""Consumers: `suite worker` (`run_consumer`) and the one `suite serve` runs in its threads."""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

from huey.consumer import Consumer

from suite.core.config import get_settings
from suite.core.errors import ConfigError
from suite.core.tasks import state
from suite.core.tasks.queue import get_huey, queue_name
from suite.core.tasks.redact import RedactingFormatter
from suite.core.tasks.workers import Heartbeat

log = logging.getLogger("suite.jobs")

SHUTDOWN_TIMEOUT_S = 10.0  # a stopping consumer waits this long for running jobs, then marks them interrupted


def load_task_modules() -> list[str]:
    """Import every module of tasks: core's, each domain's `tasks`, and `jobs.task_modules`."""
    from suite.core.plugins import load_domain_specs

    loaded = ["suite.core.tasks"]
    for spec in load_domain_specs():
        if not spec.tasks:
            continue
        module = spec.tasks.partition(":")[0]
        try:
            importlib.import_module(module)
            loaded.append(module)
        except Exception as exc:  # one broken domain does not stop the others' jobs
            print(
                f"warning: tasks of domain {spec.name!r} skipped: {type(exc).__name__}: {exc}",
                file=sys.stderr,
            )
    for module in get_settings().jobs.task_modules:
        try:
            importlib.import_module(module)
        except Exception as exc:
            raise ConfigError(
                f"jobs.task_modules: cannot import {module!r}: {type(exc).__name__}: {exc}"
            ) from exc
        loaded.append(module)
    return loaded


class JobsConsumer(Consumer):
    """Huey's consumer with thread workers: a stop (Ctrl-C, SIGTERM, `.stop()`) lets running jobs end at their
    next progress report, waits up to `shutdown_timeout`, then marks what still runs as interrupted. It keeps
    a heartbeat while it runs (workers.py); `finish()` saves the jobs' states, then ends the heartbeat."""

    def __init__(self, huey: Any, *, workers: int, embedded: bool) -> None:
        max_delay = get_settings().jobs.max_polling_delay
        super().__init__(
            huey,
            workers=workers,
            worker_type="thread",
            initial_delay=min(0.1, max_delay),
            max_delay=max_delay,
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        )
        self.embedded = embedded
        self.heartbeat = Heartbeat()

    def start(self) -> None:
        self.heartbeat.start()  # registered before the first job starts
        try:
            super().start()
        except BaseException:
            self.heartbeat.stop()
            raise

    def finish(self) -> None:
        """After a stop: save the last jobs' states, then say this worker is gone."""
        try:
            state.flush()
        finally:
            self.heartbeat.stop()

    def stop(self, graceful: bool = False) -> None:
        self.huey.stopping.set()
        super().stop(graceful=True)

    def _set_signal_handlers(self) -> None:
        if not self.embedded:  # embedded: the server owns the signals
            super()._set_signal_handlers()


def _check_consumable() -> Any:
    settings = get_settings()
    if settings.jobs.immediate:
        raise ConfigError("jobs.immediate is true: tasks run inline when queued, there is nothing to consume")
    load_task_modules()
    huey = get_huey()
    huey.stopping.clear()
    return huey


def _setup_logging() -> None:
    level = get_settings().log_level
    handler = logging.StreamHandler()
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("huey", "suite"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(handler)
            logger.setLevel(level)
            logger.propagate = False


def run_consumer(workers: int) -> None:
    """Consume jobs until Ctrl-C or SIGTERM (blocking). Ctrl-C ends in KeyboardInterrupt (exit 130)."""
    import signal

    huey = _check_consumable()
    _setup_logging()
    consumer = JobsConsumer(huey, workers=workers, embedded=False)
    log.info(
        "worker: %d thread(s) on %s, tasks: %s", workers, queue_name(), ", ".join(sorted(huey.job_tasks))
    )
    try:
        consumer.run()
    finally:
        consumer.finish()  # the last jobs' states, before the process ends
    if consumer._signum == signal.SIGINT:
        raise KeyboardInterrupt


class EmbeddedConsumer:
    """A consumer running in this process's threads (`suite serve`); `.stop()` ends it."""

    def __init__(self, consumer: JobsConsumer | None) -> None:
        self.consumer = consumer

    def stop(self, timeout: float = SHUTDOWN_TIMEOUT_S) -> None:
        consumer, self.consumer = self.consumer, None
        if consumer is None:
            return
        consumer.shutdown_timeout = timeout
        consumer.stop(graceful=True)
        consumer.huey.notify_interrupted_tasks()
        consumer.finish()


def start_embedded_consumer(workers: int | None = None) -> EmbeddedConsumer:
    """Start consuming in background threads; in immediate mode there is nothing to consume."""
    if get_settings().jobs.immediate:
        return EmbeddedConsumer(None)
    huey = _check_consumable()
    consumer = JobsConsumer(huey, workers=workers or get_settings().jobs.workers, embedded=True)
    consumer.start()
    return EmbeddedConsumer(consumer)
