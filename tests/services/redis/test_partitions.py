"""Partitioned runs (issue 13, "sharded runs" then): one run's per-sample data spread over
slot-spread partitions.

Real parts only: a real 3-primary Redis Cluster (``redis_cluster``), real ``docl serve``
processes over HTTP, a single redis-server for the unpartitioned twin. The strong check is
independent of the partitioning code: the same run, fed the same reports, draws the same
epochs and ends with the same scores, visits and counters when it is partitioned on the
cluster as when it is unpartitioned on one Redis (the math must not depend on partitioning).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest

from docl.services.embedded import RedisClusterProcess, ServerProcess
from docl.services.layout import MAX_PARTITIONS, RunLayout
from docl.services.redis.keys import keys_of, run_prefix
from docl.wire import encoding as wire
from tests.services.test_server_e2e import (
    create,
    draw,
    get_scores,
    report,
    shard,
    stream_reports_through_a_kill,
)

MANY = {"Content-Type": wire.REPORTS_CONTENT_TYPE}
N = 480
M = 70  # samples per partition: 7 partitions, the last one short (60 samples)


def _layout(run_id: str, partition_samples: int = 0, **over: Any) -> RunLayout:
    base: dict[str, Any] = {
        "run_id": run_id,
        "num_samples": N,
        "num_outputs": 4,
        "output_dtype": "float32",
        "chunk_bytes": 256,  # several chunks per partition
        "loss_column": True,
        "exp3": True,
        "partition_samples": partition_samples,
    }
    return RunLayout(**{**base, **over})


# -- 1. the layout ---------------------------------------------------------------------------
def test_an_unpartitioned_layout_is_byte_identical_to_the_layout_before_partitions() -> None:
    old_json = (
        '{"chunk_bytes": 256, "exp3": true, "loss_column": true, "num_outputs": 4, '
        '"num_samples": 480, "output_dtype": "float32", "rec_size": 40, "record_head": 24}'
    )
    lay = _layout("r1")
    assert lay.to_json() == old_json  # no partition field: stored runs read and compare as before
    assert RunLayout.from_json("r1", old_json) == lay and lay.partitions == 1
    names = keys_of(lay)
    assert names.meta == "{run:r1}:meta" and names.scorelog == "{run:r1}:scorelog"
    assert names.rec[:2] == ("{run:r1}:rec:0", "{run:r1}:rec:1")
    assert len(names.rec) == -(-N // (256 // 40))
    assert all(k.startswith(run_prefix("r1") + ":") for k in names.static())
    # a run that fits one partition is not partitioned either
    assert _layout("r1", partition_samples=N).partitions == 1
    assert _layout("r1", partition_samples=N).to_json() == old_json


def test_partitions_cover_the_samples_and_their_tags_spread_over_the_cluster(
    redis_cluster: RedisClusterProcess,
) -> None:
    lay = _layout("spread-me", partition_samples=M)
    assert lay.partitions == 7 and RunLayout.from_json("spread-me", lay.to_json()) == lay
    bounds = [lay.partition_bounds(j) for j in range(lay.partitions)]
    assert bounds[0] == (0, M) and bounds[-1] == (6 * M, N)
    assert sum(lay.partition(j).num_samples for j in range(7)) == N
    slots, owners = [], []
    for j in range(lay.partitions):
        sub = lay.partition(j)
        assert sub.partitions == 1 and not sub.exp3  # the inclusion column stays with the run
        names = keys_of(sub)
        keys = [names.meta, names.reports, names.counters, names.scorelog]
        keys += [*names.rec, *names.score, *names.loss]
        # every key of a partition on one slot (its scripts stay single-slot) ...
        got = {int(redis_cluster.nodes[0].command("CLUSTER", "KEYSLOT", k)) for k in keys}
        assert len(got) == 1, got
        slots.append(got.pop())
        owners.append(redis_cluster.node_of_key(names.meta))
        assert not names.prefix.startswith(keys_of(lay).prefix)  # ... not the run's
    assert len(set(slots)) == 7  # one slot per partition
    assert set(owners) == {0, 1, 2}, owners  # spread over the 3 primaries
    # spread evenly: the tags aim at 7 equal slot ranges, one each
    assert [s * 7 // 16384 for s in slots] == list(range(7))


def test_split_cuts_reports_into_partition_parts() -> None:
    lay = _layout("r", partition_samples=M)
    idx = np.array([5, 75, 300, 6, 71, 479], dtype=np.int64)  # report 0: 3, report 1: 3
    parts, homes = lay.split(idx, [3, 3])
    assert [(j, pos.tolist(), reps) for j, pos, reps in parts] == [
        (0, [0, 3], [0, 1]),
        (1, [1, 4], [0, 1]),
        (4, [2], [0]),
        (6, [5], [1]),
    ]
    assert homes.tolist() == [0, 0]
    parts, homes = lay.split(idx[[1, 0, 2]], [1, 2])
    assert homes.tolist() == [1, 0] and [j for j, _, _ in parts] == [0, 1, 4]


def test_a_partitioned_store_reads_back_its_columns_and_records_across_partitions(
    redis_cluster: RedisClusterProcess,
) -> None:
    """The store alone on the cluster: a partitioned run's score/loss columns written whole
    read back whole and in slices that cross partition boundaries, the draw snapshot sees
    them, and never-written records read as zeros."""
    import asyncio

    from docl.services.redis.store import RedisStore

    lay = _layout("cols-" + str(np.random.default_rng().integers(1 << 30)), partition_samples=M)
    scores = np.random.default_rng(3).normal(size=N).astype(np.float32)
    losses = scores * 2

    async def go() -> None:
        store = RedisStore.from_url(redis_cluster.url)
        try:
            await store.load_scripts()
            status, uid, _ = await store.create_run(lay, '{"x":1}', "u1", 1.0)
            assert status.name == "CREATED" and uid == "u1"
            again = await store.create_run(lay, '{"x":1}', "u2", 2.0)  # idempotent: EXISTS
            assert again[0].name == "EXISTS" and again[1] == "u1"
            # a create that died before partition 3 was made: the retry makes it (with the uid)
            await store.redis.unlink(*keys_of(lay).partition(3).static())
            assert (await store.draw_inputs(lay, losses=True)).uid is None  # seen as broken
            assert (await store.create_run(lay, '{"x":1}', "u3", 3.0))[0].name == "EXISTS"
            assert await store.redis.hget(keys_of(lay).partition(3).meta, "uid") == b"u1"
            assert np.isnan(await store.read_column(lay, "score", 0, N)).all()  # NaN-filled
            await store.write_column(lay, "score", scores)
            await store.write_column(lay, "loss", losses)
            np.testing.assert_array_equal(await store.read_column(lay, "score", 0, N), scores)
            np.testing.assert_array_equal(
                await store.read_column(lay, "loss", 65, 215), losses[65:215]
            )
            np.testing.assert_array_equal(await store.current_scores(lay), scores)
            snap = await store.draw_inputs(lay, losses=True)
            assert snap.uid == "u1" and snap.last_epoch == -1 and len(snap.partition_logs) == 7
            np.testing.assert_array_equal(snap.scores, scores)
            np.testing.assert_array_equal(snap.losses, losses)
            assert (snap.drawn == 0).all() and snap.inclusion is not None
            rec = await store.read_records(lay, 60, 150)
            assert rec.shape == (90,) and (rec["visits"] == 0).all()
            assert await store.delete_run(lay) > 7
            assert await store.run_keys(lay) == []
        finally:
            await store.close()

    asyncio.run(go())


# -- servers ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def twin_servers(redis_cluster: RedisClusterProcess, redis_url: str) -> Iterator[tuple[str, str]]:
    """(partitioned on the cluster, unpartitioned on one Redis): two real ``docl serve``, with
    512-byte chunks (a partition's records span 6 chunks, its scores 1: chunk and partition
    boundaries differ)."""
    chunks = {"DOCL_CHUNK_BYTES": "512"}
    partitioned = ServerProcess(
        redis_url=redis_cluster.url, env={"DOCL_PARTITION_SAMPLES": str(M), **chunks}
    )
    plain = ServerProcess(redis_url=redis_url, env=chunks)
    try:
        partitioned.start()
        plain.start()
        yield partitioned.url, plain.url
    finally:
        partitioned.close()
        plain.close()


def _outputs(e: int, idx: np.ndarray) -> np.ndarray:
    """This epoch's outputs of samples idx: a fixed function of (epoch, sample)."""
    base = np.sin(np.outer(idx + 1, np.arange(1, 5)) * 0.37).astype(np.float32)
    return base * (1.0 + 0.1 * e) + np.float32(0.05 * e)


