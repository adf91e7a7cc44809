"""One rank of ``UnlearningTrainer`` under ``torchrun`` (gloo, CPU); tests/test_distributed.py
launches it:

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/trainer_worker.py \
        {ddp,fsdp2,zero2,zero3,deepspeed} OUT_DIR

Each rank trains a tiny GPT-2 for two optimizer steps (two micro-batches of accumulation each),
then checks the weights against a single-process Algorithm 1 loop over the same examples, which
it runs itself with the reference backend, and counts the gradient reductions: under DDP no
bucket all-reduce and exactly one all-reduce per flat buffer per step.

``fsdp2`` passes the Trainer FSDP2's settings (``fsdp_config={"version": 2}``). On CPU,
accelerate (1.15) turns them into no FSDP at all: ``AcceleratorState`` switches to
``DistributedType.FSDP`` only from the GPU-like multi-device types (MULTI_GPU, MULTI_XPU, ...),
not MULTI_CPU, and the Trainer silently runs DDP. The worker checks exactly that (so it fails,
and says so, the day accelerate shards on CPU) and that the run is still correct.

``zero2`` / ``zero3`` pass a DeepSpeed config (``TrainingArguments(deepspeed=...)``, ZeRO stage 2
or 3, the Trainer's own SGD and scheduler): the same check against the single-process loop, the
synthesizer on this rank's gradient partition, and (ZeRO-3) a resumed run: GRU (a state per rank)
trained two steps at once equals one step, a checkpoint, and a new Trainer resuming it for the
second. ``deepspeed`` runs both in one launch.
"""

from __future__ import annotations

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


