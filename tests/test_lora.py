"""LoRA (peft) with the synthesizer and UnlearningTrainer, on a tiny GPT-2 built from a config.

Only the adapters are trainable, so only they get slots in the flat buffers; the base weights
are never written; and the merged model equals the one an Algorithm 1 loop without the package's
buffers (``torch.autograd.grad`` per task, the reference combine) reaches.
"""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

import sago_kernels as sk  # noqa: E402
from sago_kernels.unlearning.data import PairedCollator, PairedDataset, split_pair  # noqa: E402
from sago_kernels.unlearning.losses import run_loss  # noqa: E402
from test_trainer import VOCAB, _examples, _InOrder  # noqa: E402  (the Trainer tests' helpers)

# peft 0.21 asks transformers 5 for a deprecated attribute
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing`:FutureWarning")
TARGETS = ["c_attn", "c_proj"]  # attention in/out and the MLP's out projection (both c_proj)


def _base(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=2, n_head=2, bos_token_id=1,
        eos_token_id=1, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(cfg)


def _lora(base, init=True):
    """``init=True`` is peft's default (B = 0: the first step moves only B); ``"gaussian"``
    makes B nonzero, so A gets a gradient from the first step."""
    torch.manual_seed(1)
    cfg = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0, init_lora_weights=init,
        fan_in_fan_out=True,  # GPT-2's Conv1D stores weights as (in, out)
    )  # fmt: skip
    return peft.get_peft_model(base, cfg)


def _batches(n, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, 2, 6), generator=g)
    return [{"input_ids": x, "labels": x} for x in ids]


def _adapters(model):
    return [(n, p) for n, p in model.named_parameters() if "lora_" in n]


def _frozen(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}


@pytest.mark.parametrize("buffers", [2, 1])
def test_only_the_adapters_are_in_the_buffers_and_the_base_stays_put(buffers):
    model = _lora(_base(), init="gaussian")
    base, adapters = _frozen(model), _adapters(model)
    before = {n: p.detach().clone() for n, p in adapters}
    synth = sk.GradientSynthesizer(model, method="sago", buffers=buffers)
    assert synth.names == [n for n, _ in adapters]
    assert all(p.requires_grad for _, p in adapters) and len(adapters) == 2 * 3 * 2
    count = sum(p.numel() for _, p in adapters)
    assert count == synth.layout.segment_numel < sum(p.numel() for p in model.parameters()) / 4
    # every adapter's size is a multiple of the 64-element alignment here: no padding
    assert synth.memory_bytes == buffers * count * synth.retain_buffer.element_size()

    opt = torch.optim.AdamW([p for _, p in adapters], lr=1e-2)
    for f, r in zip(_batches(3, 0), _batches(3, 1)):
        _step(model, synth, opt, f, r)
    for name, p in model.named_parameters():
        if name in base:
            assert p.grad is None and torch.equal(p, base[name]), name
        else:
            assert not torch.equal(p, before[name]), f"{name} did not move"


def _step(model, synth, opt, forget, retain):
    """One Algorithm 1 step through the synthesizer: GA on the forget batch, NLL on retain."""
    with synth.forget():
        run_loss("ga", model, forget).backward()
    with synth.retain():
        run_loss("nll", model, retain, forget=False).backward()
    synth.combine_()
    opt.step()
    opt.zero_grad()


def _merged_weights(model):
    merged = model.merge_and_unload()
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    return merged.state_dict()


@pytest.mark.parametrize("backend", ["reference", None])
@pytest.mark.parametrize("buffers", [2, 1])
@pytest.mark.parametrize("method", ["sago", "pcgrad"])
def test_merged_weights_equal_a_run_without_the_buffers(method, buffers, backend):
    """The same AdamW steps, g_f and g_r taken by ``torch.autograd.grad`` and combined by the
    reference on plain lists, end in the same merged model: bit for bit when the synthesizer
    combines with the reference too (the buffers change nothing), within float32 rounding of
    PCGrad's dot products with the default backend (native on a CPU, Triton on a GPU)."""
    model = _lora(_base(), init="gaussian")
    plain = copy.deepcopy(model)
    synth = sk.GradientSynthesizer(
        model, method=method, gamma=0.5, buffers=buffers, backend=backend
    )
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    params = [p for _, p in _adapters(plain)]
    plain_opt = torch.optim.AdamW(params, lr=1e-2)
    for f, r in zip(_batches(3, 0), _batches(3, 1)):
        _step(model, synth, opt, f, r)

        g_f = torch.autograd.grad(run_loss("ga", plain, f), params)
        g_r = torch.autograd.grad(run_loss("nll", plain, r, forget=False), params)
        g_final = sk.combine_grads_(
            [g.clone() for g in g_r], [g.clone() for g in g_f], method=method, gamma=0.5,
            backend="reference",
        )  # fmt: skip
        for p, g in zip(params, g_final):
            p.grad = g
        plain_opt.step()
        plain_opt.zero_grad()

    base = _base().state_dict()
    a, b = _merged_weights(model), _merged_weights(plain)
    assert a.keys() == b.keys() == base.keys()
    exact = backend == "reference" or method == "sago"  # SAGO is element-wise: no dots
    tol = dict(rtol=0, atol=0) if exact else dict(rtol=1e-6, atol=1e-7)  # seen: 2e-8 abs
    for name in a:
        torch.testing.assert_close(a[name], b[name], **tol, msg=name)
    moved = [n for n in a if not torch.equal(a[n], base[n])]
    assert moved and all(any(t in n for t in TARGETS) for n in moved)


@pytest.mark.parametrize("buffers, accumulation", [(2, 2), (1, 1)])
def test_trainer_on_a_lora_model_equals_a_loop_without_the_buffers(
    tmp_path, buffers, accumulation
):
    """NPO's reference is a frozen copy of the base taken before wrapping: with peft's default
    init (B = 0) it is the starting model, and it equals the trained model with its adapters
    disabled, before and after (the Trainer freezes and moves ``ref_model``, so it cannot be
    the trained model itself)."""
    data = PairedDataset(_examples(8, 1), _examples(12, 2), seed=3)
    collate = PairedCollator(pad_token_id=0)
    base = _base()
    ref = copy.deepcopy(base)
    model = _lora(base)
    plain = copy.deepcopy(model)
    frozen, before = _frozen(model), {n: p.detach().clone() for n, p in _adapters(model)}
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=2,
        gradient_accumulation_steps=accumulation, learning_rate=0.05, optim="sgd",
        lr_scheduler_type="constant", max_grad_norm=0.0, logging_steps=1, report_to=[],
        save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True, dataloader_drop_last=True,
        num_train_epochs=1,
    )  # fmt: skip
    trainer = _InOrder(
        model=model, args=args, train_dataset=data, data_collator=collate, method="sago",
        gamma=0.5, forget_loss="npo", retain_loss="nll", ref_model=ref, buffers=buffers,
    )  # fmt: skip
    assert trainer.synth.names == [n for n, _ in _adapters(model)]
    trainer.train()
    assert trainer.state.global_step == 8 // (2 * accumulation)

    params = [p for _, p in _adapters(plain)]
    opt = torch.optim.SGD(params, lr=0.05)
    batches = [collate([data[i] for i in range(k, k + 2)]) for k in range(0, 8, 2)]
    for step in range(trainer.state.global_step):
        g_f = [torch.zeros_like(p) for p in params]
        g_r = [torch.zeros_like(p) for p in params]
        for batch in batches[accumulation * step : accumulation * (step + 1)]:
            f, r = split_pair(batch)
            loss_f = run_loss("npo", plain, f, ref_model=ref) / accumulation
            loss_r = run_loss("nll", plain, r, forget=False) / accumulation
            for acc, g in zip(g_f, torch.autograd.grad(loss_f, params)):
                acc += g
            for acc, g in zip(g_r, torch.autograd.grad(loss_r, params)):
                acc += g
        for p, g in zip(params, sk.combine_grads_(g_r, g_f, method="sago", gamma=0.5)):
            p.grad = g
        opt.step()
        opt.zero_grad()

    for (name, a), b in zip(model.named_parameters(), plain.parameters()):
        if name in frozen:
            assert torch.equal(a, frozen[name]), f"base weight {name} was written"
        else:
            assert not torch.equal(a, before[name]), f"{name} did not move"
        assert torch.equal(a, b), name  # the same combine on the same sums: bit for bit
    ids = batches[0]["forget_input_ids"]
    with torch.no_grad(), model.disable_adapter():
        assert torch.equal(model(input_ids=ids).logits, ref(input_ids=ids).logits)
    merged = model.merge_and_unload().state_dict()
    for name, value in plain.merge_and_unload().state_dict().items():
        assert torch.equal(merged[name], value), name
