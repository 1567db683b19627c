"""Review 42, polish42: small things a support engineer or an integrator meets, left by
session 40's reviews (note40, "Left"), each reproduced with the real function or a real
process, then fixed or pinned (docs/DECISIONS.md, "Review 42 (polish42)").

1. A configuration's number of seconds written `nan` (TOML `nan`, or the environment's
   "nan") was refused "must be more than 0" (`hub.poll_interval_s`) or "must be 3600 or
   less" (the device tables' seconds): a line that says a bound the value does not miss.
   Every float setting of the configuration, at `nan`, `inf` and `-inf`, is refused with
   one line naming the key and saying what is wrong, exit 2, at `config check` and `run`
   (`inf` as `hub.poll_interval_s` excepted: taken as a day with a warning, review 39).
2. `run`'s pull at the file size limit logged "resuming snapshot 1 at byte 0" at every
   retry, a resume that did not happen: now a resume is said only when it resumes, once.
3. A signed bundle whose payload was cut short was "truncated" at a till without a hub
   and "the signature is not the hub's" at an enrolled till: the enrolled till checks the
   declared size and SHA-256 before the signature too; the cache is kept either way.
4. `hub import /dev/stdin` (or `rows.txt`) of JSON Lines is read as one JSON document
   (the name does not say JSON Lines): "not valid JSON (Extra data at line 2 column 1)"
   now says the text is JSON Lines and that `--format jsonl` reads it.
5. `sync now` when the hub is behind the till (restored from an older backup): kept, and
   pinned, as exit 0 with its one warning line naming the mend (CONTRACT §10's codes: the
   push and the pull did what they could, nothing at the till to mend or retry).
6. A JSON Lines row of `hub import` had no length bound (a 300 MB line was read whole,
   1.3 GB): a line past `ROW_MAX_BYTES` (64 MiB) is refused naming its line number.
7. `tillpoint --help >&-` exited 0 (argparse wrote the help to stderr instead) and
   `--help > /dev/full` exited 0 (argparse drops a failed write): the help now follows
   CONTRACT §10's rule for every answer (as `--version` does): exit 1 and one line.
8. The Kazakh і (U+0456) on a CP866 printer prints as Latin i (as the Ukrainian І as
   Latin I): kept, the same glyph, pinned on the wire. The better way is the code page
   with every Kazakh letter, KZ-1048 (`codepage = "kz1048"`, Epson's slot 53, which the
   profiles already give): the virtual printer's decoder did not know slot 53, so
   `print preview` and the tests showed "�" for every Cyrillic letter; it does now.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
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
            if float in [(typing.get_origin(k) and typing.get_args(k)[0]) or k for k in kinds]:
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


# ---------------------------------------------------------------- 2. a pull at the file size limit

# A till's pull in a process of its own under a file size limit (RLIMIT_FSIZE, `ulimit -f`;
# this worker's own files must not meet it): the hub built and its snapshot file written
# before the limit is set. Prints the sync logger's records (level, message) as JSON.
_PULLS_AT_LIMIT = r"""
import json, logging, resource, sys
from pathlib import Path
from tillpoint.agent.errors import StorageError
from tillpoint.sync.hub_server import HubConfig
from tillpoint.sync.loopback import LoopbackHub, sample_master_data
from tillpoint.sync.pull import Puller

root, limit, every, pulls = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
data = sample_master_data()
data["products"] = list(data["products"]) + [
    {"sku": f"99{i:011d}", "name": f"Product number {i}", "category": "dairy"}
    for i in range(4000)
]
config = HubConfig(chunk_size=16 * 1024, heartbeat_s=1.0, watch_interval_s=0.1, publish_every_s=0)
hub = LoopbackHub(root / "hub", config, data=data)
hub.server.builder.bundle(1, 0)  # the hub's snapshot file, before the limit
till = hub.till("till-1", root / "till", start=False)
records = []

class Keep(logging.Handler):
    def emit(self, record):
        records.append((record.levelname, record.getMessage()))

