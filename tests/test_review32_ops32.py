"""Review 32 (ops32): the support engineer's and the integrator's last rough edges
(docs/CONTRACT.md §10, §12) — each finding with the test that failed before its fix.
Real processes (`tillpoint run`, the CLI), real files and real loopback sockets."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .conftest import REPO, free_port, ipv6_loopback

TILLPOINT = str(Path(sys.executable).with_name("tillpoint"))
SNAPSHOT = REPO / "examples" / "snapshot.json"


def _env(**extra: str) -> dict[str, str]:
    """This process's environment without its TILLPOINT_* settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TILLPOINT_")}
    env.update({"TILLPOINT_DEVICE_ID": "till-1", **extra})
    return env


def _tp(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TILLPOINT, *args], env=_env(**env), capture_output=True, text=True, timeout=60, check=False
    )


# ------------------------------------------ §10: no -wal/-shm left by a replaced cache.db


def _cache_clutter(data: Path) -> list[str]:
    return sorted(p.name for p in data.iterdir() if p.name.startswith("cache.db-"))


def test_the_first_full_snapshot_leaves_no_wal_or_shm_of_the_first_cache_db(
    tmp_path: Path,
) -> None:
    """CONTRACT §10 (a till's data directory). A fresh till's `cache.db` is a plain empty
    file until the first full snapshot switches it to a generation (a symlink): the apply's
    connection to the plain file, closed after the switch, left `cache.db-wal` (0 bytes)
    and `cache.db-shm` behind (SQLite does not remove them for a file that is no longer
    under its name), which no connection can ever reach again."""
    data = tmp_path / "d"
    assert _tp("--data-dir", str(data), "status").returncode == 0
    loaded = _tp("--data-dir", str(data), "snapshot", "load", str(SNAPSHOT))
    assert loaded.returncode == 0, loaded.stderr
    assert (data / "cache.db").is_symlink()
    assert _cache_clutter(data) == []
    assert _tp("--data-dir", str(data), "identify", "2770000000017").returncode == 0


def test_an_install_that_has_the_leftovers_loses_them_at_the_next_open(tmp_path: Path) -> None:
    """The same leftovers an earlier release left go at the next command's open of the
    cache; a non-empty -wal of the replaced file is left alone (a connection opened before
    the switch may still read its frames)."""
    data = tmp_path / "d"
    assert _tp("--data-dir", str(data), "snapshot", "load", str(SNAPSHOT)).returncode == 0
    (data / "cache.db-wal").write_bytes(b"")
    (data / "cache.db-shm").write_bytes(b"\0" * 32768)
    assert _tp("--data-dir", str(data), "--local", "status").returncode == 0
    assert _cache_clutter(data) == []
    (data / "cache.db-wal").write_bytes(b"x" * 100)
    (data / "cache.db-shm").write_bytes(b"\0" * 32768)
    assert _tp("--data-dir", str(data), "--local", "status").returncode == 0
    assert _cache_clutter(data) == ["cache.db-shm", "cache.db-wal"]


def _start_run(data: Path, log: Path, **env: str) -> tuple[subprocess.Popen[bytes], int]:
    """`tillpoint run` on `data` (gRPC, HTTP and /metrics on free ports), once its HTTP
    interface answers; its HTTP port."""
    http = free_port()
    env = {
        "TILLPOINT_SERVER__LISTEN": f"127.0.0.1:{free_port()}",
        "TILLPOINT_HTTP__LISTEN": f"127.0.0.1:{http}",
        "TILLPOINT_METRICS__LISTEN": f"127.0.0.1:{free_port()}",
        **env,
    }
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [TILLPOINT, "--data-dir", str(data), "run"],
            env=_env(**env),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{http}/healthz", timeout=1).close()
            return proc, http
        except urllib.error.HTTPError:  # 503 with no snapshot: it answers
            return proc, http
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait(timeout=10)
                raise AssertionError(log.read_text()) from None
            time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=40) == 0, log.read_text()


