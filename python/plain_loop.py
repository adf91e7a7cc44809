"""Recipe: unlearning in a plain PyTorch loop with the fused combine (paper Algorithm 1).

    python python/plain_loop.py                 # a couple of minutes on a CPU
    python python/plain_loop.py --method pcgrad --forget-loss ga --device cuda

Memorise a small synthetic corpus with a tiny GPT-2, then unlearn its forget split with NPO (or
GA/SimNPO) on the forget batch and NLL on the retain batch, combined by SAGO (or any method).
"""

from __future__ import annotations

import argparse
import copy

import torch
import transformers

import sago_kernels as sk
from sago_kernels.unlearning.facts import evaluate, make_corpus, score


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--method", default="sago", choices=sk.methods())
    p.add_argument("--forget-loss", default="npo", choices=["ga", "npo", "simnpo"])
    p.add_argument("--entities", type=int, default=100)
    p.add_argument("--pretrain-epochs", type=int, default=120)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    torch.manual_seed(0)

    corpus = make_corpus(args.entities)
    splits = {s: corpus.tensors(s, args.device) for s in ("forget", "retain", "neighbour")}
    cfg = transformers.GPT2Config(
        vocab_size=len(corpus.vocab),
        n_positions=4,
        n_embd=128,
        n_layer=4,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = transformers.GPT2LMHeadModel(cfg).to(args.device)

    # 1. learn every fact (ordinary training)
    everything = {k: torch.cat([v[k] for v in splits.values()]) for k in ("input_ids", "labels")}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for epoch in range(args.pretrain_epochs):
        for idx in torch.randperm(len(everything["input_ids"])).split(50):
            batch = {k: v[idx.to(args.device)] for k, v in everything.items()}
            sk.losses.nll_loss(model(batch["input_ids"]).logits, batch["labels"]).backward()
            opt.step()
            opt.zero_grad()
        if (known := score(model, everything)).correct == known.total:  # counts, not a mean
            break
    ref_model = copy.deepcopy(model).eval().requires_grad_(False)  # frozen, for NPO
    print("before:", {s: round(evaluate(model, b)[0], 3) for s, b in splits.items()})

    # 2. unlearn: two gradients into two flat buffers, one fused combine, any optimizer
    synth = sk.GradientSynthesizer(
        model, method=args.method, gamma=sk.losses.SUGGESTED_GAMMA[args.forget_loss]
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for step in range(1, args.steps + 1):
        forget_idx = torch.randint(len(splits["forget"]["input_ids"]), (16,)).to(args.device)
        retain_idx = torch.randint(len(splits["retain"]["input_ids"]), (16,)).to(args.device)
        result = sk.unlearning_step(
            model, synth, opt,
            {k: v[forget_idx] for k, v in splits["forget"].items()},
            {k: v[retain_idx] for k, v in splits["retain"].items()},
            forget_loss=args.forget_loss, retain_loss="nll", ref_model=ref_model,
        )  # fmt: skip
        if step % 25 == 0 or step == args.steps:
            geometry = result.stats.to_dict()
            print(
                f"step {step}: forget loss {result.forget_loss.item():.3f}, retain loss "
                f"{result.retain_loss.item():.3f}, cos(out,r) {geometry['cos_out_r']:.3f}"
            )
    print("after: ", {s: round(evaluate(model, b)[0], 3) for s, b in splits.items()})


if __name__ == "__main__":
    main()
