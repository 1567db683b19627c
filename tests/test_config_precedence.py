"""Where each setting comes from: command line, then environment, then the file, then defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from tillpoint.agent.config import load
from tillpoint.agent.errors import InputError

from .conftest import CLI


def _file(tmp_path: Path) -> Path:
    conf = tmp_path / "tillpoint.toml"
    conf.write_text(
        'device_id = "from-file"\ndata_dir = "/file/data"\n'
        "[hub]\ncall_timeout_ms = 1234\nredeem_timeout_ms = 250\n",
        encoding="utf-8",
    )
    return conf


def test_flag_beats_environment_beats_file_beats_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = _file(tmp_path)
    monkeypatch.delenv("TILLPOINT_DEVICE_ID", raising=False)
    monkeypatch.setenv("TILLPOINT_DATA_DIR", "/env/data")
    monkeypatch.setenv("TILLPOINT_HUB__REDEEM_TIMEOUT_MS", "200")
    both = load(conf, data_dir=Path("/flag/data"))
    assert both.data_dir == Path("/flag/data")  # the flag wins over the environment
    assert both.hub.redeem_timeout_ms == 200  # the environment wins over the file...
    assert both.hub.call_timeout_ms == 1234  # ...key by key inside a table
    assert both.device_id == "from-file"  # the file wins over the default
    assert both.hub.poll_interval_s == 60  # the default
    assert load(conf).data_dir == Path("/env/data")
    monkeypatch.delenv("TILLPOINT_DATA_DIR")
    assert load(conf).data_dir == Path("/file/data")
    assert load(conf, data_dir=None).data_dir == Path("/file/data")  # None: flag not given


def test_cli_data_dir_flag_wins_over_environment(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TILLPOINT_DATA_DIR", str(tmp_path / "env"))
    run = cli("config", "check", "--json")  # the fixture passes --data-dir <tmp>/data
    assert run.code == 0, run.err
    assert run.json()["dataDir"] == str(tmp_path / "data")


def test_bad_file_and_bad_environment_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(InputError, match="cannot read config"):
        load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("x =\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"^config .*bad.toml"):
        load(bad)
    monkeypatch.setenv("TILLPOINT_HUB__CALL_TIMEOUT_MS", "soon")
    with pytest.raises(InputError, match=r"hub\.call_timeout_ms"):
        load(None)
