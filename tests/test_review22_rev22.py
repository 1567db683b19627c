"""Review 22 (rev22): a second reading of the changes since dd790b9, with real parts."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent

from .conftest import CLI, receipt, snapshot
from .test_review22_out22 import PRINTED, _printed_text, _tillpoint

# "never ends", as a hub may write it: the last second RFC 3339 can name, in UTC
FOREVER = {
    **{k: v for k, v in PRINTED.items() if k != "validFrom"},
    "id": "o-forever",
    "validTo": "9999-12-31T23:59:59Z",
}


def test_an_offer_valid_to_the_end_of_time_prints_and_the_sale_stands(tmp_path: Path) -> None:
    """The coupon's times are turned to the store's zone (out22); an offer that ends at
    9999-12-31T23:59:59Z is past year 9999 in Moscow: `astimezone` raised OverflowError
    inside the checkout, and the sale failed ("internal error") for a coupon's date."""
    agent = Agent(tmp_path / "data", "till-1")
    agent.load_snapshot(
        snapshot(offers=[FOREVER, {**FOREVER, "id": "o-cpn", "rank": 2, "issueCoupon": True}])
    )
    result = agent.checkout(receipt_from_json(receipt(at="2026-11-23T07:15:00Z")))
    assert result.state == "CONFIRMED"
    assert result.to_json()["printedOffers"] == ["o-forever", "o-cpn"]
    paper = _printed_text(agent)
    assert "Чек r1, 23.11.2026 10:15" in paper  # the sale's time is still the store's
    assert "31.12.9999" in paper  # the bound as written: no later day exists
    agent.close()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_every_command_to_a_full_stdout_says_the_output_could_not_be_written(
    tmp_path: Path,
) -> None:
    """§10 (out22's rule, CONTRACT "Likewise a stdout that does not take the answer"): the
    commands that write their answer past `emit` (`print queue`, `hub receipts` with and
    without --json, `hub export` to stdout) still said "internal error: OSError: [Errno 28]"
    to `> /dev/full`, as if tillpoint had a bug."""
    from tillpoint.sync.loopback import sample_master_data

    data, hub = str(tmp_path / "data"), str(tmp_path / "hub")
    Agent(Path(data), "till-1").close()  # a till with its ledger
    catalogue = tmp_path / "c.json"
    catalogue.write_text(json.dumps(sample_master_data()), encoding="utf-8")
    made = _tillpoint(
        ["hub", "import", str(catalogue), "--publish", "--hub-dir", hub], subprocess.PIPE
    )
    assert made.returncode == 0, made.stderr
    enrol = ["hub", "enroll", "till-1", "--hub-dir", hub, "--out", str(tmp_path / "e.json")]
    assert _tillpoint(enrol, subprocess.PIPE).returncode == 0
    commands = [
        ["--data-dir", data, "print", "queue"],
        ["--data-dir", data, "print", "queue", "--json"],
        ["hub", "receipts", "--device", "till-1", "--hub-dir", hub],
        ["hub", "receipts", "--device", "till-1", "--hub-dir", hub, "--json"],
        ["hub", "export", "till-1", "--hub-dir", hub],
    ]
    with open("/dev/full", "w") as full:
        for args in commands:
            run = _tillpoint(args, full)
            assert run.returncode == 1, (args, run.stderr)
            assert run.stderr.count("\n") == 1, (args, run.stderr)
            assert "internal error" not in run.stderr, (args, run.stderr)
            assert "the output could not be written" in run.stderr, (args, run.stderr)


@pytest.mark.parametrize(
    "address",
    [
        *("::1", "fe80::1:50070", "hub one:50070", "hub\n:50070"),
        *("hub.example:", "hub.example:0", "hub.example:99999", "hub.example", ""),
    ],
)
def test_an_address_a_till_cannot_dial_is_refused(address: str) -> None:
    """What `hub enroll --address` checks, every case in process (one runs end to end
    below): a one-line InputError naming --address."""
    from tillpoint.agent.errors import InputError
    from tillpoint.sync.cli import _check_hub_address

    with pytest.raises(InputError) as refused:
        _check_hub_address(address)
    assert refused.value.message.startswith("--address ") and "\n" not in refused.value.message
    for fine in ("[::1]:50070", "hub.example:50070", "10.0.0.5:1", "hub:65535"):
        _check_hub_address(fine)


