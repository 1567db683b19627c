"""Review 53 (lead): what the session's reviews left. mut53a's "Left": a bare IPv6 hub
address (`hub.address = "::1"`) was refused with the examples of a listen address
(`[::1]:8061, [::]:8061`: the HTTP door's port, and a wildcard a till cannot dial); a
hub address's refusal now shows the hub's port alone, a listen's keeps its own."""

from __future__ import annotations

from pathlib import Path

import pytest
from tillpoint.agent.cli import main


def _check(tmp_path: Path, capsys: pytest.CaptureFixture[str], table: str, line: str) -> str:
    conf = tmp_path / "tillpoint.toml"
    conf.write_text(f'device_id = "till-1"\ndata_dir = "{tmp_path / "data"}"\n[{table}]\n{line}\n')
    capsys.readouterr()
    assert main(["--config", str(conf), "config", "check"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize("address", ["::1", "[::1:50070", "fe80::1:50070"])
def test_a_hub_address_refused_shows_the_hub_s_port(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], address: str
) -> None:
    err = _check(tmp_path, capsys, "hub", f'address = "{address}"')
    assert f"hub.address '{address}'" in err and "[::1]:50070" in err
    assert "8061" not in err and "[::]" not in err


def test_a_listen_refused_keeps_the_listen_s_examples(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TILLPOINT_HTTP__LISTEN", raising=False)  # conftest's, over the file
    err = _check(tmp_path, capsys, "http", 'listen = "::8061"')
    assert "[::1]:8061, [::]:8061" in err