@pytest.mark.slow  # a `tillpoint run` and three CLI processes: ~5 s
def test_a_first_snapshot_loaded_beside_a_serving_agent_leaves_no_leftovers(
    tmp_path: Path,
) -> None:
    """The same with `tillpoint run` serving a fresh data directory: its own connection to
    the plain `cache.db` moves to the new generation and closes the old one, the last."""
    data = tmp_path / "d"
    log = tmp_path / "run.log"
    proc, _ = _start_run(data, log)
    try:
        loaded = _tp("--data-dir", str(data), "snapshot", "load", str(SNAPSHOT))
        assert loaded.returncode == 0, loaded.stderr
        ident = _tp("--data-dir", str(data), "identify", "2770000000017", "--json")
        assert ident.returncode == 0 and json.loads(ident.stdout)["status"] == "FOUND"
    finally:
        _stop(proc, log)
    assert _cache_clutter(data) == []


# ------------------------------------------ §10: the CLI's bad input in its own words


def test_an_option_of_the_command_shortened_before_it_is_said_to_go_after(
    tmp_path: Path,
) -> None:
    """CONTRACT §10 (an option with a value given before the command is said to go after
    it; a long option may be shortened). Shortened, it said "argument COMMAND: invalid
    choice: 'F'", its value taken for a misspelt command; a shortened flag of the command
    given before it (`--js`) was "unrecognized arguments", where `--json` is taken."""
    data = str(tmp_path / "d")
    for words, option in (
        (["--fisc", "F", "confirm", "R1"], "--fiscal"),
        (["--fisc=F", "confirm", "R1"], "--fiscal"),
        (["--a", "2026-12-04T10:00:00+03:00", "balance", "2770000000017"], "--at"),
    ):
        run = _tp("--data-dir", data, *words)
        assert run.returncode == 2, (words, run.stderr)
        assert run.stderr.count("\n") == 1, run.stderr
        assert "invalid choice" not in run.stderr, run.stderr
        assert "goes after the command" in run.stderr and option in run.stderr, run.stderr
    assert _tp("--data-dir", data, "snapshot", "load", str(SNAPSHOT)).returncode == 0
    shortened = _tp("--data-dir", data, "--js", "identify", "2770000000017", "--local")
    assert shortened.returncode == 0, shortened.stderr
    assert json.loads(shortened.stdout)["status"] == "FOUND"


def test_a_damaged_phone_key_is_said_damaged_with_the_way_out(tmp_path: Path) -> None:
    """CONTRACT §10 (a damaged file met by a command: exit 1, one line). A `phone.key` that
    is not the key tillpoint wrote said Python's words, "cannot read …/phone.key:
    non-hexadecimal number found in fromhex() arg at position 0"; a key of another length
    (cut short) was taken and hashed phones with it, finding nobody. `run` at start on it
    is exit 2, as on a damaged cache (the unit does not restart it in a loop)."""
    data = tmp_path / "d"
    assert _tp("--data-dir", str(data), "snapshot", "load", str(SNAPSHOT)).returncode == 0
    key = data / "phone.key"
    good = key.read_text()
    for damaged in ("zz\n", good[:20], "", good + "00"):
        key.write_text(damaged)
        run = _tp("--data-dir", str(data), "identify", "2770000000017", "--local")
        assert run.returncode == 1, (damaged, run.stderr)
        assert run.stderr.count("\n") == 1, run.stderr
        line = run.stderr
        assert f"{key} is damaged" in line and "fromhex" not in line, line
        assert "load a full snapshot" in line, line
    listen = {f"TILLPOINT_{k}__LISTEN": "127.0.0.1:0" for k in ("SERVER", "HTTP", "METRICS")}
    run = _tp("--data-dir", str(data), "run", **listen)  # no restart mends it: exit 2
    assert run.returncode == 2 and f"{key} is damaged" in run.stderr, run.stderr
    key.write_text(good)
    assert _tp("--data-dir", str(data), "identify", "2770000000017", "--local").returncode == 0


