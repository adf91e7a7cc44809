"""One rank of a multi-process test (gloo, CPU); tests/test_distributed.py starts the ranks.

    python tests/dist_worker.py SCENARIO --rank K --world W --init FILE [--backends ...]

Scenarios (each rank checks its own results against a single-process run it makes itself, and
exits non-zero with the reason on the first mismatch):

- ``sharded``: every method (two Gramian weightings for the nine), with and without statistics,
  on a layout whose segments are split over the ranks in uneven ways (FSDP-style ceil splits, a
  segment split mid-way, ranks holding none of a segment) equals the unsharded combine; the
  number of all-reduces is as documented.
- ``ddp``: a DDP model's two-task step through ``GradientSynthesizer`` (no per-backward sync,
  one averaging all-reduce per buffer) equals the single-process step on the whole batch.
- ``fsdp2``: a tiny GPT-2 under ``fully_shard``: one unlearning step with the combine on the
  parameters' local shards equals the single-process step.
- ``fsdp2_synthesizer``: ``GradientSynthesizer`` on a ``fully_shard``-ed GPT-2: FSDP2's
  reduce-scatter accumulates into the synthesizer's buffers (no gradient of its own), two forget
  micro-batches and a retain backward per step, the combine with the documented all-reduces,
  SGD with momentum on the DTensor parameters; two steps equal the single-process run on the
  whole batch.
"""

from __future__ import annotations

import argparse
import copy
import os

import torch
import torch.distributed as dist

import sago_kernels as sk

SIZES = [1000, 0, 1, 77, 4099, 16, 33, 5, 260]


