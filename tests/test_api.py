"""The HTTP API, live: uvicorn in a subprocess on a free port, real workers, private Redis."""

from __future__ import annotations

import sys
import time
from typing import Any

import httpx
import pytest

from deploy.embedded_redis import free_port
from deploy.launcher import wait_for_workers
from ingest.log import IngestedMessage, IngestLog
from routing import keys
from routing.queues import WORKLOAD_QUEUES
from services.conversation import ConversationStore
from tests.harness import WorkerSet, wait_until

ALICE = {"Authorization": "Bearer tok-alice"}
BOB = {"Authorization": "Bearer tok-bob"}


def configure(workers: WorkerSet, tmp_path: Any, **env: str) -> None:
    """One environment for the API and the workers (same database, one shard)."""
    workers.env.update({"API_HOST": "127.0.0.1", "SHARD_COUNT": "1",
                        "API_TOKENS": "alice:tok-alice,bob:tok-bob",
                        "TELEGRAM_WEBHOOK_SECRET": "s3cret", "JOB_CHECKPOINT_EVERY": "5",
                        "DATABASE_URL": f"sqlite:///{tmp_path / 'promises.db'}", **env})


def start_api(workers: WorkerSet, tmp_path: Any, **env: str) -> httpx.Client:
    port = free_port()
    configure(workers, tmp_path, API_PORT=str(port), **env)
    workers.start("api", [sys.executable, "-m", "api"])
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)

    def up() -> bool:
        try:
            return http.get("/openapi.json").status_code == 200
        except httpx.TransportError:
            return False

    wait_until(up, 60, interval_s=0.2, what="API listening")
    return http


def replies(rclient: Any, user: str) -> list[dict[str, str]]:
    return ConversationStore(rclient, history_limit=50, done_ttl_s=60).outbox(user)


def test_messages_webhook_auth_validation_and_catch_up(workers, producer, rclient, tmp_path):
    """Breaks if unauthenticated calls are accepted, a repeated message_id is sent twice,
    a bad field is not named in the 422, the webhook secret is not checked, non-text updates
    are not acknowledged, or a message missed before start-up is not answered."""
    IngestLog(rclient).append(IngestedMessage(user_id="u9", chat_id="u9", message_id="m0",
                                              text="missed while down",
                                              sent_at=time.time() - 10, task_id="lost-task"))
    configure(workers, tmp_path)
    workers.start_shard(0)
    http = start_api(workers, tmp_path)
    wait_for_workers(producer, ["shard.0"])
    body = {"user_id": "u9", "text": "hello", "message_id": "m1"}
    assert http.post("/v1/messages", json=body).status_code == 401
    assert http.post("/v1/messages", json=body,
                     headers={"Authorization": "Bearer tok-alicX"}).status_code == 401
    first = http.post("/v1/messages", json=body, headers=ALICE)
    again = http.post("/v1/messages", json=body, headers=ALICE)
    assert first.status_code == again.status_code == 202
    assert again.json() == {**first.json(), "duplicate": True}
    bad = http.post("/v1/messages", json={"user_id": "u9"}, headers=ALICE)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "text"]
    bad = http.post("/v1/messages", json={"user_id": -3, "text": "x"}, headers=ALICE)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "user_id"]
    update = {"update_id": 1, "message": {"message_id": 77, "from": {"id": 4242},
                                          "chat": {"id": 4242}, "date": int(time.time()),
                                          "text": "from telegram"}}
    hook = "/v1/telegram/webhook"
    assert http.post(hook, json=update).status_code == 401
    ok = http.post(hook, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "s3cret"})
    assert ok.status_code == 200 and ok.json()["ok"] and not ok.json()["duplicate"]
    other = http.post(hook, json={"update_id": 2, "edited_message": {"text": "x"}},
                      headers={"X-Telegram-Bot-Api-Secret-Token": "s3cret"})
    assert other.json() == {"ok": True, "ignored": True}
    wait_until(lambda: len(replies(rclient, "u9")) >= 2 and replies(rclient, "4242"), 60,
               what="replies to the missed message, the API message and the webhook")
    texts = [r["text"] for r in replies(rclient, "u9")]
    assert texts[0].startswith("re: missed while down") and texts[1].startswith("re: hello")
    assert len(texts) == 2
    assert replies(rclient, "4242")[0]["text"].startswith("re: from telegram")
    assert rclient.xlen(keys.INGEST_LOG) == 3


