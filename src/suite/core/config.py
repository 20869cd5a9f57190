"""Settings: one pydantic-settings model, `SUITE_` env prefix, `__` nesting, `suite.toml`.

Precedence: init > env > .env > toml > defaults. Each domain contributes a typed nested table whose model is
named by an import string in its `DomainSpec`, so loading config imports only pydantic models.
"""

from __future__ import annotations

import os
import re
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from suite.core.errors import ConfigError

ENV_PREFIX = "SUITE_"
CRON_RANGES = (("minute", 0, 59), ("hour", 0, 23), ("day", 1, 31), ("month", 1, 12), ("weekday", 0, 6))
CRON_FIELD_RE = re.compile(r"(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*")
PLACEHOLDER_SECRETS = {
    "changeme",
    "change-me",
    "change_me",
    "secret",
    "password",
    "xxx",
    "todo",
    "placeholder",
}


class Section(BaseModel):
    """Base for every nested table: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class ServerSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_body_bytes: int = Field(1_048_576, ge=1024, description="larger request bodies get 413")
    allowed_origins: list[str] = Field(default_factory=list, description="extra origins for CORS and sockets")
    embedded_worker: bool = True


class JobsSettings(Section):
    immediate: bool = Field(False, description="run tasks inline (tests)")
    max_polling_delay: float = Field(0.1, gt=0, le=60)
    workers: int = Field(1, ge=1, le=64)
    huey_path: Path | None = Field(None, description="SqliteHuey file; default <data_dir>/jobs.db")
    task_modules: list[str] = Field(
        default_factory=list, description="extra modules of tasks the worker imports"
    )
    heartbeat_s: float = Field(10.0, gt=0, le=3600, description="a consumer says it is alive this often")
    worker_timeout_s: float = Field(
        60.0, gt=0, description="no heartbeat for this long: the worker is lost, its running jobs fail"
    )
    keep_days: int = Field(30, ge=0, description="finished jobs older than this are purged")
    purge_schedule: str = Field(
        "17 3 * * *", description='when consumers purge, a crontab line in UTC ("off": never)'
    )

    @field_validator("purge_schedule")
    @classmethod
    def _crontab(cls, value: str) -> str:
        if value == "off":
            return value
        fields = value.split()
        if len(fields) != 5 or not all(CRON_FIELD_RE.fullmatch(f) for f in fields):
            raise ValueError('must be a crontab line "minute hour day month weekday", or "off"')
        for field, (name, low, high) in zip(fields, CRON_RANGES, strict=True):
            if any(not low <= int(n) <= high for n in re.findall(r"(?<!/)\b\d+", field)):
                raise ValueError(f"{name} must be within {low}-{high}")
        return " ".join(fields)

    @model_validator(mode="after")
    def _timeout(self) -> JobsSettings:
        if self.worker_timeout_s < 2 * self.heartbeat_s:
            raise ValueError("worker_timeout_s must be at least twice heartbeat_s")
        return self


class EventsSettings(Section):
    client_queue_size: int = Field(256, ge=1)
    slow_client_timeout_s: float = Field(10.0, gt=0)


class AuthSettings(Section):
    session_ttl_s: int = Field(14 * 24 * 3600, ge=60)
    login_attempts_per_minute: int = Field(10, ge=1)
    cookie_secure: bool = False


class CryptoSettings(Section):
    keyring_path: Path | None = Field(None, description="default <data_dir>/keyring.json")


class PluginsSettings(Section):
    allow: list[str] | None = Field(None, description="only these entry-point domains are loaded")
    deny: list[str] = Field(default_factory=list)


class LLMProviderSettings(Section):
    kind: Literal["openai", "local", "scripted"] | str = "openai"
    base_url: str | None = None
    api_key: SecretStr | None = None
    model: str | None = None
    timeout_s: float = Field(60.0, gt=0)
    connect_timeout_s: float = Field(5.0, gt=0)
    max_retries: int = Field(3, ge=0, le=10)
    backoff_s: float = Field(0.5, ge=0)
    headers: dict[str, str] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict, description="provider-specific knobs")


class LocalLLMSettings(Section):
    runtime: Literal["auto", "llamacpp", "transformers"] = "auto"
    model_path: Path | None = None
    threads: int | None = Field(None, ge=1)
    cache_dir: Path | None = Field(None, description="default <data_dir>/llm/models")
    max_tokens: int = Field(256, ge=1, le=4096)
    repetition_penalty: float = Field(1.1, ge=1.0, le=2.0)


class LLMSettings(Section):
    default: str = Field("local", description="provider name used when a caller names none")
    providers: dict[str, LLMProviderSettings] = Field(default_factory=dict)
    local: LocalLLMSettings = Field(default_factory=LocalLLMSettings)


class CoreSettings(BaseSettings):
    """The suite's settings. Domain tables are added by `settings_class()`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="forbid",
        validate_default=True,
    )

    env: Literal["development", "production", "test"] = "production"
    debug: bool = False
    data_dir: Path = Field(default_factory=lambda: Path(platformdirs.user_data_dir("suite")))
    database_url: str | None = Field(None, description="default sqlite:///<data_dir>/suite.db")
    redis_url: str | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    server: ServerSettings = Field(default_factory=ServerSettings)
    jobs: JobsSettings = Field(default_factory=JobsSettings)
    events: EventsSettings = Field(default_factory=EventsSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    crypto: CryptoSettings = Field(default_factory=CryptoSettings)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    plugins: PluginsSettings = Field(default_factory=PluginsSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, dotenv_settings, TomlSource(settings_cls))

    @model_validator(mode="after")
    def _refuse_placeholders(self) -> CoreSettings:
        if self.env == "development":
            return self
        for key, value in iter_leaves(self):
            if (
                isinstance(value, SecretStr)
                and value.get_secret_value().strip().lower() in PLACEHOLDER_SECRETS
            ):
                raise ValueError(f"{key} holds a placeholder secret; set a real value (or env=development)")
        return self

    # Derived paths -------------------------------------------------------------------------------
    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'suite.db'}"

    @property
    def huey_path(self) -> Path:
        return self.jobs.huey_path or self.data_dir / "jobs.db"

    @property
    def keyring_path(self) -> Path:
        return self.crypto.keyring_path or self.data_dir / "keyring.json"

    @property
    def llm_cache_dir(self) -> Path:
        return self.llm.local.cache_dir or self.data_dir / "llm" / "models"

    def domain(self, name: str) -> Any:
        """This domain's settings table (`settings.domain("chat")`)."""
        return getattr(self, name)


