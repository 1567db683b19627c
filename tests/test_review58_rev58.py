"""Review 58 (rev58): a second reading of session 58's changes. One fault found, in the
masking of a PostgreSQL store URL's password (`hub_postgres._redacted`, mut58c): the URL
was masked, but libpq's own message, printed after it, quotes the password as written
when it cannot read it (a `%` not followed by two hex digits: "invalid percent-encoded
token: "Pa%ss"") and the whole URL when its IPv6 host is not closed. The tests run the
real `tillpoint hub migrate` and `hub init` subprocesses; libpq refuses these URLs
before it connects, so no database is needed. docs/DECISIONS.md, "Review 58 (rev58)"."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytest.importorskip("psycopg")

from .test_review38_rev38c import EXE

SECRET = "Tr0ub4dor"


def hub_command(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """A `tillpoint` hub command run to its end (libpq refuses the URL before any wait)."""
    return subprocess.run(
        [EXE, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    "store",
    [
        # a `%` the operator did not encode (`50%off` style): libpq quotes the token
        f"postgresql://hub:{SECRET}%zz@127.0.0.1:1/hub",
        f"postgresql://127.0.0.1:1/hub?password={SECRET}%zz",
        f"postgresql://127.0.0.1:1/hub?user=hub&password=%{SECRET}",
        # an IPv6 host not closed: libpq quotes the whole URL
        f"postgresql://hub:{SECRET}@[::1/hub",
        f"postgresql://[::1/hub?password={SECRET}",
    ],
)
def test_libpqs_message_never_says_the_store_urls_password(tmp_path: Path, store: str) -> None:
    """`hub migrate --store URL` of a URL libpq cannot read: one line, exit 1, and the
    password appears nowhere in it (neither in the URL the hub names nor in libpq's
    reason quoted after it)."""
    done = hub_command("hub", "migrate", "--store", store, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert SECRET not in done.stderr, done.stderr
    assert "***" in done.stderr, done.stderr


def test_hub_init_never_says_the_store_urls_password(tmp_path: Path) -> None:
    """`hub init --store URL` migrates the store as it makes the hub: its refusal of a
    URL libpq cannot read says the password nowhere either."""
    store = f"postgresql://hub:{SECRET}%zz@127.0.0.1:1/hub"
    hub_dir = tmp_path / "hub"
    done = hub_command("hub", "init", "--hub-dir", str(hub_dir), "--store", store, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert SECRET not in done.stdout + done.stderr, done.stdout + done.stderr
    assert "invalid percent-encoded token" in done.stderr, done.stderr


def test_the_demos_refusal_of_a_mistyped_store_url_names_its_scheme_only(
    tmp_path: Path,
) -> None:
    """`tillpoint demo --hub-store postgressql://…` (a typo in the scheme): exit 2, the
    scheme named, the password not (the whole URL was echoed, password and all)."""
    done = hub_command(
        "demo", "--hub-store", f"postgressql://hub:{SECRET}@db.example/hub", cwd=tmp_path
    )
    assert done.returncode == 2, done.stderr
    assert SECRET not in done.stdout + done.stderr, done.stdout + done.stderr
    assert "'postgressql://…'" in done.stderr, done.stderr
