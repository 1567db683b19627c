"""`tillpoint hub ...` and `tillpoint sync ...`: one JSON document with --json, one error line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.cli import main
from tillpoint.agent.results import receipt_from_json
from tillpoint.sync import is_enrolled, load_snapshot_file
from tillpoint.sync.loopback import LoopbackHub, sample_master_data
from tillpoint.sync.pull import cache_version


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    doc = json.loads(out) if out.strip() and "--json" in argv else out
    return code, doc, err


def test_hub_import_publish_enroll_and_sync_now(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    hub_dir = tmp_path / "hub"
    catalogue = tmp_path / "catalogue.json"
    catalogue.write_text(json.dumps(sample_master_data()), encoding="utf-8")
    code, doc, err = run(
        capsys, "hub", "import", str(catalogue), "--hub-dir", str(hub_dir), "--json"
    )
    assert code == 0 and doc["byKind"]["customer"] == 2 and doc["draftRows"] == 10
    code, doc, _ = run(capsys, "hub", "publish", "--hub-dir", str(hub_dir), "--json")
    assert code == 0 and doc["version"] == 1 and doc["changedRows"] == 10

    hub = LoopbackHub(hub_dir)  # `hub serve`, in this process
    try:
        bundle = tmp_path / "till-1.json"
        code, doc, _ = run(
            capsys,
            "hub",
            "enroll",
            "till-1",
            "--hub-dir",
            str(hub_dir),
            "--address",
            hub.address,
            "--out",
            str(bundle),
            "--json",
        )
        assert code == 0 and doc["deviceId"] == "till-1"
        assert bundle.stat().st_mode & 0o077 == 0  # it holds the till's private key

        till = tmp_path / "till"
        monkeypatch.setenv("TILLPOINT_DEVICE_ID", "till-1")
        code, doc, _ = run(
            capsys, "sync", "install", str(bundle), "--data-dir", str(till), "--json"
        )
        assert code == 0 and doc == {
            "deviceId": "till-1",
            "hubAddress": hub.address,
            "enrolled": True,
            "certificateExpiresAt": doc["certificateExpiresAt"],
            "restartNeeded": False,  # no `tillpoint run` holds the data directory
        }
        assert doc["certificateExpiresAt"].endswith("Z")
        assert is_enrolled(till)

        code, doc, err = run(capsys, "sync", "now", "--data-dir", str(till), "--json")
        assert code == 0, err
        assert doc["pull"]["status"] == "APPLIED" and doc["pull"]["version"] == 1
        assert doc["pushed"] == 0 and doc["outboxDepth"] == 0
        assert cache_version(till) == 1

        exported = tmp_path / "signed.json"
        code, doc, _ = run(
            capsys,
            "hub",
            "export",
            "till-1",
            "--hub-dir",
            str(hub_dir),
            "--out",
            str(exported),
            "--json",
        )
        assert code == 0 and doc["version"] == 1
        assert json.loads(exported.read_text())["format"] == "tillpoint-signed-snapshot/3"

        code, doc, _ = run(capsys, "hub", "balance", "c-1", "--hub-dir", str(hub_dir), "--json")
        assert doc == {
            "customerId": "c-1",
            "availablePoints": 1200,
            "pendingPoints": 0,
            "heldPoints": 0,
        }
    finally:
        hub.stop()

    # the hub is gone: one line, exit 1, no traceback
    code, out, err = run(capsys, "sync", "now", "--data-dir", str(till), "--json")
    assert code == 1 and out == ""
    assert err.startswith("tillpoint: the hub is unreachable") and err.count("\n") == 1


def test_a_bad_import_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"customer": {"id": "c-1", "balancePoints": "x"}}\n{oops\n', encoding="utf-8")
    code, out, err = run(capsys, "hub", "import", str(bad), "--hub-dir", str(tmp_path / "h"))
    assert code == 2 and out == ""
    assert "line 1: balancePoints must be a whole number" in err
    assert "line 2: not valid JSON" in err
    assert err.count("\n") == 1


def test_install_refuses_a_bundle_for_another_device(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    hub_dir = tmp_path / "hub"
    bundle = tmp_path / "b.json"
    assert run(capsys, "hub", "init", "--hub-dir", str(hub_dir))[0] == 0
    assert (
        run(capsys, "hub", "enroll", "till-1", "--hub-dir", str(hub_dir), "--out", str(bundle))[0]
        == 0
    )
    monkeypatch.setenv("TILLPOINT_DEVICE_ID", "till-2")
    code, _, err = run(capsys, "sync", "install", str(bundle), "--data-dir", str(tmp_path / "t"))
    assert code == 2 and 'set device_id = "till-1"' in err
    code, _, err = run(capsys, "sync", "now", "--data-dir", str(tmp_path / "t"))
    assert code == 2 and "not enrolled" in err


def test_hub_without_an_action_explains_itself(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "hub")
    assert code == 2 and "needs an action" in err
    code, _, err = run(capsys, "hub", "publish", "--hub-dir", str(tmp_path), "--ttl-hours", "0")
    assert code == 2 and "ttl" in err


def test_plain_files_only_on_a_standalone_till(tmp_path: Path) -> None:
    from tillpoint.agent.service import Agent

    agent = Agent(tmp_path / "t", "till-1")
    try:
        doc = {"version": 3, **sample_master_data()}
        assert load_snapshot_file(agent, doc).version == 3
    finally:
        agent.close()


def test_hub_serve_runs_until_sigterm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from tillpoint.sync.client import HubLink
    from tillpoint.sync.loopback import wait_for
    from tillpoint.sync.pki import install_bundle

    hub_dir = tmp_path / "hub"
    catalogue = tmp_path / "c.json"
    catalogue.write_text(json.dumps(sample_master_data()), encoding="utf-8")
    assert (
        run(capsys, "hub", "import", str(catalogue), "--publish", "--hub-dir", str(hub_dir))[0] == 0
    )
    port_file = tmp_path / "port"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TILLPOINT_") or k == "TILLPOINT_HUB_STORE"  # --hub-store
    }
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("tillpoint")),
            "hub",
            "serve",
            "--hub-dir",
            str(hub_dir),
            "--listen",
            "127.0.0.1:0",
            "--port-file",
            str(port_file),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        port = int(
            wait_for(lambda: port_file.exists() and port_file.read_text().strip(), timeout=20)
        )
        bundle = tmp_path / "b.json"
        run(
            capsys,
            "hub",
            "enroll",
            "till-1",
            "--hub-dir",
            str(hub_dir),
            "--address",
            f"127.0.0.1:{port}",
            "--out",
            str(bundle),
        )
        enrollment = install_bundle(tmp_path / "till", json.loads(bundle.read_text()), "till-1")
        from tillpoint.agent.service import Agent
        from tillpoint.sync.pull import Puller

        agent = Agent(tmp_path / "till", "till-1")
        link = HubLink(enrollment.hub_address, enrollment)
        assert Puller(agent, link, enrollment, call_timeout_s=5).pull().version == 1
        link.close()
        agent.close()
        proc.send_signal(signal.SIGHUP)  # ended the hub, clean to systemd: it stayed down
        time.sleep(0.5)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert proc.stderr is not None
        assert b"SIGHUP ignored" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        assert proc.stderr is not None
        proc.stderr.close()


def test_snapshot_load_on_an_enrolled_till_takes_only_signed_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    hub_dir = tmp_path / "hub"
    catalogue = tmp_path / "c.json"
    catalogue.write_text(json.dumps({"version": 9, **sample_master_data()}), encoding="utf-8")
    assert (
        run(capsys, "hub", "import", str(catalogue), "--publish", "--hub-dir", str(hub_dir))[0] == 0
    )
    bundle, signed = tmp_path / "b.json", tmp_path / "signed.json"
    run(capsys, "hub", "enroll", "till-1", "--hub-dir", str(hub_dir), "--out", str(bundle))
    run(capsys, "hub", "export", "till-1", "--hub-dir", str(hub_dir), "--out", str(signed))
    till = str(tmp_path / "till")
    monkeypatch.setenv("TILLPOINT_DEVICE_ID", "till-1")
    assert run(capsys, "snapshot", "load", str(catalogue), "--data-dir", till)[0] == 0
    assert run(capsys, "sync", "install", str(bundle), "--data-dir", till)[0] == 0
    code, _, err = run(capsys, "snapshot", "load", str(catalogue), "--data-dir", till)
    assert code == 2 and "only signed" in err
    # the hub's version 1 is older than the file's 9: refused as a rollback, one line
    code, _, err = run(capsys, "snapshot", "load", str(signed), "--data-dir", till)
    assert code == 2 and "not newer" in err and err.count("\n") == 1
    # the hub numbers past the till's cache, and the signed file is taken
    code, doc, _ = run(
        capsys, "hub", "publish", "--min-version", "10", "--hub-dir", str(hub_dir), "--json"
    )
    assert code == 0 and doc["version"] == 10
    run(capsys, "hub", "export", "till-1", "--hub-dir", str(hub_dir), "--out", str(signed))
    code, doc, err = run(capsys, "snapshot", "load", str(signed), "--data-dir", till, "--json")
    assert code == 0 and doc["version"] == 10, err


def test_reenrolment_with_another_hub_is_refused_while_the_outbox_holds_transactions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tillpoint.agent.service import Agent
    from tillpoint.sync.loopback import receipt

    hub_dir = tmp_path / "hub"
    bundle = tmp_path / "b.json"
    monkeypatch.setenv("TILLPOINT_DEVICE_ID", "till-1")
    till = tmp_path / "till"
    assert run(capsys, "hub", "init", "--hub-dir", str(hub_dir))[0] == 0
    assert (
        run(capsys, "hub", "enroll", "till-1", "--hub-dir", str(hub_dir), "--out", str(bundle))[0]
        == 0
    )
    assert run(capsys, "sync", "install", str(bundle), "--data-dir", str(till))[0] == 0
    # The till sells while its hub is away: a transaction waits in the outbox.
    agent = Agent(till, "till-1")  # seeded directly: the signed-only rule is the CLI's
    doc = sample_master_data()
    doc.update({"version": 1, "baseVersion": 0})
    agent.load_snapshot(doc)
    agent.checkout(receipt_from_json(receipt("r1", doc["cards"][0]["number"])))
    agent.close()
    # a bundle of another hub (another CA): the waiting sale would never reach the first
    other_hub, other = tmp_path / "hub-2", tmp_path / "other.json"
    assert run(capsys, "hub", "init", "--hub-dir", str(other_hub))[0] == 0
    argv = ["hub", "enroll", "till-1", "--hub-dir", str(other_hub), "--out", str(other)]
    assert run(capsys, *argv)[0] == 0
    code, _, err = run(capsys, "sync", "install", str(other), "--data-dir", str(till))
    assert code == 2 and "re-enrolment with another hub or as another device refused" in err
    # the same hub's bundle again (a renewed certificate) is fine: the sale drains to it
    assert run(capsys, "sync", "install", str(bundle), "--data-dir", str(till))[0] == 0


def test_a_revoked_till_enrolled_again_by_its_hub_delivers_its_waiting_sales(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Revoked (a lost key), the till sells OFFLINE and cannot push; the hub enrols it
    again and the new bundle is installed over a non-empty outbox, which then drains. It
    used to be refused ("drain the outbox first"), which the revoked certificate could
    never do: only `reset --force` got out, discarding the sales."""
    from tillpoint.agent.service import Agent
    from tillpoint.sync.loopback import receipt

    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    try:
        hub_dir, till = str(tmp_path / "hub"), tmp_path / "till"
        monkeypatch.setenv("TILLPOINT_DEVICE_ID", "till-1")
        hub.enroll("till-1", till)
        assert run(capsys, "sync", "now", "--data-dir", str(till), "--json")[0] == 0
        assert run(capsys, "hub", "revoke", "till-1", "--hub-dir", hub_dir)[0] == 0
        agent = Agent(till, "till-1")
        agent.checkout(receipt_from_json(receipt("r1", "2770000000017")))
        agent.close()
        code, _, err = run(capsys, "sync", "now", "--data-dir", str(till), "--json")
        assert code != 0 and "revoked" in err
        renewed = tmp_path / "renewed.json"
        argv = ["hub", "enroll", "till-1", "--hub-dir", hub_dir, "--address", hub.address]
        # a mistyped id must not cut a live till off: an existing id needs --renew
        code, _, err = run(capsys, *argv, "--out", str(renewed))
        assert code == 2 and "already revoked" in err and "--renew" in err
        assert not renewed.exists()
        assert run(capsys, *argv, "--out", str(renewed), "--renew")[0] == 0
        code, _, err = run(capsys, "sync", "install", str(renewed), "--data-dir", str(till))
        assert code == 0, err
        code, doc, err = run(capsys, "sync", "now", "--data-dir", str(till), "--json")
        assert code == 0, err
        assert (doc["pushed"], doc["outboxDepth"]) == (1, 0)
        code, doc, err = run(capsys, "hub", "status", "--hub-dir", hub_dir, "--json")
        assert code == 0, err
        (device,) = doc["devices"]
        assert (device["deviceId"], device["ackedThroughSeq"]) == ("till-1", 1)
        assert doc["version"] >= 1 and doc["couponConflicts"] == doc["setAside"] == 0
    finally:
        hub.stop()


