"""Recipe: Algorithm 1 under DistributedDataParallel, one all-reduce per gradient buffer.

    python python/ddp_run.py                          # 2 CPU processes (gloo), ~15 s
    python python/ddp_run.py --world 4 --method pcgrad

A small classifier learns four classes; then every rank unlearns class 0 (gradient ascent on
its slice of a forget batch) while keeping the other classes (cross-entropy on its slice of a
retain batch). The synthesizer runs both backward passes under DDP's ``no_sync()`` and averages
each flat gradient buffer with one all-reduce before the combine, so every rank steps with the
same g_final. For a launcher such as ``torchrun``, call ``unlearn`` from each rank after
``init_process_group`` (NCCL on GPUs).
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import sago_kernels as sk

CLASSES, DIM = 4, 16


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(CLASSES, DIM, generator=torch.Generator().manual_seed(0)) * 0.8
    y = torch.randint(0, CLASSES, (n,), generator=g)
    return centres[y] + torch.randn(n, DIM, generator=g), y


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(DIM, 64), torch.nn.ReLU(), torch.nn.Linear(64, CLASSES)
    )


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(accuracy on class 0, accuracy on the other classes)."""
    with torch.no_grad():
        hit = model(x).argmax(-1) == y
    return hit[y == 0].float().mean().item(), hit[y != 0].float().mean().item()


def pretrain(path: str) -> None:
    model, (x, y) = make_model(), make_data(4096, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    torch.save(model.state_dict(), path)


def unlearn(rank: int, world: int, args: argparse.Namespace) -> None:
    """One rank's unlearning run; the process group must already be initialised."""
    model = make_model()
    model.load_state_dict(torch.load(args.weights))
    ddp = DistributedDataParallel(model)
    synth = sk.GradientSynthesizer(ddp, method=args.method, gamma=args.gamma)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)
    x, y = make_data(4096, seed=2)
    forget_x, forget_y = x[y == 0], y[y == 0]
    retain_x, retain_y = x[y != 0], y[y != 0]
    if rank == 0:
        print(
            "before: forget-class accuracy %.3f, retain-class accuracy %.3f" % accuracy(model, x, y)
        )
    g = torch.Generator().manual_seed(3)  # the same batches on every rank; each takes a slice
    per_rank = args.batch // world
    mine = slice(rank * per_rank, (rank + 1) * per_rank)
    for step in range(args.steps):
        fi = torch.randint(0, len(forget_x), (args.batch,), generator=g)[mine]
        ri = torch.randint(0, len(retain_x), (args.batch,), generator=g)[mine]
        with synth.forget():  # gradient ascent on the forget slice (no DDP sync here)
            (-F.cross_entropy(ddp(forget_x[fi]), forget_y[fi])).backward()
        with synth.retain():
            F.cross_entropy(ddp(retain_x[ri]), retain_y[ri]).backward()
        stats = synth.combine_()  # one all-reduce per buffer, then the combine
        opt.step()
        if rank == 0 and step % max(1, args.steps // 5) == 0:
            geometry = stats.to_dict()
            print(f"step {step:4d}  cos(f,r) {geometry['cos_fr']:+.3f}  "
                  f"cos(out,r) {geometry['cos_out_r']:+.3f}")  # fmt: skip
    if rank == 0:
        print(
            "after:  forget-class accuracy %.3f, retain-class accuracy %.3f" % accuracy(model, x, y)
        )


def _spawned(rank: int, world: int, args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{args.rendezvous}", rank=rank,
                            world_size=world)  # fmt: skip
    try:
        unlearn(rank, world, args)
    finally:
        dist.destroy_process_group()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--world", type=int, default=2, help="processes (gloo on CPU)")
    p.add_argument("--method", default="sago", choices=sk.methods())
    p.add_argument("--gamma", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=100)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        args.weights = os.path.join(tmp, "model.pt")
        args.rendezvous = os.path.join(tmp, "rendezvous")
        pretrain(args.weights)
        mp.spawn(_spawned, args=(args.world, args), nprocs=args.world, join=True)


if __name__ == "__main__":
    main()