def deepspeed_config(mode: str) -> dict:
    return {
        "zero_optimization": {"stage": int(mode[-1])}, "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto", "train_batch_size": "auto",
        "gradient_clipping": "auto", "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }  # fmt: skip


def training_args(mode: str, folder: Path, **overrides) -> transformers.TrainingArguments:
    """The run's arguments, with the engine ``mode`` asks for (a fresh object per Trainer: under
    DeepSpeed each carries its own plugin)."""
    engine = {}
    if mode == "fsdp2":
        engine = dict(
            fsdp="full_shard",
            fsdp_config={"version": 2, "transformer_layer_cls_to_wrap": ["GPT2Block"],
                         "reshard_after_forward": True},
        )  # fmt: skip
    if mode.startswith("zero"):
        engine = dict(deepspeed=deepspeed_config(mode))
    settings = dict(
        output_dir=str(folder), per_device_train_batch_size=PER_DEVICE,
        gradient_accumulation_steps=ACCUMULATION, learning_rate=0.05, optim="sgd",
        lr_scheduler_type="constant", max_grad_norm=0.0, max_steps=STEPS, logging_steps=1,
        report_to=[], save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True,
        dataloader_drop_last=True, ddp_backend="gloo", **engine,
    )  # fmt: skip
    return transformers.TrainingArguments(**{**settings, **overrides})


def resumed_run_equals_uninterrupted(data, collate, mode: str, out: Path) -> float:
    """GRU under DeepSpeed: two steps at once, and one step, a checkpoint, a resumed second."""

    def trainer(folder: str, save: bool) -> InOrder:
        args = training_args(
            mode, out / folder, **(dict(save_strategy="steps", save_steps=1) if save else {})
        )
        return InOrder(
            model=tiny_gpt2(), args=args, train_dataset=data, data_collator=collate, method="gru",
            forget_loss="ga", retain_loss="nll",
        )  # fmt: skip

    whole = trainer("whole", save=False)
    whole.train()
    want = [full_weight(p).clone() for p in whole.model.parameters()]
    first = trainer("halves", save=True)
    first.args.max_steps = 1
    first.train()
    checkpoint = out / "halves" / "checkpoint-1"
    rank = dist.get_rank()
    if not (checkpoint / f"sago_synthesizer_rank{rank}.pt").is_file():
        raise AssertionError(f"rank {rank}: no synthesizer state in {checkpoint}")
    second = trainer("halves", save=False)
    second.train(resume_from_checkpoint=str(checkpoint))
    if second.state.global_step != STEPS:
        raise AssertionError(f"the resumed run stopped at step {second.state.global_step}")
    worst = 0.0
    for (name, p), w in zip(second.model.named_parameters(), want):
        got = full_weight(p)
        torch.testing.assert_close(got, w, rtol=1e-5, atol=1e-7, msg=lambda m: f"{name}: {m}")
        worst = max(worst, (got - w).abs().max().item())
    return worst


def full_weight(p: torch.nn.Parameter) -> torch.Tensor:
    """The whole parameter: FSDP2's DTensor gathered, ZeRO-3's partitions gathered."""
    if hasattr(p, "full_tensor"):
        return p.full_tensor().detach()
    if hasattr(p, "ds_id"):
        from deepspeed.utils import safe_get_full_fp32_param

        return safe_get_full_fp32_param(p)
    return p.detach()


def run(mode: str, out: Path) -> dict:
    """Train, check against the single-process loop, return this rank's report."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    method = "pcgrad"  # a projection: its dots cross the ranks under FSDP2 and DeepSpeed
    n = PER_DEVICE * ACCUMULATION * world * STEPS
    data = PairedDataset(examples(n, 1), examples(n, 2), seed=3)
    collate = PairedCollator(pad_token_id=0)
    args = training_args(mode, out / "trainer")
    trainer = InOrder(
        model=tiny_gpt2(), args=args, train_dataset=data, data_collator=collate, method=method,
        forget_loss="ga", retain_loss="nll",
    )  # fmt: skip
    with CountingAllReduce() as all_reduces:
        trainer.train()
    want = single_process_run(data, collate, method, world)
    got = {name: full_weight(p) for name, p in trainer.model.named_parameters()}
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
    deepspeed = mode.startswith("zero")
    if deepspeed:
        kind = synth.engine.kind
        if not trainer.is_deepspeed_enabled or kind != "deepspeed" or synth.engine.stage != int(
            mode[-1]
        ):
            raise AssertionError(f"DeepSpeed was not used as configured ({kind})")
    elif InOrder.bucket_reductions or all_reduces.calls != 2 * STEPS:
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
        "buffer_elements": synth.layout.numel, "engine": synth.engine.kind,
    }  # fmt: skip
    if mode == "zero3":  # ZeRO-3 checkpoints partitioned weights too: the harder resume
        report["resumed_max_abs_diff"] = resumed_run_equals_uninterrupted(data, collate, mode, out)
    # under torchrun the synthesizer is built at train(); its arguments are checked at once
    kw = dict(train_dataset=data, data_collator=collate, forget_loss="ga")
    checks = out / "checks"
    InOrder(  # accepted
        model=tiny_gpt2(), args=training_args(mode, checks), method="pcgrad",
        granularity="module", **kw,
    )  # fmt: skip
    for bad, match in ((dict(method="sagoo"), "method"), (dict(buffers=1), "multi-process")):
        try:
            InOrder(model=tiny_gpt2(), args=training_args(mode, checks), **bad, **kw)
        except ValueError as error:
            if match not in str(error):
                raise AssertionError(f"wrong refusal of {bad}: {error}") from None
        else:
            raise AssertionError(f"{bad} was not refused at construction")
    return report


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    # "deepspeed": ZeRO-2, then ZeRO-3, in the same processes (one launch)
    modes = ["zero2", "zero3"] if mode == "deepspeed" else [mode]
    reports = {m: run(m, out / m) for m in modes}
    report = reports.get(mode, reports)
    (out / f"rank{os.environ['RANK']}.json").write_text(json.dumps(report))
    print(json.dumps(report))


if __name__ == "__main__":
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "0")
    main()