def _jsonl_snapshot(row_of_customers: bytes | None = None) -> tuple[bytes, int]:
    """examples/snapshot.json as JSON Lines, its first customer's row replaced by
    `row_of_customers`; the file and that row's line number."""
    doc = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    head = {k: v for k, v in doc.items() if not isinstance(v, list)}
    lines = [json.dumps({**head, "format": "tillpoint.snapshot/jsonl"}).encode()]
    at = 0
    for section, rows in doc.items():
        if isinstance(rows, list):
            lines.append(json.dumps({"section": section}).encode())
            if section == "customers":
                at = len(lines) + 1
            lines += [json.dumps(r, ensure_ascii=False).encode() for r in rows]
    if row_of_customers is not None:
        lines[at - 1] = row_of_customers
    return b"\n".join(lines) + b"\n", at


@pytest.mark.slow  # five CLI processes: ~5 s
def test_a_json_lines_row_that_is_not_json_is_said_in_the_agent_s_words(tmp_path: Path) -> None:
    """CONTRACT §10 (JSON that cannot be read is "not valid JSON", in the words `hub import`
    says it). A JSON Lines snapshot's row with a bad byte said pydantic's words after the
    section's name: "snapshot line 13: customers: Invalid JSON: control character
    (\\u0000-\\u001F) found while parsing a string at line 1 column 3"; with a Latin-1
    byte "not valid UTF-8 (invalid continuation byte)", the codec's; a row cut short that
    held a `null` failed the build, exit 1 ("the cache build failed (exit 1:
    json.decoder.JSONDecodeError: …)")."""
    good, at = _jsonl_snapshot()
    row = good.split(b"\n")[at - 1]
    cases = {
        row.replace(b'"', b'"\x01', 1): "(Invalid control character at column 3)",
        row.replace(b'"', b"\xe9", 1): "(not UTF-8 text)",
        row[:5] + b"\x07" + row[5:]: "(Expecting ':' delimiter at column 6)",
        row[:-1] + b', "x": null, "y": ': "(Expecting value at column",
    }
    for n, (bad, words) in enumerate(cases.items()):
        text, _ = _jsonl_snapshot(bad)
        file = tmp_path / f"s{n}.jsonl"
        file.write_bytes(text)
        run = _tp("--data-dir", str(tmp_path / f"d{n}"), "snapshot", "load", str(file))
        assert run.returncode == 2, run.stderr
        assert run.stderr.startswith(f"tillpoint: snapshot line {at}: not valid JSON {words}"), (
            run.stderr
        )
        assert run.stderr.count("\n") == 1 and "Invalid JSON" not in run.stderr, run.stderr
    file = tmp_path / "good.jsonl"
    file.write_bytes(good)
    loaded = _tp("--data-dir", str(tmp_path / "d"), "snapshot", "load", str(file))
    assert loaded.returncode == 0, loaded.stderr


# ------------------------------------------ §12: every listener resolves a name alike

_IPV6_NAME = "tp-ip6-only.test"

_SERVE_IN_NAMESPACE = r"""
set -u
mount --bind "$HOSTS" /etc/hosts || exit 90
exec "$TP" --data-dir "$DATA" run
"""


def _mount_namespace() -> list[str] | None:
    """`unshare`'s words for a mount namespace of its own (root's, or a user namespace's),
    where /etc/hosts may be replaced for one process; None where neither is allowed."""
    for unshare in (["unshare", "--mount"], ["unshare", "--mount", "--map-root-user"]):
        try:
            probe = subprocess.run(
                [*unshare, "sh", "-c", "mount --bind /etc/hosts /etc/hosts"],
                capture_output=True,
                timeout=30,
                check=False,
            )
        except OSError:
            return None
        if probe.returncode == 0:
            return unshare
    return None


def _free_port6() -> int:
    """A port free on ::1 for the run, below the ephemeral range (`free_port`, which
    probes ::1 too): a port-0 pick can be taken by an outgoing connection before the
    run binds it (review 42)."""
    return free_port()


