"""Recipe: Algorithm 1 under DeepSpeed ZeRO (stage 3 by default), two processes on a CPU.

    python python/deepspeed_run.py                                       # launches torchrun
    torchrun --standalone --nproc_per_node 2 python/deepspeed_run.py     # your loop
    accelerate launch --num_processes 2 --use_deepspeed --zero_stage 3 \\
        python/deepspeed_run.py --trainer                                # UnlearningTrainer

Every rank memorises a small synthetic corpus with the same tiny Llama (built from a config),
then hands it to ``deepspeed.initialize`` (ZeRO-3: parameters, gradients and optimizer states
partitioned over the ranks) and unlearns the forget split with NPO, keeping the retain split
with NLL, combined by SAGO (or any method). ``GradientSynthesizer`` takes the DeepSpeed engine:
each rank's flat buffers hold its partition of the gradient (N/world elements each), every
``engine.backward`` inside a context is reduced by DeepSpeed as usual, the combine runs on the
partitions (projection methods: one all-reduce of per-segment dots) and ``engine.step()`` steps
on g_final. ``--trainer`` runs the same with ``UnlearningTrainer``: under ``accelerate launch``
with a DeepSpeed config it takes accelerate's; under torchrun it passes
``TrainingArguments(deepspeed=...)``. On GPUs the same script runs with NCCL (``--device cuda``).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile

import torch
import transformers

import sago_kernels as sk
from sago_kernels.unlearning.data import PairedCollator, PairedDataset
from sago_kernels.unlearning.facts import evaluate, make_corpus, score
from sago_kernels.unlearning.losses import run_loss


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--method", default="sago", choices=sk.methods(), help="combine method")
    p.add_argument("--stage", type=int, default=3, choices=(1, 2, 3), help="ZeRO stage")
    p.add_argument("--trainer", action="store_true", help="UnlearningTrainer, not a plain loop")
    p.add_argument("--nproc", type=int, default=2, help="processes, when not under a launcher")
    p.add_argument("--entities", type=int, default=40, help="entities of the corpus")
    p.add_argument("--pretrain-epochs", type=int, default=150, help="most epochs to memorise")
    p.add_argument("--steps", type=int, default=40, help="unlearning steps")
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


def deepspeed_config(stage: int, batch: int, world: int) -> dict:
    return {
        "train_micro_batch_size_per_gpu": batch // world, "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": stage}, "gradient_clipping": 1.0,
        # torch's AdamW: DeepSpeed's fused CPU Adam is not built on a CPU-only install
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
        "steps_per_print": 10**9,
    }  # fmt: skip


def unlearn_in_a_loop(args, model, ref_model, splits, device, rank, world, say) -> None:
    import deepspeed

    engine, *_ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(),
        config=deepspeed_config(args.stage, args.batch, world),
    )  # fmt: skip
    gamma = sk.losses.SUGGESTED_GAMMA["npo"]
    synth = sk.GradientSynthesizer(engine, method=args.method, gamma=gamma)
    whole = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in model.parameters())
    say(f"{world} ranks, ZeRO-{args.stage}: each rank's buffers {synth.memory_bytes / 2**10:.0f} "
        f"KiB of its gradient partition (two whole-model buffers: {whole * 8 / 2**10:.0f} KiB); "
        f"engine: {synth.engine.kind}")  # fmt: skip
    g = torch.Generator().manual_seed(2)  # the same draws on every rank; each takes a slice
    mine = slice(rank * args.batch // world, (rank + 1) * args.batch // world)
    for step in range(1, args.steps + 1):
        fi = torch.randint(len(splits["forget"]["input_ids"]), (args.batch,), generator=g)
        ri = torch.randint(len(splits["retain"]["input_ids"]), (args.batch,), generator=g)
        forget = {k: v[fi[mine].to(device)] for k, v in splits["forget"].items()}
        retain = {k: v[ri[mine].to(device)] for k, v in splits["retain"].items()}
        with synth.forget():
            loss_f = run_loss("npo", engine, forget, ref_model=ref_model)
            engine.backward(loss_f)
        with synth.retain():
            loss_r = run_loss("nll", engine, retain, forget=False)
            engine.backward(loss_r)
        stats = synth.combine_()  # g_final in DeepSpeed's partitions
        engine.step()  # DeepSpeed clips and steps on it
        if step % 20 == 0 or step == args.steps:
            say(f"step {step}: forget loss {loss_f.item():.3f}, retain loss {loss_r.item():.3f}, "
                f"cos(out,r) {stats.to_dict()['cos_out_r']:.3f}")  # fmt: skip
    # every rank runs the partitioned forward (ZeRO-3 gathers each layer); rank 0 prints
    say("after: ", {s: round(evaluate(engine, b)[0], 3) for s, b in splits.items()})


def unlearn_with_the_trainer(args, model, ref_model, corpus, splits, world, say) -> None:
    from sago_kernels.unlearning.trainer import UnlearningTrainer

    launched_by_accelerate = os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
    engine = {}
    if not launched_by_accelerate:  # torchrun: the DeepSpeed config through TrainingArguments
        engine = dict(deepspeed={
            "zero_optimization": {"stage": args.stage}, "gradient_clipping": "auto",
            "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto",
            "gradient_accumulation_steps": "auto",
        })  # fmt: skip
    with tempfile.TemporaryDirectory() as out:
        training_args = transformers.TrainingArguments(
            output_dir=out, per_device_train_batch_size=args.batch // world,
            learning_rate=1e-3, max_steps=args.steps, lr_scheduler_type="constant",
            max_grad_norm=1.0, logging_steps=20, report_to=[], save_strategy="no",
            use_cpu=args.device == "cpu", disable_tqdm=True, ddp_backend="gloo"
            if args.device == "cpu" else None, **engine,
        )  # fmt: skip
        trainer = UnlearningTrainer(
            model=model, args=training_args,
            train_dataset=PairedDataset(corpus.examples("forget"), corpus.examples("retain")),
            data_collator=PairedCollator(pad_token_id=corpus.pad_id), method=args.method,
            gamma=sk.losses.SUGGESTED_GAMMA["npo"], forget_loss="npo", retain_loss="nll",
            ref_model=ref_model,
        )  # fmt: skip
        trainer.train()
        synth = trainer.synth
        kib = synth.memory_bytes / 2**10
        say(f"{world} ranks, ZeRO-{synth.engine.stage} under UnlearningTrainer: each rank's "
            f"buffers {kib:.0f} KiB; engine: {synth.engine.kind}")  # fmt: skip
        for row in trainer.state.log_history:
            if "forget_loss" in row:
                say({k: row[k] for k in ("step", "forget_loss", "retain_loss", "cos_out_r")})
        say("after: ", {s: round(evaluate(trainer.model_wrapped, b)[0], 3)
                        for s, b in splits.items()})  # fmt: skip


def main(argv=None) -> None:
    args = parse_args(argv)
    if "RANK" not in os.environ:  # not launched by torchrun or accelerate: launch torchrun
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={args.nproc}", __file__, *(argv or sys.argv[1:])]  # fmt: skip
        os.execv(sys.executable, command)
    import deepspeed
    import torch.distributed as dist

    torch.set_num_threads(1)
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    say = print if rank == 0 else (lambda *a, **k: None)
    corpus = make_corpus(args.entities)
    splits = {s: corpus.tensors(s, device) for s in ("forget", "retain", "neighbour")}
    everything = {k: torch.cat([v[k] for v in splits.values()]) for k in splits["forget"]}
    model = build_model(len(corpus.vocab), device)
    memorise(model, everything, args.pretrain_epochs)
    ref_model = copy.deepcopy(model).eval().requires_grad_(False)  # NPO's frozen reference
    say("before:", {s: round(evaluate(model, b)[0], 3) for s, b in splits.items()})
    if args.trainer:
        unlearn_with_the_trainer(args, model, ref_model, corpus, splits, world, say)
    else:
        unlearn_in_a_loop(args, model, ref_model, splits, device, rank, world, say)


if __name__ == "__main__":
    main()
