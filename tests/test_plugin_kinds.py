"""Plug-in work kinds (JOB_KINDS, PROMISE_KINDS) defined in tests/plugin_kinds.py, run end to
end: the API lists and accepts them, a real workload worker runs them; a bad entry stops the
API and the worker at start with an error naming it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from deploy.launcher import wait_for_workers
from routing.queues import WORKLOAD_QUEUES
from tests.harness import WorkerSet, wait_until
from tests.test_api import ALICE, start_api

PLUG_INS = {"JOB_KINDS": "wordcount=tests.plugin_kinds:word_count",
            "PROMISE_KINDS": "shout=tests.plugin_kinds:shout"}


def test_plug_in_kinds_are_listed_accepted_and_run(workers: WorkerSet, producer, tmp_path):
    """Breaks if JOB_KINDS / PROMISE_KINDS are not read, if the API does not list a plug-in
    kind (or its queue and params) in GET /v1/kinds and its OpenAPI document, if a plug-in
    kind's params are not checked by its own model (a 422 naming the field), if an unknown
    kind is not a 422, or if a worker does not run a plug-in job or promise to completion."""
    http = start_api(workers, tmp_path, **PLUG_INS)
    workers.start_celery("workloads", "-Q", ",".join(WORKLOAD_QUEUES), "-c", "2")
    wait_for_workers(producer, list(WORKLOAD_QUEUES))

    kinds = http.get("/v1/kinds", headers=ALICE).json()
    jobs = {k["name"]: k for k in kinds["jobs"]}
    assert set(jobs) == {"profiling", "llm", "wordcount"}
    assert jobs["wordcount"]["queue"] == "default"
    assert jobs["wordcount"]["params"]["required"] == ["words"]
    assert {k["name"] for k in kinds["promises"]} == {"echo", "sum", "llm", "fail", "shout"}
    body = http.get("/openapi.json").json()["components"]["schemas"]
    assert {v["properties"]["kind"]["const"] for v in body["JobIn"]["oneOf"]} == {
        "profiling", "llm", "wordcount"}
    assert "shout" in {v["properties"]["type"]["const"] for v in body["PromiseIn"]["oneOf"]}

    for bad, loc in [({"kind": "wordcount", "params": {"words": []}}, ["body", "params", "words"]),
                     ({"kind": "wordcount"}, ["body", "params", "words"]),
                     ({"kind": "mining"}, ["body", "kind"])]:
        refused = http.post("/v1/jobs", json=bad, headers=ALICE)
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == loc, \
            refused.text
    refused = http.post("/v1/promises", json={"user_id": "u1", "type": "shout",
                                              "params": {"text": 5}}, headers=ALICE)
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["body", "params", "text"]

    job = http.post("/v1/jobs", json={"kind": "wordcount",
                                      "params": {"words": ["ordered", "per", "user"]}},
                    headers=ALICE)
    assert job.status_code == 202, job.text
    promise = http.post("/v1/promises", json={"id": "p1", "user_id": "u1", "type": "shout",
                                              "params": {"text": "hello"}}, headers=ALICE)
    assert promise.status_code == 202, promise.text

    def finished(path: str) -> bool:
        return http.get(path, headers=ALICE).json()["status"] in ("completed", "failed")

    jid = job.json()["id"]
    wait_until(lambda: finished(f"/v1/jobs/{jid}"), 60, interval_s=0.2, what="the plug-in job")
    wait_until(lambda: finished("/v1/promises/p1"), 60, interval_s=0.2,
               what="the plug-in promise")
    done = http.get(f"/v1/jobs/{jid}", headers=ALICE).json()
    assert (done["status"], done["result"]) == ("completed", {"words": 3, "letters": 14}), done
    shouted = http.get("/v1/promises/p1", headers=ALICE).json()
    assert (shouted["status"], shouted["result"]) == ("completed", "HELLO!"), shouted
    assert "tests.jobs.wordcount.run" in workers.log("workloads")


def test_a_bad_plug_in_entry_stops_the_api_and_the_worker(workers: WorkerSet, tmp_path: Path):
    """Breaks if a JOB_KINDS / PROMISE_KINDS entry that cannot be loaded (a missing module, a
    factory that returns something that is not a kind) lets the API or a worker start, or if
    the error does not name the variable and the entry."""
    cases = [("JOB_KINDS", "ghost=tests.no_such_module:make", "cannot import"),
             ("PROMISE_KINDS", "odd=tests.plugin_kinds:not_a_kind", "not a promises.kinds"),
             ("JOB_KINDS", "profiling=tests.plugin_kinds:word_count", "already exists")]
    for variable, entry, why in cases:
        env = {**workers.env, variable: entry}
        for argv in ([sys.executable, "-m", "api"],
                     [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-Q", "default",
                      "--pool", "solo", "--without-gossip", "--without-mingle"]):
            # Both must exit by themselves; the timeout is only a hang guard.
            run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120,
                                 cwd=Path(__file__).parent.parent)
            said = run.stdout + run.stderr
            assert run.returncode != 0, said[-2000:]
            assert f"{variable} entry {entry}" in said and why in said, said[-2000:]
