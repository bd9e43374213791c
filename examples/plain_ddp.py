"""An ordinary PyTorch training loop (single process or DDP), made curriculum-aware.

The lines marked ``# docl`` are the whole change (docs/training.md shows it as
a diff); everything else is the loop you already have. Run it against a score
server (``docl serve``):

    python examples/plain_ddp.py --server http://127.0.0.1:8000
    torchrun --nproc_per_node 2 examples/plain_ddp.py --server http://127.0.0.1:8000

Under torchrun every rank creates the run with the same config (creating it
again is a no-op), the sampler gives each rank its share of each epoch, and the
reporter sends each mini-batch's outputs in the background.
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

from docl.client import CurriculumSampler, Reporter, ScoreClient, WithIndices, track_lr  # docl


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
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--server", default=os.environ.get("DOCL_SERVER", "http://127.0.0.1:8000"))
    p.add_argument("--run-id", default="plain-ddp-example", help="run id on the score server")
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args()

    distributed = "WORLD_SIZE" in os.environ  # started by torchrun
    if distributed:
        dist.init_process_group("gloo")
    torch.manual_seed(0)

    x, y, x_test, y_test = make_data(args.samples)
    dataset = WithIndices(TensorDataset(x, y))  # docl: items are (index, x, y)
    model = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 4))
    net = DistributedDataParallel(model) if distributed else model
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    client = ScoreClient(args.server)
    client.create_run(  # the same config from every rank: created once, then a no-op
        run_id=args.run_id, num_samples=len(dataset), num_outputs=4, epochs=args.epochs,
        method="docl", params={"warmup_epochs": 2, "batch_size": args.batch_size},
    )  # fmt: skip
    reporter, lrs = Reporter(client, args.run_id), track_lr(opt)  # docl
    sampler = CurriculumSampler(client, args.run_id, reporter=reporter)  # docl: DistributedSampler
    world = dist.get_world_size() if distributed else 1
    loader = DataLoader(dataset, batch_size=args.batch_size // world, sampler=sampler)

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for idx, xb, yb in loader:  # docl (was: for xb, yb in loader)
            out = net(xb)  # (b, 4) logits
            loss = F.cross_entropy(out, yb)
            opt.zero_grad()
            loss.backward()
            reporter.report(  # docl
                epoch=epoch, indices=idx, outputs=out, targets=yb, lr_sum=lrs.value
            )
            opt.step()

    reporter.close()  # deliver what is still queued
    if distributed:
        dist.barrier()
    acc = (model(x_test).argmax(1) == y_test).float().mean().item()
    if not distributed or dist.get_rank() == 0:
        print(f"test_accuracy {acc:.4f}  reports sent {reporter.sent}  dropped {reporter.dropped}")
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
