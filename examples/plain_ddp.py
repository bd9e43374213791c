"""An ordinary PyTorch training loop (single process, or DDP under torchrun), made curriculum-aware.

``examples/without_docl/plain_ddp.py`` is the same loop without docl; the
lines marked ``# docl`` are the whole change (``diff -u
examples/without_docl/plain_ddp.py examples/plain_ddp.py``: five lines, counted
by tests/worker/test_examples.py). Run it against a score server (``docl serve``):

    python examples/plain_ddp.py --server http://127.0.0.1:8000
    torchrun --standalone --nproc_per_node 2 examples/plain_ddp.py --server http://127.0.0.1:8000

Each start is a new run (``plain-ddp-`` and torchrun's rendezvous id, which
every rank shares, or a random suffix); ``--run-id`` names one yourself.

``CurriculumSampler.connect`` creates the run (every rank sends the same
config: created once, then a no-op), makes the client, a background reporter
and a learning-rate tracker on ``opt``; the sampler gives each rank its share
of each epoch, and ``sampler.report`` sends each batch's outputs — the batch's
sample indices are the sampler's next ones, so the loader's batches stay
``(xb, yb)``. The last epoch's reports are delivered at exit (or by
``sampler.close()``).
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset

from docl.client import CurriculumSampler  # docl


def make_data(
    n: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Four Gaussian blobs in 2-D, 10% of the training labels flipped."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[2.0, 2.0], [-2.0, 2.0], [-2.0, -2.0], [2.0, -2.0]])
    y = torch.randint(0, 4, (2 * n,), generator=g)
    x = centers[y] + torch.randn(2 * n, 2, generator=g)
    noisy = y[:n].clone()
    flip = torch.rand(n, generator=g) < 0.1
    noisy[flip] = torch.randint(0, 4, (int(flip.sum()),), generator=g)
    return x[:n], noisy, x[n:], y[n:]


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--server", help="score server URL (default: $DOCL_SERVER)")  # docl
    p.add_argument("--run-id", default=f"plain-ddp-{os.environ.get('TORCHELASTIC_RUN_ID', os.urandom(4).hex())}", help="run on the server [new each time]")  # docl  # fmt: skip
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args()

    distributed = "WORLD_SIZE" in os.environ  # started by torchrun
    if distributed:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    torch.manual_seed(0)

    x, y, x_test, y_test = make_data(args.samples)
    dataset = TensorDataset(x, y)
    model = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 4))
    net = DistributedDataParallel(model) if distributed else model
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    sampler = CurriculumSampler.connect(args.server, run_id=args.run_id, num_samples=len(dataset), num_outputs=4, epochs=args.epochs, optimizer=opt)  # docl  # fmt: skip
    loader = DataLoader(dataset, batch_size=args.batch_size // world, sampler=sampler)

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        total = 0.0
        for xb, yb in loader:
            out = net(xb)  # (b, 4) logits
            loss = F.cross_entropy(out, yb)
            opt.zero_grad()
            loss.backward()
            sampler.report(outputs=out, targets=yb)  # docl: the sampler knows the indices
            opt.step()
            total += loss.item()
        if rank == 0:
            print(f"epoch {epoch} loss {total / max(1, len(loader)):.4f}", flush=True)

    if distributed:
        dist.barrier()
    acc = (model(x_test).argmax(1) == y_test).float().mean().item()
    if rank == 0:
        print(f"test_accuracy {acc:.4f}")
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
