"""A plain-PyTorch loop with step-level selection through ``CurriculumBatchSampler``
(docs/training.md's change), run in-process by tests/client/test_batch_sampler.py or as
one rank of a gloo DDP job: ``python step_loop.py SERVER RUN OUT.json [IL.npy]`` with
RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set, like torchrun would.

It records what each step saw (the yielded indices, the pool's logits, the positions
``select`` chose) so the test can check them against an independent computation.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset

from docl.client import CurriculumBatchSampler, WithIndices


def blobs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 2, generator=g) + 1.5 * y[:, None]
    return x, y


def run_loop(server: str, run_id: str, il: np.ndarray | None = None) -> dict[str, Any]:
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)
    distributed = dist.is_available() and dist.is_initialized()
    net = DistributedDataParallel(model) if distributed else model
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sampler = CurriculumBatchSampler.connect(server, run_id=run_id, optimizer=opt)
    if il is not None:
        sampler.set_signal("irreducible_loss", il)
    x, y = blobs(sampler.client.get_run(run_id).num_samples)
    loader = DataLoader(WithIndices(TensorDataset(x, y)), batch_sampler=sampler)
    record: dict[str, Any] = {"rank": sampler.rank, "world": sampler.world_size, "epochs": {}}
    for e in range(sampler.num_epochs):
        sampler.set_epoch(e)
        steps: list[dict[str, Any]] = []
        for s, (idx, xb, yb) in enumerate(loader):
            step: dict[str, Any] = {"yielded": idx.tolist()}
            for group in opt.param_groups:  # the plan's learning rates (lr-sums checked exactly)
                group["lr"] = sampler.lr_at(s)
            # ---- the change: a selection step trains on b of its pool --------------
            if sampler.selecting:
                with torch.no_grad():
                    pool_out = model(xb)  # (p, 2): every candidate's fresh output
                keep = sampler.select(
                    F.cross_entropy(pool_out, yb, reduction="none"), outputs=pool_out, targets=yb
                )
                step.update(logits=pool_out.tolist(), chosen=keep.tolist())
                xb, yb = xb[keep], yb[keep]
            out = net(xb)
            loss = F.cross_entropy(out, yb)
            opt.zero_grad()
            loss.backward()
            sampler.report(outputs=out, targets=yb)  # after select(outputs=): sends nothing
            opt.step()
            steps.append(step)
        record["epochs"][str(e)] = {"selecting": sampler.selecting, "steps": steps}
    assert sampler.close(timeout=60)
    record["weight"] = model.weight.detach().tolist()
    return record


def main() -> None:
    server, run_id, out_path = sys.argv[1], sys.argv[2], sys.argv[3]
    il = np.load(sys.argv[4]) if len(sys.argv) > 4 else None
    torch.set_num_threads(1)
    if "WORLD_SIZE" in os.environ:
        dist.init_process_group("gloo")
    record = run_loop(server, run_id, il)
    with open(out_path, "w") as f:
        json.dump(record, f)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