logging.getLogger("tillpoint.sync").addHandler(Keep())
logging.getLogger("tillpoint.sync").setLevel(logging.DEBUG)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
puller = Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=30.0,
                sync_every_bytes=every)
refusals = []
for _ in range(pulls):
    try:
        puller.pull()
        refusals.append(None)
    except StorageError as exc:
        refusals.append(exc.message)
meta = json.loads((root / "till" / "sync" / "pull.json").read_text())
print(json.dumps({"records": records, "refusals": refusals, "offset": meta["offset"]}))
hub.stop()
"""


def _pulls_at_limit(tmp_path: Path, limit: int, every: int, pulls: int = 3) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _PULLS_AT_LIMIT, str(tmp_path), str(limit), str(every), str(pulls)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _resumes(result: dict[str, Any]) -> list[tuple[str, str]]:
    return [(level, msg) for level, msg in result["records"] if msg.startswith("resuming")]


def test_s9_a_pull_at_the_file_size_limit_does_not_say_it_resumes_at_byte_0(
    tmp_path: Path,
) -> None:
    """§9 (a pull resumes what arrived): what arrived under the limit was never made
    durable (the checkpoint's write is refused too), so each retry downloads from byte 0.
    `run`'s pull logged "resuming snapshot 1 at byte 0" at each retry, a resume that did
    not happen; now nothing is said of a resume (the refusal is said, as before)."""
    result = _pulls_at_limit(tmp_path, 128 * 1024, 32 * 1024 * 1024)
    assert result["offset"] == 0
    assert all(r and "file size limit" in r for r in result["refusals"]), result["refusals"]
    assert _resumes(result) == [], result["records"]


def test_s9_a_resume_that_fails_at_the_same_byte_again_is_said_once(tmp_path: Path) -> None:
    """The same, with checkpoints before the limit (every 16 KiB): each retry does resume
    at the last durable byte, and fails there again. Said once at INFO with the real
    offset; the same resume again at DEBUG (as the same refusal again is: `_say`)."""
    result = _pulls_at_limit(tmp_path, 128 * 1024, 16 * 1024, pulls=4)
    offset = result["offset"]
    assert 0 < offset <= 128 * 1024, result
    said = f"resuming snapshot 1 at byte {offset}"
    assert _resumes(result) == [("INFO", said), ("DEBUG", said), ("DEBUG", said)], result["records"]


# ------------------------------------------------------------ 3. a cut bundle at an enrolled till


@pytest.fixture()
def bundle_doc(hub: Any, tmp_path: Path) -> dict[str, Any]:
    """The hub's signed bundle of version 1 as `hub export` writes it, the till in
    `tmp_path / "data"` (the `cli` fixture's) enrolled with the hub."""
    from tillpoint.sync.signing import write_signed_file

    hub.enroll("till-1", tmp_path / "data")
    out = io.StringIO()
    write_signed_file(out, hub.server.builder.bundle(1, 0))
    doc: dict[str, Any] = json.loads(out.getvalue())
    return doc


def _damaged(doc: dict[str, Any], path: Path, payload: bytes) -> Path:
    path.write_text(json.dumps(dict(doc, payload=base64.b64encode(payload).decode())))
    return path


@pytest.mark.parametrize("at", ["enrolled", "no hub"])
def test_s3_a_cut_bundle_is_told_as_cut_at_both_tills(
    cli: CLI, tmp_path: Path, bundle_doc: dict[str, Any], at: str
) -> None:
    """CONTRACT §3 (a truncated or damaged file is refused), §10 (exit 2, one line). The
    payload cut to half (the bundle's JSON still whole): "truncated (N of M bytes)" at
    both; a byte changed: "its checksum does not match (corrupted)" at both. An enrolled
    till said "the signature is not the hub's" of both, which sends a support engineer
    after a forged file or a wrong key instead of a copy cut on its way."""
    payload = base64.b64decode(bundle_doc["payload"])
    data = ["--data-dir", tmp_path / "alone"] if at == "no hub" else []
    cut = _damaged(bundle_doc, tmp_path / "cut.json", payload[: len(payload) // 2])
    result = cli(*data, "snapshot", "load", cut)
    assert result.code == 2 and result.out == "", result
    half = f"{len(payload) // 2} of {len(payload)} bytes"
    assert result.err == f"tillpoint: snapshot refused: truncated ({half})\n", result.err
    flipped = _damaged(bundle_doc, tmp_path / "flip.json", payload[:-1] + b"x")
    result = cli(*data, "snapshot", "load", flipped)
    assert result.code == 2, result
    assert result.err == "tillpoint: snapshot refused: its checksum does not match (corrupted)\n"
    assert cli(*data, "status", "--json").json()["cacheVersion"] == 0  # nothing applied


def test_s3_an_enrolled_till_still_refuses_a_bundle_signed_with_another_key(
    cli: CLI, tmp_path: Path, bundle_doc: dict[str, Any]
) -> None:
    """The declared size and SHA-256 are not signed: a payload changed with them written
    to match is the signature's to refuse, as before; the whole bundle loads."""
    payload = base64.b64decode(bundle_doc["payload"])
    changed = payload[:-1] + b"x"
    doc = dict(bundle_doc, sha256=hashlib.sha256(changed).hexdigest())
    path = _damaged(doc, tmp_path / "forged.json", changed)
    result = cli("snapshot", "load", path)
    assert result.code == 2, result
    assert "the signature is not the hub's" in result.err, result.err
    whole = _damaged(bundle_doc, tmp_path / "whole.json", payload)
    assert cli("snapshot", "load", whole).code == 0
    assert cli("status", "--json").json()["cacheVersion"] == 1


# ---------------------------------------------------------------- 4. JSON Lines not named so

ROWS = (
    '{"product": {"sku": "4600000000011", "name": "Milk", "category": "dairy"}}\n'
    '{"product": {"sku": "4600000000012", "name": "Bread", "category": "dairy"}}\n'
)
HINT = "; the text is JSON Lines (one row a line): give --format jsonl, or name it .jsonl"


def test_s10_hub_import_of_json_lines_from_dev_stdin_hints_at_format_jsonl(
    tmp_path: Path,
) -> None:
    """CONTRACT §10 (exit 2, one line that says what to do): the real `hub import
    /dev/stdin` with a pipe; with `--format jsonl` the same text is imported."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TILLPOINT_")}
    hub_dir = ["--hub-dir", str(tmp_path / "hub")]

    def hub_import(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [TILLPOINT, "hub", "import", *hub_dir, *args, "/dev/stdin"],
            input=ROWS,
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )

    refused = hub_import()
    assert refused.returncode == 2 and refused.stdout == "", refused
    assert refused.stderr == (
        f"tillpoint: import: not valid JSON (Extra data at line 2 column 1){HINT}\n"
    ), refused.stderr
    taken = hub_import("--format", "jsonl")
    assert taken.returncode == 0, taken.stderr
    assert taken.stdout.startswith("imported 2 product;"), taken.stdout


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (ROWS, "not valid JSON (Extra data at line 2 column 1)" + HINT),
        ("\n" + ROWS.splitlines()[0], "product is not a known section" + HINT),
        (
            '{"format": "tillpoint.snapshot/jsonl", "version": 1}\n' + ROWS,
            "not valid JSON (Extra data at line 2 column 1)" + HINT,
        ),
        # a JSON document that is not JSON Lines gets no hint
        ('{"products": []} {"x": 1}\n', "not valid JSON (Extra data at line 1 column 18)"),
        ('{"products": [\n  {"sku": 1}\n]}\nx', "not valid JSON (Extra data at line 4 column 1)"),
        ('{"prods": []}\n', "prods is not a known section"),
    ],
)
def test_s10_hub_import_of_a_file_not_named_jsonl(
    cli: CLI, tmp_path: Path, text: str, said: str
) -> None:
    path = tmp_path / "rows.txt"
    path.write_text(text, encoding="utf-8")
    result = cli("hub", "import", "--hub-dir", tmp_path / "hub", path)
    assert result.code == 2, result
    assert result.err == f"tillpoint: import: {said}\n", result.err


# ---------------------------------------------------------------- 5. a hub behind the till


def test_s10_sync_now_with_the_hub_behind_the_till_is_exit_0_with_one_warning(
    cli: CLI, hub: Any, tmp_path: Path
) -> None:
    """The hub restored from a backup taken at version 1 after the till applied version 2:
    `sync now` pushes, keeps the till's version 2 (§3: an older version is never taken)
    and exits 0, its warning the one stderr line naming the hub's version and the mend
    (`hub publish --min-version 3`); `--json` says it in `pull.message` too. After the
    mend the next `sync now` applies version 3. Exit 1 is the CLI's "the machine's fault,
    retry" (DECISIONS, rev40c): retrying at the till changes nothing here."""
    import shutil

    hub.enroll("till-1", tmp_path / "data")
    assert cli("sync", "now").code == 0
    hub.server.stop(grace=0)
    backup = tmp_path / "hub-at-v1"
    shutil.copytree(hub.root, backup)  # the hub's backup, taken at version 1
    hub.restart()
    hub.publish()
    assert "snapshot 2 applied" in cli("sync", "now").out
    hub.server.stop(grace=0)
    shutil.rmtree(hub.root)
    shutil.copytree(backup, hub.root)  # restored: its newest is version 1
    hub.restart()
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TILLPOINT_")}
    env.update(TILLPOINT_DATA_DIR=str(tmp_path / "data"), TILLPOINT_DEVICE_ID="till-1")

    def sync_now(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [TILLPOINT, "sync", "now", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    result = sync_now()  # a real process: its warning is its logging's, on its stderr
    assert result.returncode == 0, result
    assert result.stdout.startswith(
        "pushed 0 transaction(s), 0 waiting; snapshot 2 is the newest"
    ), result.stdout
    assert result.stderr == (
        "tillpoint: warning: the hub's newest version 1 is older than this till's cache 2:"
        " publish on the hub with --min-version 3\n"
    ), result.stderr
    as_json = sync_now("--json")
    assert as_json.returncode == 0, as_json
    pull = json.loads(as_json.stdout)["pull"]
    assert pull["status"] == "UP_TO_DATE" and pull["version"] == 2, pull
    assert "--min-version 3" in pull["message"] and as_json.stderr.count("\n") == 1
    assert cli("status", "--json").json()["cacheVersion"] == 2
    published = cli("hub", "publish", "--hub-dir", hub.root, "--min-version", "3")
    assert published.code == 0, published
    mended = sync_now()
    assert mended.returncode == 0 and "snapshot 3 applied" in mended.stdout, mended
    assert mended.stderr == ""


# ---------------------------------------------------------------- 6. a JSON Lines row's bound


def test_s10_hub_import_refuses_a_line_past_the_row_bound_naming_it(tmp_path: Path) -> None:
    """The real `hub import` of a file whose third line is one byte past 64 MiB: exit 2,
    one line naming line 3 and the bound, nothing imported (the draft stays empty)."""
    from tillpoint.sync.hub_import import ROW_MAX_BYTES

    path = tmp_path / "chain.jsonl"
    head = b'{"product": {"sku": "1", "name": "'
    with path.open("wb") as f:
        f.write(ROWS.encode())
        f.write(head + b"x" * (ROW_MAX_BYTES + 1 - len(head)))  # no newline needed: cut off
        f.write(b'"}}\n' + ROWS.encode())
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TILLPOINT_")}
    hub_dir = ["--hub-dir", str(tmp_path / "hub")]
    done = subprocess.run(
        [TILLPOINT, "hub", "import", *hub_dir, str(path), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2 and done.stdout == "", done
    assert done.stderr == (
        "tillpoint: import refused, nothing was imported: line 3 is longer than 64 MiB"
        " (one row a line: is the file JSON Lines?)\n"
    ), done.stderr
    status = subprocess.run(
        [TILLPOINT, "hub", "status", *hub_dir, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["draftRows"] == 0, status.stdout


@pytest.mark.parametrize("workers", [1, 2])
def test_s10_the_row_bound_at_its_edge(monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    """The bound read at its edge (made 100 bytes here): a line of 100 bytes and its
    newline is read, one of 101 is refused by its number, by the reading of one process
    and of worker processes (the lines are read in this one)."""
    from tillpoint.agent.errors import InputError
    from tillpoint.sync import hub_import

    monkeypatch.setattr(hub_import, "ROW_MAX_BYTES", 100)

    def row(size: int) -> bytes:
        head = b'{"product": {"sku": "1", "category": "dairy", "name": "'
        return head + b"x" * (size - len(head) - 3) + b'"}}'

    def read(*lines: bytes) -> list[Any]:
        text = b"\n".join(lines) + b"\n"
        return list(hub_import.read_jsonl(io.BytesIO(text), len(text), None, workers))

    assert len(read(row(100), row(100), row(100))) == 3
    for at in (2, 3):
        lines = [row(100)] * 3
        lines[at - 1] = row(101)
        with pytest.raises(InputError, match=f"line {at} is longer than 0 MiB"):
            read(*lines)


def test_s10_a_first_line_past_the_row_bound_is_refused() -> None:
    """The first line is read apart (a snapshot's header, read 4 KiB first): bounded too."""
    from tillpoint.agent.errors import InputError
    from tillpoint.sync.hub_import import ROW_MAX_BYTES, read_jsonl

    text = b'{"product": {"sku": "1", "name": "' + b"x" * ROW_MAX_BYTES + b'"}}\n' + ROWS.encode()
    with pytest.raises(InputError, match="line 1 is longer than 64 MiB"):
        list(read_jsonl(io.BytesIO(text), len(text), None))


def test_s10_a_line_past_the_row_bound_leaves_each_store_as_it_was(
    hub_store_factory: Any, tmp_path: Path
) -> None:
    """Both hub stores (SQLite's row by row, PostgreSQL's COPY of blocks): the refusal
    comes from the reading, inside the import's transaction, and the draft stays empty."""
    from tillpoint.agent.errors import InputError
    from tillpoint.sync.hub_import import ROW_MAX_BYTES, read_file

    path = tmp_path / "chain.jsonl"
    with path.open("wb") as f:
        f.write(ROWS.encode() * 3)
        f.write(b'{"product": {"sku": "1", "name": "' + b"x" * ROW_MAX_BYTES + b'"}}\n')
    store = hub_store_factory()
    with pytest.raises(InputError, match="line 7 is longer than 64 MiB"):
        store.import_rows(read_file(path))
    assert store.draft_size() == 0
    store.import_rows(read_file(_rows_file(tmp_path)))
    assert store.draft_size() == 2


def _rows_file(tmp_path: Path) -> Path:
    path = tmp_path / "rows.jsonl"
    path.write_text(ROWS, encoding="utf-8")
    return path


# ---------------------------------------------------------------- 7. --help to a shut stdout

CLOSED = (
    "tillpoint: the output could not be written: standard output is closed"
    " (what the command did stands)\n"
)
FULL = (
    "tillpoint: the output could not be written: No space left on device"
    " (what the command did stands)\n"
)


def _shell(command: str) -> subprocess.CompletedProcess[str]:
    """`command` run by sh with $T the `tillpoint` executable (a real process, its
    descriptors as the shell's redirections leave them)."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TILLPOINT_")}
    env["T"] = TILLPOINT
    return subprocess.run(
        ["sh", "-c", command], env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize("args", ["--help", "-h", "status --help", "hub import --help"])
def test_s10_help_to_a_closed_or_full_stdout_is_exit_1_and_one_line(args: str) -> None:
    """CONTRACT §10: a closed stdout (`>&-`) is "the output could not be written: standard
    output is closed", exit 1, and a full one (`/dev/full`) its error's words, as every
    answer and `--version` are; `--help` exited 0 both ways (the help went to stderr, or
    nowhere). To a stdout that takes it: the help, exit 0, nothing on stderr."""
    closed = _shell(f'exec "$T" {args} >&-')
    assert (closed.returncode, closed.stdout, closed.stderr) == (1, "", CLOSED), closed
    full = _shell(f'exec "$T" {args} > /dev/full')
    assert (full.returncode, full.stdout, full.stderr) == (1, "", FULL), full
    shown = _shell(f'exec "$T" {args}')
    assert shown.returncode == 0 and shown.stderr == "", shown
    assert shown.stdout.startswith("usage: tillpoint"), shown.stdout


def test_s10_version_to_a_closed_stdout_is_the_same_line() -> None:
    """The rule `--help` now follows (review 27's, `--version` among its answers)."""
    closed = _shell('exec "$T" --version >&-')
    assert (closed.returncode, closed.stderr) == (1, CLOSED), closed


# ---------------------------------------------------------------- 8. the Kazakh і on the code pages


def _receipt_text(first_name: str, text: str, **config: Any) -> tuple[bytes, str]:
    """The offers block as the printer gets it (bytes) and as the virtual printer's
    decoder reads them back (text)."""
    from tillpoint.printer.config import PrinterConfig
    from tillpoint.printer.decode import decode
    from tillpoint.printer.layout import offers_blocks, render_escpos
    from tillpoint.printer.payload import parse_payload
    from tillpoint.printer.profiles import resolve_profile

    payload = {
        "receiptId": "s1-t1-000123",
        "at": "2026-11-23T10:15:00+05:00",
        "firstName": first_name,
        "offers": [
            {
                "id": "o-1",
                "text": text,
                "validFrom": "2026-11-01T00:00:00+05:00",
                "validTo": "2026-11-30T23:59:59+05:00",
                "code": "TP1-o-1",
            }
        ],
    }
    data = render_escpos(
        offers_blocks(parse_payload(payload)), resolve_profile(PrinterConfig(**config))
    )
    (doc,) = decode(data)
    return data, doc.text


KAZAKH = "Әлімжан, Қасым, Ұлан, Үміт, Ғалия, Өмір, Ңң, Һ"


def test_s7_the_kazakh_i_prints_as_latin_i_on_cp866_the_same_glyph() -> None:
    """CONTRACT §7, docs/PRINTING.md: CP866 has no І/і (Ukrainian, Belarusian, Kazakh);
    the Latin letters are drawn alike, so the name reads as written ("Әлімжан" as
    "Алiмжан": the plain letter under Ә's mark, і as the Latin i), where the Russian
    spelling's и ("Алимжан") would change the letter. Every byte on the wire is CP866."""
    data, text = _receipt_text("Әлімжан", KAZAKH)
    assert data.startswith(b"\x1b@\x1bt\x11")  # CP866, slot 17
    assert "Алiмжан, ждём вас снова!" in text, text
    assert "Алiмжан, Касым, Улан, Умiт, Галия, Омiр, Нн, Х" in text, text
    assert "Алiмжан".encode("cp866") in data  # the Latin i, byte 0x69
    assert "\ufffd" not in text and "?" not in text
    _, ukrainian = _receipt_text("Іван", "Іі")
    assert "Iван" in ukrainian and "Ii" in ukrainian


@pytest.mark.parametrize(
    ("codepage", "slot", "shown"),
    [
        ("kz1048", 53, KAZAKH),  # every Kazakh letter
        ("cp1251", 46, "Алімжан, Касым, Улан, Уміт, Галия, Омір"),
        ("cp1125", 44, "Алімжан, Касым, Улан, Уміт, Галия, Омір"),
    ],
)
def test_s7_a_code_page_with_the_letters_prints_them(codepage: str, slot: int, shown: str) -> None:
    """The code pages a printer may hold with Cyrillic і: Windows-1251 and CP1125 print
    it (the other Kazakh letters as the plain ones), KZ-1048 (RK1048, Epson's slot 53)
    prints them all. The profile gives the slot; the decoder reads them back: it knew
    no slot 53 and showed "�" for each Cyrillic letter (review 42, polish42)."""
    data, text = _receipt_text("Әлімжан", KAZAKH, codepage=codepage)
    assert data.startswith(b"\x1b@\x1bt" + bytes([slot])), data[:8]
    assert shown in text, text
    assert "\ufffd" not in text
