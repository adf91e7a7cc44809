"""One rank of ``UnlearningTrainer`` under ``torchrun`` (gloo, CPU); tests/test_distributed.py
launches it:

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/trainer_worker.py \
        {ddp,fsdp2} OUT_DIR

Each rank trains a tiny GPT-2 for two optimizer steps (two micro-batches of accumulation each),
then checks the weights against a single-process Algorithm 1 loop over the same examples, which
it runs itself with the reference backend, and counts the gradient reductions: under DDP no
bucket all-reduce and exactly one all-reduce per flat buffer per step.

``fsdp2`` passes the Trainer FSDP2's settings (``fsdp_config={"version": 2}``). On CPU,
accelerate (1.15) turns them into no FSDP at all: ``AcceleratorState`` switches to
``DistributedType.FSDP`` only from the GPU-like multi-device types (MULTI_GPU, MULTI_XPU, ...),
not MULTI_CPU, and the Trainer silently runs DDP. The worker checks exactly that (so it fails,
and says so, the day accelerate shards on CPU) and that the run is still correct.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import transformers

import sago_kernels as sk
from sago_kernels.unlearning.data import PairedCollator, PairedDataset, split_pair
from sago_kernels.unlearning.losses import run_loss
from sago_kernels.unlearning.trainer import UnlearningTrainer

from dist_worker import CountingAllReduce  # noqa: E402  (this script's folder is on sys.path)

VOCAB, LENGTH, PER_DEVICE, ACCUMULATION, STEPS = 23, 6, 2, 2, 2


def tiny_gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=2, n_head=2,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=False,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config)


def examples(n: int, seed: int) -> list[dict]:
    """Same length, no padding: each rank's mean loss, averaged over ranks, is the mean loss."""
    g = torch.Generator().manual_seed(seed)
    return [
        {"input_ids": (ids := torch.randint(1, VOCAB, (LENGTH,), generator=g).tolist()),
         "labels": ids}
        for _ in range(n)
    ]  # fmt: skip


class InOrder(UnlearningTrainer):
    """Sequential batches (accelerate then deals them to the ranks in turn), and a count of the
    DDP bucket all-reduces, if any, through a comm hook installed on the wrapped model."""

    bucket_reductions = 0

    def _get_train_sampler(self, train_dataset=None):
        return torch.utils.data.SequentialSampler(train_dataset or self.train_dataset)

    def training_step(self, model, inputs, num_items_in_batch=None):
        ddp = torch.nn.parallel.DistributedDataParallel
        if isinstance(model, ddp) and not getattr(model, "_counted", False):
            def count(state, bucket):
                InOrder.bucket_reductions += 1
                return torch.distributed.algorithms.ddp_comm_hooks.default_hooks.allreduce_hook(
                    state, bucket
                )

            model.register_comm_hook(dist.group.WORLD, count)
            model._counted = True
        return super().training_step(model, inputs, num_items_in_batch)


def single_process_run(data, collate, method: str, world: int) -> torch.nn.Module:
    """Algorithm 1 by hand on all the ranks' examples: per step, every rank's micro-batches."""
    model = tiny_gpt2()
    synth = sk.GradientSynthesizer(model, method=method, backend="reference")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    per_step = PER_DEVICE * ACCUMULATION * world
    for step in range(STEPS):
        rows = range(step * per_step, (step + 1) * per_step)
        batches = [collate([data[i] for i in rows[k : k + PER_DEVICE]])
                   for k in range(0, per_step, PER_DEVICE)]  # fmt: skip
        share = 1.0 / len(batches)  # the ranks average, accumulation sums micro-batches / steps
        for b in batches:
            f, r = split_pair(b)
            with synth.forget():
                (run_loss("ga", model, f) * share).backward()
            with synth.retain():
                (run_loss("nll", model, r, forget=False) * share).backward()
        synth.combine_()
        opt.step()
        opt.zero_grad()
    return model


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    method = "pcgrad"  # a projection: its dots cross the ranks under FSDP2
    n = PER_DEVICE * ACCUMULATION * world * STEPS
    data = PairedDataset(examples(n, 1), examples(n, 2), seed=3)
    collate = PairedCollator(pad_token_id=0)
    fsdp = {}
    if mode == "fsdp2":
        fsdp = dict(
            fsdp="full_shard",
            fsdp_config={"version": 2, "transformer_layer_cls_to_wrap": ["GPT2Block"],
                         "reshard_after_forward": True},
        )  # fmt: skip
    args = transformers.TrainingArguments(
        output_dir=str(out / "trainer"), per_device_train_batch_size=PER_DEVICE,
        gradient_accumulation_steps=ACCUMULATION, learning_rate=0.05, optim="sgd",
        lr_scheduler_type="constant", max_grad_norm=0.0, max_steps=STEPS, logging_steps=1,
        report_to=[], save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True,
        dataloader_drop_last=True, ddp_backend="gloo", **fsdp,
    )  # fmt: skip
    trainer = InOrder(
        model=tiny_gpt2(), args=args, train_dataset=data, data_collator=collate, method=method,
        forget_loss="ga", retain_loss="nll",
    )  # fmt: skip
    with CountingAllReduce() as all_reduces:
        trainer.train()
    want = single_process_run(data, collate, method, world)
    got = {}
    for name, p in trainer.model.named_parameters():
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        got[name] = full.detach()
    worst = 0.0
    for name, p in want.named_parameters():
        torch.testing.assert_close(got[name], p, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
        worst = max(worst, (got[name] - p).abs().max().item())
    synth = trainer.synth
    if mode == "fsdp2" and (trainer.is_fsdp_enabled or synth.fsdp2):
        raise AssertionError(
            "accelerate now enables FSDP on CPU: drop the DDP fallback note in the README and "
            "check the sharded Trainer path here (synth.fsdp2, the dots' all-reduces)"
        )
    if InOrder.bucket_reductions or all_reduces.calls != 2 * STEPS:
        raise AssertionError(
            f"{InOrder.bucket_reductions} DDP bucket all-reduces and {all_reduces.calls} others; "
            f"expected none and one per flat buffer per step ({2 * STEPS})"
        )
    report = {
        "rank": rank, "world": world, "mode": mode, "steps": trainer.state.global_step,
        "fsdp_enabled": trainer.is_fsdp_enabled, "fsdp2": synth.fsdp2,
        "distributed_type": str(trainer.accelerator.state.distributed_type),
        "ddp_bucket_all_reduces": InOrder.bucket_reductions,
        "python_all_reduces": all_reduces.calls, "max_abs_diff": worst,
        "buffer_elements": synth.layout.numel,
    }  # fmt: skip
    # under torchrun the synthesizer is built at train(); its arguments are checked at once
    kw = dict(args=args, train_dataset=data, data_collator=collate, forget_loss="ga")
    InOrder(model=tiny_gpt2(), method="pcgrad", granularity="module", **kw)  # accepted
    for bad, match in ((dict(method="sagoo"), "method"), (dict(buffers=1), "multi-process")):
        try:
            InOrder(model=tiny_gpt2(), **bad, **kw)
        except ValueError as error:
            if match not in str(error):
                raise AssertionError(f"wrong refusal of {bad}: {error}") from None
        else:
            raise AssertionError(f"{bad} was not refused at construction")
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    print(json.dumps(report))


if __name__ == "__main__":
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "0")
    main()