@pytest.mark.parametrize(
    "argv",
    [
        ["status"],
        ["balance", "c-1"],
        ["publish"],
        ["enroll", "till-1"],
        ["revoke", "till-1"],
        ["export", "till-1"],
        ["receipts", "--device", "till-1"],
        ["coupon-conflicts"],
        ["set-aside"],
        ["serve", "--listen", "127.0.0.1:0"],
    ],
)
def test_hub_commands_refuse_a_directory_without_a_hub(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    wrong = tmp_path / "typo"
    code, out, err = run(capsys, "hub", *argv, "--hub-dir", str(wrong))
    assert code == 2 and out == ""
    assert err == f"tillpoint: no hub at {wrong}: run 'tillpoint hub init'\n"
    assert not wrong.exists()  # nothing made there
    (wrong / "keys").mkdir(parents=True)  # a directory, even with keys, is not a hub
    assert run(capsys, "hub", *argv, "--hub-dir", str(wrong))[0] == 2
    assert not (wrong / "hub.db").exists()


@pytest.mark.parametrize("listen", ["127.0.0.1:99999", "127.0.0.1", ":99999"])
def test_hub_serve_refuses_a_listen_address_grpc_would_bind_otherwise(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], listen: str
) -> None:
    """A bare grpc.server took port 99999 as 34463."""
    hub_dir = tmp_path / "hub"
    assert run(capsys, "hub", "init", "--hub-dir", str(hub_dir))[0] == 0
    code, _, err = run(capsys, "hub", "serve", "--hub-dir", str(hub_dir), "--listen", listen)
    assert code == 2 and err.startswith("tillpoint: --listen ") and err.count("\n") == 1, err


def test_init_or_import_make_the_hub_the_other_commands_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TILLPOINT_HUB_STORE", raising=False)  # two hubs: one hub.db each
    made = tmp_path / "made"
    assert run(capsys, "hub", "init", "--hub-dir", str(made))[0] == 0
    code, doc, err = run(capsys, "hub", "publish", "--hub-dir", str(made), "--json")
    assert code == 0 and doc["version"] == 1, err
    imported = tmp_path / "imported"
    catalogue = tmp_path / "catalogue.json"
    catalogue.write_text(json.dumps(sample_master_data()), encoding="utf-8")
    assert run(capsys, "hub", "import", str(catalogue), "--hub-dir", str(imported))[0] == 0
    code, doc, err = run(capsys, "hub", "publish", "--hub-dir", str(imported), "--json")
    assert code == 0 and doc["version"] == 1 and doc["changedRows"] == 10, err
    code, doc, err = run(capsys, "hub", "balance", "c-1", "--hub-dir", str(imported), "--json")
    assert code == 0 and doc["availablePoints"] == 1200, err
