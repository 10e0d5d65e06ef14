"""/docs in a real headless Chromium that cannot reach the internet.

Chromium (the Debian package, installed by ``make test``) resolves every host but loopback to
nothing, so a page that needs a CDN stays blank, as it does on a network without internet.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.harness import WorkerSet
from tests.test_api import start_api

#: Every host name but the API's own fails to resolve: no CDN, as on an offline network.
OFFLINE = "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("chromium is not installed: run make test, which installs it")
    # --virtual-time-budget lets the page's scripts run (and fetch /openapi.json) before the
    # DOM is dumped or the screenshot taken; the timeout is only a hang guard.
    return subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu",
                           "--disable-dev-shm-usage", "--no-first-run", OFFLINE,
                           "--virtual-time-budget=15000", *args],
                          capture_output=True, text=True, timeout=180)


def test_docs_render_the_operations_without_internet(workers: WorkerSet, tmp_path: Path):
    """Breaks if /docs loads Swagger UI from a CDN (the page stays blank offline: no
    operation is rendered), or if the OpenAPI document cannot be rendered by the bundled
    Swagger UI (it shows an error instead of the operations)."""
    http = start_api(workers, tmp_path)
    url = f"{http.base_url}/docs"
    declared = {operation["operationId"]
                for methods in http.get("/openapi.json").json()["paths"].values()
                for operation in methods.values()}
    dom = chromium("--dump-dom", url).stdout
    # Swagger UI renders each operation as <div class="opblock ..." id="operations-TAG-ID">.
    rendered = set(re.findall(r'class="opblock opblock-\w+[^"]*" id="operations-\w+-(\w+)"',
                              dom))
    assert "create_v1_jobs_post" in rendered, dom[-2000:]
    assert rendered == declared and len(declared) >= 10
    shot = tmp_path / "docs.png"
    chromium(f"--screenshot={shot}", "--window-size=1280,1600", url)
    assert shot.stat().st_size > 20_000, "a blank page is a few kilobytes"
    assert "Authorize" in dom  # the bearer scheme is declared (API_TOKENS is set)