@pytest.mark.slow  # a `tillpoint run` in a namespace of its own: ~5 s
def test_a_name_of_ipv6_addresses_only_is_served_by_all_three_listeners(tmp_path: Path) -> None:
    """CONTRACT §12 (the listen addresses). gRPC binds every address a name resolves to;
    the HTTP interface and /metrics took an IPv4 socket for any name, so a name that
    resolves to IPv6 only (`ip6-localhost` on many systems) stopped `run` with "cannot
    listen on …: Name or service not known" where gRPC would have served it. Here such a
    name is made with a hosts file of this process's own (a mount namespace)."""
    unshare = _mount_namespace()
    if unshare is None or not ipv6_loopback():
        pytest.skip("no mount namespace (unshare refused) or no IPv6 loopback here")
    hosts = tmp_path / "hosts"
    hosts.write_text(f"::1 {_IPV6_NAME}\n", encoding="ascii")
    ports = {key: _free_port6() for key in ("SERVER", "HTTP", "METRICS")}
    env = _env(
        HOSTS=str(hosts),
        TP=TILLPOINT,
        DATA=str(tmp_path / "d"),
        # a name other than localhost is not taken for loopback: a token is asked
        TILLPOINT_SERVER__TOKEN="t0ken",
        TILLPOINT_HTTP__TOKEN="t0ken",
        **{f"TILLPOINT_{key}__LISTEN": f"{_IPV6_NAME}:{p}" for key, p in ports.items()},
    )
    log = tmp_path / "run.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [*unshare, "sh", "-c", _SERVE_IN_NAMESPACE], env=env, stdout=err, stderr=err
        )
    try:
        deadline = time.monotonic() + 30
        while b"PosAgent serving" not in log.read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        for key in ("HTTP", "METRICS"):
            path = "/healthz" if key == "HTTP" else "/metrics"
            try:
                asked = urllib.request.Request(
                    f"http://[::1]:{ports[key]}{path}", headers={"Authorization": "Bearer t0ken"}
                )
                answer = urllib.request.urlopen(asked, timeout=5)
                status = answer.status
                answer.close()
            except urllib.error.HTTPError as exc:  # 503: no snapshot yet, but it answers
                status = exc.code
            assert status in (200, 503), (key, status)
        with socket.create_connection(("::1", ports["SERVER"]), timeout=5):
            pass
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0, log.read_text()


@pytest.mark.slow  # three `tillpoint run` refused at start: ~5 s
@pytest.mark.parametrize(
    ("key", "what"), [("SERVER", "gRPC"), ("HTTP", "HTTP"), ("METRICS", "/metrics")]
)
def test_a_listen_name_that_does_not_resolve_is_one_line_saying_so(
    tmp_path: Path, key: str, what: str
) -> None:
    """CONTRACT §12. A listen whose name resolves to nothing says so in one line, the same
    words for the three listeners, with the key to set (it said the resolver's bare "Name
    or service not known", or for HTTP "[Errno -2] …")."""
    listens = {k: f"127.0.0.1:{free_port()}" for k in ("SERVER", "HTTP", "METRICS")}
    listens[key] = "tp-nowhere.invalid:8061"
    run = _tp(
        "--data-dir",
        str(tmp_path / "d"),
        "run",
        TILLPOINT_SERVER__TOKEN="t0ken",
        TILLPOINT_HTTP__TOKEN="t0ken",
        **{f"TILLPOINT_{k}__LISTEN": v for k, v in listens.items()},
    )
    assert run.returncode == 1, run.stderr
    assert run.stderr.count("\n") == 1, run.stderr
    assert run.stderr.startswith(
        f"tillpoint: cannot listen on tp-nowhere.invalid:8061 for {what}: the name"
        " tp-nowhere.invalid does not resolve ("
    ), run.stderr
    section = {"SERVER": "server", "HTTP": "http", "METRICS": "metrics"}[key]
    assert f"(set [{section}] listen" in run.stderr, run.stderr


