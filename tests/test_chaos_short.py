"""The chaos suite, short: a few kill -9s of shard consumers and one Redis crash under load.

One chaos run per shard runtime (``tests.harness.RUNTIMES``: solo workers, two shard hosts
with K=1, two with K=4; a module fixture), two verdicts each: order and exactly-once delivery;
nothing lost.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from chaos.run import ChaosParams, ChaosResult, run_chaos
from tests.harness import RUNTIMES, runtime_concurrency


@pytest.fixture(scope="module", params=RUNTIMES)
def chaos_result(request: pytest.FixtureRequest,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosResult]:
    concurrency = runtime_concurrency(request.param)
    params = ChaosParams(users=20, producer_threads=3, pause_s=0.1, kills=4, redis_restarts=1,
                         kill_interval_s=2.5, failure_rate=0.1, drain_timeout_s=60,
                         runtime="solo" if concurrency is None else "hosts",
                         concurrency=concurrency or 1)
    result = run_chaos(params, tmp_path_factory.mktemp("chaos"))
    print("\n" + result.line())
    yield result


def test_short_chaos_duplicates_and_reorders_nothing(chaos_result: ChaosResult) -> None:
    """Breaks if a killed worker's in-flight message comes back late (lease restore missing),
    if a redelivery is answered twice (done-marker), if a worker does not reconnect after
    Redis restarts, or if injected AI failures are retried through the broker (out of order)
    instead of in place. With hosts: if a killed host's K in-flight messages come back in
    the wrong order, or a host runs two messages of one user at once."""
    result = chaos_result
    assert result.cluster.kills == 4 and result.cluster.redis_restarts == 1
    assert result.report.answered > 0
    assert (result.report.duplicated, result.report.violations) == (0, 0), result.report.bad_users
    assert result.unpublished == 0


def test_short_chaos_loses_nothing(chaos_result: ChaosResult) -> None:
    """Breaks if any acknowledged publish is never answered (a lost message): e.g. with
    kombu's plain BRPOP take (shardhost.transport's BLMOVE into the in-flight list removed), a
    kill -9 between the pop and kombu's ``unacked`` record lost one message in about one run
    in four; or if the lease owner does not restore the in-flight list."""
    assert chaos_result.report.missing == 0, chaos_result.report.bad_users