def split(n: int, j: int, world: int) -> list[tuple[int, int]]:
    """(offset, length) of segment j's slice on every rank: FSDP-style ceil splits for even j
    (the last ranks may get less or nothing), the whole segment on one rank for odd j."""
    if j % 2:
        owner = j % world
        return [(0, n) if k == owner else (0, 0) for k in range(world)]
    chunk = -(-n // world)
    return [(min(k * chunk, n), max(0, min(chunk, n - k * chunk))) for k in range(world)]


def full_pair(dtype: torch.dtype) -> tuple[sk.GradLayout, torch.Tensor, torch.Tensor]:
    layout = sk.GradLayout.from_sizes(SIZES, alignment=16)
    g = torch.Generator().manual_seed(123)
    r, f = layout.new_buffer(dtype), layout.new_buffer(dtype)
    for j, (rv, fv) in enumerate(zip(layout.segment_views(r), layout.segment_views(f))):
        rv.copy_(torch.randn(rv.numel(), generator=g))
        fv.copy_(torch.randn(fv.numel(), generator=g))
        if j % 3 == 0:  # make f·r < 0 so PCGrad projects here
            fv.copy_(-rv + 0.3 * fv)
    return layout, r, f


def local_pair(layout, r, f, rank, world):
    slices = [split(s.numel, j, world)[rank] for j, s in enumerate(layout.segments)]
    local = sk.GradLayout.from_sizes([n for _, n in slices], alignment=16)
    r_loc, f_loc = local.new_buffer(r.dtype), local.new_buffer(r.dtype)
    for (off, n), s, rv, fv in zip(slices, layout.segments, local.views(r_loc), local.views(f_loc)):
        rv.copy_(r[s.start + off : s.start + off + n])
        fv.copy_(f[s.start + off : s.start + off + n])
    return local, r_loc, f_loc, slices


class CountingAllReduce:
    """Counts dist.all_reduce calls (the combine must make exactly the documented number)."""

    def __init__(self):
        self.calls, self.original = 0, dist.all_reduce

    def __enter__(self):
        def counted(*args, **kwargs):
            self.calls += 1
            return self.original(*args, **kwargs)

        dist.all_reduce = counted
        return self

    def __exit__(self, *exc):
        dist.all_reduce = self.original


# The Gramian weightings share one sharded path (reduce the dots, then the weights): two of them
# stand for the nine, whose own math tests/test_weightings.py checks.
SHARDED_METHODS = [m for m in sk.methods() if not sk.METHODS[m].weighting] + ["upgrad", "cagrad"]


def shard_of(layout, local, full, slices):
    """This rank's slices of a full buffer, in the local layout (as local_pair cuts them)."""
    out = local.new_buffer(full.dtype)
    for (off, n), s, v in zip(slices, layout.segments, local.views(out)):
        v.copy_(full[s.start + off : s.start + off + n])
    return out


def scenario_sharded(rank: int, world: int, backends: list[str]) -> None:
    for dtype in (torch.float32, torch.bfloat16):
        layout, r, f = full_pair(dtype)
        local, r_loc, f_loc, slices = local_pair(layout, r, f, rank, world)
        for backend in backends:
            for method in SHARDED_METHODS:
                # GRU: the same starting average, whole and as this rank's shard
                g = torch.Generator().manual_seed(5)  # the same on every rank
                state = sk.METHODS[method].needs_state and torch.randn(layout.numel, generator=g)
                state = state is not False and state.to(dtype)
                full_state = {"state": state.clone()} if state is not False else {}
                local_state = (
                    {"state": shard_of(layout, local, state, slices)} if full_state else {}
                )
                want, want_stats = sk.combine_(
                    r.clone(), f, layout=layout, method=method, gamma=0.8, stats=True,
                    backend=backend, **full_state,
                )  # fmt: skip
                got, got_stats = sk.combine_(
                    r_loc.clone(), f_loc, layout=local, method=method, gamma=0.8, stats=True,
                    backend=backend, process_group=dist.group.WORLD, **local_state,
                )  # fmt: skip
                where = f"rank {rank}/{world} {backend} {method} {dtype}"
                if full_state:  # each rank's state is its shard of the whole average, exactly
                    want_shard = shard_of(layout, local, full_state["state"], slices)
                    if not torch.equal(local_state["state"], want_shard):
                        raise AssertionError(f"{where}: the state shard differs")
                tol = (
                    dict(rtol=1e-5, atol=1e-6)
                    if dtype == torch.float32
                    else dict(rtol=2**-7, atol=1e-5)
                )  # one bf16 rounding step apart at most when the weights differ by an ulp
                for (off, n), s, gv in zip(slices, layout.segments, local.views(got)):
                    torch.testing.assert_close(
                        gv.float(), want[s.start + off : s.start + off + n].float(), **tol,
                        msg=lambda m: f"{where}: output differs: {m}",
                    )  # fmt: skip
                torch.testing.assert_close(
                    got_stats.table, want_stats.table, rtol=1e-4, atol=1e-5,
                    msg=lambda m: f"{where}: statistics differ: {m}",
                )  # fmt: skip
                if method in ("sago", "pcgrad"):  # the synthesizer passes the group through
                    params = [
                        (f"p{j}", torch.nn.Parameter(torch.zeros(n, dtype=dtype)))
                        for j, (_, n) in enumerate(slices)
                    ]
                    synth = sk.GradientSynthesizer(
                        params, method=method, gamma=0.8, alignment=16, backend=backend,
                        process_group=dist.group.WORLD,
                    )  # fmt: skip
                    synth.retain_buffer.copy_(r_loc)
                    synth.forget_buffer.copy_(f_loc)
                    synth_stats = synth.combine_()
                    for a, b in zip(local.views(got), synth.layout.views(synth.retain_buffer)):
                        torch.testing.assert_close(a, b, rtol=0, atol=0)
                    torch.testing.assert_close(synth_stats.table, got_stats.table, rtol=0, atol=0)
                projection = sk.METHODS[method].is_projection
                for stats in (False, True):
                    with CountingAllReduce() as counter:
                        sk.combine_(
                            r_loc.clone(), f_loc, layout=local, method=method, stats=stats,
                            backend=backend, process_group=dist.group.WORLD, **local_state,
                        )  # fmt: skip
                    expected = int(projection) + 2 * int(stats)
                    if counter.calls != expected:
                        raise AssertionError(
                            f"{where} stats={stats}: {counter.calls} all-reduces, "
                            f"documented {expected}"
                        )


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3), torch.nn.Linear(3, 1)
    )


