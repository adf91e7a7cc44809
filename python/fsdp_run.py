"""Recipe: Algorithm 1 on an FSDP2-sharded transformers model, launched by torchrun.

    torchrun --standalone --nproc_per_node 2 python/fsdp_run.py      # 2 CPU processes, gloo
    python python/fsdp_run.py                                        # the same: launches torchrun

Every rank memorises a small synthetic corpus with the same tiny Llama (built from a config),
then shards it with FSDP2's ``fully_shard`` (each decoder layer, then the root) and unlearns
the forget split with NPO, keeping the retain split with NLL, combined by SAGO (or any method).
``GradientSynthesizer`` takes the sharded model as it is: each rank's flat buffers hold its
local shard of every parameter, FSDP2's reduce-scatter adds into them, and the combine runs on
the shards (projection methods: one all-reduce of per-segment dots). On GPUs the same script
runs with NCCL (``--device cuda``, one process per GPU).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

import torch
import torch.distributed as dist
import transformers
from torch.distributed.fsdp import fully_shard

import sago_kernels as sk
from sago_kernels.unlearning.facts import evaluate, make_corpus, score


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--method", default="sago", choices=sk.methods(), help="combine method")
    p.add_argument("--nproc", type=int, default=2, help="processes, when not under torchrun")
    p.add_argument("--entities", type=int, default=60, help="entities of the corpus")
    p.add_argument("--pretrain-epochs", type=int, default=150, help="most epochs to memorise")
    p.add_argument("--steps", type=int, default=60, help="unlearning steps")
    p.add_argument("--batch", type=int, default=16, help="forget and retain examples per step")
    p.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL)")
    return p.parse_args(argv)


def build_model(vocab: int, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)  # the same weights on every rank
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=176, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=8,
        tie_word_embeddings=False,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config).to(device)


def memorise(model, everything, epochs: int) -> None:
    """Ordinary training until every fact is known (the same on every rank)."""
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(epochs):
        for idx in torch.randperm(len(everything["input_ids"]), generator=g).split(50):
            batch = {k: v[idx.to(v.device)] for k, v in everything.items()}
            sk.losses.nll_loss(model(batch["input_ids"]).logits, batch["labels"]).backward()
            opt.step()
            opt.zero_grad()
        if (known := score(model, everything)).correct == known.total:
            return


def main(argv=None) -> None:
    args = parse_args(argv)
    if "RANK" not in os.environ:  # not launched by torchrun: launch it
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={args.nproc}", __file__, *(argv or sys.argv[1:])]  # fmt: skip
        os.execv(sys.executable, command)
    torch.set_num_threads(1)
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    say = print if rank == 0 else (lambda *a, **k: None)
    try:
        corpus = make_corpus(args.entities)
        splits = {s: corpus.tensors(s, device) for s in ("forget", "retain", "neighbour")}
        everything = {k: torch.cat([v[k] for v in splits.values()]) for k in splits["forget"]}
        model = build_model(len(corpus.vocab), device)
        memorise(model, everything, args.pretrain_epochs)
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)  # NPO's frozen reference
        say("before:", {s: round(evaluate(model, b)[0], 3) for s, b in splits.items()})

        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        gamma = sk.losses.SUGGESTED_GAMMA["npo"]
        synth = sk.GradientSynthesizer(model, method=args.method, gamma=gamma)
        whole = sum(p.numel() for p in model.parameters()) * 4 * 2
        say(f"{world} ranks: each rank's buffers {synth.memory_bytes / 2**10:.0f} KiB of shards "
            f"(two whole-model buffers: {whole / 2**10:.0f} KiB); FSDP2: {synth.fsdp2}")  # fmt: skip
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(2)  # the same draws on every rank; each takes a slice
        mine = slice(rank * args.batch // world, (rank + 1) * args.batch // world)
        for step in range(1, args.steps + 1):
            fi = torch.randint(len(splits["forget"]["input_ids"]), (args.batch,), generator=g)
            ri = torch.randint(len(splits["retain"]["input_ids"]), (args.batch,), generator=g)
            result = sk.unlearning_step(
                model, synth, opt,
                {k: v[fi[mine].to(device)] for k, v in splits["forget"].items()},
                {k: v[ri[mine].to(device)] for k, v in splits["retain"].items()},
                forget_loss="npo", retain_loss="nll", ref_model=ref_model,
            )  # fmt: skip
            if step % 20 == 0 or step == args.steps:
                geometry = result.stats.to_dict()
                say(f"step {step}: forget loss {result.forget_loss.item():.3f}, retain loss "
                    f"{result.retain_loss.item():.3f}, cos(out,r) {geometry['cos_out_r']:.3f}")  # fmt: skip
        # every rank runs the sharded forward (it all-gathers); rank 0 prints
        say("after: ", {s: round(evaluate(model, b)[0], 3) for s, b in splits.items()})
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
