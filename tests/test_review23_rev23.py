"""Review 23 (rev23): a second look at this session's change."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from tillpoint.agent.cli import main
from tillpoint.sync.loopback import LoopbackHub, sample_master_data

from .conftest import CLI

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_an_unknown_snapshot_field_nested_deep_is_left_out_not_an_internal_error(
    cli: CLI, tmp_path: Path
) -> None:
    """A field the contract does not define holding a value nested some hundreds deep
    (within what the JSON reader takes): the copy without it was made by `deepcopy` of
    the whole document, which ran out of recursion ("internal error", exit 1)."""
    doc = json.loads((EXAMPLES / "snapshot.json").read_text(encoding="utf-8"))
    text = json.dumps(doc, ensure_ascii=False)
    deep = "[" * 600 + "]" * 600
    assert text.count('"customers": [{') == 1
    text = text.replace('"customers": [{', '"customers": [{"zz": ' + deep + ", ", 1)
    path = tmp_path / "deep.json"
    path.write_text(text, encoding="utf-8")
    loaded = cli("snapshot", "load", path, "--json")
    assert loaded.code == 0, loaded.err
    assert json.loads(loaded.out)["version"] == 7
    assert "customers[].zz" in loaded.err and "internal error" not in loaded.err


def test_the_warning_naming_unknown_fields_is_one_bounded_line(cli: CLI, tmp_path: Path) -> None:
    """The names in the warning are the snapshot's own keys: a line break, a terminal's
    escape sequence or a key of 100,000 characters was printed as it was (two lines on
    stderr, the terminal's colours changed, 100 KB), where every message is one line."""
    doc = json.loads((EXAMPLES / "snapshot.json").read_text(encoding="utf-8"))
    doc["customers"][0]["x\ny\u2028z\x1b[31m"] = 1
    doc["customers"][1]["k" * 100_000] = 1
    loaded = cli("snapshot", "load", doc, "--json")
    assert loaded.code == 0, loaded.err
    assert loaded.err.startswith("tillpoint: warning: ") and loaded.err.count("\n") == 1
    assert "\x1b" not in loaded.err and "\u2028" not in loaded.err
    assert len(loaded.err) < 2000
    assert "customers[].x\\ny" in loaded.err
    assert loaded.err.rstrip().endswith("they count once the till is upgraded")


def test_a_pulled_snapshot_with_a_newer_hubs_fields_stores_none_of_them(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The path the decision is for (§3): a hub newer than the till publishes fields and a
    section this till does not know. `sync now` applies the signed snapshot, logs what it
    left out (a warning; stdout: one JSON document), and no file of the data directory
    (cache generations, WAL, the pull's own files) holds any of it."""
    monkeypatch.setenv("TILLPOINT_DEVICE_ID", "till-1")
    hub_dir, catalogue = tmp_path / "hub", tmp_path / "catalogue.json"
    catalogue.write_text(json.dumps(sample_master_data()), encoding="utf-8")
    assert main(["hub", "init", "--hub-dir", str(hub_dir)]) == 0
    assert main(["hub", "import", str(catalogue), "--hub-dir", str(hub_dir)]) == 0
    assert main(["hub", "publish", "--hub-dir", str(hub_dir)]) == 0
    bundle, till = tmp_path / "bundle.json", tmp_path / "till"
    enroll = ["hub", "enroll", "till-1", "--hub-dir", str(hub_dir), "--address", "127.0.0.1:1"]
    assert main([*enroll, "--out", str(bundle)]) == 0
    assert main(["sync", "install", str(bundle), "--data-dir", str(till)]) == 0
    export = ["hub", "export", "till-1", "--hub-dir", str(hub_dir)]
    assert main([*export, "--out", str(tmp_path / "signed.json")]) == 0  # the payload's file
    _add_unknown_fields(hub_dir)
    capsys.readouterr()
    hub = LoopbackHub(hub_dir)
    try:
        monkeypatch.setenv("TILLPOINT_HUB__ADDRESS", hub.address)
        code = main(["sync", "now", "--data-dir", str(till), "--json"])
        out, err = capsys.readouterr()
        assert code == 0, err
        assert json.loads(out)["pull"]["status"] == "APPLIED"
        (warning,) = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
        assert "customers[].lastName" in warning and "section crm" in warning
        stored = [p for p in till.rglob("*") if p.is_file()]
        assert any(p.name.startswith("cache-") for p in stored)
        assert not [p for p in stored if SURNAME.encode() in p.read_bytes()]
    finally:
        hub.stop()


SURNAME = "Фамилияъ"


def _add_unknown_fields(hub_dir: Path) -> None:
    """The published snapshot as a newer hub would sign it: a `lastName` in each customer
    row and a section `crm` (the payload rewritten and signed again with the hub's key)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from tillpoint.sync import signing

    (snap,) = (hub_dir / "snapshots").glob("*-full.snap")
    meta_path = snap.with_suffix(".json")
    lines, section = [], None
    for line in snap.read_text(encoding="utf-8").splitlines():
        if line.startswith('{"section"'):
            section = json.loads(line)["section"]
        elif section == "customers":
            line = json.dumps({**json.loads(line), "lastName": SURNAME}, ensure_ascii=False)
        lines.append(line)
    lines[1:1] = ['{"section":"crm"}', json.dumps({"surname": SURNAME}, ensure_ascii=False)]
    payload = ("\n".join(lines) + "\n").encode()
    key = serialization.load_pem_private_key((hub_dir / "keys" / "snapshot.key").read_bytes(), None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    snap.write_bytes(payload)
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta.update(
        size=len(payload),
        sha256=hashlib.sha256(payload).hexdigest(),
        signature=base64.b64encode(signing.sign(key, payload)).decode(),
    )
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
