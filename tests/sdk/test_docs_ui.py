"""Swagger UI in headless Chromium (Debian's package), offline: the page loads from the
gateway alone, lists the operations, and a screenshot shows them."""

import pathlib
import shutil
import subprocess
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=10000",
]


def chromium(*args):
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "Debian's chromium package is installed by scripts/setup.sh --tests"
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )


def test_swagger_ui_lists_the_operations(gateway):
    dom = chromium("--dump-dom", f"{gateway}/docs/").stdout
    for path in ["/v1/messages", "/v1/chat/completions", "/v1/sessions/{id}", "/v1/models", "/health"]:
        assert f'data-path="{path}"' in dom, f"{path} is listed"


def test_a_screenshot_shows_the_docs_page(gateway):
    shot = ROOT / "target" / "docs-screenshot.png"
    shot.parent.mkdir(exist_ok=True)
    shot.unlink(missing_ok=True)
    chromium("--window-size=1280,1800", f"--screenshot={shot}", f"{gateway}/docs/")
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG")
    # A blank page compresses to a few KB; the rendered operations list is far larger.
    assert len(data) > 50_000
