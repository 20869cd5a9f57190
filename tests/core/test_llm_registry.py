"""The provider registry: built-ins, names from settings, run-time kinds, the entry-point group."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from suite.core import llm
from suite.core.config import LLMProviderSettings
from suite.core.errors import ConfigError
from suite.core.llm import UnknownProvider, create_provider, get_provider, provider_names, register_kind
from suite.core.llm.local import LocalProvider
from suite.core.llm.openai import OpenAIProvider
from suite.core.llm.scripted import ScriptedProvider


def test_default_is_the_local_provider_without_any_config() -> None:
    provider = get_provider()
    assert isinstance(provider, LocalProvider)
    info = provider.info()
    assert info.kind == "local" and info.name == "local" and not info.scripted
    assert get_provider() is provider  # one instance per name


def test_scripted_exists_without_a_table_and_reset_forgets() -> None:
    first = get_provider("scripted")
    assert isinstance(first, ScriptedProvider) and first.info().scripted
    llm.reset()
    assert get_provider("scripted") is not first


def test_named_providers_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUITE_LLM__PROVIDERS__GROQ__KIND", "openai")
    monkeypatch.setenv("SUITE_LLM__PROVIDERS__GROQ__BASE_URL", "https://api.groq.com/openai/v1")
    monkeypatch.setenv("SUITE_LLM__PROVIDERS__GROQ__MODEL", "llama-3.1-8b-instant")
    monkeypatch.setenv("SUITE_LLM__PROVIDERS__GROQ__API_KEY", "gsk-real-looking-key")
    monkeypatch.setenv("SUITE_LLM__DEFAULT", "groq")
    from suite.core.config import reset_settings

    reset_settings()
    provider = get_provider()
    assert isinstance(provider, OpenAIProvider) and provider.name == "groq"
    info = provider.info()
    assert info.endpoint == "https://api.groq.com/openai/v1" and info.model == "llama-3.1-8b-instant"
    assert "gsk-" not in json.dumps(info.to_dict())
    assert "groq" in provider_names()


def test_named_providers_from_suite_toml(suite_env: Path) -> None:
    Path("suite.toml").write_text(
        textwrap.dedent(
            """
            [llm]
            default = "parrot"
            [llm.providers.parrot]
            kind = "scripted"
            options = { mode = "echo", token_delay_s = 0 }
            """
        )
    )
    provider = get_provider()
    assert provider.name == "parrot" and provider.kind == "scripted"
    assert provider.complete_sync([{"role": "user", "content": "polly"}]).text == "polly"


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(UnknownProvider) as exc:
        get_provider("nope")
    message = exc.value.message
    assert "'nope'" in message and "local" in message and "scripted" in message
    assert "[llm.providers.nope]" in message
    assert exc.value.exit_code == 2 and exc.value.code == "unknown_provider"


def test_unknown_kind_lists_the_known_kinds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUITE_LLM__PROVIDERS__ODD__KIND", "carrier-pigeon")
    from suite.core.config import reset_settings

    reset_settings()
    with pytest.raises(UnknownProvider, match=r"kind 'carrier-pigeon'.*openai.*scripted"):
        get_provider("odd")


class Shouty(ScriptedProvider):
    kind = "shouty"

    def __init__(self, name: str, config: LLMProviderSettings) -> None:
        super().__init__(name, None, reply=str(config.options.get("word", "HEY")))


@pytest.fixture
def shouty_kind() -> Iterator[None]:
    register_kind("shouty", Shouty)
    yield
    llm.unregister_kind("shouty")


def test_register_kind_without_entry_points(shouty_kind: None, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "shouty" in llm.kinds()
    monkeypatch.setenv("SUITE_LLM__PROVIDERS__LOUD__KIND", "shouty")
    monkeypatch.setenv("SUITE_LLM__PROVIDERS__LOUD__OPTIONS", '{"word": "HELLO"}')
    from suite.core.config import reset_settings

    reset_settings()
    provider = get_provider("loud")
    assert isinstance(provider, Shouty) and provider.name == "loud"
    assert provider.complete_sync([{"role": "user", "content": "hi"}]).text == "HELLO"
    with pytest.raises(ValueError, match="already registered"):
        register_kind("shouty", Shouty)
    with pytest.raises(ValueError, match="already registered"):
        register_kind("openai", Shouty)
    register_kind("shouty", "suite.core.llm.scripted:ScriptedProvider", replace=True)
    assert isinstance(
        create_provider("x", LLMProviderSettings.model_validate({"kind": "shouty"})), ScriptedProvider
    )


def test_register_provider_instance_takes_precedence() -> None:
    mine = ScriptedProvider("local", reply="not the model")
    llm.register_provider("local", mine)
    assert get_provider("local") is mine
    llm.reset()
    assert isinstance(get_provider("local"), LocalProvider)


def _fake_distribution(root: Path, name: str, entry_points: str, module: str, source: str) -> None:
    (root / f"{module}.py").write_text(source)
    info = root / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(entry_points)


def test_entry_point_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    site.mkdir()
    source = textwrap.dedent(
        """
        from suite.core.llm.scripted import ScriptedProvider

        def make(name, config):
            return ScriptedProvider(name, None, reply="from a plugin")
        """
    )
    _fake_distribution(
        site,
        "suite-llm-plugin-test",
        "[suite.llm_providers]\n"
        "plugged = suite_llm_plugin_test:make\n"
        "broken = suite_llm_plugin_test:missing\n",
        "suite_llm_plugin_test",
        source,
    )
    monkeypatch.syspath_prepend(str(site))
    assert {"plugged", "broken"} <= set(llm.kinds())
    plugged = create_provider("p", LLMProviderSettings.model_validate({"kind": "plugged"}))
    assert plugged.complete_sync([{"role": "user", "content": "x"}]).text == "from a plugin"
    with pytest.raises(
        ConfigError, match=r"kind 'broken' \(entry point suite_llm_plugin_test:missing\) failed to load"
    ):
        create_provider("b", LLMProviderSettings.model_validate({"kind": "broken"}))


def test_importing_the_llm_package_is_light() -> None:
    code = (
        "import sys, suite.core.llm; "
        "print([m for m in ('torch', 'transformers', 'httpx', 'gguf', 'safetensors') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_aclose_all_closes_cached_providers() -> None:
    import asyncio

    provider: Any = get_provider("scripted")
    asyncio.run(llm.aclose_all())
    assert provider.complete_sync([{"role": "user", "content": "x"}]).finish_reason == "stop"
