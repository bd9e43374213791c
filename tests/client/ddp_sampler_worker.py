"""One rank of the DDP sampler test (tests/client/test_sampler_server.py).

Run as ``python ddp_sampler_worker.py SERVER RUN EPOCHS OUT.json`` with RANK,
WORLD_SIZE, MASTER_ADDR and MASTER_PORT set, like torchrun would. It is the
explicit form of docs/client.md's change (its own Reporter, WithIndices batches,
report(indices=...)) applied to an ordinary DDP loop: the sampler
takes rank and world size from torch.distributed, the reporter is flushed and
the ranks meet at a barrier before each draw.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset

from docl.client import CurriculumSampler, Reporter, ScoreClient, WithIndices, track_lr


def main() -> None:
    server, run_id, epochs, out_path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    client = ScoreClient(server)
    n = client.get_run(run_id).num_samples
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 2, generator=g) + 2.0 * y[:, None]
    torch.manual_seed(0)
    model = DistributedDataParallel(torch.nn.Linear(2, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    reporter = Reporter(client, run_id)
    lrs = track_lr(opt)
    sampler = CurriculumSampler(client, run_id, reporter=reporter)
    loader = DataLoader(WithIndices(TensorDataset(x, y)), batch_size=4, sampler=sampler)
    record: dict[str, object] = {"rank": rank, "world": sampler.world_size, "epochs": {}}
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        yielded: list[int] = []
        steps = 0
        for idx, xb, yb in loader:
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            opt.zero_grad()
            loss.backward()
            reporter.report(epoch=epoch, indices=idx, outputs=out, targets=yb, lr_sum=lrs.value)
            opt.step()
            yielded += idx.tolist()
            steps += 1
        record["epochs"][str(epoch)] = {  # type: ignore[index]
            "yielded": yielded,
            "shard": sampler.shard.tolist(),
            "size": sampler.current.size,
            "steps": steps,
        }
    assert reporter.close(timeout=60)
    record["counters"] = reporter.counters().as_dict()
    record["weight"] = model.module.weight.detach().tolist()
    with open(out_path, "w") as f:
        json.dump(record, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
