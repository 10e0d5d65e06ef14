"""The OpenAPI document is true: schemathesis (``--checks all``) against the running API.

Both modes: with API_TOKENS (the bearer scheme declared, every /v1 call authenticated) and
without (loopback, no scheme declared). The run is bounded (few examples per operation) and
deterministic (a fixed seed), so a failure here is a real disagreement between the document
and the API, reproducible with the command printed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import WorkerSet
from tests.test_api import ALICE, start_api

SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")
CONFIG = Path(__file__).with_name("schemathesis.toml")


@pytest.mark.parametrize("mode", ["tokens", "loopback"])
def test_openapi_document_holds_against_the_running_api(workers: WorkerSet, tmp_path: Path,
                                                        mode: str):
    """Breaks if the document and the API disagree: an undeclared status (401, 403, 404, 409,
    503), a body that does not match its declared model, /metrics declared as JSON, a request
    the schema allows but the handler refuses (``{"kind": "llm"}`` without prompts, a
    ``user_id`` of ``true``), one the schema forbids but the handler takes, a declared bearer
    scheme the API ignores (or, without tokens, one it does not have)."""
    env = {} if mode == "tokens" else {"API_TOKENS": ""}
    http = start_api(workers, tmp_path, **env)
    auth = ["-H", f"Authorization: {ALICE['Authorization']}"] if mode == "tokens" else []
    argv = [SCHEMATHESIS, "--config-file", str(CONFIG), "run", f"{http.base_url}/openapi.json",
            "--checks", "all", "--max-examples", "15", "--generation-deterministic",
            "--workers", "1", "--no-color",
            "--request-timeout", "20", "-H", "X-Telegram-Bot-Api-Secret-Token: s3cret", *auth]
    run = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=600,
                         env={**workers.env, "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks"})
    (tmp_path / "schemathesis.txt").write_text(run.stdout + run.stderr)
    report = run.stdout[-20000:] + run.stderr[-2000:]
    assert run.returncode == 0, f"{' '.join(argv)}\n{report}"
    assert " passed" in run.stdout, report  # operations were really tested
