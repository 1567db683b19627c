"""The agent's configuration: one TOML file, overridden by TILLPOINT_* environment variables.

Precedence (highest first): command-line flags, environment (`TILLPOINT_DEVICE_ID`,
`TILLPOINT_DATA_DIR`, `TILLPOINT_HUB__ADDRESS`, ...), the TOML file, the defaults below.
`packaging/tillpoint.example.toml` documents every key.
"""

from __future__ import annotations

import os
import socket
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .errors import InputError
from .models import describe


def default_data_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/tillpoint")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "tillpoint"


class HubSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str = ""  # host:port of the hub; empty: a standalone till (always OFFLINE)
    redeem_timeout_ms: int = Field(300, gt=0, le=60_000)
    call_timeout_ms: int = Field(5000, gt=0, le=600_000)
    poll_interval_s: float = Field(60, gt=0)
    max_snapshot_mib: int = Field(8192, gt=0)  # a bigger snapshot from the hub is refused


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    listen: str = "127.0.0.1:50061"  # the local PosAgent gRPC server
    max_workers: int = Field(8, ge=1, le=64)


class LogSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "json", "text"] = "auto"  # auto: JSON unless on a terminal


class MetricsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    listen: str = "127.0.0.1:9464"  # Prometheus text at http://<listen>/metrics


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TILLPOINT_", env_nested_delimiter="__", extra="forbid"
    )

    device_id: str = Field(default_factory=socket.gethostname, min_length=1, max_length=100)
    data_dir: Path = Field(default_factory=default_data_dir)
    build_workers: int = Field(0, ge=0, le=16)  # full-snapshot build processes; 0: auto
    hub: HubSettings = HubSettings()
    server: ServerSettings = ServerSettings()
    log: LogSettings = LogSettings()
    metrics: MetricsSettings = MetricsSettings()
    printer: dict[str, Any] = Field(default_factory=dict)
    display: dict[str, Any] = Field(default_factory=dict)
    scanner: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment beats the file (passed as init values); flags beat both (`load`).
        return (env_settings, init_settings)


def load(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read and validate the configuration; a problem names the key and what is wrong."""
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            values = tomllib.loads(Path(config_file).read_text(encoding="utf-8"))
        except OSError as exc:
            raise InputError(f"cannot read config {config_file}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"config {config_file}: {exc}") from None
    try:
        settings = Settings(**values)
        flags = {k: v for k, v in overrides.items() if v is not None}
        if flags:  # field by field: a new Settings would read the environment again and win
            checked: dict[str, Any] = {}
            for key, value in flags.items():
                kind: Any = Settings.model_fields[key].annotation
                checked[key] = TypeAdapter(kind).validate_python(value)
            settings = settings.model_copy(update=checked)
    except ValidationError as exc:
        raise InputError(f"config: {describe(exc)}") from None
    return settings
