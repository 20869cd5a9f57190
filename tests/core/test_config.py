from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from suite.core.config import get_settings, load_settings, reset_settings
from suite.core.errors import ConfigError


def test_defaults_under_data_dir(suite_env: Path) -> None:
    s = get_settings()
    assert s.data_dir == suite_env
    assert s.effective_database_url == f"sqlite:///{suite_env / 'suite.db'}"
    assert s.huey_path == suite_env / "jobs.db"


def test_precedence_env_over_dotenv_over_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "suite.toml").write_text('log_level = "ERROR"\n[server]\nport = 9001\nhost = "0.0.0.0"\n')
    (tmp_path / ".env").write_text("SUITE_SERVER__PORT=9002\nSUITE_LOG_LEVEL=WARNING\n")
    monkeypatch.setenv("SUITE_SERVER__PORT", "9003")
    s = load_settings()
    assert s.server.port == 9003  # env beats .env and toml
    assert s.log_level == "WARNING"  # .env beats toml
    assert s.server.host == "0.0.0.0"  # toml beats default
    assert load_settings(server={"port": 9004}).server.port == 9004  # init beats everything


def test_config_path_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "other.toml"
    cfg.write_text("[jobs]\nworkers = 3\n")
    monkeypatch.setenv("SUITE_CONFIG", str(cfg))
    assert load_settings().jobs.workers == 3


def test_unknown_key_names_key_and_source(tmp_path: Path) -> None:
    (tmp_path / "suite.toml").write_text("[server]\nprot = 1\n")
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert str(exc.value) == "invalid config server.prot from suite.toml: unknown key"


def test_wrong_type_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUITE_JOBS__WORKERS", "many")
    with pytest.raises(
        ConfigError, match=r"jobs\.workers from environment SUITE_JOBS__WORKERS: Input should be"
    ):
        load_settings()


def test_unreadable_and_invalid_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "suite.toml"
    bad.write_text("[server\nport = ")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_settings()
    monkeypatch.setenv("SUITE_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings()
    if os.geteuid() != 0:  # root reads anything
        bad.write_text("")
        bad.chmod(0)
        monkeypatch.delenv("SUITE_CONFIG")
        with pytest.raises(ConfigError, match="not readable"):
            load_settings()


def test_directory_as_config_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "dir.toml").mkdir()
    monkeypatch.setenv("SUITE_CONFIG", str(tmp_path / "dir.toml"))
    with pytest.raises(ConfigError, match="cannot be read"):
        load_settings()


def test_placeholder_secret_refused_outside_development(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUITE_LLM__PROVIDERS__GROQ__API_KEY", "changeme")
    monkeypatch.setenv("SUITE_ENV", "production")
    with pytest.raises(ConfigError, match="placeholder secret"):
        load_settings()
    monkeypatch.setenv("SUITE_ENV", "development")
    assert load_settings().llm.providers["groq"].api_key is not None


def test_config_show_masks_secrets_and_names_sources(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "suite.toml").write_text("[jobs]\nworkers = 2\n")
    res = run_cli(
        "config",
        "show",
        "--json",
        env={"SUITE_LLM__PROVIDERS__X__API_KEY": "sk-real-1234", "SUITE_DEBUG": "1"},
    )
    assert res.returncode == 0, res.stderr
    rows = {r["key"]: r for r in json.loads(res.stdout)}
    assert rows["jobs.workers"] == {"key": "jobs.workers", "value": 2, "source": "suite.toml"}
    assert rows["llm.providers.x.api_key"]["value"] == "**********"
    assert rows["llm.providers.x.api_key"]["source"] == "environment SUITE_LLM__PROVIDERS__X__API_KEY"
    assert rows["server.port"]["source"] == "default"
    assert "sk-real-1234" not in res.stdout


def test_config_show_invalid_exits_2_with_one_line(run_cli) -> None:  # type: ignore[no-untyped-def]
    res = run_cli("config", "show", env={"SUITE_SERVER__PORT": "70000"})
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "server.port from environment SUITE_SERVER__PORT" in lines[0]
    assert "Traceback" not in res.stderr


def test_settings_not_loaded_at_import() -> None:
    reset_settings()
    import suite.core.config as cfg

    assert cfg.get_settings.cache_info().currsize == 0
