"""The one mapping of store errors to HTTP answers, class by class: every Redis / Redis
Cluster failure, as the Redis store translates it into storage's error types
(services/redis/errors.py), is a 503 with Retry-After (services/errors.py) whose detail
names what failed and never where the store lives; an error reply we did not expect is
a 500."""

from __future__ import annotations

import json

import pytest
from redis import exceptions as rx

from docl.services.errors import classify_store_error, store_error_response
from docl.services.redis.errors import scrub, translate
from docl.services.storage import (
    ClusterStateError,
    NotReplicated,
    PartitionUnavailable,
    StoreError,
    StoreFailover,
    StoreFault,
    StoreRefused,
)

WHERE = ("127.0.0.1", "55505", "6379", "redis.sock", "10.0.0.7")

UNAVAILABLE = [
    rx.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."),
    rx.ConnectionError("Error connecting to unix socket: /tmp/docl-x/redis.sock."),
    rx.TimeoutError("Timeout reading from 10.0.0.7:6379"),
    rx.BusyLoadingError("LOADING Redis is loading the dataset in memory"),
    rx.MaxConnectionsError("Too many connections"),
    rx.ClusterDownError("CLUSTERDOWN The cluster is down"),
    rx.MasterDownError("MASTERDOWN Link with MASTER is down"),
    rx.TryAgainError("TRYAGAIN Multiple keys request during rehashing of slot"),
    rx.MovedError("8820 127.0.0.1:55505"),
    rx.AskError("8820 127.0.0.1:55505"),
    rx.ClusterError("TTL exhausted."),
    rx.SlotNotCoveredError("Slot 8820 is not covered by the cluster."),
    rx.RedisClusterUnreachableError("Redis Cluster cannot be connected. 127.0.0.1:55505"),
    rx.RedisClusterException("Redis Cluster cannot be connected."),
    # the store's own RESP client passes raw replies on as plain ResponseErrors
    rx.ResponseError("CLUSTERDOWN The cluster is down"),
    rx.ResponseError("TRYAGAIN Multiple keys request during rehashing of slot"),
    rx.ResponseError("MOVED 8820 127.0.0.1:55505"),
    rx.ResponseError("ASK 8820 127.0.0.1:55505"),
    rx.ResponseError("MASTERDOWN Link with MASTER is down"),
    ClusterStateError("the Redis Cluster is not serving: 127.0.0.1:55505 says cluster_state=fail"),
    NotReplicated(0, 1, 300),
    PartitionUnavailable("r1", 3, 6, "unreachable", "ConnectionError"),
]
REFUSED = [
    rx.OutOfMemoryError("OOM command not allowed when used memory > 'maxmemory'."),
    rx.ReadOnlyError("READONLY You can't write against a read only replica."),
    rx.ResponseError("MISCONF Redis is configured to save RDB snapshots, but it's failing"),
    rx.ResponseError("ERR Error running script: @user_script:12: -OOM command not allowed"),
]
BUGS = [
    rx.ResponseError("ERR wrong number of arguments for 'hget' command"),
    rx.CrossSlotTransactionError(
        "All keys involved in a cluster transaction must map to the same slot"
    ),
    rx.DataError("Invalid input of type: 'NoneType'"),
]


@pytest.mark.parametrize("exc", UNAVAILABLE + REFUSED, ids=lambda e: type(e).__name__)
def test_every_store_failure_is_a_503_with_retry_after_naming_no_address(exc: Exception) -> None:
    err = translate(exc)  # what the store raises
    assert isinstance(err, StoreError) and (err is exc or err.args == (str(exc),))
    assert isinstance(err, StoreRefused) == (exc in REFUSED)
    got = classify_store_error(err)
    assert got is not None, exc
    status, retry_after, detail = got
    assert status == 503 and retry_after == (5 if exc in REFUSED else 1)
    resp = store_error_response(err, method="POST", path="/v1/runs/r/reports")
    assert resp.status_code == 503 and resp.headers["Retry-After"] == str(retry_after)
    body = json.loads(bytes(resp.body))
    assert body["status"] == 503 and body["detail"] == detail
    assert not any(w in detail for w in WHERE), detail


