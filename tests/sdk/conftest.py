"""Starts fake-anthropic and the real claude-gateway binary (with the real pinned CLI) on
loopback for the SDK tests. The binaries come from the cargo target dir; the test command
builds them first."""

import json
import os
import pathlib
import re
import subprocess
import tempfile
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug"


def _start(cmd, prefix, env=None, log=None):
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=log or subprocess.DEVNULL,
        text=True,
        env=env,
    )
    for line in proc.stdout:
        if line.startswith(prefix):
            return proc, line[len(prefix):].strip()
    raise RuntimeError(f"{cmd[0]} exited before listening")


class Upstream:
    def __init__(self, url):
        self.url = url

    def requests(self):
        with urllib.request.urlopen(f"{self.url}/_fake/requests") as r:
            return json.load(r)

    def messages_containing(self, marker):
        return [
            r
            for r in self.requests()
            if r["path"] == "/v1/messages" and marker in json.dumps(r["body"])
        ]


@pytest.fixture(scope="session")
def upstream():
    proc, url = _start(
        [str(TARGET / "fake-anthropic"), "--listen", "127.0.0.1:0"],
        "fake-anthropic listening on ",
    )
    yield Upstream(url)
    proc.terminate()
    proc.wait(timeout=10)


def launch(upstream_url, data, log):
    """The gateway binary on `data`, until its process is terminated; its URL."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "ANTHROPIC_BASE_URL": upstream_url,
        "RUST_LOG": "debug",
    }
    return _start(
        [
            str(TARGET / "claude-gateway"),
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data,
            "--claude-bin",
            str(ROOT / "node_modules/.bin/claude"),
            "--upstream-max-retries",
            "0",
        ],
        "claude-gateway listening on ",
        env=env,
        log=log,
    )


@pytest.fixture(scope="session")
def gateway(upstream):
    data = tempfile.mkdtemp(prefix="gw-sdk-")
    log_path = pathlib.Path(data) / "gateway.log"
    log = open(log_path, "w")
    proc, url = launch(upstream.url, data, log)
    yield url
    proc.terminate()
    proc.wait(timeout=15)
    log.close()
    # The whole SDK run's log output holds no credential.
    text = log_path.read_text()
    leaked = [m for m in re.findall(r"sk-ant-[A-Za-z0-9_.\[\]-]{0,30}", text) if not m.startswith("sk-ant-[redacted]")]
    assert "request finished" in text
    assert not leaked, f"credentials in the gateway's logs: {leaked}"


@pytest.fixture
def restartable(upstream):
    """A gateway of the test's own: `restartable.start()` (again) on the same data dir."""

    class Restartable:
        def __init__(self):
            self.data = tempfile.mkdtemp(prefix="gw-sdk-restart-")
            self.log = open(pathlib.Path(self.data) / "gateway.log", "w")
            self.proc = None

        def start(self):
            if self.proc:
                # Stopped at once, as Cloud Run does: the gateway lets its runs' CLIs record
                # their turn's end before it exits.
                self.proc.terminate()
                self.proc.wait(timeout=15)
            self.proc, self.url = launch(upstream.url, self.data, self.log)
            return self.url

    r = Restartable()
    yield r
    if r.proc:
        r.proc.terminate()
        r.proc.wait(timeout=15)
    r.log.close()
