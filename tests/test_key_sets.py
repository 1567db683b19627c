"""A till's enrolment files and the hub's server key and certificate are replaced as one
set (`pki._write_set`): a crash at any point of a renewal leaves the old set or the new
one, never a key beside another key's certificate (every TLS handshake would fail, and the
till would only say that the hub is unreachable).

Each crash is real: a forked child (of a fork server, not of the pytest worker) replaces
the set and SIGKILLs itself just before its n-th rename, for every n until one run
finishes; the parent then reads the files the way the agent and the hub do."""

from __future__ import annotations

import multiprocessing
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from tillpoint.sync import is_enrolled, pki

from . import forked
from .conftest import CLI

RECEIPT = Path(__file__).resolve().parents[1] / "examples" / "receipt-card.json"


# The children are forked from multiprocessing's fork server, a process of its own that
# imports only the code under test, never from the pytest worker (review 42, ledger42):
# a worker holds the threads of earlier tests (gRPC's, a hub's), and a child forked from
# it died in a library's at-fork handler or, once the fork had returned, in `pathlib`
# (SIGSEGV; review 40 forked again when it died in the fork itself, which did not cover
# the second).
FORKS = multiprocessing.get_context("forkserver")
FORKS.set_forkserver_preload(["tillpoint.sync.pki", "tests.forked"])


def crashed_at(rename: int, work: Callable[..., object], *args: Any) -> bool:
    """Run `work(*args)` in a forked child killed just before its `rename`-th os.replace;
    True when it was killed (False: it finished with fewer renames)."""
    child = FORKS.Process(target=forked.killed_before, args=(rename, work, args))
    child.start()
    child.join(60)
    assert child.exitcode is not None, "the child did not end within 60 s"
    if child.exitcode < 0:
        assert child.exitcode == -signal.SIGKILL, f"the child died of signal {-child.exitcode}"
        return True
    assert child.exitcode == 0, "the child failed before its crash point"
    return False


def pair_matches(key_pem: bytes, cert_pem: bytes) -> bool:
    key = serialization.load_pem_private_key(key_pem, password=None)
    cert = x509.load_pem_x509_certificate(cert_pem)
    return key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]


@pytest.fixture()
def keys(tmp_path: Path) -> pki.HubKeys:
    made = pki.HubKeys(tmp_path / "hub" / "keys")
    assert pki.init_hub_keys(made)
    return made


def test_a_till_s_renewal_crashed_anywhere_leaves_the_old_set_or_the_new(
    keys: pki.HubKeys, tmp_path: Path
) -> None:
    first = pki.make_bundle(keys, pki.issue_device(keys, "till-1"), "hub:7443")
    renewal = pki.make_bundle(keys, pki.issue_device(keys, "till-1"), "hub2:7443")
    installed = tmp_path / "installed"
    pki.install_bundle(installed, first, "till-1")
    outcomes = []
    for rename in range(1, 30):
        till = tmp_path / f"till-{rename}"
        shutil.copytree(installed, till)
        killed = crashed_at(rename, pki.install_bundle, till, renewal, "till-1")
        assert is_enrolled(till)
        enrollment = pki.load_enrollment(till)
        assert enrollment is not None
        ca, key, cert = enrollment.channel_material()
        assert pair_matches(key, cert), f"a crash at rename {rename} mixed the pair"
        which = "new" if cert == renewal["certificate"].encode() else "old"
        expected = renewal if which == "new" else first
        assert key == expected["privateKey"].encode()
        assert ca == expected["caCertificate"].encode()
        assert enrollment.hub_address == ("hub2:7443" if which == "new" else "hub:7443")
        assert not (till / "enrollment" / ".replacing.json").exists()
        outcomes.append(which)
        if not killed:
            break
        # the next install (the cashier runs it again) removes what the crash left
        pki.install_bundle(till, renewal, "till-1")
        assert not list((till / "enrollment").glob("*.next"))
    assert outcomes[-1] == "new" and "old" in outcomes and len(outcomes) > 5, outcomes


def test_a_first_install_crashed_after_its_commit_point_is_an_enrolment(
    keys: pki.HubKeys, tmp_path: Path
) -> None:
    bundle = pki.make_bundle(keys, pki.issue_device(keys, "till-1"), "hub:7443")
    states = set()
    for rename in range(1, 30):
        till = tmp_path / f"till-{rename}"
        killed = crashed_at(rename, pki.install_bundle, till, bundle, "till-1")
        enrollment = pki.load_enrollment(till) if is_enrolled(till) else None
        if enrollment is not None:
            _, key, cert = enrollment.channel_material()
            assert pair_matches(key, cert) and cert == bundle["certificate"].encode()
        states.add(enrollment is not None)
        if not killed:
            break
    assert states == {False, True}


def test_the_hub_s_server_renewal_crashed_anywhere_leaves_a_matching_pair(
    keys: pki.HubKeys, tmp_path: Path
) -> None:
    before = keys.server_cert.read_bytes()
    outcomes = []
    for rename in range(1, 20):
        copy = pki.HubKeys(tmp_path / f"keys-{rename}")
        shutil.copytree(keys.root, copy.root)
        killed = crashed_at(rename, copy.renew_server)
        key, cert, _ = copy.server_credentials_material()
        assert pair_matches(key, cert), f"a crash at rename {rename} mixed the pair"
        outcomes.append("old" if cert == before else "new")
        if not killed:
            break
    assert outcomes[-1] == "new" and "old" in outcomes, outcomes


def test_a_journal_mended_by_hand_wrongly_is_one_line_and_exit_2(
    keys: pki.HubKeys, tmp_path: Path, cli: CLI
) -> None:
    """The journal is written by rename (whole or absent); one edited by hand is a key
    problem the operator mends: one line, exit 2 (which the units do not restart in a
    loop), nothing renamed."""
    till = tmp_path / "data"  # the `cli` fixture's data directory
    bundle = pki.make_bundle(keys, pki.issue_device(keys, "till-1"), "h:1")
    pki.install_bundle(till, bundle, "till-1")
    journal = till / "enrollment" / ".replacing.json"
    journal.write_text("{half")
    before = {p.name: p.read_bytes() for p in (till / "enrollment").iterdir()}
    done = cli("quote", RECEIPT, "--json")
    assert done.code == 2, done.err
    assert done.err.count("\n") == 1 and ".replacing.json is unreadable" in done.err
    assert {p.name: p.read_bytes() for p in (till / "enrollment").iterdir()} == before