def scenario_ddp(rank: int, world: int, backends: list[str]) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    g = torch.Generator().manual_seed(7)
    per_rank = 4
    x_f = torch.randn(per_rank * world, 6, generator=g)
    x_r = torch.randn(per_rank * world, 6, generator=g)
    mine = slice(rank * per_rank, (rank + 1) * per_rank)

    def losses(model, xf, xr):
        return -model(xf).square().mean(), (model(xr) - 1).abs().mean()

    for method in SHARDED_METHODS:
        single = _mlp()
        synth = sk.GradientSynthesizer(single, method=method, stats=False, backend="reference")
        lf, lr = losses(single, x_f, x_r)
        with synth.forget():
            lf.backward()
        with synth.retain():
            lr.backward()
        synth.combine_()

        ddp = DDP(copy.deepcopy(_mlp()))
        hook_calls = []

        def count_hook(state, bucket):
            hook_calls.append(1)
            fut = torch.futures.Future()
            fut.set_result(bucket.buffer())
            return fut

        ddp.register_comm_hook(None, count_hook)
        synth_ddp = sk.GradientSynthesizer(ddp, method=method, stats=False, backend=backends[0])
        with CountingAllReduce() as counter:
            with synth_ddp.forget():
                losses(ddp, x_f[mine], x_r[mine])[0].backward()
            with synth_ddp.retain():
                losses(ddp, x_f[mine], x_r[mine])[1].backward()
            synth_ddp.combine_()
        where = f"rank {rank}/{world} ddp {method}"
        if hook_calls:
            raise AssertionError(f"{where}: DDP synchronised during backward ({len(hook_calls)})")
        if counter.calls != 2:
            raise AssertionError(f"{where}: {counter.calls} all-reduces, expected one per buffer")
        for (name, p_single), p_ddp in zip(single.named_parameters(), ddp.module.parameters()):
            torch.testing.assert_close(
                p_ddp.grad, p_single.grad, rtol=1e-5, atol=1e-6,
                msg=lambda m: f"{where}: {name}: {m}",
            )  # fmt: skip


def _gpt2() -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        n_layer=2, n_head=2, n_embd=16, vocab_size=50, n_positions=16, tie_word_embeddings=False,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    return GPT2LMHeadModel(config)


def _fully_shard(model: torch.nn.Module) -> torch.nn.Module:
    from torch.distributed.fsdp import fully_shard

    for block in model.transformer.h:
        fully_shard(block)
    fully_shard(model)
    return model


def scenario_fsdp2(rank: int, world: int, backends: list[str]) -> None:
    base = _gpt2()
    g = torch.Generator().manual_seed(3)
    forget_ids = torch.randint(0, 50, (2 * world, 8), generator=g)
    retain_ids = torch.randint(0, 50, (2 * world, 8), generator=g)
    mine = slice(2 * rank, 2 * rank + 2)

    def step_grads(model, fi, ri, combine):
        (-model(input_ids=fi, labels=fi).loss).backward()
        g_f = [p.grad.detach().clone() for p in model.parameters()]
        model.zero_grad()
        model(input_ids=ri, labels=ri).loss.backward()
        return combine([p.grad for p in model.parameters()], g_f)

    for method in ("sago", "pcgrad", "blur"):
        single = copy.deepcopy(base)
        want = step_grads(
            single, forget_ids, retain_ids,
            lambda r, f: sk.combine_grads_(r, f, method=method, backend="reference"),
        )  # fmt: skip
        sharded = _fully_shard(copy.deepcopy(base))

        def combine_local(r, f):
            local_r = [t.to_local() for t in r]
            local_f = [t.to_local() for t in f]
            sk.combine_grads_(
                local_r, local_f, method=method, backend=backends[0],
                process_group=dist.group.WORLD,
            )  # fmt: skip
            return [t.full_tensor() for t in r]

        # each rank's forward sees its own rows; FSDP2 averages the gradients over the ranks
        got = step_grads(sharded, forget_ids[mine], retain_ids[mine], combine_local)
        for (name, _), a, b in zip(single.named_parameters(), got, want):
            torch.testing.assert_close(
                a, b, rtol=1e-4, atol=1e-6, msg=lambda m: f"rank {rank} fsdp2 {method} {name}: {m}"
            )