def test_jobs_and_promises_are_owner_scoped(workers, producer, rclient, tmp_path):
    """Breaks if one owner can see or control another's job or promise, if unknown ids are
    not 404, if bad input is not a 422 naming the field, if a refused DAG is half-created,
    or if jobs and promises created over HTTP do not finish."""
    configure(workers, tmp_path)
    workers.start_shard(0)
    workers.start_celery("workloads", "-Q", ",".join(WORKLOAD_QUEUES), "-c", "2")
    http = start_api(workers, tmp_path)
    wait_for_workers(producer, ["shard.0", *WORKLOAD_QUEUES])
    job = http.post("/v1/jobs", json={"kind": "profiling", "priority": 0,
                                      "params": {"rows": 40}}, headers=ALICE)
    assert job.status_code == 202
    jid = job.json()["id"]
    assert http.get(f"/v1/jobs/{jid}", headers=BOB).status_code == 403
    assert http.post(f"/v1/jobs/{jid}/cancel", headers=BOB).status_code == 403
    assert http.get("/v1/jobs/nope", headers=ALICE).status_code == 404
    assert http.get("/v1/jobs", headers=BOB).json() == []
    wait_until(lambda: http.get(f"/v1/jobs/{jid}", headers=ALICE).json()["status"]
               == "completed", 60, what="job completed")
    progress = http.get(f"/v1/jobs/{jid}", headers=ALICE).json()["progress"]
    assert progress == {"current": 40, "total": 40, "percent": 100.0,
                        "message": "profiling: 40/40"}
    assert http.post(f"/v1/jobs/{jid}/pause", headers=ALICE).status_code == 409
    for body, loc in [({"kind": "profiling", "priority": 12}, ["body", "priority"]),
                      ({"kind": "profiling", "params": {"rows": 0}}, ["body", "params", "rows"]),
                      ({"kind": "mining"}, ["body", "kind"])]:
        bad = http.post("/v1/jobs", json=body, headers=ALICE)
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == loc, bad.text
    dag = [{"id": "a", "user_id": "u1", "type": "sum", "params": {"value": 2}},
           {"id": "b", "user_id": "u1", "type": "sum", "params": {"value": 3}, "parents": ["a"]}]
    assert http.post("/v1/promises/batch", json={"promises": dag}, headers=ALICE).status_code == 202
    wait_until(lambda: http.get("/v1/promises/b", headers=ALICE).json()["status"]
               == "completed", 60, what="promise DAG completed")
    assert http.get("/v1/promises/b", headers=ALICE).json()["result"] == 5
    assert http.get("/v1/promises/b", headers=BOB).status_code == 403
    assert http.post("/v1/promises/a/cancel", headers=BOB).status_code == 403
    assert http.post("/v1/promises/a/cancel", headers=ALICE).status_code == 409
    cycle = [{"id": "x", "user_id": "u1", "type": "echo", "parents": ["y"]},
             {"id": "y", "user_id": "u1", "type": "echo", "parents": ["x"]}]
    refused = http.post("/v1/promises/batch", json={"promises": cycle}, headers=ALICE)
    assert refused.status_code == 422 and "cycle" in refused.json()["detail"][0]["msg"]
    refused = http.post("/v1/promises", json={"user_id": "u1", "type": "echo",
                                              "parents": ["ghost"]}, headers=ALICE)
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "parents"]
    assert sorted(p["id"] for p in http.get("/v1/promises", headers=ALICE).json()) == ["a", "b"]
    assert http.get("/v1/promises/x", headers=ALICE).status_code == 404
    # /healthz pings the workers with a 0.5 s reply timeout: on a busy machine one ping can
    # get no reply in time (a 503 for that request), so ask until a healthy answer comes.
    health: list[httpx.Response] = []

    def healthy() -> bool:
        health[:] = [http.get("/healthz")]
        return health[0].status_code == 200

    wait_until(healthy, 30, interval_s=0.5, what="/healthz reporting healthy")
    assert health[0].json()["redis"] and health[0].json()["workers"], health[0].text
    metrics = http.get("/metrics").text
    assert 'shardline_api_requests_total{method="GET",route="/v1/jobs/{job_id}",status="403"}' \
        in metrics
    spec = http.get("/openapi.json").json()
    for path in ("/v1/messages", "/v1/telegram/webhook", "/v1/jobs", "/v1/jobs/{job_id}/pause",
                 "/v1/jobs/{job_id}/resume", "/v1/jobs/{job_id}/cancel", "/v1/promises",
                 "/v1/promises/batch", "/v1/promises/{promise_id}/cancel", "/healthz",
                 "/metrics"):
        assert path in spec["paths"], path


@pytest.mark.parametrize("host", ["0.0.0.0"])
def test_without_tokens_the_api_binds_loopback_and_says_so(workers, tmp_path, host):
    """Breaks if an API without API_TOKENS listens on a public address silently, or if
    its single local owner cannot use it."""
    http = start_api(workers, tmp_path, API_TOKENS="", API_HOST=host)
    assert http.get("/v1/jobs").json() == []
    log = workers.log("api")
    assert "binding to 127.0.0.1 instead of 0.0.0.0" in log
    assert "Uvicorn running on http://127.0.0.1:" in log


#: JSON user ids routing refuses; pydantic's lax int | str took true and 1.0 as user 1.
BAD_USER_IDS = ["true", "false", "1.0", "1.5", "-1", '""', '"\\ud800x"', "null"]


def test_user_ids_routing_refuses_are_422(workers, rclient, tmp_path):
    """Every endpoint that takes a user id answers 422 naming user_id for a value routing
    refuses (routing.userid), and creates nothing. Breaks if the API schemas check user ids
    with their own rule: true, false, 1.0 and 1.5 were accepted (true and 1.0 as user "1"),
    and a lone surrogate ("\\ud800x") was taken for a user no Redis key can hold."""
    http = start_api(workers, tmp_path)
    json_headers = {**ALICE, "Content-Type": "application/json"}
    for raw in BAD_USER_IDS:
        bodies = {
            "/v1/messages": f'{{"user_id": {raw}, "text": "hi"}}',
            "/v1/promises": f'{{"user_id": {raw}, "type": "echo"}}',
            "/v1/promises/batch": f'{{"promises": [{{"user_id": {raw}, "type": "echo"}}]}}',
        }
        for path, body in bodies.items():
            answer = http.post(path, content=body.encode(), headers=json_headers)
            assert answer.status_code == 422, (path, raw, answer.status_code, answer.text)
            assert answer.json()["detail"][0]["loc"][-1] == "user_id", (path, raw, answer.text)
    assert rclient.keys("shard.*") == []
    assert http.get("/v1/promises", headers=ALICE).json() == []
    good = http.post("/v1/messages", json={"user_id": 42, "text": "hi"}, headers=ALICE)
    assert good.status_code == 202, good.text
