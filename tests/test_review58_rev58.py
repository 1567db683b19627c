"""Review 58 (rev58): a second reading of session 58's changes; the faults it found.

1. The masking of a PostgreSQL store URL's password (`hub_postgres._redacted`, mut58c):
   the URL was masked, but libpq's own message, printed after it, quotes the password as
   written when it cannot read it (a `%` not followed by two hex digits: "invalid
   percent-encoded token: "Pa%ss"") and the whole URL when its IPv6 host is not closed;
   and `demo --hub-store` echoed a mistyped URL whole. The tests run the real `tillpoint
   hub migrate`, `hub init` and `demo` subprocesses; libpq refuses these URLs before it
   connects, so no database is needed.
2. `hub import -` tells JSON Lines by its whole first line now (mut58b), and a one-line
   JSON document (`jq -c`) with the snapshot header's format name anywhere in it (a
   product's name) was taken for JSON Lines; it was 4 KiB before.

docs/DECISIONS.md, "Review 58 (rev58)"."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from .test_review38_rev38c import EXE
from .test_review58_mut58b import hub_import

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
    pytest.importorskip("psycopg")
    done = hub_command("hub", "migrate", "--store", store, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert SECRET not in done.stderr, done.stderr
    assert "***" in done.stderr, done.stderr


def test_hub_init_never_says_the_store_urls_password(tmp_path: Path) -> None:
    """`hub init --store URL` migrates the store as it makes the hub: its refusal of a
    URL libpq cannot read says the password nowhere either."""
    pytest.importorskip("psycopg")
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


def test_a_one_line_document_naming_the_json_lines_format_is_still_one_document(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/CONTRACT.md §10: `hub import -` of a one-line JSON document (`jq -c`) whose
    first key is a section: one document, whatever text its rows hold. A product named
    "… tillpoint.snapshot/jsonl …" past the first 4 KiB made the whole line read as a
    JSON Lines snapshot's header (the header's test looks for that name on the line),
    and the import was refused line by line, exit 2."""
    products = [{"sku": f"46012340{n:05d}", "name": f"Товар {n}"} for n in range(100)]
    products.append({"sku": "4601234999999", "name": "export tillpoint.snapshot/jsonl"})
    data = json.dumps({"products": products}, ensure_ascii=False).encode() + b"\n"
    assert data.index(b"tillpoint.snapshot/jsonl") > 4096 and data.count(b"\n") == 1
    code, out, err = hub_import(tmp_path, capsys, monkeypatch, "-", stdin=data)
    assert code == 0, err
    assert out["byKind"] == {"product": 101}


def test_a_libpq_keyword_value_string_as_the_store_is_refused_not_made_a_sqlite_file(
    tmp_path: Path,
) -> None:
    """`--store "host=db password=… dbname=hub"` (libpq's other form, `psql`'s habit): exit
    2, told to give a postgresql:// URL, the password not said, and nothing made. It
    was taken for a SQLite file's path: `hub init` made a new, empty hub in a file named
    after the string, password and all, in the working directory, and said nothing."""
    store = f"host=127.0.0.1 port=1 password={SECRET} dbname=hub"
    hub_dir = tmp_path / "hub"
    done = hub_command("hub", "init", "--hub-dir", str(hub_dir), "--store", store, cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert SECRET not in done.stdout + done.stderr, done.stdout + done.stderr
    assert "postgresql://" in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []
