"""Ray Train's storage on a cluster whose nodes do not share a disk.

A real two-node Ray cluster on this host (two ``ray start``: a head that runs no
training, a worker node that does), where the worker node runs in a mount
namespace of its own with an empty tmpfs over the storage folder: the same path
names a different disk there, as on two machines without a shared volume.

- ``docl train --storage <that folder>`` fails at start, before any epoch, with a
  message that names the storage, the node and the fix (before the check, the
  run trained epoch 0 and then failed in Ray's storage set-up, restarting the
  worker group ``max_failures`` times);
- ``--storage`` on a folder both nodes see trains to the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from docl.services.embedded import free_port
from tests.deploy.deploy_util import RAY_INTERNAL_PORT_FLAGS, VENV_BIN, env_without_ray

# One xdist worker runs both tests, so that they share the module's cluster.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600), pytest.mark.xdist_group("launcher")]


def _unshare() -> list[str]:
    """A command prefix that runs in a private mount namespace (root or user ns)."""
    exe = shutil.which("unshare")
    if exe is None:
        pytest.skip("not run: no `unshare` (util-linux) to give a Ray node its own disk")
    prefix = [exe, "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        prefix[1:1] = ["--user", "--map-root-user"]
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"not run: cannot make a mount namespace here ({probe.stderr.strip()})")
    return prefix


@dataclass
class Cluster:
    address: str
    unshared: Path  # a folder the worker node sees as an empty tmpfs
    shared: Path  # a folder both nodes see
    env: dict[str, str]


def _ray_start(args: list[str], env: dict[str, str], log: Path) -> None:
    with log.open("ab") as f:
        r = subprocess.run(args, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=180)
    assert r.returncode == 0, f"{' '.join(args[:4])} failed:\n{log.read_text()[-3000:]}"


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One cluster for both tests (starting one costs ~10 s): each test runs its own job
    with its own storage folder under ``unshared``/``shared``."""
    prefix = _unshare()
    tmp_path = tmp_path_factory.mktemp("two-nodes")
    unshared, shared = tmp_path / "unshared", tmp_path / "shared"
    for d in (unshared, shared):
        d.mkdir()
    # Ray's sockets live under its temp dir: a short path (AF_UNIX allows 107 bytes).
    temp = Path(tempfile.mkdtemp(prefix="docl-ray-"))
    env = env_without_ray()
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    # No idle workers started ahead of tasks (each one imports Ray for ~1 s of CPU,
    # half of them never used here).
    env["RAY_enable_worker_prestart"] = "0"
    env["RAY_prestart_worker_first_driver"] = "0"
    # Its own token (Ray's default for `ray start --head`), not ~/.ray/auth_token,
    # which other clusters on this machine may rewrite.
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])
    port = free_port()
    common = [f"--temp-dir={temp}", f"--object-store-memory={100 * 2**20}", "--disable-usage-stats"]
    ray = str(VENV_BIN / "ray")
    try:
        # The head runs the driver (and Ray Train's controller) but no training worker.
        _ray_start(
            [ray, "start", "--head", f"--port={port}", "--num-cpus=0", "--include-dashboard=false"]
            + common
            + [f"{f}={free_port()}" for f in RAY_INTERNAL_PORT_FLAGS],
            env,
            tmp_path / "head.log",
        )
        # The worker node: same path, different disk (a tmpfs only its namespace sees).
        node = " ".join(
            [ray, "start", f"--address=127.0.0.1:{port}", "--num-cpus=1"]
            + common
            + [f"{f}={free_port()}" for f in RAY_INTERNAL_PORT_FLAGS]
        )
        _ray_start(
            [*prefix, "sh", "-c", f"mount -t tmpfs docl-test {unshared} && exec {node}"],
            env,
            tmp_path / "worker.log",
        )
        count = (
            "import ray, time\n"
            f"ray.init(address='127.0.0.1:{port}', log_to_driver=False)\n"
            "deadline = time.monotonic() + 120\n"
            "while sum(n['Alive'] for n in ray.nodes()) < 2 and time.monotonic() < deadline:\n"
            "    time.sleep(1)\n"
            "print(sum(n['Alive'] for n in ray.nodes()))\n"
        )
        r = subprocess.run(
            [str(VENV_BIN / "python"), "-c", count],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert r.stdout.strip().endswith("2"), f"Ray nodes alive: {r.stdout}{r.stderr[-2000:]}"
        yield Cluster(f"127.0.0.1:{port}", unshared, shared, env)
    finally:
        # `ray stop` would stop every Ray on this host (other people's too): stop
        # only the processes that run from this cluster's temp dir.
        import psutil

        for p in psutil.process_iter(["pid", "cmdline"]):
            with contextlib.suppress(psutil.Error):
                if any(str(temp) in a for a in (p.info["cmdline"] or [])):
                    os.kill(p.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


def _train(
    cluster: Cluster, storage: Path, out: Path
) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    r = subprocess.run(
        [
            str(VENV_BIN / "docl"), "train", "--task=digits", "--epochs=2", "--workers=1",
            f"--ray-address={cluster.address}", f"--storage={storage}", f"--out={out}",
            "--max-failures=1", "--no-progress",
        ],
        env=cluster.env, capture_output=True, text=True, timeout=420,
    )  # fmt: skip
    return r, time.monotonic() - t0


def test_unshared_storage_fails_at_start_with_a_clear_message(
    two_nodes: Cluster, tmp_path: Path
) -> None:
    r, _ = _train(two_nodes, two_nodes.unshared / tmp_path.name, tmp_path / "out")
    output = r.stdout + r.stderr
    assert r.returncode == 2, output[-4000:]
    message = [line for line in r.stderr.splitlines() if line.startswith("docl train:")]
    assert message, output[-4000:]
    text = message[-1]
    storage = two_nodes.unshared / tmp_path.name
    assert f"storage {storage} is not shared by every Ray node" in text, text
    assert "cannot read" in text and "which the driver wrote" in text, text
    assert "--storage" in text and "docs/deploy.md" in text, text
    # At start: no training worker was started, no epoch trained.
    assert "epoch " not in output, output[-4000:]
    assert "Unable to set up cluster storage" not in output
    # The markers are gone from the driver's side.
    assert not any((storage / ".docl-storage-check").glob("*"))


def test_shared_storage_trains(two_nodes: Cluster, tmp_path: Path) -> None:
    storage = two_nodes.shared / tmp_path.name
    r, _ = _train(two_nodes, storage, tmp_path / "out")
    output = r.stdout + r.stderr
    assert r.returncode == 0, output[-4000:]
    metrics = (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(m)["epoch"] for m in metrics] == [0, 1], output[-4000:]
    # Ray Train kept the run's checkpoints in the storage given, not under --out.
    assert list(storage.rglob("state.pt")), output[-4000:]
    assert not (tmp_path / "out" / "ray").exists()