# ------------------------------------------ §12: a web page's preflight, declared


def test_every_path_s_preflight_is_declared_in_openapi_json_as_answered(tmp_path: Path) -> None:
    """CONTRACT §12 (/openapi.json describes every call). With `[http] allowed_origins`
    set, the CORS layer answers a web page's preflight (OPTIONS) on every path: allowed,
    200 "OK" with the CORS headers; refused, the JSON 403; an OPTIONS that is no preflight,
    the call's 405. None of them was in /openapi.json, which a page's generated client
    and the schema check below read. Without allowed origins nothing answers a preflight,
    and nothing is declared."""
    from tillpoint.agent.http_api import CORS_HEADERS, CORS_METHODS, HttpServer
    from tillpoint.agent.service import Agent

    from .test_review31_pos31 import OpenApi, Till, call

    agent = Agent(tmp_path / "data", "till-1")
    agent.load_snapshot(json.loads(SNAPSHOT.read_text("utf-8")))
    page = "http://localhost:3000"
    server = HttpServer(agent, "127.0.0.1:0", allowed_origins=[page])
    bare = HttpServer(agent, "127.0.0.1:0")
    server.start()
    bare.start()
    try:
        kiosk = Till(server.port, 0)
        api = OpenApi(call(kiosk, "GET", "/openapi.json").json())
        paths = api.doc["paths"]
        assert all("options" in ops for ops in paths.values()), sorted(paths)
        for path, ops in paths.items():
            method = "GET" if "get" in ops else "POST"
            asked = {
                "Origin": page,
                "Access-Control-Request-Method": method,
                "Access-Control-Request-Headers": ", ".join(CORS_HEADERS),
            }
            allowed = api.check(call(kiosk, "OPTIONS", path, headers=asked, why="preflight"))
            assert allowed.status == 200, (path, allowed.body)
            assert allowed.headers["access-control-allow-methods"] == ", ".join(CORS_METHODS)
            other = {**asked, "Origin": "http://evil.example"}
            assert api.check(call(kiosk, "OPTIONS", path, headers=other, why="other")).status == 403
            plain = api.check(call(kiosk, "OPTIONS", path, headers={"Origin": page}, why="plain"))
            assert plain.status == 405, (path, plain.status)
        assert not api.wrong, api.wrong
        doc = call(Till(bare.port, 0), "GET", "/openapi.json").json()
        assert not any("options" in ops for ops in doc["paths"].values())
    finally:
        server.stop()
        bare.stop()
        agent.close()


# ------------------------------------------ §10: a full disk at start


_FULL_AT_START = r"""
set -u
mount -t tmpfs -o size=3m tmpfs "$FULL" || exit 90
"$TP" --data-dir "$FULL/old" snapshot load "$SNAPSHOT" >/dev/null || exit 91
for free in 0 64; do
    rm -f "$FULL/fill"
    avail=$(df -k --output=avail "$FULL" | tail -1)
    head -c $(( (avail - free) * 1024 )) /dev/zero > "$FULL/fill" 2>/dev/null
    for d in "new$free" old; do
        echo "== $FULL/$d"; "$TP" --data-dir "$FULL/$d" run 2>&1 >/dev/null; echo "rc=$?"
    done
done
"""