def scenario_fsdp2_synthesizer(rank: int, world: int, backends: list[str]) -> None:
    base = _gpt2()
    g = torch.Generator().manual_seed(5)
    rows = 2  # per rank and micro-batch; each rank's loss is the mean over its rows, and FSDP2
    # averages over the ranks, so the step equals the single-process step on all rows
    steps = [
        (
            [torch.randint(0, 50, (rows * world, 8), generator=g) for _ in range(2)],
            torch.randint(0, 50, (rows * world, 8), generator=g),
        )
        for _ in range(2)
    ]
    mine = slice(rows * rank, rows * (rank + 1))

    def step(model, synth, forget_ids, retain_ids):
        with synth.forget():  # two micro-batches accumulate (FSDP2 reduce-scatters each)
            for ids in forget_ids:
                (-0.5 * model(input_ids=ids, labels=ids).loss).backward()
        with synth.retain():
            model(input_ids=retain_ids, labels=retain_ids).loss.backward()

    for method in ("sago", "pcgrad", "blur", "gru"):
        where = f"rank {rank}/{world} fsdp2 synthesizer {method}"
        single = copy.deepcopy(base)
        synth = sk.GradientSynthesizer(single, method=method, backend="reference")
        # SGD with momentum: AdamW would blow float32 summation-order noise in gradient elements
        # near zero up to ±lr, so the runs could not be compared beyond the first step
        opt = torch.optim.SGD(single.parameters(), lr=0.1, momentum=0.9)
        sharded = _fully_shard(copy.deepcopy(base))
        synth_s = sk.GradientSynthesizer(sharded, method=method, backend=backends[0])
        opt_s = torch.optim.SGD(sharded.parameters(), lr=0.1, momentum=0.9)
        local = sum(p.to_local().numel() for p in synth_s.params)
        if not synth_s.fsdp2 or synth_s.layout.segment_numel != local:
            raise AssertionError(f"{where}: the layout is not this rank's shards ({local})")
        for k, (forget_ids, retain_ids) in enumerate(steps):
            step(single, synth, forget_ids, retain_ids)
            want = synth.combine_()
            step(sharded, synth_s, [ids[mine] for ids in forget_ids], retain_ids[mine])
            with CountingAllReduce() as counter:
                got = synth_s.combine_()
            # the dots, then the statistics (a layout's first combine also agrees the segment
            # counts and sizes over the group, once)
            expected = int(sk.METHODS[method].is_projection) + 2
            if k > 0 and counter.calls != expected:
                raise AssertionError(f"{where}: {counter.calls} all-reduces, documented {expected}")
            views = synth_s.layout.views(synth_s.retain_buffer)
            for (name, p), p_one, view in zip(sharded.named_parameters(), single.parameters(), views):
                if p.grad.to_local().data_ptr() != view.data_ptr():  # FSDP2 wrote into our buffer
                    raise AssertionError(f"{where}: {name}.grad is not the buffer's view")
                torch.testing.assert_close(
                    p.grad.full_tensor(), p_one.grad, rtol=1e-4, atol=1e-6,
                    msg=lambda m: f"{where} step {k}: {name}: {m}",
                )  # fmt: skip
            # The attention's key bias has a gradient that is zero in exact arithmetic (softmax
            # ignores a shift shared by all keys); in float32 it is ~1e-14 of either sign, by
            # summation order. Those 16 elements a layer make the conflict count differ by a few
            # (of ~12k elements): the fraction is compared to 1e-3, the rest tightly.
            torch.testing.assert_close(got.table[-1, :7], want.table[-1, :7], rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(got.table[-1, 7], want.table[-1, 7], rtol=0, atol=1e-3)
            opt.step()
            opt_s.step()
            opt.zero_grad()
            opt_s.zero_grad()
        for (name, p), p_one in zip(sharded.named_parameters(), single.parameters()):
            torch.testing.assert_close(
                p.full_tensor(), p_one, rtol=1e-4, atol=1e-6, msg=lambda m: f"{where}: {name}: {m}"
            )
    # refused before anything is bound: one-buffer mode, and a mix of sharded and plain
    sharded = _fully_shard(copy.deepcopy(base))
    mixed = [*sharded.named_parameters(), ("plain", torch.nn.Parameter(torch.zeros(3)))]
    for kwargs, match in (
        (dict(model_or_params=sharded, buffers=1), "not supported on FSDP2"),
        (dict(model_or_params=mixed), "`plain` is not"),
    ):
        try:
            sk.GradientSynthesizer(**kwargs)
        except ValueError as error:
            if match not in str(error):
                raise AssertionError(f"rank {rank}: wrong refusal: {error}") from None
        else:
            raise AssertionError(f"rank {rank}: {match!r} was not refused")
        if any(p.grad is not None for p in sharded.parameters()):
            raise AssertionError(f"rank {rank}: a refused synthesizer bound .grad")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=["sharded", "ddp", "fsdp2", "fsdp2_synthesizer"])
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--init", required=True)
    parser.add_argument("--backends", nargs="+", default=["reference"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{args.init}", rank=args.rank, world_size=args.world
    )
    try:
        globals()[f"scenario_{args.scenario}"](args.rank, args.world, args.backends)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    print(f"rank {args.rank} ok")


if __name__ == "__main__":
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "0")
    main()
