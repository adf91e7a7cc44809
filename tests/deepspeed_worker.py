"""One rank of the DeepSpeed tests (gloo, CPU); tests/test_deepspeed.py launches it:

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/deepspeed_worker.py OUT

For ZeRO stages 1, 2 and 3 and the methods ``sago``, ``pcgrad`` and ``gru`` (and ZeRO-3 with
``granularity="module"``, which copies the partitions as ZeRO-1/2 do, where ZeRO-3 per parameter
has DeepSpeed reduce into the buffers in place), ``GradientSynthesizer``
on a ``deepspeed.initialize``-d MLP runs two steps of gradient accumulation (two micro-batches a
step, forget and retain interleaved per micro-batch as the Trainer runs them, or each task's
micro-batches in one context) and ``engine.step()``; each rank checks against a single-process
Algorithm 1 loop over all the ranks' rows, which it runs itself: the statistics of each step,
the weights after it (SGD with momentum on both sides), and that each rank's buffers are one
partition. It counts the collectives: the combine makes exactly the documented all-reduces, and
the contexts make what DeepSpeed's own backward passes and boundaries make. Then the refusals.
Each rank writes ``OUT/rank{k}.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist

import sago_kernels as sk

ROWS, MICRO, STEPS = 2, 2, 2
COLLECTIVES = ("all_reduce", "reduce_scatter_tensor", "all_gather_into_tensor", "reduce_scatter",
               "all_gather", "broadcast", "reduce")  # fmt: skip


class CountingCollectives:
    """Counts torch.distributed's collectives by name (DeepSpeed's comm calls them too)."""

    def __init__(self):
        self.calls: dict[str, int] = {}
        self.originals = {name: getattr(dist, name) for name in COLLECTIVES}

    def __enter__(self):
        for name, original in self.originals.items():

            def counted(*args, _name=name, _original=original, **kwargs):
                self.calls[_name] = self.calls.get(_name, 0) + 1
                return _original(*args, **kwargs)

            setattr(dist, name, counted)
        return self

    def __exit__(self, *exc):
        for name, original in self.originals.items():
            setattr(dist, name, original)


def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3), torch.nn.Linear(3, 1)
    )


def config(stage: int) -> dict:
    return {
        "train_micro_batch_size_per_gpu": ROWS, "gradient_accumulation_steps": MICRO,
        "zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True,
        "optimizer": {"type": "SGD", "params": {"lr": 0.1, "momentum": 0.9}},
        "gradient_clipping": 0.0, "steps_per_print": 10**9,
    }  # fmt: skip


def forget_loss(model, x):
    return -model(x).square().mean() / MICRO


def retain_loss(model, x):
    return (model(x) - 1).abs().mean() / MICRO


def full_param(p: torch.nn.Parameter, stage: int) -> torch.Tensor:
    if stage == 3:
        from deepspeed.utils import safe_get_full_fp32_param

        return safe_get_full_fp32_param(p)
    return p.detach()


def run(
    stage: int, method: str, interleaved: bool, rank: int, world: int, granularity="parameter"
) -> dict:
    pattern = "interleaved" if interleaved else "blocks"
    where = f"rank {rank}/{world} ZeRO-{stage} {method} {pattern} {granularity}"
    model = mlp()
    engine, *_ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), config=config(stage)
    )
    synth = sk.GradientSynthesizer(
        engine, method=method, backend="reference", granularity=granularity
    )
    single = mlp()
    ref = sk.GradientSynthesizer(
        single, method=method, backend="reference", granularity=granularity
    )
    # ZeRO-3 per parameter: DeepSpeed reduces into the buffers, its own partition released
    in_place = stage == 3 and granularity == "parameter"
    if synth.engine.in_place != in_place:
        raise AssertionError(f"{where}: in_place is {synth.engine.in_place}")
    opt = torch.optim.SGD(single.parameters(), lr=0.1, momentum=0.9)
    # one partition a rank: this rank's fragments of every parameter, no more
    local = sum(n for _, n in synth.engine.fragments)
    counts = torch.tensor([local])
    dist.all_reduce(counts)
    whole = sum(p.numel() for p in single.parameters())
    if counts.item() != whole or synth.layout.segment_numel != local:
        raise AssertionError(f"{where}: the buffers are not this rank's partition ({local})")
    g = torch.Generator().manual_seed(1)
    mine = slice(ROWS * rank, ROWS * (rank + 1))
    step_calls, combine_calls = [], []
    for step in range(STEPS):
        batches = [
            (torch.randn(ROWS * world, 6, generator=g), torch.randn(ROWS * world, 6, generator=g))
            for _ in range(MICRO)
        ]
        with CountingCollectives() as in_step:
            if interleaved:  # as UnlearningTrainer runs them: forget, retain, per micro-batch
                for xf, xr in batches:
                    with synth.forget():
                        engine.backward(forget_loss(engine, xf[mine]), scale_wrt_gas=False)
                    with synth.retain():
                        engine.backward(retain_loss(engine, xr[mine]), scale_wrt_gas=False)
            else:
                with synth.forget():
                    for xf, _ in batches:
                        engine.backward(forget_loss(engine, xf[mine]), scale_wrt_gas=False)
                with synth.retain():
                    for _, xr in batches:
                        engine.backward(retain_loss(engine, xr[mine]), scale_wrt_gas=False)
            with CountingCollectives() as in_combine:
                got = synth.combine_()
            engine.step()
        if in_place and engine.optimizer.grad_partitions_flat_buffer.numel():
            raise AssertionError(f"{where}: DeepSpeed's own partition buffer was kept")
        step_calls.append(in_step.calls)
        combine_calls.append(in_combine.calls)
        with ref.forget():
            for xf, _ in batches:
                forget_loss(single, xf).backward()
        with ref.retain():
            for _, xr in batches:
                retain_loss(single, xr).backward()
        want = ref.combine_()
        opt.step()
        opt.zero_grad()
        torch.testing.assert_close(
            got.table[-1], want.table[-1], rtol=1e-4, atol=1e-6,
            msg=lambda m: f"{where} step {step}: statistics: {m}",
        )  # fmt: skip
        for (name, p), q in zip(engine.module.named_parameters(), single.parameters()):
            torch.testing.assert_close(
                full_param(p, stage), q.detach(), rtol=1e-4, atol=1e-6,
                msg=lambda m: f"{where} step {step}: {name}: {m}",
            )  # fmt: skip
        # the combine: the dots (projection methods), the two statistics sums; a layout's
        # first combine also agrees the segment counts and lengths over the group, once
        documented = int(sk.METHODS[method].is_projection) + 2 + (2 if step == 0 else 0)
        if in_combine.calls != {"all_reduce": documented}:
            raise AssertionError(f"{where}: the combine made {in_combine.calls}, not {documented}")
    return {"stage": stage, "method": method, "interleaved": interleaved,
            "granularity": granularity, "in_place": in_place, "step_collectives":
            step_calls, "combine_collectives": combine_calls, "partition": local,
            "memory_bytes": synth.memory_bytes}  # fmt: skip


def expect_refusal(make, match: str, error=ValueError) -> None:
    try:
        make()
    except error as caught:
        if match not in str(caught):
            raise AssertionError(f"wrong refusal ({match!r} expected): {caught}") from None
    else:
        raise AssertionError(f"{match!r} was not refused")


def refusals(rank: int) -> None:
    model = mlp()
    engine, *_ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), config=config(2)
    )
    expect_refusal(lambda: sk.GradientSynthesizer(engine, buffers=1), "DeepSpeed does not allow")
    expect_refusal(
        lambda: sk.GradientSynthesizer(engine, process_group=dist.group.WORLD), "should be None"
    )
    expect_refusal(  # DeepSpeed scales fp16 losses itself
        lambda: sk.GradientSynthesizer(engine, grad_scaler=torch.amp.GradScaler("cpu")),
        "a DeepSpeed engine scales",
    )
    # a trainable parameter DeepSpeed's optimizer does not hold
    extra = torch.nn.Parameter(torch.zeros(3))
    engine.module.register_parameter("extra", extra)
    expect_refusal(lambda: sk.GradientSynthesizer(engine), "`module.extra` requires grad")
    del engine.module.extra
    synth = sk.GradientSynthesizer(engine, method="sago", backend="reference")
    # a backward outside the contexts is refused, not folded into the next task
    x = torch.randn(ROWS, 6)
    engine.backward(forget_loss(engine, x))
    expect_refusal(
        synth.forget().__enter__, "outside synth.forget() / synth.retain()", RuntimeError
    )
    synth.zero_grad()
    with synth.forget():
        engine.backward(forget_loss(engine, x))
    with synth.retain():
        engine.backward(retain_loss(engine, x))
    synth.combine_()
    engine.step()
    # ZeRO stage 0 keeps a whole gradient per rank
    model0 = mlp()
    cfg0 = {**config(0), "optimizer": {"type": "AdamW", "params": {"lr": 0.1, "torch_adam": True}}}
    engine0, *_ = deepspeed.initialize(
        model=model0, model_parameters=model0.parameters(), config=cfg0
    )
    expect_refusal(lambda: sk.GradientSynthesizer(engine0), "ZeRO stage 1, 2 or 3")


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    runs = []
    for stage in (1, 2, 3):
        for method, interleaved in (("sago", True), ("pcgrad", False), ("gru", True)):
            runs.append(run(stage, method, interleaved, rank, world))
    # ZeRO-3 with segments of several parameters: the copying path, as ZeRO-1/2 take
    runs.append(run(3, "pcgrad", True, rank, world, granularity="module"))
    refusals(rank)
    (out / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "runs": runs}))


if __name__ == "__main__":
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "0")
    main()
