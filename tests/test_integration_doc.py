"""docs/INTEGRATION.md's complete examples (curl, Python, Java), extracted from the page and
run against a real agent serving HTTP on a random loopback port."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from tillpoint.agent.http_api import HttpServer
from tillpoint.agent.service import Agent

from .conftest import REPO, free_port

DOC = REPO / "docs" / "INTEGRATION.md"
JAVAC, JAVA = shutil.which("javac"), shutil.which("java")
needs_jdk = pytest.mark.skipif(
    JAVAC is None or JAVA is None,
    reason="no JDK: `apt-get install default-jdk-headless` (`make deps-system` does it as root)",
)


def example(language: str) -> str:
    found = re.findall(
        rf"<!-- example: {language} -->\n```\w+\n(.*?)\n```", DOC.read_text(encoding="utf-8"), re.S
    )
    assert len(found) == 1, f"one {language} example expected in {DOC.name}"
    return str(found[0])


@pytest.fixture
def agent_url(tmp_path: Path) -> Iterator[str]:
    """An agent on the snapshot the page names: the README walkthrough's own file."""
    agent = Agent(tmp_path / "data", "till-1")
    agent.load_snapshot(json.loads((REPO / "examples" / "snapshot.json").read_text("utf-8")))
    server = HttpServer(agent, "127.0.0.1:0")
    server.start()
    yield f"http://127.0.0.1:{server.port}"
    server.stop()
    agent.close()


def run(argv: list[str], url: str, cwd: Path, timeout: float = 60) -> str:
    env = dict(os.environ, TILLPOINT_URL=url)
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (
        f"{argv[0]} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    )
    return done.stdout


def test_the_examples_are_well_formed(tmp_path: Path) -> None:
    """Before the examples can run (or where the JDK is missing), they at least parse."""
    compile(example("python"), "example.py", "exec")
    script = tmp_path / "example.sh"
    script.write_text(example("curl"), encoding="utf-8")
    subprocess.run(["sh", "-n", str(script)], check=True, timeout=30)


@needs_jdk
@pytest.mark.slow
@pytest.mark.ci
def test_the_java_example_compiles(tmp_path: Path) -> None:
    (tmp_path / "TillExample.java").write_text(example("java"), encoding="utf-8")
    subprocess.run([str(JAVAC), "TillExample.java"], cwd=tmp_path, check=True, timeout=180)
    # the heading's promise: "JDK 15 or later" (text blocks came in 15)
    heading = re.search(r"^### Java \(JDK (\d+) or later", DOC.read_text(encoding="utf-8"), re.M)
    assert heading is not None
    release = ["--release", heading.group(1), "-d", "release"]
    subprocess.run(
        [str(JAVAC), *release, "TillExample.java"], cwd=tmp_path, check=True, timeout=180
    )


def test_the_curl_example_runs(agent_url: str, tmp_path: Path) -> None:
    script = tmp_path / "example.sh"
    script.write_text(example("curl"), encoding="utf-8")
    out = run(["sh", str(script)], agent_url, tmp_path)
    assert '"state": "CONFIRMED"' in out and '"refundId": "s1-t1-r-0007"' in out


def test_the_python_example_runs(agent_url: str, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(example("python"), encoding="utf-8")
    out = run([sys.executable, str(script)], agent_url, tmp_path)
    assert "payment failed: hold cancelled" in out and out.rstrip().endswith("done")
    assert "card UNKNOWN: base-tier points" in out
    assert "card BLOCKED (the card is blocked): selling without loyalty" in out
    # Run again on the same agent (a resumed POS): every hold answers what the receipt
    # is now; nothing is charged twice, and it still ends. It read `holdExpiresAt` of a
    # CONFIRMED receipt, which has none, and died.
    again = run([sys.executable, str(script)], agent_url, tmp_path)
    assert "s1-t1-000123 is CONFIRMED already: nothing to charge" in again
    assert "s1-t1-000124 is CANCELLED already" in again and again.rstrip().endswith("done")


@needs_jdk
@pytest.mark.slow
@pytest.mark.ci
def test_the_java_example_runs(agent_url: str, tmp_path: Path) -> None:
    (tmp_path / "TillExample.java").write_text(example("java"), encoding="utf-8")
    subprocess.run([str(JAVAC), "TillExample.java"], cwd=tmp_path, check=True, timeout=180)
    out = run([str(JAVA), "-cp", str(tmp_path), "TillExample"], agent_url, tmp_path)
    assert "refund refused" in out and out.rstrip().endswith("done")
    again = run([str(JAVA), "-cp", str(tmp_path), "TillExample"], agent_url, tmp_path)
    assert "paid already: do not charge again" in again and again.rstrip().endswith("done")
    # what it prints is the receipt's own figures, not a line's (`earnedPoints` is both)
    with urllib.request.urlopen(
        urllib.request.Request(
            agent_url + "/v1/confirm",
            data=json.dumps({"receiptId": "s1-t1-000123"}).encode(),
            headers={"Content-Type": "application/json"},
        ),
        timeout=10,
    ) as answer:
        done = json.loads(answer.read())
    assert done["lines"][0]["earnedPoints"] != done["earnedPoints"]  # the trap it fell in
    assert f"earned {done['earnedPoints']} points, paid with {done['redeemedPoints']}\n" in out, out


# The page's "To try one" block, run as a person pastes it: `tillpoint run` as a real
# process (its ports moved off the defaults, which other checkouts may hold), the program
# saved from the page under the name the block runs it by.
SAVED_AS = {"curl": "till.sh", "python": "till.py", "java": "TillExample.java"}


def setup_block() -> list[str]:
    return [line for line in example("setup").splitlines() if line.strip()]


def test_the_setup_block_runs_each_program_by_its_saved_name() -> None:
    lines = setup_block()
    assert "tillpoint snapshot load examples/snapshot.json" in lines
    assert any(line.startswith("tillpoint run &") for line in lines)
    for name in SAVED_AS.values():
        assert sum(name in line for line in lines) == 1, name


@pytest.mark.parametrize(
    "language",
    ["curl", "python", pytest.param("java", marks=[needs_jdk, pytest.mark.slow, pytest.mark.ci])],
)
def test_the_examples_run_against_tillpoint_run(language: str, tmp_path: Path) -> None:
    (tmp_path / "examples").symlink_to(REPO / "examples")
    (tmp_path / SAVED_AS[language]).write_text(example(language), encoding="utf-8")
    others = [n for lang, n in SAVED_AS.items() if lang != language]
    lines = [line for line in setup_block() if not any(n in line for n in others)]
    http, grpc = free_port(), free_port()
    script = "\n".join(line.replace("8061", str(http)) for line in lines) + "\nwait\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        TMPDIR=str(tmp_path),
        TILLPOINT_URL=f"http://127.0.0.1:{http}",
        TILLPOINT_HTTP__LISTEN=f"127.0.0.1:{http}",
        TILLPOINT_SERVER__LISTEN=f"127.0.0.1:{grpc}",
        TILLPOINT_METRICS__ENABLED="false",
    )
    process = subprocess.Popen(
        ["bash", "-e", "-c", script],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=240)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == 0, f"{out}\n{err}"
    assert "snapshot version 7 loaded" in out
    if language == "curl":
        assert '"state": "CONFIRMED"' in out and '"refundId": "s1-t1-r-0007"' in out
    else:
        assert out.rstrip().endswith("done"), out
