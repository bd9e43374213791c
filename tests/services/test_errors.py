"""The one mapping of store errors to HTTP answers (services/errors.py), class by class:
every Redis / Redis Cluster failure is a 503 with Retry-After whose detail names what
failed and never where the store lives; an error reply we did not expect is a 500."""

from __future__ import annotations

import json

import pytest
from redis import exceptions as rx

from docl.services.errors import classify_store_error, redis_error_response, scrub
from docl.services.store import ClusterStateError, NotReplicated, ShardUnavailable

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
    ShardUnavailable("r1", 3, 6, "unreachable", "ConnectionError"),
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
    got = classify_store_error(exc)
    assert got is not None, exc
    status, retry_after, detail = got
    assert status == 503 and retry_after == (5 if exc in REFUSED else 1)
    resp = redis_error_response(exc, method="POST", path="/v1/runs/r/reports")
    assert resp.status_code == 503 and resp.headers["Retry-After"] == str(retry_after)
    body = json.loads(bytes(resp.body))
    assert body["status"] == 503 and body["detail"] == detail
    assert not any(w in detail for w in WHERE), detail


@pytest.mark.parametrize("exc", BUGS, ids=lambda e: type(e).__name__)
def test_an_error_reply_we_did_not_expect_is_a_500(exc: Exception) -> None:
    assert classify_store_error(exc) is None
    resp = redis_error_response(exc, method="GET", path="/v1/runs")
    assert resp.status_code == 500 and "Retry-After" not in resp.headers


def test_the_503_names_the_shard_and_the_setting() -> None:
    _, _, detail = classify_store_error(NotReplicated(0, 1, 300, where="shard 2 of 6")) or (
        0,
        0,
        "",
    )
    assert "primary of shard 2 of 6" in detail and "DOCL_REDIS_WAIT_REPLICAS=1" in detail
    _, _, detail = classify_store_error(
        ShardUnavailable("r1", 3, 6, "failover", "ClusterDownError")
    ) or (0, 0, "")
    assert "shard 3 of 6 of run 'r1' is unavailable (failover" in detail


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