@pytest.mark.parametrize("exc", BUGS, ids=lambda e: type(e).__name__)
def test_an_error_reply_we_did_not_expect_is_a_500(exc: Exception) -> None:
    err = translate(exc)
    assert isinstance(err, StoreFault) and classify_store_error(err) is None
    resp = store_error_response(err, method="GET", path="/v1/runs")
    assert resp.status_code == 500 and "Retry-After" not in resp.headers
    assert json.loads(bytes(resp.body))["detail"].startswith("internal error: Redis said: ")


def test_redis_py_errors_themselves_are_not_the_http_layers_to_classify() -> None:
    # the store translates them (services/redis/errors.py); the HTTP layer knows storage's
    assert classify_store_error(rx.ConnectionError("Connection refused")) is None


def test_a_partition_is_blamed_only_for_unreachable_failing_over_or_refusing() -> None:
    reasons = {
        rx.ConnectionError("x"): "unreachable",
        rx.BusyLoadingError("LOADING x"): "unreachable",
        rx.ClusterDownError("CLUSTERDOWN x"): "failover",
        rx.ResponseError("MOVED 1 127.0.0.1:1"): "failover",
        rx.ResponseError("MASTERDOWN x"): "failover",
        rx.OutOfMemoryError("OOM x"): "refused",
        rx.ResponseError("MISCONF x"): None,
        rx.ResponseError("LOADING x"): None,
        rx.ResponseError("ERR x"): None,
    }
    for exc, reason in reasons.items():
        err = translate(exc)
        assert isinstance(err, StoreError) and err.reason == reason, exc
    assert isinstance(translate(rx.ClusterDownError("CLUSTERDOWN x")), StoreFailover)
    assert isinstance(ClusterStateError("x"), StoreFailover)


def test_the_503_names_the_partition_and_the_setting() -> None:
    _, _, detail = classify_store_error(NotReplicated(0, 1, 300, where="partition 2 of 6")) or (
        0,
        0,
        "",
    )
    assert "primary of partition 2 of 6" in detail and "DOCL_REDIS_WAIT_REPLICAS=1" in detail
    _, _, detail = classify_store_error(
        PartitionUnavailable("r1", 3, 6, "failover", "ClusterDownError")
    ) or (0, 0, "")
    assert "partition 3 of 6 of run 'r1' is unavailable (failover" in detail


def test_scrub_cuts_addresses_and_keeps_the_rest() -> None:
    assert scrub("Error 111 connecting to 127.0.0.1:6379. Connection refused.") == (
        "Error 111 connecting to <redis>. Connection refused."
    )
    assert scrub("redis-0.redis.svc:6379 and [::1]:7000 and /run/x/redis.sock") == (
        "<redis> and <redis> and <redis>"
    )
    assert scrub("see docs/scaling.md, DOCL_REDIS_WAIT_MS=300") == (
        "see docs/scaling.md, DOCL_REDIS_WAIT_MS=300"
    )


def test_a_partition_503_counts_under_the_metric_and_its_deprecated_name() -> None:
    from docl.services import metrics

    def count(name: str) -> float:
        for line in metrics.render()[0].decode().splitlines():
            if line.startswith(f'{name}{{reason="failover"}}'):
                return float(line.split()[-1])
        return 0.0

    before = (count("docl_partition_unavailable_total"), count("docl_shard_unavailable_total"))
    err = PartitionUnavailable("r1", 3, 6, "failover", "ClusterDownError")
    assert store_error_response(err, method="POST", path="/v1/runs/r1/reports").status_code == 503
    after = (count("docl_partition_unavailable_total"), count("docl_shard_unavailable_total"))
    assert (after[0] - before[0], after[1] - before[1]) == (1.0, 1.0)
