"""Review 42, polish42: small things a support engineer or an integrator meets, left by
session 40's reviews (note40, "Left"), each reproduced with the real function or a real
process, then fixed or pinned (docs/DECISIONS.md, "Review 42 (polish42)").

1. A configuration's number of seconds written `nan` (TOML `nan`, or the environment's
   "nan") was refused "must be more than 0" (`hub.poll_interval_s`) or "must be 3600 or
   less" (the device tables' seconds): a line that says a bound the value does not miss.
   Every float setting of the configuration, at `nan`, `inf` and `-inf`, is refused with
   one line naming the key and saying what is wrong, exit 2, at `config check` and `run`
   (`inf` as `hub.poll_interval_s` excepted: taken as a day with a warning, review 39).
"""

from __future__ import annotations

import os
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent import config

from .conftest import CLI

# ---------------------------------------------------------------- 1. nan, inf, -inf settings


def _float_settings() -> list[tuple[str, str]]:
    """Every float setting of the configuration, (table, key): the hub's and the device
    tables' (found from the models, so a new one is checked too)."""
    models: dict[str, Any] = {"hub": config.HubSettings, **config.device_models()}
    found = []
    for table, model in models.items():
        for key, field in model.model_fields.items():
            kinds = (field.annotation, *typing.get_args(field.annotation))
            if float in [typing.get_origin(k) and typing.get_args(k)[0] or k for k in kinds]:
                found.append((table, key))
    return found


FLOAT_SETTINGS = _float_settings()
TILLPOINT = str(Path(sys.executable).with_name("tillpoint"))


def test_the_float_settings_are_found() -> None:
    assert ("hub", "poll_interval_s") in FLOAT_SETTINGS
    assert ("printer", "probe_interval_s") in FLOAT_SETTINGS
    assert ("scanner", "idle_flush_s") in FLOAT_SETTINGS
    assert len(FLOAT_SETTINGS) >= 15, FLOAT_SETTINGS


def _file(tmp_path: Path, table: str, key: str, written: str) -> Path:
    kind = "" if table == "hub" else 'kind = "none"\n'
    path = tmp_path / "tillpoint.toml"
    path.write_text(f"[{table}]\n{kind}{key} = {written}\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("written", ["nan", "inf", "-inf", "+nan"])
@pytest.mark.parametrize(("table", "key"), FLOAT_SETTINGS)
def test_s10_a_float_setting_not_finite_is_refused_naming_it(
    cli: CLI, tmp_path: Path, table: str, key: str, written: str
) -> None:
    """CONTRACT §10: a configuration error is exit 2 and one line naming the key; a
    number that is not finite is told as such, not as a bound it does not miss."""
    path = _file(tmp_path, table, key, written)
    result = cli("--config", path, "config", "check")
    assert result.code == 2, result
    line = result.err.strip()
    assert "\n" not in line and f"{table}.{key}" in line.replace("[", "").replace("]", ""), line
    if (table, key, written) == ("hub", "poll_interval_s", "inf"):  # review 39: a day, said
        assert "inf is taken as 86400" in line, line
        return
    assert f"must be a finite number, not {written.lstrip('+')}" in line, line
    assert "3600 or less" not in line and "more than 0" not in line, line


@pytest.mark.parametrize("written", ["nan", "-inf", "NaN"])
def test_s10_a_poll_interval_not_finite_in_the_environment_is_refused(
    cli: CLI, monkeypatch: pytest.MonkeyPatch, written: str
) -> None:
    monkeypatch.setenv("TILLPOINT_HUB__POLL_INTERVAL_S", written)
    result = cli("config", "check")
    assert result.code == 2, result
    assert "hub.poll_interval_s" in result.err and "TILLPOINT_HUB__POLL_INTERVAL_S" in result.err
    assert "must be a finite number, not " in result.err, result.err


def test_s10_run_refuses_a_nan_poll_interval_at_start(tmp_path: Path) -> None:
    """The real `tillpoint run` process: one line, exit 2, nothing served."""
    path = _file(tmp_path, "hub", "poll_interval_s", "nan")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TILLPOINT_")}
    env["TILLPOINT_DEVICE_ID"] = "till-1"
    proc = subprocess.run(
        [
            TILLPOINT,
            "--config",
            str(path),
            "--data-dir",
            str(tmp_path / "data"),
            "run",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert proc.returncode == 2, proc
    assert "hub.poll_interval_s must be a finite number, not nan" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