def config_path() -> Path:
    return Path(os.environ.get("SUITE_CONFIG", "suite.toml"))


def read_toml() -> dict[str, Any]:
    path = config_path()
    if not path.exists():
        if "SUITE_CONFIG" in os.environ:
            raise ConfigError(f"config file {path} (from SUITE_CONFIG) does not exist")
        return {}
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except PermissionError:
        raise ConfigError(f"config file {path} is not readable (permission denied)")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}")
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}")


class TomlSource(PydanticBaseSettingsSource):
    """`suite.toml` (path from SUITE_CONFIG)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return read_toml()


def iter_leaves(model: BaseModel, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for name in type(model).model_fields:
        value = getattr(model, name)
        key = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            out.extend(iter_leaves(value, key + "."))
        elif isinstance(value, dict) and value and all(isinstance(v, BaseModel) for v in value.values()):
            for sub, item in value.items():
                out.extend(iter_leaves(item, f"{key}.{sub}."))
        else:
            out.append((key, value))
    return out


def _domain_tables() -> dict[str, Any]:
    from suite.core.plugins import load_domain_specs

    fields: dict[str, Any] = {}
    for spec in load_domain_specs(quiet=True):
        if spec.settings:
            model = spec.load_attr(spec.settings)
            fields[spec.name] = (model, Field(default_factory=model))
    return fields


@lru_cache(maxsize=1)
def settings_class() -> type[CoreSettings]:
    return create_model("Settings", __base__=CoreSettings, **_domain_tables())


Settings = CoreSettings  # the type other modules annotate with


@lru_cache(maxsize=1)
def get_settings() -> CoreSettings:
    """The process's settings, loaded once on first use."""
    return load_settings()


def load_settings(**init: Any) -> CoreSettings:
    cls = settings_class()
    try:
        return cls(**init)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, init)) from None


def reset_settings() -> None:
    """Forget the cached settings (tests, `--config`)."""
    get_settings.cache_clear()


# --- provenance --------------------------------------------------------------------------------------


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, full + "."))
        else:
            out[full] = value
    return out


def _env_names(key: str) -> str:
    return ENV_PREFIX + key.replace(".", "__").upper()


def source_layers(init: dict[str, Any] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """Each source's raw values, highest precedence first, flattened to dotted keys."""
    cls = settings_class()
    layers: list[tuple[str, dict[str, Any]]] = []
    if init:
        layers.append(("init", _flatten(init)))
    env = EnvSettingsSource(cls)()
    layers.append(("environment", _flatten(env)))
    try:
        dotenv = DotEnvSettingsSource(cls)()
    except Exception:
        dotenv = {}
    layers.append((".env", _flatten(dotenv)))
    layers.append((str(config_path()), _flatten(read_toml())))
    return layers


def source_of(key: str, layers: list[tuple[str, dict[str, Any]]]) -> str:
    parts = key.split(".")
    for name, values in layers:
        for i in range(len(parts), 0, -1):
            if ".".join(parts[:i]) in values:
                return f"environment {_env_names(key)}" if name == "environment" else name
    return "default"


def describe_validation_error(exc: ValidationError, init: dict[str, Any] | None = None) -> str:
    """One line: the key, where it came from, and the problem."""
    try:
        layers = source_layers(init)
    except ConfigError:
        layers = []
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "(settings)"
    source = source_of(key, layers) if layers else "unknown source"
    problem = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"invalid config {key} from {source}: {problem}{more}"


def describe_settings(settings: CoreSettings) -> list[dict[str, Any]]:
    """The effective configuration as rows of key, value (secrets masked) and source."""
    layers = source_layers()
    rows = []
    for key, value in iter_leaves(settings):
        if isinstance(value, SecretStr):
            shown: Any = "**********" if value.get_secret_value() else ""
        elif isinstance(value, Path):
            shown = str(value)
        else:
            shown = value
        rows.append({"key": key, "value": shown, "source": source_of(key, layers)})
    return rows