def _frame(rid: str, e: int, lr: float, idx: np.ndarray) -> bytes:
    return wire.encode_report(
        report_id=rid, epoch=e, lr_sum=lr, indices=idx, outputs=_outputs(e, idx), targets=idx % 4
    )


def _train(http: httpx.Client, run_id: str, epochs: int) -> list[np.ndarray]:
    """Draw each epoch and report every drawn sample, in requests of 4 reports of 24
    samples (shuffled indices: each report spans several partitions)."""
    drawn = []
    lr = 0.0
    for e in range(epochs):
        draw(http, run_id, e)
        idx = shard(http, run_id, e)
        drawn.append(idx)
        batches = np.array_split(idx, max(1, idx.size // 24))
        frames = []
        for s, b in enumerate(batches):
            lr += 0.01
            frames.append(_frame(f"{e}-{s}", e, lr, b))
        for k in range(0, len(frames), 4):
            r = http.post(
                f"/v1/runs/{run_id}/reports",
                content=wire.encode_reports(frames[k : k + 4]),
                headers=MANY,
            )
            assert r.status_code == 200, r.text
            assert r.json()["duplicates"] == 0, r.text
    return drawn


CONFIGS = {
    "docl": {},
    "exp3": {"params": {"exp3": True}},
    "infobatch": {"method": "infobatch"},
}


@pytest.mark.parametrize("config", list(CONFIGS))
def test_a_partitioned_run_on_the_cluster_trains_exactly_like_an_unpartitioned_one(
    twin_servers: tuple[str, str], redis_cluster: RedisClusterProcess, run_id: str, config: str
) -> None:
    """The same run (seed, config, reports) partitioned over the cluster and unpartitioned on one
    Redis: every epoch draws the same indices, and scores, visits, lr-sums and counters
    end equal, visits matching the draws exactly."""
    over = CONFIGS[config]
    got: list[dict[str, Any]] = []
    for url in twin_servers:
        with httpx.Client(base_url=url, timeout=30) as http:
            create(http, run_id, num_samples=N, epochs=5, **json.loads(json.dumps(over)))
            drawn = _train(http, run_id, 5)
            scores, visits, lrs = get_scores(http, run_id)
            run = http.get(f"/v1/runs/{run_id}").json()
            stats = http.get(f"/v1/runs/{run_id}/stats").json()
            runs = http.get("/v1/runs").json()["runs"]
            listed = next(r["counters"] for r in runs if r["run_id"] == run_id)
            got.append(
                {
                    "drawn": drawn,
                    "scores": scores,
                    "visits": visits,
                    "lrs": lrs,
                    "run": run,
                    "stats": stats,
                    "listed": listed,
                }
            )
    partitioned, plain = got
    for a, b in zip(partitioned["drawn"], plain["drawn"], strict=True):
        np.testing.assert_array_equal(a, b)  # the same draws, epoch after epoch
    expect = np.bincount(np.concatenate(plain["drawn"]), minlength=N)
    np.testing.assert_array_equal(partitioned["visits"], expect)  # each report applied once
    np.testing.assert_array_equal(plain["visits"], expect)
    np.testing.assert_array_equal(partitioned["scores"], plain["scores"])  # NaN where unscored
    np.testing.assert_array_equal(partitioned["lrs"], plain["lrs"])
    assert partitioned["run"]["counters"] == plain["run"]["counters"]
    c = partitioned["run"]["counters"]
    assert c["samples_reported"] == int(expect.sum()) and c["duplicates"] == 0
    assert c["reports"] == sum(max(1, d.size // 24) for d in plain["drawn"])
    for k in ("scored", "visited", "visits_total", "quantiles", "selection", "mean"):
        assert partitioned["stats"][k] == plain["stats"][k], k
    assert (
        partitioned["listed"] == partitioned["run"]["counters"]
    )  # GET /v1/runs sums the partitions too
    # the run's per-sample records live on every primary, the run's meta on one
    lay = RunLayout.from_json(run_id, _meta_layout(redis_cluster, run_id))
    assert lay.partitions == 7
    holders = {redis_cluster.node_of_key(keys_of(lay).partition(j).rec[0]) for j in range(7)}
    assert holders == {0, 1, 2}
    for node in redis_cluster.nodes:  # no record chunk under the run's own tag
        assert node.scan_keys(f"{keys_of(lay).prefix}:rec:*") == []


def _meta_layout(cluster: RedisClusterProcess, run_id: str) -> str:
    node = cluster.nodes[cluster.node_of_key(f"{run_prefix(run_id)}:meta")]
    raw = node.command("HGET", f"{run_prefix(run_id)}:meta", "layout")
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def test_deleting_a_partitioned_run_drops_every_partition(
    twin_servers: tuple[str, str], redis_cluster: RedisClusterProcess, run_id: str
) -> None:
    with httpx.Client(base_url=twin_servers[0], timeout=30) as http:
        create(http, run_id, num_samples=N, epochs=3)
        _train(http, run_id, 1)
        pattern = f"*{run_id}*"  # not the store's own sweep pattern
        before = sum(len(n.scan_keys(pattern)) for n in redis_cluster.nodes)
        assert before > 7 * 5  # every partition's meta, counters, markers, log, columns...
        assert http.delete(f"/v1/runs/{run_id}").status_code == 204
        assert all(n.scan_keys(pattern) == [] for n in redis_cluster.nodes)
        assert http.get(f"/v1/runs/{run_id}").status_code == 404
        create(http, run_id, num_samples=N, epochs=3)  # and it can be made again, fresh
        got = http.get(f"/v1/runs/{run_id}").json()
        assert got["counters"]["samples_reported"] == 0 and got["last_epoch"] is None


# -- 3. exactly once across partitions --------------------------------------------------------
def _post_many(http: httpx.Client, run_id: str, frames: list[bytes]) -> list[dict[str, Any]]:
    r = http.post(f"/v1/runs/{run_id}/reports", content=wire.encode_reports(frames), headers=MANY)
    assert r.status_code == 200, r.text
    return list(r.json()["reports"])


@pytest.mark.parametrize("cache", ["record-cache", "no-cache"])
def test_a_report_applied_on_some_partitions_is_completed_once_by_its_resend(
    twin_servers: tuple[str, str],
    server_factory: Callable[..., ServerProcess],
    redis_cluster: RedisClusterProcess,
    run_id: str,
    cache: str,
) -> None:
    """A partial apply (the process died between a report's partition parts) is made for
    real: report X is first sent with only its samples of partition 0, under X's id, so
    partition 0 holds X's marker and writes and the other partitions do not. Sending X whole
    then applies the missing parts only (ack: applied), again: a duplicate. The run ends
    exactly as the unpartitioned twin that got X once: visits, scores, counters."""
    partitioned_url = twin_servers[0]
    if cache == "no-cache":
        env = {"DOCL_PARTITION_SAMPLES": str(M), "DOCL_RECORD_CACHE_BYTES": "0"}
        partitioned_url = server_factory(redis_url=redis_cluster.url, env=env).url
    got = []
    for url in (partitioned_url, twin_servers[1]):
        with httpx.Client(base_url=url, timeout=30) as http:
            create(http, run_id, num_samples=N, epochs=4)
            _train(http, run_id, 1)  # every sample seen once: the next visit is scored
            draw(http, run_id, 1)
            idx = shard(http, run_id, 1)
            home = idx[idx < M][:6]  # X starts on partition 0 (its home) and spans partitions
            x_idx = np.concatenate([home, idx[idx >= M][:34]])
            y_idx, z_idx = idx[idx >= M][34:60], idx[idx >= M][60:90]
            x, y, z = (_frame(n, 1, 0.5, i) for n, i in (("X", x_idx), ("Y", y_idx), ("Z", z_idx)))
            if url == partitioned_url:  # X's part on partition 0 only, under X's id
                ack = _post_many(http, run_id, [_frame("X", 1, 0.5, home)])
                assert ack[0]["duplicate"] is False and ack[0]["accepted"] == 6
            acks = _post_many(http, run_id, [x, y])  # completes X, applies Y
            assert [a["duplicate"] for a in acks] == [False, False], acks
            assert acks[0]["accepted"] == 40
            acks = _post_many(http, run_id, [x, y])  # both applied everywhere now
            assert [a["duplicate"] for a in acks] == [True, True], acks
            acks = _post_many(http, run_id, [x, z])  # a whole duplicate beside a new report
            assert [a["duplicate"] for a in acks] == [True, False], acks
            scores, visits, lrs = get_scores(http, run_id)
            got.append((scores, visits, lrs, http.get(f"/v1/runs/{run_id}").json()["counters"]))
    (s_sc, s_vis, s_lr, s_c), (p_sc, p_vis, p_lr, p_c) = got
    once = np.ones(N, dtype=np.int64)
    once[np.concatenate([x_idx, y_idx, z_idx])] += 1
    np.testing.assert_array_equal(s_vis, once)  # X's samples visited once more: not 0, not 2
    np.testing.assert_array_equal(p_vis, once)
    np.testing.assert_array_equal(s_sc, p_sc)
    np.testing.assert_array_equal(s_lr, p_lr)
    assert s_c == p_c, (s_c, p_c)
    assert s_c["duplicates"] == 3  # X and Y, then X: each whole duplicate counted once


# -- 5. bad input -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["DOCL_PARTITION_SAMPLES", "DOCL_SHARD_SAMPLES"])
def test_a_negative_partition_size_stops_docl_serve_with_a_clear_message(name: str) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, name: "-5"}
    out = subprocess.run(
        [sys.executable, "-c", "from docl.client.cli import main; main()", "serve", "--port", "0"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert out.returncode != 0
    assert "partition_samples" in out.stderr.lower()
    assert "greater than or equal to 0" in out.stderr
    assert ("DOCL_SHARD_SAMPLES is deprecated" in out.stderr) == (name == "DOCL_SHARD_SAMPLES")


def test_a_run_that_needs_too_many_partitions_is_refused_and_nothing_is_written(
    twin_servers: tuple[str, str], redis_cluster: RedisClusterProcess, run_id: str
) -> None:
    n = M * MAX_PARTITIONS + 1
    with httpx.Client(base_url=twin_servers[0], timeout=30) as http:
        r = http.post(
            "/v1/runs", json={"run_id": run_id, "num_samples": n, "num_outputs": 4, "epochs": 2}
        )
        assert r.status_code == 422, r.text
        assert "1025 partitions" in r.text and "DOCL_PARTITION_SAMPLES" in r.text
        assert http.get(f"/v1/runs/{run_id}").status_code == 404
    assert all(node.scan_keys(f"{{run:{run_id}[:}}]*") == [] for node in redis_cluster.nodes)


# -- 4. a node's primary SIGKILLed mid-stream -------------------------------------------------
def test_a_partitioned_report_stream_survives_sigkill_of_a_partitions_primary(
    server_factory: Callable[..., ServerProcess], run_id: str
) -> None:
    """As test_report_stream_survives_sigkill_of_the_runs_primary (test_server_e2e.py), but
    the run is cut into 6 partitions spread over the 3 primaries and every report spans
    partitions: the primary holding partition 0 is SIGKILLed with reports in flight, whose parts
    on the other partitions may be applied already; every sender re-sends its report with the
    same id until acknowledged. Then every sample is visited exactly once and each report
    counted once. Checked by hand against two broken stores: with the per-partition dedup
    disabled a re-sent part is applied again and its report counted twice (its samples'
    second write is stale, same lr_sum, so the counters catch it, not the visits); with a
    report taken as a duplicate once ANY partition has its marker, samples lose their visit."""
    with RedisClusterProcess(
        primaries=3, replicas=1, appendonly=True, appendfsync="always", node_timeout_ms=1000
    ) as cluster:
        server = server_factory(redis_url=cluster.url, env={"DOCL_PARTITION_SAMPLES": "80"})
        lay = _layout(run_id, partition_samples=80)
        owner = cluster.node_of_key(keys_of(lay).partition(0).meta)
        assert {cluster.node_of_key(keys_of(lay).partition(j).meta) for j in range(6)} == {0, 1, 2}
        replica = cluster.replicas[owner]
        rng = np.random.default_rng(13)
        with httpx.Client(base_url=server.url, timeout=30) as http:
            create(http, run_id, num_samples=N, epochs=2)
            assert draw(http, run_id, 0)["size"] == N
            idx = shard(http, run_id, 0)
            batches = np.array_split(idx, 60)  # shuffled: each spans ~5 of the 6 partitions
            outs = [rng.normal(size=(b.size, 4)).astype(np.float32) for b in batches]
            sent = stream_reports_through_a_kill(
                http, run_id, batches, outs, kill=cluster.nodes[owner].kill
            )
            assert cluster.info(replica, "replication")["role"] == "master"  # it took over
            got = http.get(f"/v1/runs/{run_id}").json()
            _, visits, _ = get_scores(http, run_id)
            assert draw(http, run_id, 1)["size"] > 0  # the run goes on
            completed = _metric(http.get("/metrics").text, "docl_reports_completed_total")
        assert (visits == 1).all(), np.flatnonzero(visits != 1)  # none lost, none doubled
        assert got["counters"]["reports"] == len(batches)
        assert got["counters"]["samples_reported"] == N  # each sample counted once
        assert sent.failed  # the kill did interrupt the stream
        print(f"partitioned failover: {len(sent.failed)} attempts failed, {len(sent.resent)} "
              f"reports re-sent, {completed:.0f} completed after a partial apply")  # fmt: skip


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_two_servers_racing_on_the_same_samples_of_a_partitioned_run_count_every_write_once(
    twin_servers: tuple[str, str],
    server_factory: Callable[..., ServerProcess],
    redis_cluster: RedisClusterProcess,
    run_id: str,
) -> None:
    """Two server processes (each with its record cache and write lease) apply 160
    overlapping reports, 16 samples each from the first 3 partitions, concurrently: the
    compare-and-set conflicts, revoked leases and re-sends of parts already applied all
    happen per partition. Every report is applied once: the counters add up (visits =
    reported - skipped), and each touched sample ends with the largest lr_sum reported
    for it (the stale rule keeps the newest), which is known without the server."""
    other = server_factory(redis_url=redis_cluster.url, env={"DOCL_PARTITION_SAMPLES": str(M)})
    rng = np.random.default_rng(7)
    lrs = rng.permutation(160) * 0.01 + 0.01  # distinct lr_sums
    picks = [np.sort(rng.choice(3 * M, size=16, replace=False)) for _ in range(160)]
    with httpx.Client(base_url=twin_servers[0], timeout=30) as http:
        create(http, run_id, num_samples=N, epochs=2)
        draw(http, run_id, 0)

    def send(k: int) -> int:
        url = (twin_servers[0], other.url)[k % 2]
        with httpx.Client(base_url=url, timeout=30) as h:
            out = _outputs(0, picks[k])
            r = report(h, run_id, rid=f"race{k}", epoch=0, lr_sum=float(lrs[k]), idx=picks[k],
                       out=out, tgt=picks[k] % 4)  # fmt: skip
            assert r.status_code == 200 and r.json()["duplicate"] is False, r.text
            return int(r.json()["accepted"])

    with ThreadPoolExecutor(8) as pool:
        accepted = sum(pool.map(send, range(160)))
    with httpx.Client(base_url=twin_servers[0], timeout=30) as http:
        _, visits, got_lr = get_scores(http, run_id)
        c = http.get(f"/v1/runs/{run_id}").json()["counters"]
        visited = http.get(f"/v1/runs/{run_id}/stats").json()["visited"]
    assert accepted == 160 * 16 == c["samples_reported"] and c["reports"] == 160
    assert int(visits.sum()) == c["samples_reported"] - c["samples_skipped"]
    newest = np.full(N, np.nan)
    for k in range(160):
        newest[picks[k]] = np.fmax(newest[picks[k]], lrs[k])
    touched = ~np.isnan(newest)
    assert (visits[touched] >= 1).all() and (visits[~touched] == 0).all()
    np.testing.assert_array_equal(got_lr[touched], newest[touched])
    assert visited == int(touched.sum())  # first visits counted once, on their partition


# -- durability: WAIT per partition (DOCL_REDIS_WAIT_REPLICAS) --------------------------------
def test_with_wait_every_partition_of_an_acknowledged_report_is_on_its_replica(
    server_factory: Callable[..., ServerProcess], run_id: str
) -> None:
    """DOCL_REDIS_WAIT_REPLICAS=1 on a partitioned run (3 primaries + 3 replicas): right after
    each 200, the replica of EVERY partition a report touched holds its marker. Then the
    replica of partition 0's primary is SIGSTOPped: a report spanning partitions is applied on the
    primaries but answered 503; after SIGCONT its re-send is acknowledged as a duplicate,
    counted once, and partition 0's replica holds it (the duplicate's WAIT covers it)."""
    import os
    import signal

    import redis

    with RedisClusterProcess(
        primaries=3, replicas=1, appendonly=True, appendfsync="always"
    ) as cluster:
        env = {
            "DOCL_PARTITION_SAMPLES": "80",
            "DOCL_REDIS_WAIT_REPLICAS": "1",
            "DOCL_REDIS_WAIT_MS": "500",
        }
        server = server_factory(redis_url=cluster.url, env=env)
        lay = _layout(run_id, partition_samples=80)

        def replica_of(j: int) -> Any:
            proc = cluster.replicas[cluster.node_of_key(keys_of(lay).partition(j).meta)]
            conn = redis.Redis(host=proc.host, port=proc.port, password=cluster.password,
                               single_connection_client=True)  # fmt: skip
            conn.execute_command("READONLY")
            return conn, proc

        readers = [replica_of(j)[0] for j in range(6)]
        rng = np.random.default_rng(3)
        with httpx.Client(base_url=server.url, timeout=30) as http:
            create(http, run_id, num_samples=N, epochs=2)
            draw(http, run_id, 0)
            batches = np.array_split(shard(http, run_id, 0), 20)
            outs = [rng.normal(size=(b.size, 4)).astype(np.float32) for b in batches]

            def send(k: int) -> httpx.Response:
                b = batches[k]
                return report(http, run_id, rid=f"w{k}", epoch=0, lr_sum=0.1, idx=b, out=outs[k],
                              tgt=b % 4)  # fmt: skip

            for k in range(10):
                r = send(k)
                assert r.status_code == 200 and not r.json()["duplicate"], r.text
                for j in sorted(set((batches[k] // 80).tolist())):
                    assert (
                        readers[j].zscore(keys_of(lay).partition(j).reports, f"w{k}") is not None
                    ), (
                        k,
                        j,
                    )
            stopped = replica_of(0)[1]
            k = next(k for k in range(10, 20) if (batches[k] // 80 == 0).any())
            os.kill(stopped.pid, signal.SIGSTOP)
            try:
                r = send(k)
                assert r.status_code == 503 and "DOCL_REDIS_WAIT_REPLICAS=1" in r.text, r.text
            finally:
                os.kill(stopped.pid, signal.SIGCONT)
            again = send(k)
            assert again.status_code == 200 and again.json()["duplicate"], again.text
            assert readers[0].zscore(keys_of(lay).partition(0).reports, f"w{k}") is not None
            c = http.get(f"/v1/runs/{run_id}").json()["counters"]
            _, visits, _ = get_scores(http, run_id)
        assert c["reports"] == 11 and c["duplicates"] == 1
        sent = np.concatenate([batches[i] for i in [*range(10), k]])
        assert (visits[sent] == 1).all() and visits.sum() == sent.size
        for conn in readers:
            conn.close()