@pytest.mark.parametrize("address", ["::1"])
def test_hub_enroll_refuses_an_address_a_till_cannot_dial(tmp_path: Path, address: str) -> None:
    """5ae66ee reads --address as HOST:PORT so that a till is never enrolled with an
    address it dials in vain; `split_listen` read a bare IPv6 address ("::1": host ":",
    port 1), an unbracketed one, and a host with a blank or a line break as HOST:PORT:
    the device was enrolled and its bundle carried the address."""
    hub = str(tmp_path / "hub")
    assert _tillpoint(["hub", "init", "--hub-dir", hub], subprocess.PIPE).returncode == 0
    run = _tillpoint(
        ["hub", "enroll", "till-1", "--hub-dir", hub, "--address", address, "--json"],
        subprocess.PIPE,
    )
    assert run.returncode == 2, run.stdout
    assert run.stderr.startswith("tillpoint: --address ") and run.stderr.count("\n") == 1
    assert not (tmp_path / "hub" / "bundles" / "till-1.json").exists()
    ok = _tillpoint(
        ["hub", "enroll", "till-1", "--hub-dir", hub, "--address", "[::1]:50070", "--json"],
        subprocess.PIPE,
    )
    assert ok.returncode == 0, ok.stderr  # the device was not enrolled by the refused call


def test_a_long_lived_run_warns_of_its_certificate_again_not_only_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """CONTRACT: a till's certificate "is in its status and its log warns from 30 days
    before". The warning was written once, when `tillpoint run` started: a till started
    more than 30 days before its certificate's end (systemd keeps it for months) never
    warned before the hub cut it off. The sync loop now looks again (every
    `certificate_reminder_s`, once a day by default)."""
    import logging
    import time
    from datetime import UTC, datetime, timedelta

    from tillpoint.agent.app import till_agent
    from tillpoint.sync import pki
    from tillpoint.sync.client import HubLink
    from tillpoint.sync.loopback import LoopbackHub, sample_master_data, timings
    from tillpoint.sync.service import SyncService

    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    data = tmp_path / "till"
    # a certificate with 10 days left
    issued = datetime.now(UTC) - timedelta(days=pki.CERT_DAYS - 10)
    identity = pki.issue_device(hub.dir.keys, "till-1", now=issued)
    hub.server.store.enroll("till-1", identity.fingerprint, datetime.now(UTC))
    enrollment = pki.install_bundle(
        data, pki.make_bundle(hub.dir.keys, identity, hub.address), "till-1"
    )
    link = HubLink(hub.address, enrollment)
    agent = till_agent(data, "till-1")
    service = SyncService(agent, link, enrollment, timings(certificate_reminder_s=0.2))
    caplog.set_level(logging.WARNING, logger="tillpoint")
    service.start()
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            said = [r for r in caplog.records if "certificate expires at" in r.getMessage()]
            if len(said) >= 2:
                break
            time.sleep(0.1)
    finally:
        service.stop()
        agent.close()
        hub.stop()
    assert len(said) >= 2, [r.getMessage() for r in caplog.records]
    assert "hub enroll till-1 --renew" in said[0].getMessage()


