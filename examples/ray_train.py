"""Your own Ray Train loop, made curriculum-aware.

``examples/without_docl/ray_train.py`` is the same ``TorchTrainer`` job without
docl; the lines marked ``# docl`` are the whole change (``diff -u
examples/without_docl/ray_train.py examples/ray_train.py``: five lines, counted
by tests/worker/test_examples.py). Each worker's ``CurriculumSampler.connect``
creates the run named like the Ray Train run (the same config from every
worker: created once, then a no-op), takes rank and world size from the
process group Ray Train sets up, and reports each mini-batch through a
background reporter.

    docl serve &                                            # a score server
    python examples/ray_train.py --server http://127.0.0.1:8000 --workers 2

On a cluster: start the server where the workers can reach it
(``docl serve --host 0.0.0.0 --token T``; workers read ``DOCL_API_TOKEN=T``) and
pass ``--ray-address auto`` (or
``ray job submit -- python examples/ray_train.py --server http://HOST:8000``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from typing import Any

import ray
import ray.train
import torch
import torch.nn.functional as F
from ray.train import ScalingConfig
from ray.train.torch import TorchTrainer, prepare_model
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from docl.client import CurriculumSampler  # docl


def make_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Four Gaussian blobs in 2-D (the same on every worker: seeded)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[2.0, 2.0], [-2.0, 2.0], [-2.0, -2.0], [2.0, -2.0]])
    y = torch.randint(0, 4, (n,), generator=g)
    return centers[y] + torch.randn(n, 2, generator=g), y


def train_func(config: dict[str, Any]) -> None:
    torch.manual_seed(0)
    x, y = make_data(config["samples"])
    x_test, y_test = make_data(1000, seed=1)  # held out
    dataset = TensorDataset(x, y)
    model = prepare_model(nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 4)))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    sampler = CurriculumSampler.connect(config["server"], run_id=ctx.get_experiment_name(), num_samples=len(dataset), num_outputs=4, epochs=config["epochs"], optimizer=opt)  # docl  # fmt: skip
    loader = DataLoader(dataset, batch_size=config["batch_size"] // world, sampler=sampler)

    for epoch in range(config["epochs"]):
        sampler.set_epoch(epoch)
        total = 0.0
        for xb, yb in loader:
            out = model(xb)  # (b, 4) logits
            loss = F.cross_entropy(out, yb)
            opt.zero_grad()
            loss.backward()
            sampler.report(outputs=out, targets=yb)  # docl: the sampler knows the indices
            opt.step()
            total += loss.item()
        with torch.no_grad():
            acc = (model(x_test).argmax(1) == y_test).float().mean().item()
        if rank == 0:
            print(f"epoch {epoch} loss {total / max(1, len(loader)):.4f} test_accuracy {acc:.4f}")
    # Once, at the end: Ray Train keeps the metrics of a report with a checkpoint, and
    # logs a line per report and rank.
    with tempfile.TemporaryDirectory() as d:
        ckpt = ray.train.Checkpoint.from_directory(d) if rank == 0 else None
        ray.train.report({"test_accuracy": acc}, checkpoint=ckpt)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--server", help="score server URL (default: $DOCL_SERVER)")  # docl
    p.add_argument("--name", default=f"ray-train-example-{os.urandom(4).hex()}", help="the Ray Train run's name [new each time]")  # fmt: skip
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--ray-address", default=None, help="join this Ray cluster (default: start one)")
    p.add_argument("--storage", default="out/ray-example", help="Ray Train storage path")
    args = p.parse_args()

    # print() in train_func once: Ray Train's patched print would also log each line.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    # Quieter: no spot-preemption watcher, no colour codes in a log file, only Ray's errors.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    if not sys.stdout.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    ray.init(address=args.ray_address, logging_level=logging.ERROR)  # None: a local Ray
    trainer = TorchTrainer(
        train_func,
        train_loop_config={
            "server": args.server,  # docl
            "samples": args.samples,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
        },
        scaling_config=ScalingConfig(num_workers=args.workers),
        run_config=ray.train.RunConfig(
            name=args.name,
            storage_path=os.path.abspath(args.storage),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),  # no per-report lines
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    print(f"test_accuracy {result.metrics['test_accuracy']:.4f}")


if __name__ == "__main__":
    main()
