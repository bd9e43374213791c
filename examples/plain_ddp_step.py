"""The plain-DDP example with step-level selection: each step trains on the batch the
method picks from a pool of candidates by their fresh losses (``loss-topk``,
``pool-random``, ``rho-loss``; docs/training.md, "Step-level selection in your own loop").
``rho-loss`` ranks by fresh loss − irreducible loss (IL): rank 0 computes the IL once
(``compute_irreducible``: two models, each trained on one half of the data, scoring the
other half) and uploads it as the run's signal column before training; each rank's
sampler reads it from the run at its first selection step (after the warmup epochs,
whose all-reduces have waited for rank 0's upload).

It is ``examples/plain_ddp.py`` plus the lines marked ``# docl step`` (``diff -u
examples/plain_ddp.py examples/plain_ddp_step.py``, counted by
tests/worker/test_examples.py): a ``CurriculumBatchSampler`` (the plan's steps as
batches, so in a selection epoch it can yield step s's pool of ≈ m batches), and in
a selection step a forward pass of the pool without gradients, ``sampler.select``
(the method's rule, exactly as docl's worker loop applies it) and training on the
chosen rows. ``select(outputs=, targets=)`` reports the pool — every candidate, as
the worker does — so the step's ``report`` afterwards sends nothing. Under DDP each
rank selects within its own pool and every rank takes the plan's steps.

    python examples/plain_ddp_step.py --server http://127.0.0.1:8000 --method loss-topk
    python examples/plain_ddp_step.py --server http://127.0.0.1:8000 --method rho-loss
    torchrun --standalone --nproc_per_node 2 examples/plain_ddp_step.py --server http://127.0.0.1:8000
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

from docl.client import CurriculumBatchSampler  # docl step
from docl.worker.irreducible import compute_irreducible  # docl step: rho-loss's irreducible loss


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
    p.add_argument("--method", default="loss-topk", choices=["loss-topk", "pool-random", "rho-loss"], help="step-level method (pool-random: the control of the other two)")  # docl step  # fmt: skip
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

    sampler = CurriculumBatchSampler.connect(args.server, run_id=args.run_id, num_samples=len(dataset), num_outputs=4, epochs=args.epochs, method=args.method, params={"batch_size": args.batch_size}, optimizer=opt, rank=rank, world_size=world)  # docl step  # fmt: skip
    if args.method == "rho-loss" and rank == 0:  # docl step: the IL once, uploaded for every rank
        sampler.client.put_signal(sampler.run_id, "irreducible_loss", compute_irreducible(lambda seed: nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 4)), x, y, epochs=10, batch_size=args.batch_size, lr=0.05).values["task"])  # docl step  # fmt: skip
    loader = DataLoader(dataset, batch_sampler=sampler)  # docl step: a pool per selection step

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        total = 0.0
        for xb, yb in loader:
            if sampler.selecting:  # docl step: xb is step s's pool of ≈ m batches (p rows)
                with torch.no_grad():  # docl step
                    pool_out = model(xb)  # docl step: (p, 4) every candidate's fresh output
                keep = sampler.select(F.cross_entropy(pool_out, yb, reduction="none"), outputs=pool_out, targets=yb)  # docl step: reports the pool  # fmt: skip
                xb, yb = xb[keep], yb[keep]  # docl step: the b rows the method picked
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