def test_a_signed_file_whose_payload_is_json_python_cannot_read_is_refused(
    tmp_path: Path, cli: CLI
) -> None:
    """`snapshot load` of a signed file on an enrolled till reads the payload's header
    before the signature is checked (1b3e8d1: "the same bundle again is unchanged"): a
    payload nested past the recursion limit, or with a number of thousands of digits,
    was "internal error: RecursionError/ValueError", exit 1 (it was refused by its
    signature before). A till not enrolled read it so too. Refused now, exit 2."""
    import base64

    from tillpoint.sync.loopback import sample_master_data

    hub, data = str(tmp_path / "hub"), str(tmp_path / "till")
    catalogue = tmp_path / "c.json"
    catalogue.write_text(json.dumps(sample_master_data()), encoding="utf-8")
    steps = [
        ["hub", "import", str(catalogue), "--publish", "--hub-dir", hub],
        ["hub", "enroll", "till-1", "--hub-dir", hub, "--out", str(tmp_path / "e.json")],
        ["hub", "export", "till-1", "--hub-dir", hub, "--out", str(tmp_path / "v1.json")],
    ]
    for step in steps:
        assert cli(*step).code == 0, step
    good = json.loads((tmp_path / "v1.json").read_text(encoding="utf-8"))
    bad = {
        "deep.json": b"[" * 200_000,
        "digits.json": b'{"version": ' + b"9" * 5000 + b"}",
    }
    for name, payload in bad.items():
        doc = {k: v for k, v in good.items() if k not in ("size", "sha256")}
        doc["payload"] = base64.b64encode(payload).decode()
        (tmp_path / name).write_text(json.dumps(doc), encoding="utf-8")
    loads = [
        ["--data-dir", str(tmp_path / "plain"), "snapshot", "load", str(tmp_path / n)] for n in bad
    ]  # a till not enrolled
    install = ["--data-dir", data, "sync", "install", str(tmp_path / "e.json")]
    assert cli(*install).code == 0
    loads += [["--data-dir", data, "snapshot", "load", str(tmp_path / n)] for n in bad]
    first = ["--data-dir", data, "snapshot", "load", str(tmp_path / "v1.json")]
    assert cli(*first).code == 0  # a cache to compare
    for args in loads:
        run = cli(*args)
        assert run.code == 2, (args, run.err)
        assert "internal error" not in run.err and run.err.count("\n") == 1, run.err


def test_hub_enroll_and_export_refuse_an_out_that_is_not_a_file(tmp_path: Path, cli: CLI) -> None:
    """`hub enroll --out` writes the bundle beside it and renames it over the path: a
    directory was "internal error: IsADirectoryError" after the device was enrolled (a
    retry then needed --renew), and a pipe or a device was replaced by a regular file
    (run as root, `--out /dev/null` or `/dev/stdout` replaced the machine's own). `hub
    export --out` of a directory or a missing folder was "internal error". Refused before
    anything is written or enrolled (exit 2), the path left as it was."""
    from tillpoint.sync.loopback import sample_master_data

    hub = str(tmp_path / "hub")
    catalogue = tmp_path / "c.json"
    catalogue.write_text(json.dumps(sample_master_data()), encoding="utf-8")
    made = cli("hub", "import", str(catalogue), "--publish", "--hub-dir", hub)
    assert made.code == 0, made.err
    folder, pipe = tmp_path / "folder", tmp_path / "pipe"
    folder.mkdir()
    os.mkfifo(pipe)
    for out in (folder, pipe):
        run = cli("hub", "enroll", "till-1", "--hub-dir", hub, "--out", str(out))
        assert run.code == 2, run.err
        assert "internal error" not in run.err and run.err.count("\n") == 1, run.err
    assert folder.is_dir() and stat.S_ISFIFO(pipe.stat().st_mode)
    # nothing was enrolled: the same id goes in without --renew
    bundle = tmp_path / "e.json"
    enrol = ["hub", "enroll", "till-1", "--hub-dir", hub, "--out", str(bundle)]
    assert cli(*enrol).code == 0
    for out in (folder, pipe, tmp_path / "missing" / "v1.json"):
        run = cli("hub", "export", "till-1", "--hub-dir", hub, "--out", str(out))
        assert run.code == 2, run.err
        assert "internal error" not in run.err and run.err.count("\n") == 1, run.err
    assert folder.is_dir() and stat.S_ISFIFO(pipe.stat().st_mode)