@pytest.mark.slow  # a tmpfs filled and five CLI processes: ~5 s
def test_run_on_a_full_disk_says_the_disk_is_full_and_where_exit_1(tmp_path: Path) -> None:
    """CONTRACT §10 (exit codes). `run` on a full disk: a fresh data directory said
    "cannot use the data directory …: No space left on device" (not which disk), or with
    a few KiB free "cannot migrate the database schema: database or disk is full" (no file,
    no directory). Each now says the file system of the data directory is full, exit 1:
    the unit starts it again (no start limit) and it serves once space is freed."""
    full = tmp_path / "full"
    full.mkdir()
    env = _env(
        FULL=str(full),
        TP=TILLPOINT,
        SNAPSHOT=str(SNAPSHOT),
        TILLPOINT_SERVER__LISTEN="127.0.0.1:0",
        TILLPOINT_HTTP__LISTEN="127.0.0.1:0",
        TILLPOINT_METRICS__LISTEN="127.0.0.1:0",
    )
    unshare = _mount_namespace()
    if unshare is None:
        pytest.skip("no mount namespace here (unshare refused): cannot make a small disk")
    run = subprocess.run(
        [*unshare, "sh", "-c", _FULL_AT_START],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if run.returncode == 90:
        pytest.skip(f"cannot mount a tmpfs here: {run.stderr}")
    assert run.returncode == 0, (run.returncode, run.stdout, run.stderr)
    answers = re.findall(r"== (.*)\n(.*)\nrc=(\d+)", run.stdout)
    assert len(answers) == 4, run.stdout
    for data, line, code in answers:
        assert code == "1", (data, line)
        assert line.startswith("tillpoint: ") and f"the file system of {data} is full" in line, (
            data,
            line,
        )
    unit = (REPO / "packaging" / "tillpoint.service").read_text(encoding="utf-8")
    assert "StartLimitIntervalSec=0" in unit and "RestartPreventExitStatus=2" in unit


# ------------------------------------------ §12: a SIGTERM while `run` starts

_DATA_FILES = {
    "cache.db",
    "ledger.db",
    "phone.key",
    "tillpoint.lock",
    "cache.db-wal",
    "cache.db-shm",
    "ledger.db-wal",
    "ledger.db-shm",
}


@pytest.mark.slow  # eight `tillpoint run` stopped as they start: ~30-50 s
def test_a_sigterm_at_any_moment_of_start_up_leaves_a_clean_data_directory(
    tmp_path: Path,
) -> None:
    """CONTRACT §12 (SIGTERM). `run` took a SIGTERM by its default action until the servers
    were built: the process ended wherever it was, and a fresh till stopped while it made
    its files kept a hot `cache.db-journal` (and could keep `phone.key`'s temporary file)
    beside the data. A SIGTERM is now taken from the moment `run` begins: start-up ends,
    nothing is served, exit 0. At random moments after the data directory appears (a fresh
    one, and one with a snapshot): no file but the data's, a ledger and a cache that open
    cleanly, a whole phone key."""
    import random
    import sqlite3

    chance = random.Random(32)
    loaded = tmp_path / "loaded"
    assert _tp("--data-dir", str(loaded), "snapshot", "load", str(SNAPSHOT)).returncode == 0
    listen = {f"TILLPOINT_{k}__LISTEN": "127.0.0.1:0" for k in ("SERVER", "HTTP", "METRICS")}
    for n in range(8):
        data = loaded if n % 3 == 2 else tmp_path / f"fresh{n}"
        if n % 3 == 2:  # the loaded one: already there, so any moment of its start
            watch = data / "tillpoint.lock"
            watch.unlink(missing_ok=True)
        else:
            watch = data
        proc = subprocess.Popen(
            [TILLPOINT, "--data-dir", str(data), "run"],
            env=_env(**listen),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while not watch.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.returncode
            time.sleep(0.002)
        time.sleep(chance.uniform(0, 0.8))
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        # taken, not the default action's -15: the data directory is made after `run`
        # has its handler
        assert proc.returncode == 0, (n, proc.returncode, err)
        left = sorted(p.name for p in data.iterdir() if p.name not in _DATA_FILES)
        assert left == [] or (data == loaded and all(x.startswith("cache-") for x in left)), (
            n,
            left,
        )
        if (data / "phone.key").exists():
            key = (data / "phone.key").read_text()
            assert len(key.strip()) == 64, (n, key)
        for name in ("ledger.db", "cache.db"):
            if (data / name).exists():
                conn = sqlite3.connect(data / name)
                try:
                    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
                finally:
                    conn.close()
        status = _tp("--data-dir", str(data), "status", "--local")
        assert status.returncode == 0, (n, status.stderr)
